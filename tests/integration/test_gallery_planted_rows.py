"""Search trusts the catalogue, not Milvus (issue 17): a row written straight into the
face collection, under an enrolled person's identity and with a stranger's face, never
makes the stranger that person, whether the search comes through the gallery (REST API,
CLI) or through the stream's search deployment."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusClient

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.config.serve import SearchServeConfig
from pipeline.face.image_io import load_image
from pipeline.gallery.faces import find_faces
from pipeline.gallery.service import Gallery
from pipeline.gallery.vectors import VECTOR_FIELD, Snapshot
from pipeline.models.store import ModelStore
from tests.support.gallery import as_input, lfw_root, open_gallery, photos

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

VICTIM, OTHER, STRANGER = "Abdullah_Gul", "Abel_Pacheco", "Adrien_Brody"


@pytest.fixture(scope="module")
def store(model_store: ModelStore) -> ModelStore:
    return model_store


@pytest.fixture
def gallery(tmp_path: Path, store: ModelStore, milvus_space: dict[str, str]) -> Iterator[Gallery]:
    g = open_gallery(tmp_path / "gallery", store, space=milvus_space)
    yield g
    g.close()


def _probe_vector(gallery: Gallery, path: Path, version: str) -> np.ndarray:
    """The embedding the gallery makes of the probe's centre face (as search_image does)."""
    pipe = gallery.pipeline(version)
    faces = find_faces(pipe, load_image(path), mode=gallery.config.crop_mode, pick="center")
    pipe.embed_faces(faces)
    assert faces and faces[0].embedding is not None
    return faces[0].embedding


def _plant(uri: str, snap: Snapshot, rows: list[dict[str, str]], vector: np.ndarray) -> None:
    client = MilvusClient(uri)
    try:
        client.insert(
            snap.collection,
            [
                {**r, "model_version": snap.version, "quality": "{}", "crop": "x"}
                | {VECTOR_FIELD: vector.tolist()}
                for r in rows
            ],
        )
    finally:
        client.close()


def test_rows_written_straight_into_milvus_are_never_identifications(
    gallery: Gallery, store: ModelStore, milvus_space: dict[str, str], shared_dir: Path
) -> None:
    lfw = lfw_root(shared_dir)
    ids = {
        p: gallery.enroll(as_input(photos(lfw, p)[:2]), name=p, pick="center").identity.identity_id
        for p in (VICTIM, OTHER)
    }
    snap = gallery.active()
    assert snap is not None
    probe_path = photos(lfw, STRANGER)[0]
    vec = _probe_vector(gallery, probe_path, snap.version)
    before = gallery.search_image(probe_path.read_bytes(), pick="center").faces[0]
    assert before.decision == "unknown"

    # Two forgeries: a new face id under the victim's identity, and the real face id of
    # another enrolled person relabelled as the victim. Both carry the stranger's face.
    other_face = gallery.catalogue.faces(ids[OTHER])[0].face_id
    planted = {uuid.uuid4().hex: ids[VICTIM], other_face: ids[VICTIM]}
    _plant(
        milvus_space["milvus_uri"],
        snap,
        [{"face_id": f, "identity_id": i} for f, i in planted.items()],
        vec,
    )
    # Milvus itself now returns them as the best match (Session consistency: another
    # client's write shows within the server's time tick).
    deadline = time.monotonic() + 20
    raw: set[tuple[str, str]] = set()
    # The vector store keeps each person's best face: one of the two rows shows at most.
    while time.monotonic() < deadline and not raw & set(planted.items()):
        hits = gallery.vectors.search(snap, vec[None, :], snap.version, limit=5)[0]
        raw = {(h.face_id, h.identity_id) for h in hits if h.similarity > 0.999}
        time.sleep(0.3)
    assert raw & set(planted.items()), raw

    # The gallery (REST API and CLI path).
    res = gallery.search_image(probe_path.read_bytes(), pick="center")
    face = res.faces[0]
    assert face.decision == "unknown", face
    assert all(c.face_id not in planted for c in face.candidates), face.candidates
    # The victim may still be a candidate, through their own enrolled faces only.
    for c in face.candidates:
        assert c.similarity < 0.99, c
    _, _, cands = gallery.search_vectors(vec[None, :], snap.version)
    assert all(c.face_id not in planted and c.similarity < 0.99 for c in cands[0]), cands
    # Enrolled people are still found through their own faces.
    res = gallery.search_image(photos(lfw, VICTIM)[2].read_bytes(), pick="center")
    assert res.faces[0].identity is not None
    assert res.faces[0].identity.identity_id == ids[VICTIM]

    # The stream's search deployment (its class, without Ray: the same code a replica runs).
    from pipeline.serve.search import GallerySearchDeployment, SearchRequest

    deployment = GallerySearchDeployment.func_or_class(
        GalleryConfig(data_dir=gallery.data_dir, **milvus_space),  # type: ignore[arg-type]  # the str settings pydantic parses
        FaceConfig(),
        ModelsConfig(store=store.root),
        SearchServeConfig(),
    )
    try:
        # Its warm-up search (in the constructor) is not counted as a request's.
        assert deployment.stats()["pairs"] == []
        out = deployment._run([SearchRequest(vec[None, :].astype(np.float32), snap.version)])
    finally:
        deployment.gallery.close()
    assert out[0].collection == snap.collection
    hits = out[0].candidates[0]
    assert all(h.decision == "unknown" and h.similarity < 0.99 for h in hits), hits
