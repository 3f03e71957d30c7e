"""Helpers of the gallery tests: galleries on the session's stores, LFW people, tight
crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.gallery.service import Gallery
from pipeline.models.store import ModelStore


def lfw_root(shared_dir: Path) -> Path:
    root = shared_dir / "data" / "lfw-dev"
    if not root.is_dir():
        pytest.skip(f"LFW-dev not found at {root}")
    return root


def photos(root: Path, person: str) -> list[Path]:
    return sorted((root / person).glob("*.jpg"))


def as_input(paths: list[Path]) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths]


def tight_crop(gallery: Gallery, path: Path, *, shrink: float = 0.2, side: int = 56) -> np.ndarray:
    """A low-res face crop with no margin, cut from an LFW photo: the detected face box
    shrunk by ``shrink`` of its width on each side (eyebrows to chin, like a crop from a
    video frame), resized to ``side`` x ``side``."""
    from pipeline.face.image_io import load_image

    pipe = gallery.pipeline(gallery.serving_version())
    image = load_image(path)
    face = pipe.analyze(image, pick="center", embed=False)[0]
    x1, y1, x2, y2 = face.detection.box
    d = shrink * (x2 - x1)
    crop = image[int(y1 + d) : int(y2 - d), int(x1 + d) : int(x2 - d)]
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)


def png(rgb: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return data.tobytes()


def open_gallery(
    data_dir: Path,
    store: ModelStore,
    face: FaceConfig | None = None,
    *,
    space: dict[str, str] | None = None,
    **cfg: object,
) -> Gallery:
    """A gallery in ``data_dir`` (its SQLite catalogue) on the Milvus server corner
    ``space`` (tests/conftest.py ``milvus_space``), or on a Milvus Lite file there."""
    vectors = space or {"milvus_uri": str(data_dir / "milvus.db")}
    gallery = GalleryConfig(data_dir=data_dir, **vectors, **cfg)  # type: ignore[arg-type]  # settings of any type, parsed by pydantic
    models = ModelsConfig(store=store.root)
    return Gallery.from_settings(gallery, face or FaceConfig(), models, store=store)
