"""One typed settings object for the whole system.

Values come, in increasing priority, from the defaults below, a TOML file
(``--config`` or ``FACESTREAM_CONFIG``) and environment variables
(``FACESTREAM_<SECTION>__<FIELD>``, e.g. ``FACESTREAM_QUALITY__MIN_FACE_PX=60``).
Invalid values fail at start-up with pydantic's field-by-field message.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, PositiveInt, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipeline.gallery.config import GalleryConfig
from pipeline.stream.config import StreamConfig
from pipeline.train.config import TrainSettings

REPO_ROOT = Path(__file__).resolve().parents[1]

DetectorBackend = Literal["dlib_hog", "dlib_cnn", "onnx"]
PickPolicy = Literal["error", "largest", "center", "all"]


class ImageLimits(BaseModel):
    """Limits checked before an image is fully decoded."""

    max_pixels: PositiveInt = Field(
        50_000_000, description="Refuse images with more pixels than this (read from the header)."
    )
    max_bytes: PositiveInt = Field(64 * 1024 * 1024, description="Refuse larger encoded inputs.")


class DetectorConfig(BaseModel):
    """Face detection: a primary backend and optional fallbacks tried in order."""

    backend: DetectorBackend = "dlib_hog"
    fallbacks: list[DetectorBackend] = Field(
        default_factory=lambda: ["dlib_cnn"],
        description="Backends tried, in order, on images where the primary finds no face.",
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
        40.0, description="Minimum of the detection box's width and height, in pixels."
    )
    min_sharpness: float | None = Field(
        5.0, description="Minimum variance of the Laplacian of the aligned grey chip."
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


class ModelsConfig(BaseModel):
    store: Path = Field(
        REPO_ROOT / "models", description="Model store: one folder per model version."
    )
    version: str | None = Field(
        None, description="Embedder version to use; default: the store's active version."
    )
    batch_size: PositiveInt = Field(32, description="Faces per embedder call.")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads; 0 = its default.")


class Settings(BaseSettings):
    """All facestream settings."""

    model_config = SettingsConfigDict(
        env_prefix="FACESTREAM_", env_nested_delimiter="__", extra="forbid"
    )

    face: FaceConfig = Field(default_factory=FaceConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    gallery: GalleryConfig = Field(default_factory=GalleryConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get() or os.environ.get("FACESTREAM_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)


# The file of the settings being built: a context variable rather than an environment
# variable, so loading one file never leaks into later loads in the same process.
_config_file: ContextVar[Path | None] = ContextVar("facestream_config_file", default=None)


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the settings, reading ``config_file`` (TOML) when given."""
    if config_file is None:
        env = os.environ.get("FACESTREAM_CONFIG")
        config_file = Path(env) if env else None
    if config_file is not None and not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    token = _config_file.set(config_file)
    try:
        return Settings()
    finally:
        _config_file.reset(token)
