"""The embedder loaded from the model store: parity with dlib, batching, TTA, versioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.face.analyze import FacePipeline
from pipeline.face.embed import Embedder
from pipeline.face.errors import ModelError
from pipeline.face.image_io import load_image
from pipeline.face.manifest import verify_files
from pipeline.models.bootstrap import bootstrap_default
from pipeline.models.store import ModelStore
from pipeline.runtime.dlib_backend import DlibBackend


@pytest.fixture(scope="module")
def lfw_chips(face_pipeline: FacePipeline, lfw_images: list[Path]) -> np.ndarray:
    chips = []
    for path in lfw_images[:48]:
        faces = face_pipeline.analyze(load_image(path), pick="center", embed=False)
        chips.extend(f.chip for f in faces)
    assert len(chips) >= 40
    return np.stack(chips)


def _no_tta(embedder: Embedder) -> Embedder:
    m = embedder.manifest
    plain = m.model_copy(
        update={"preprocessing": m.preprocessing.model_copy(update={"tta": "none"})}
    )
    return Embedder(plain, embedder.backend)


@pytest.mark.shared_data
def test_store_embedder_matches_dlib(
    embedder: Embedder, model_store: ModelStore, lfw_chips: np.ndarray
) -> None:
    """The whole production path (manifest preprocessing + ONNX Runtime) against dlib itself."""
    folder = model_store.folder(embedder.model_version)
    dlib_vecs = DlibBackend(embedder.manifest.file_path(folder, "dlib"))(lfw_chips)
    dlib_vecs /= np.linalg.norm(dlib_vecs, axis=1, keepdims=True)
    ours = _no_tta(embedder).embed(lfw_chips)
    cos = np.sum(ours * dlib_vecs, axis=1)
    assert cos.mean() >= 0.9999 and cos.min() >= 0.999, (cos.mean(), cos.min())


@pytest.mark.shared_data
def test_vectors_are_unit_and_batch_independent(embedder: Embedder, lfw_chips: np.ndarray) -> None:
    batched = embedder.embed(lfw_chips)
    assert batched.dtype == np.float32 and batched.shape == (len(lfw_chips), 128)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([embedder.embed(c[None]) for c in lfw_chips[:8]])
    np.testing.assert_allclose(one_by_one, batched[:8], atol=1e-5)


@pytest.mark.shared_data
def test_flip_tta_is_mirror_invariant(embedder: Embedder, lfw_chips: np.ndarray) -> None:
    assert embedder.manifest.preprocessing.tta == "flip"
    chips = lfw_chips[:8]
    np.testing.assert_allclose(embedder.embed(chips), embedder.embed(chips[:, :, ::-1]), atol=1e-5)
    # ... which plain embedding is not
    plain = _no_tta(embedder)
    assert np.min(np.sum(plain.embed(chips) * plain.embed(chips[:, :, ::-1]), axis=1)) < 0.9999


def test_bootstrap_is_deterministic(model_store: ModelStore, tmp_path: Path) -> None:
    again = bootstrap_default(ModelStore(tmp_path), activate=False)
    first = model_store.manifest(model_store.active_version())
    assert again.version == first.version
    assert {k: f.sha256 for k, f in again.files.items()} == {
        k: f.sha256 for k, f in first.files.items()
    }


def test_tta_is_part_of_the_version(tmp_path: Path, model_store: ModelStore) -> None:
    plain = bootstrap_default(ModelStore(tmp_path), tta="none", activate=False)
    assert plain.version != model_store.active_version()


def test_corrupt_model_file_is_refused(model_store: ModelStore, tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    manifest = bootstrap_default(store)
    onnx = store.folder(manifest.version) / manifest.files["onnx"].path
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        verify_files(manifest, store.folder(manifest.version))
    with pytest.raises(ModelError, match="corrupt or replaced"):
        store.load_embedder()


def test_unknown_version_and_empty_store(tmp_path: Path, model_store: ModelStore) -> None:
    with pytest.raises(ModelError, match="models bootstrap"):
        ModelStore(tmp_path / "empty").load_embedder()
    with pytest.raises(ModelError, match="unknown model version"):
        model_store.load_embedder("no-such-version")
