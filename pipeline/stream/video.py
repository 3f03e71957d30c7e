"""Reading camera and video sources with OpenCV, sampled to a target frame rate.

Sources: files, ``rtsp://`` / ``rtmp://`` streams, ``http(s)://`` MJPEG or HLS
(``.m3u8``) URLs (OpenCV's FFmpeg backend reads them all), and local devices given as
an index (``"0"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote

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


# What follows the '@' that ends a URL's user part: a host (name, IPv4, [IPv6]) and an
# optional port, then the path, query, fragment or the end.
_HOST_AFTER_AT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%-]+)(?::\d*)?(?=[/?#]|$)")
# key=value pairs of a query string, a fragment or a path (some cameras take their
# credentials as path parameters: ``/user=admin&password=...&channel=1``). A value runs to
# the next '&', ';' or '#', so an unescaped '/' in a password stays hidden with it.
_PARAM = re.compile(r"(?P<key>[^=&;/?#]+)=(?P<value>[^&;#]+)")
_SECRET_KEY = re.compile(r"pass|pwd|token|secret|auth|key|sig|credential|session|cookie|jwt")


def _hide_param(m: re.Match[str]) -> str:
    if _SECRET_KEY.search(unquote(m["key"]).lower()):
        return f"{m['key']}=***"
    return m[0]


def _user_part_end(rest: str) -> int:
    """Index of the '@' that ends the user part of ``rest`` (a URL after '://'), or -1.

    Camera passwords hold unescaped '/' and '@' (``user:p@ss/word@cam``), which
    ``urllib.parse.urlsplit`` cuts at the first '/': the user part ends instead at the
    last '@' followed by a host. An '@' of the path or the query (``?email=a@b.com``)
    has a '/', '?' or '#' before it and no ':' (a user name cannot hold those); one
    with a ':' before it is taken as a password, which may hide more than needed but
    never shows a password."""
    for at in reversed([i for i, c in enumerate(rest) if c == "@"]):
        if _HOST_AFTER_AT.match(rest, at + 1):
            user_part = rest[:at]
            if ":" not in user_part and any(c in user_part for c in "/?#"):
                return -1
            return at
    return -1


def redact(source: str) -> str:
    """The source with its credentials hidden (for logs and messages): the password of
    its user part (all of a user part without ':', which may be a token) and the value of
    every query, fragment or path parameter named like a secret (password, pwd, token,
    key, secret, auth, sig...). Files and device indexes are returned as they are."""
    scheme, sep, rest = source.partition("://")
    if not sep:
        return source
    at = _user_part_end(rest)
    user_part = ""
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        user_part = f"{user}:***@" if colon else "***@"
        rest = rest[at + 1 :]
    return f"{scheme}://{user_part}{_PARAM.sub(_hide_param, rest)}"


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
