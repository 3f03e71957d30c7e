"""Fixtures of the face-core tests: a model store built the way users build it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import FaceConfig
from pipeline.face.align import Aligner
from pipeline.face.analyze import FacePipeline
from pipeline.face.embed import Embedder
from pipeline.registry import ModelStore


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """A fresh store with the default version bootstrapped from the PyPI-shipped weights."""
    from pipeline.nets.bootstrap import bootstrap_default

    store = ModelStore(tmp_path_factory.mktemp("models"))
    bootstrap_default(store)
    yield store


@pytest.fixture(scope="session")
def embedder(model_store: ModelStore) -> Embedder:
    return model_store.load_embedder()


@pytest.fixture(scope="session")
def face_pipeline(embedder: Embedder) -> FacePipeline:
    return FacePipeline.from_config(FaceConfig(), Aligner(embedder.manifest.alignment), embedder)


@pytest.fixture(scope="session")
def lfw_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "lfw-dev"
    if not path.is_dir():
        pytest.skip(f"LFW-dev not found at {path}")
    return path


@pytest.fixture(scope="session")
def lfw_images(lfw_dir: Path) -> list[Path]:
    """A fixed, spread-out sample of LFW-dev images (every 40th file)."""
    return sorted(lfw_dir.rglob("*.jpg"))[::40]
