"""Reading camera and video sources with OpenCV, sampled to a target frame rate.

Sources: files, ``rtsp://`` / ``rtmp://`` streams, ``http(s)://`` MJPEG or HLS
(``.m3u8``) URLs (OpenCV's FFmpeg backend reads them all), and local devices given as
an index (``"0"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

LIVE_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(RuntimeError):
    """A video source could not be opened or read."""


@dataclass(frozen=True)
class Frame:
    seq: int  # index among the frames kept after sampling
    source_index: int  # index among all frames the source delivered
    ts_ms: float  # position in the stream (files) or capture time offset
    image: np.ndarray  # RGB uint8


def is_device(source: str) -> bool:
    return source.isdigit()


def is_live(source: str) -> bool:
    """Cameras and network streams (reconnect when they break); files are not live."""
    return is_device(source) or source.lower().startswith(LIVE_SCHEMES)


def open_capture(
    source: str, open_timeout_s: float | None = None, read_timeout_s: float | None = None
) -> cv2.VideoCapture:
    """Open a file path, URL (rtsp://, http://) or device index ("0").

    For network streams the timeouts bound how long opening and a stalled read may
    block, so a dead camera is noticed and reconnected instead of hanging the reader.
    """
    if is_device(source):
        cap = cv2.VideoCapture(int(source))
    elif is_live(source) and (open_timeout_s or read_timeout_s):
        params: list[int] = []
        if open_timeout_s:
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000)]
        if read_timeout_s:
            params += [cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    else:
        cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise SourceError(f"cannot open video source {redact(source)!r}")
    return cap


def redact(source: str) -> str:
    """The source with any password in its URL hidden (for logs and messages)."""
    scheme, sep, rest = source.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return source
    creds, _, host = rest.partition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def native_fps(cap: cv2.VideoCapture) -> float:
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    return fps if 1.0 <= fps <= 240.0 else 30.0


def downscale(bgr: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side and max(bgr.shape[:2]) > max_side:
        scale = max_side / max(bgr.shape[:2])
        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return bgr


class FpsSampler:
    """Keeps about ``target_fps`` frames per second of a clock (stream time or wall time).

    The next due time advances by one period per kept frame, and jumps ahead after a
    gap (a stall or a reconnect), so the sampler never bursts to catch up. On a file's
    own clock it keeps the same frames as :func:`iter_frames`.
    """

    def __init__(self, target_fps: float | None) -> None:
        self.step_ms = 1000.0 / target_fps if target_fps else 0.0
        self.next_ms: float | None = None

    def keep(self, ts_ms: float) -> bool:
        if self.next_ms is None:
            self.next_ms = ts_ms
        if ts_ms + 1e-6 < self.next_ms:
            return False
        self.next_ms += self.step_ms
        if self.next_ms <= ts_ms:  # behind by more than a period: resync, no burst
            self.next_ms = ts_ms + self.step_ms
        return True

    def reset(self) -> None:
        self.next_ms = None


def iter_frames(
    source: str, target_fps: float | None = None, max_side: int | None = None
) -> Iterator[Frame]:
    """Yield RGB frames of ``source``, keeping about ``target_fps`` per second of video.

    Sampling follows the stream's own clock (frame index / native fps) so a file plays
    out the same frames however fast it is decoded. ``max_side`` caps the resolution.
    """
    cap = open_capture(source)
    try:
        native = native_fps(cap)
        step_ms = 1000.0 / target_fps if target_fps else 0.0
        next_ms = 0.0
        index = seq = 0
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            ts = index * 1000.0 / native
            index += 1
            if ts + 1e-6 < next_ms:
                continue
            next_ms += step_ms
            bgr = downscale(bgr, max_side)
            yield Frame(seq, index - 1, ts, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            seq += 1
    finally:
        cap.release()
