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

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipeline.config.bridge import BridgeConfig
from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.config.stream import StreamConfig
from pipeline.config.train import TrainSettings


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
    bridge: BridgeConfig = Field(default_factory=BridgeConfig)

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
