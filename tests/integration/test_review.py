"""The review loop on a real Milvus server, a real catalogue and real LFW faces: kept
unknown faces cluster into unknown people, labelling enrols them, feedback excludes or
enrols a face, retention and purge erase everywhere, bad requests change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from pipeline.config.review import ReviewConfig
from pipeline.face.image_io import load_image
from pipeline.gallery.errors import GalleryError, IdentityNotFound, ModelVersionMismatch
from pipeline.gallery.review import (
    ClusterNotFound,
    EventNotFound,
    FeedbackRefused,
    NameTaken,
    Review,
)
from pipeline.gallery.review.records import RecordedFace
from pipeline.gallery.review.store import feedback, sightings
from pipeline.gallery.service import Gallery
from pipeline.models.store import ModelStore
from tests.support.gallery import as_input, lfw_root, open_gallery, photos
from tests.support.models import TwoVersions

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

KNOWN = "Abdullah_Gul"
STRANGER = "Adrien_Brody"  # several photos: becomes an unknown person
OTHER = "Aaron_Peirsol"


@pytest.fixture
def store(two_versions: TwoVersions) -> ModelStore:
    return two_versions.store


@pytest.fixture
def gallery(tmp_path: Path, store: ModelStore, milvus_space: dict[str, str]) -> Iterator[Gallery]:
    g = open_gallery(tmp_path, store, space=milvus_space)
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
def review(gallery: Gallery) -> Iterator[Review]:
    r = Review(gallery, ReviewConfig(keep_unknowns=True, faces_per_track=2))
    try:
        yield r
    finally:
        r.close()


def seen(
    gallery: Gallery,
    path: Path,
    face_id: str,
    track: str,
    *,
    decision: str = "unknown",
    identity_id: str | None = None,
    camera: str = "cam-a",
    ts: int = 1_000,
) -> RecordedFace:
    """A face as the stream hands it over: the face core's chip (JPEG) and vector."""
    pipe = gallery.pipeline(gallery.serving_version())
    face = pipe.analyze(load_image(path), pick="center")[0]
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(face.chip, cv2.COLOR_RGB2BGR))
    assert ok and face.embedding is not None
    return RecordedFace(
        face_id=face_id,
        model_version=str(face.model_version),
        camera_id=camera,
        track_id=track,
        capture_ts_ms=ts,
        decision=decision,  # type: ignore[arg-type]  # a str of the Literal, or a wrong one on purpose
        identity_id=identity_id,
        similarity=None,
        quality=face.quality.metrics,
        crop_jpeg=jpeg.tobytes(),
        embedding=face.embedding.tolist(),
    )


