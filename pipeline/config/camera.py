"""Per-camera settings of the stream (``[[stream.cameras]]``) and how they resolve.

A camera may tune what happens to its own faces: a threshold offset added to the
open-set threshold, its own quality gate (minimum face size, sharpness, pose, detector
score) and whether its unknown faces are kept for review. Anything left out (None, or
offset 0) is the global value, and so is every setting of a camera that is not listed
(frames produced elsewhere under another key).

Pure pydantic and dataclasses: the workers, the analyzer and ``facestream status`` all
resolve a camera's settings the same way through :class:`CameraSettings`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field, NonNegativeFloat

from pipeline.config.base import Section
from pipeline.config.face import QualityConfig

if TYPE_CHECKING:
    from pipeline.config.stream import CameraConfig

# Beyond +-0.2 of cosine similarity an offset no longer tunes a camera: it replaces the
# calibrated threshold (0.2 moves the dlib model's from ~0.9 to ~0.7, close to chance).
MAX_THRESHOLD_OFFSET = 0.2


class CameraQualityConfig(Section):
    """A camera's own quality gate: each value given replaces the stream's (even when
    softer); None keeps the stream's (``face.quality`` with ``workers.min_sharpness``)."""

    min_face_px: NonNegativeFloat | None = Field(
        None,
        description="Minimum of the face box's width and height (pixels): e.g. higher for "
        "a camera that sees faces close up, lower for a distant one.",
    )
    min_sharpness: NonNegativeFloat | None = Field(
        None, description="Minimum sharpness (variance of the Laplacian) of the aligned chip."
    )
    max_yaw: float | None = Field(
        None, gt=0, le=1, description="Maximum |yaw proxy| (0 frontal, ~0.5 profile)."
    )
    max_roll_deg: float | None = Field(
        None, gt=0, le=180, description="Maximum |roll| of the eye line (degrees)."
    )
    min_detector_score: float | None = Field(
        None, description="Minimum detector score, in the detector's own units."
    )

    def overrides(self) -> dict[str, float]:
        """The values this camera sets (the others are the stream's)."""
        return {k: float(v) for k, v in self.model_dump(exclude_none=True).items()}

    def apply(self, base: QualityConfig) -> QualityConfig:
        return base.model_copy(update=self.overrides()) if self.overrides() else base


def stream_quality(face: QualityConfig, min_sharpness: float | None) -> QualityConfig:
    """The quality gate of video frames: the face section's, with the stream's sharpness
    (``workers.min_sharpness``) when it is stricter."""
    sharp = min_sharpness
    if sharp is not None and (face.min_sharpness is None or sharp > face.min_sharpness):
        return face.model_copy(update={"min_sharpness": sharp})
    return face


@dataclass(frozen=True)
class CameraTuning:
    """What the analyzer applies to one camera's frames. Small and without the camera's
    URL (which may hold credentials): it travels with every analyzer request."""

    camera_id: str
    threshold_offset: float = 0.0
    # The quality values the camera overrides, sorted by name (hashable: replicas cache
    # one gate per distinct tuple).
    quality: tuple[tuple[str, float], ...] = ()

    def gate(self, base: QualityConfig) -> QualityConfig:
        return base.model_copy(update=dict(self.quality)) if self.quality else base


class CameraSettings:
    """Camera id -> its resolved settings; unlisted cameras get the global values."""

    def __init__(self, cameras: Iterable[CameraConfig], keep_unknowns: bool) -> None:
        self._by_id = {c.id: c for c in cameras}
        self.keep_unknowns_default = keep_unknowns
        self._tunings = {c.id: _tuning(c) for c in self._by_id.values()}

    def tuning(self, camera_id: str) -> CameraTuning | None:
        """None when the camera changes nothing (global threshold and gate)."""
        return self._tunings.get(camera_id)

    def keep_unknowns(self, camera_id: str) -> bool:
        cam = self._by_id.get(camera_id)
        if cam is None or cam.keep_unknowns is None:
            return self.keep_unknowns_default
        return cam.keep_unknowns

    def any_keeps_unknowns(self) -> bool:
        """Whether some camera (or the global setting) keeps unknown faces: the review
        recorder must then be deployed and accept them."""
        return self.keep_unknowns_default or any(c.keep_unknowns for c in self._by_id.values())

    def rows(self, base: QualityConfig) -> list[dict[str, Any]]:
        """Each listed camera's settings as applied (``facestream status``): the values
        in force and which of them the camera sets."""
        out = []
        for cam in self._by_id.values():
            gate = cam.quality.apply(base)
            out.append(
                {
                    "camera": cam.id,
                    "threshold_offset": cam.threshold_offset,
                    "min_face_px": gate.min_face_px,
                    "quality": gate.model_dump(),
                    "quality_overrides": cam.quality.overrides(),
                    "keep_unknowns": self.keep_unknowns(cam.id),
                    "keep_unknowns_from": "global" if cam.keep_unknowns is None else "camera",
                }
            )
        return out


def _tuning(cam: CameraConfig) -> CameraTuning | None:
    quality = tuple(sorted(cam.quality.overrides().items()))
    if cam.threshold_offset == 0 and not quality:
        return None
    return CameraTuning(cam.id, cam.threshold_offset, quality)
