"""Reading camera and video sources with OpenCV, sampled to a target frame rate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np


class SourceError(RuntimeError):
    """A video source could not be opened or read."""


@dataclass(frozen=True)
class Frame:
    seq: int  # index among the frames kept after sampling
    source_index: int  # index among all frames the source delivered
    ts_ms: float  # position in the stream (files) or capture time offset
    image: np.ndarray  # RGB uint8


def open_capture(source: str) -> cv2.VideoCapture:
    """Open a file path, URL (rtsp://, http://) or device index ("0")."""
    cap = cv2.VideoCapture(int(source)) if source.isdigit() else cv2.VideoCapture(source)
    if not cap.isOpened():
        raise SourceError(f"cannot open video source {source!r}")
    return cap


def iter_frames(
    source: str, target_fps: float | None = None, max_side: int | None = None
) -> Iterator[Frame]:
    """Yield RGB frames of ``source``, keeping about ``target_fps`` per second of video.

    Sampling follows the stream's own clock (frame index / native fps) so a file plays
    out the same frames however fast it is decoded. ``max_side`` caps the resolution.
    """
    cap = open_capture(source)
    try:
        native = cap.get(cv2.CAP_PROP_FPS) or 0.0
        native = native if 1.0 <= native <= 240.0 else 30.0
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
            if max_side and max(bgr.shape[:2]) > max_side:
                scale = max_side / max(bgr.shape[:2])
                bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            yield Frame(seq, index - 1, ts, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            seq += 1
    finally:
        cap.release()