def test_unknowns_cluster_label_and_identify(
    gallery: Gallery, review: Review, shared_dir: Path
) -> None:
    lfw = lfw_root(shared_dir)
    known = gallery.enroll(as_input(photos(lfw, KNOWN)[:2]), name="Abdullah Gul").identity
    b = photos(lfw, STRANGER)
    faces = [
        seen(gallery, b[0], "cam-a:10:0", "cam-a:10:0"),
        seen(gallery, b[1], "cam-a:11:0", "cam-a:10:0"),
        seen(gallery, b[2], "cam-a:12:0", "cam-a:10:0"),  # over faces_per_track: not kept
        seen(gallery, b[3], "cam-b:40:0", "cam-b:40:0", camera="cam-b", ts=2_000),
        seen(gallery, photos(lfw, OTHER)[0], "cam-a:20:1", "cam-a:20:1"),
    ]
    res = review.record(faces)
    assert (res.stored, res.already) == (4, 0)
    # A replayed batch writes nothing twice.
    again = review.record(faces)
    assert (again.stored, again.already) == (0, 4)

    clusters = review.clusters()
    assert len(clusters) == 2, clusters
    brody = next(c for c in clusters if c.n_tracks == 2)
    assert brody.cameras == ["cam-a", "cam-b"] and brody.n_faces == 3
    assert (brody.first_seen_ms, brody.last_seen_ms) == (1_000, 2_000)
    assert set(brody.representatives) <= {"cam-a:10:0", "cam-a:11:0", "cam-b:40:0"}
    assert review.crop_jpeg(brody.representatives[0])[:2] == b"\xff\xd8"
    detail = review.cluster(brody.cluster_id)
    assert {f.face_id for f in detail.faces} == {"cam-a:10:0", "cam-a:11:0", "cam-b:40:0"}

    # Unknown faces are never gallery faces.
    probe = gallery.search_image(b[4].read_bytes(), pick="center")
    assert probe.faces[0].decision == "unknown"

    # A name that is taken: refused, says how to merge, nothing changes.
    with pytest.raises(NameTaken, match=f"--to {known.identity_id}"):
        review.label(brody.cluster_id, name="abdullah gul")
    assert review.cluster(brody.cluster_id).n_faces == 3

    labelled = review.label(brody.cluster_id, name="Adrien Brody")
    assert labelled.identity.name == "Adrien Brody" and labelled.enrolled_faces
    with pytest.raises(ClusterNotFound):
        review.cluster(brody.cluster_id)
    assert len(review.clusters()) == 1
    probe = gallery.search_image(b[4].read_bytes(), pick="center")
    assert probe.faces[0].decision == "identity"
    assert probe.faces[0].identity is not None
    assert probe.faces[0].identity.identity_id == labelled.identity.identity_id


def test_feedback_not_this_person_and_this_is(
    gallery: Gallery, review: Review, shared_dir: Path
) -> None:
    lfw = lfw_root(shared_dir)
    gul = photos(lfw, KNOWN)
    ident = gallery.enroll(as_input(gul[:2]), name="Abdullah Gul").identity
    event = seen(gallery, gul[2], "cam-a:7:0", "cam-a:7:0", decision="identity",
                 identity_id=ident.identity_id)
    assert review.record([event]).stored == 1
    events = review.recent_events()
    assert [e.event_id for e in events] == ["cam-a:7:0"] and events[0].name == "Abdullah Gul"

    vec = np.asarray(event.embedding, dtype=np.float32)
    version = gallery.serving_version()
    _, _, before = gallery.search_vectors(vec[None], version)
    assert before[0][0].decision == "identity"

    # Refusals change nothing.
    with pytest.raises(EventNotFound):
        review.feedback("cam-z:1:0", "not_this_person")
    with pytest.raises(GalleryError):
        review.feedback("cam-a:7:0", "bogus")  # type: ignore[arg-type]  # an invalid kind on purpose
    with review.catalogue.transaction() as con:
        n_feedback = con.execute(sa.select(sa.func.count()).select_from(feedback)).scalar()
    assert n_feedback == 0

    res = review.feedback("cam-a:7:0", "not_this_person")
    assert res.identity.identity_id == ident.identity_id
    _, _, after = gallery.search_vectors(vec[None], version)
    assert after[0][0].identity_id == ident.identity_id
    assert after[0][0].decision == "unknown" and after[0][0].excluded
    # His enrolled photos still match him.
    _, _, own = gallery.search_vectors(
        np.stack([f.embedding for f in [seen(gallery, gul[0], "x:1:0", "x")]]).astype(
            np.float32
        ),
        version,
    )
    assert own[0][0].decision == "identity"
    # Idempotent: the same feedback twice is one record.
    assert review.feedback("cam-a:7:0", "not_this_person").feedback_id == res.feedback_id
    assert [f.kind for f in review.sighting("cam-a:7:0").feedback] == ["not_this_person"]

    # "this is": an unknown face named, enrolled through the normal checks.
    other = seen(gallery, photos(lfw, OTHER)[0], "cam-a:9:0", "cam-a:9:0")
    review.record([other])
    with pytest.raises(FeedbackRefused):
        review.feedback("cam-a:9:0", "not_this_person")
    named = review.feedback("cam-a:9:0", "this_is", name="Aaron Peirsol")
    assert named.identity.name == "Aaron Peirsol" and named.enrolled_faces
    probe = gallery.search_image(photos(lfw, OTHER)[1].read_bytes(), pick="center")
    assert probe.faces[0].identity is not None
    assert probe.faces[0].identity.name == "Aaron Peirsol"

    out = review.export_feedback(Path(review.gallery.data_dir) / "export")
    assert out == {"this_is": 1, "not_this_person": 1, "enrolled": 2 + 1}
    export = Path(review.gallery.data_dir) / "export"
    assert (export / "negatives" / ident.identity_id).is_dir()
    # The corrections and the people's enrolled crops are a training manifest, and the
    # training job's face core finds the face in every exported crop.
    from pipeline.train.data import manifest_images

    people = manifest_images(export / "manifest.jsonl")
    assert {k: len(v) for k, v in people.items()} == {
        ident.identity_id: 2,
        named.identity.identity_id: 2,
    }
    pipe = gallery.pipeline(gallery.serving_version())
    for path in [p for ps in people.values() for p in ps]:
        assert pipe.analyze(load_image(path), pick="center", embed=False), path

    # Removing a person erases their event faces and feedback too.
    gallery.remove(ident.identity_id)
    with pytest.raises(EventNotFound):
        review.sighting("cam-a:7:0")
    with pytest.raises(IdentityNotFound):
        review.feedback("cam-a:9:0", "this_is", identity_id=ident.identity_id)


