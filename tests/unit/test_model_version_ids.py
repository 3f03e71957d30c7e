"""A model version id becomes a folder of the model store, and versions are read from
places others can write (a Milvus collection's properties, the ACTIVE file, requests):
the store refuses any id that is not a plain folder name (issue 17)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.face import FaceConfig
from pipeline.face.errors import ModelError
from pipeline.gallery.errors import ModelVersionMismatch
from pipeline.gallery.vectors import VERSION_PROPERTY
from pipeline.models.store import ModelStore
from tests.support.gallery import open_gallery

BAD = [
    "../outside",
    "..",
    "/etc",
    "/tmp/x",
    "a/b",
    "a\\b",
    "a\x00b",
    ".hidden",
    "a..b",
    "",
    " v1",
    "v1\n",
    "x" * 129,
]
GOOD = ["dlib-resnet-v1-6b9c3627", "dlib-resnet-v1-ft-0a1b2c3d", "base", "v2", "m_1.0"]


@pytest.fixture
def outside_store(model_store: ModelStore, tmp_path: Path) -> ModelStore:
    """An empty store at tmp/models, and a complete model version at tmp/outside: a
    version id of '../outside' would reach it."""
    shutil.copytree(model_store.folder(model_store.active_version()), tmp_path / "outside")
    (tmp_path / "models").mkdir()
    return ModelStore(tmp_path / "models")


@pytest.mark.parametrize("version", BAD)
def test_the_store_refuses_version_ids_that_are_not_plain_names(
    outside_store: ModelStore, version: str
) -> None:
    calls = [outside_store.folder, outside_store.manifest, outside_store.set_active]
    if version:  # load_embedder("") means the active version, like None
        calls.append(outside_store.load_embedder)
    for call in calls:
        with pytest.raises(ModelError, match="invalid model version id"):
            call(version)


@pytest.mark.parametrize("version", GOOD)
def test_ids_the_store_makes_are_accepted(tmp_path: Path, version: str) -> None:
    assert ModelStore(tmp_path).folder(version) == tmp_path / version


def test_a_forged_active_file_is_refused(outside_store: ModelStore) -> None:
    (outside_store.root / "ACTIVE").write_text("../outside\n")
    with pytest.raises(ModelError, match="invalid model version id"):
        outside_store.load_embedder()


def test_a_collection_property_naming_a_path_is_refused(
    outside_store: ModelStore, tmp_path: Path
) -> None:
    """A collection whose version property is a path (anyone who can write to Milvus can
    make one and point the alias at it) is not searched, and no model is loaded from it."""
    from pymilvus import DataType

    gallery = open_gallery(tmp_path / "g", outside_store, FaceConfig())  # Milvus Lite
    try:
        client = gallery.vectors.client
        name = f"{gallery.config.collection_prefix}_forged"
        schema = client.create_schema(auto_id=False)
        schema.add_field("face_id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=128)
        client.create_collection(name, schema=schema, properties={VERSION_PROPERTY: "../outside"})
        client.create_alias(name, gallery.config.alias)
        with pytest.raises((ModelError, ModelVersionMismatch), match="model version"):
            gallery.search_vectors(np.ones((1, 128), np.float32), "../outside")
        with pytest.raises((ModelError, ModelVersionMismatch), match="model version"):
            gallery.pipeline(gallery.serving_version())
    finally:
        gallery.close()
