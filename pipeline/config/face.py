"""The face core's settings (the ``[face]`` section): detector, quality gate, image limits.

Pure pydantic: the face core imports this module and nothing else of the configuration,
so importing the face core never loads the Kafka, Milvus or training settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PositiveInt, model_validator

DetectorBackend = Literal["yunet", "dlib_hog", "dlib_cnn", "onnx"]
DEFAULT_FALLBACKS: tuple[DetectorBackend, ...] = ("dlib_hog", "dlib_cnn")
PickPolicy = Literal["error", "largest", "center", "all"]


class ImageLimits(BaseModel):
    """Limits checked before an image is fully decoded."""

    max_pixels: PositiveInt = Field(
        50_000_000, description="Refuse images with more pixels than this (read from the header)."
    )
    max_bytes: PositiveInt = Field(64 * 1024 * 1024, description="Refuse larger encoded inputs.")


class DetectorConfig(BaseModel):
    """Face detection: a primary backend and optional fallbacks tried in order."""

    backend: DetectorBackend = Field(
        "yunet",
        description="yunet: YuNet-s (Apache-2.0, shipped in the package) through OpenCV; "
        "dlib_hog / dlib_cnn: dlib's HOG and MMOD detectors; onnx: a file of yours "
        "described by onnx_manifest.",
    )
    fallbacks: list[DetectorBackend] = Field(
        default_factory=lambda: list(DEFAULT_FALLBACKS),
        description="Backends tried, in order, on images where the primary finds no face "
        "(stills; the stream skips them unless stream.workers.detector_fallbacks).",
    )
    max_side: int | None = Field(
        640,
        ge=32,
        description="Detect on a copy scaled down to this many pixels on its longer side; "
        "landmarks and the aligned chip still come from the full image. None: full size.",
    )
    upsample: int = Field(1, ge=0, le=3, description="dlib pyramid upsampling steps.")
    onnx_manifest: Path | None = Field(
        None, description="Manifest (JSON) of an ONNX detector; required when backend='onnx'."
    )
    min_score: float | None = Field(
        None, description="Drop detections below this score (in the detector's own units)."
    )

    @model_validator(mode="after")
    def _onnx_needs_manifest(self) -> DetectorConfig:
        uses_onnx = self.backend == "onnx" or "onnx" in self.fallbacks
        if uses_onnx and self.onnx_manifest is None:
            raise ValueError("detector.onnx_manifest is required when an 'onnx' detector is used")
        return self


class QualityConfig(BaseModel):
    """Quality gate thresholds; ``None`` disables a check."""

    min_face_px: float | None = Field(
        40.0,
        description="Minimum of the face box's width and height, in pixels (in dlib's box "
        "convention, whatever the detector).",
    )
    min_sharpness: float | None = Field(
        5.0,
        description="Minimum variance of the Laplacian of the aligned grey chip (the stream "
        "applies stream.workers.min_sharpness instead when it is stricter).",
    )
    max_yaw: float | None = Field(
        0.45, description="Maximum |yaw proxy|: nose offset from the eye midline / eye distance."
    )
    max_roll_deg: float | None = Field(45.0, description="Maximum |roll| of the eye line.")
    min_detector_score: float | None = Field(
        None, description="Minimum detector score, in the detector's own units."
    )


class FaceConfig(BaseModel):
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    limits: ImageLimits = Field(default_factory=ImageLimits)
    pick: PickPolicy = Field("all", description="What to return when an image holds several faces.")