def test_feedback_on_an_event_of_another_model_version(
    gallery: Gallery, review: Review, shared_dir: Path
) -> None:
    lfw = lfw_root(shared_dir)
    ident = gallery.enroll(as_input(photos(lfw, KNOWN)[:2]), name="Abdullah Gul").identity
    event = seen(gallery, photos(lfw, KNOWN)[2], "cam-a:3:0", "cam-a:3:0", decision="identity",
                 identity_id=ident.identity_id)
    event = event.model_copy(update={"model_version": "some-older-model"})
    review.record([event])
    with pytest.raises(ModelVersionMismatch, match="some-older-model"):
        review.feedback("cam-a:3:0", "not_this_person")


def test_merge_purge_and_retention(gallery: Gallery, review: Review, shared_dir: Path) -> None:
    lfw = lfw_root(shared_dir)
    gallery.enroll(as_input(photos(lfw, KNOWN)[:1]), name="Abdullah Gul")
    a = seen(gallery, photos(lfw, STRANGER)[0], "cam-a:1:0", "cam-a:1:0")
    b = seen(gallery, photos(lfw, OTHER)[0], "cam-a:2:0", "cam-a:2:0")
    review.record([a, b], now=1_000.0)
    c1, c2 = (c.cluster_id for c in review.clusters())
    merged = review.merge(c1, [c2])
    assert merged.n_faces == 2 and merged.n_tracks == 2
    assert [c.cluster_id for c in review.clusters()] == [c1]
    with pytest.raises(ClusterNotFound):
        review.merge(c1, ["nope"])

    with pytest.raises(ClusterNotFound):
        review.purge("nope")
    gone = review.purge(c1)
    assert (gone.clusters, gone.faces, gone.vectors) == (1, 2, 2)
    collection = review.unknown_vectors.collection_name(gallery.serving_version())
    assert review.unknown_vectors.count(collection) == 0

    # Retention: faces older than retention_hours are erased by the next record().
    review.record([a], now=1_000.0)
    hours = review.cfg.retention_hours
    review._last_expire = 0.0
    review.record([b], now=1_000.0 + hours * 3600 + 1)
    with review.catalogue.transaction() as con:
        left = con.execute(sa.select(sightings.c.face_id)).scalars().all()
    assert left == ["cam-a:2:0"]
    assert review.unknown_vectors.count(collection) == 1
