"""'Has this face been here before?' on a real Milvus server, a real catalogue and real
LFW faces: the faces the stream keeps are found again from a photo, an event or an
unknown person, in time order, with the open-set threshold explained; every search is
audited; purge, removal and retention erase the vectors with the rows; the REST API
answers the same, behind the token."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from pipeline.config.review import ReviewConfig
from pipeline.gallery.audit import audit_log
from pipeline.gallery.errors import GalleryError
from pipeline.gallery.review import Review
from pipeline.gallery.review.sightings import seen_before
from pipeline.gallery.service import Gallery
from pipeline.models.store import ModelStore
from tests.integration.test_review import OTHER, STRANGER, seen
from tests.support.gallery import as_input, lfw_root, open_gallery, photos
from tests.support.models import TwoVersions
from tests.support.servers import serve_app

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

KNOWN = "Abdullah_Gul"
TOKEN = "sightings-test-token-0123456789"


@pytest.fixture
def gallery(
    tmp_path: Path, two_versions: TwoVersions, milvus_space: dict[str, str]
) -> Iterator[Gallery]:
    store: ModelStore = two_versions.store
    g = open_gallery(tmp_path, store, space=milvus_space)
    try:
        yield g
    finally:
        g.close()


@pytest.fixture
def kept(gallery: Gallery, shared_dir: Path) -> Iterator[tuple[Review, dict[str, str]]]:
    """A review that kept: a stranger on two cameras (three faces, two tracks), an
    identification event of Gul, another stranger. Returns it and the ids."""
    lfw = lfw_root(shared_dir)
    gul = gallery.enroll(as_input(photos(lfw, KNOWN)[:2]), name="Abdullah Gul").identity
    review = Review(gallery, ReviewConfig(keep_unknowns=True, faces_per_track=3))
    b = photos(lfw, STRANGER)
    faces = [
        seen(gallery, b[0], "cam-a:10:0", "cam-a:10:0", ts=1_000),
        seen(gallery, b[1], "cam-a:11:0", "cam-a:10:0", ts=2_000),
        seen(gallery, photos(lfw, KNOWN)[3], "cam-b:5:0", "cam-b:5:0", decision="identity",
             identity_id=gul.identity_id, camera="cam-b", ts=1_500),
        seen(gallery, b[2], "cam-b:40:0", "cam-b:40:0", camera="cam-b", ts=3_000),
        seen(gallery, photos(lfw, OTHER)[0], "cam-a:20:1", "cam-a:20:1", ts=2_500),
    ]  # fmt: skip
    assert review.record(faces).stored == 5
    try:
        yield review, {"gul": gul.identity_id, "brody_photo": str(b[3])}
    finally:
        review.close()


def _sig_rows(gallery: Gallery) -> int:
    store = gallery.sighting_vectors
    return sum(store.count(c) for c in store.collections())


def test_a_photo_finds_the_strangers_sightings_in_time_order(
    gallery: Gallery, kept: tuple[Review, dict[str, str]]
) -> None:
    review, ids = kept
    photo = Path(ids["brody_photo"]).read_bytes()
    res = seen_before(review, actor="test:alice", photo=photo)
    assert [(s.face_id, s.camera_id, s.capture_ts_ms) for s in res.sightings] == [
        ("cam-a:10:0", "cam-a", 1_000),
        ("cam-a:11:0", "cam-a", 2_000),
        ("cam-b:40:0", "cam-b", 3_000),
    ]
    assert all(s.decision == "unknown" and s.match >= res.threshold.value for s in res.sightings)
    assert all(s.crop_id == s.face_id and s.cluster_id for s in res.sightings)
    # The threshold: the open-set curve's at the number of kept faces searched.
    assert res.searched == 5 and res.model_version == gallery.serving_version()
    assert res.threshold.kind == "open_set" and res.threshold.gallery_size == 5
    assert "open-set curve at 5" in res.threshold.provenance

    # Filters, and the same stranger from his unknown person and from one of his faces.
    since = seen_before(review, actor="test:alice", photo=photo, since_ms=1_500, camera_id="cam-a")
    assert [s.face_id for s in since.sightings] == ["cam-a:11:0"]
    (cluster,) = {s.cluster_id for s in res.sightings}
    assert cluster is not None
    by_cluster = seen_before(review, actor="test:bob", cluster_id=cluster)
    assert [s.face_id for s in by_cluster.sightings] == [s.face_id for s in res.sightings]
    by_event = seen_before(review, actor="test:bob", event_id="cam-b:5:0")
    assert [(s.face_id, s.name) for s in by_event.sightings] == [("cam-b:5:0", "Abdullah Gul")]

    # Every search is in the audit record: who, with what.
    with review.catalogue.reader() as con:
        rows = con.execute(
            sa.select(audit_log.c.actor, audit_log.c.subject).where(
                audit_log.c.action == "sightings.search"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("test:alice", "photo"),
        ("test:alice", "photo"),
        ("test:bob", f"cluster:{cluster}"),
        ("test:bob", "event:cam-b:5:0"),
    ]
    with pytest.raises(GalleryError, match="exactly one of"):
        seen_before(review, actor="test:alice", photo=photo, event_id="cam-b:5:0")


def test_backfill_makes_faces_kept_before_the_sightings_searchable(
    gallery: Gallery, kept: tuple[Review, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    review, ids = kept
    photo = Path(ids["brody_photo"]).read_bytes()
    # Faces kept before the sightings collections existed: their rows, no vectors there.
    store = gallery.sighting_vectors
    for collection in store.collections():
        store.drop(collection)
    assert _sig_rows(gallery) == 0
    assert seen_before(review, actor="t", photo=photo).sightings == []

    # The command, as an operator runs it, against this gallery.
    from typer.testing import CliRunner

    from pipeline.cli import app

    @contextlib.contextmanager
    def this_review() -> Iterator[Review]:
        yield review

    monkeypatch.setattr("pipeline.cli.sightings._review", this_review)
    res = CliRunner().invoke(app, ["sightings", "backfill"])
    assert res.exit_code == 0, res.output
    assert gallery.serving_version() in res.stdout and " 5 " in res.stdout, res.stdout
    assert _sig_rows(gallery) == 5
    found = seen_before(review, actor="t", photo=photo).sightings
    assert [s.face_id for s in found] == ["cam-a:10:0", "cam-a:11:0", "cam-b:40:0"]

    # Again: every face rewritten in place, none doubled; the search answers the same.
    assert review.backfill_sightings(page=2) == {gallery.serving_version(): 5}
    assert _sig_rows(gallery) == 5
    assert [s.face_id for s in seen_before(review, actor="t", photo=photo).sightings] == [
        s.face_id for s in found
    ]


def test_purge_removal_and_retention_erase_the_vectors(
    gallery: Gallery, kept: tuple[Review, dict[str, str]]
) -> None:
    review, ids = kept
    photo = Path(ids["brody_photo"]).read_bytes()
    assert _sig_rows(gallery) == 5
    (cluster,) = {s.cluster_id for s in seen_before(review, actor="t", photo=photo).sightings}
    assert cluster is not None
    review.purge(cluster)
    assert _sig_rows(gallery) == 2
    assert seen_before(review, actor="t", photo=photo).sightings == []

    gallery.remove(ids["gul"])  # removing a person erases what was kept of them
    assert _sig_rows(gallery) == 1
    review.expire(now=10**12)  # everything is past its retention
    assert _sig_rows(gallery) == 0


def test_the_rest_api_searches_behind_the_token(
    gallery: Gallery, kept: tuple[Review, dict[str, str]]
) -> None:
    from pipeline.serve.app import create_app

    review, ids = kept
    cfg = gallery.config.model_copy(update={"api_token": SecretStr(TOKEN)})
    app = create_app(gallery, cfg, review)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    photo = Path(ids["brody_photo"])
    with serve_app(app, "sightings-api") as url, httpx.Client(base_url=url, timeout=120) as c:
        files = {"image": (photo.name, photo.read_bytes(), "image/jpeg")}
        assert c.post("/sightings/search", files=files).status_code == 401
        assert c.get("/sightings/search", params={"event_id": "cam-b:5:0"}).status_code == 401
        r = c.post("/sightings/search", files=files, data={"camera": "cam-b"}, headers=auth)
        assert r.status_code == 200, r.text
        assert [s["face_id"] for s in r.json()["sightings"]] == ["cam-b:40:0"]
        r = c.get("/sightings/search", params={"event_id": "cam-b:5:0"}, headers=auth)
        assert r.status_code == 200 and r.json()["probe"] == "event:cam-b:5:0"
        r = c.get("/sightings/search", headers=auth)
        assert r.status_code == 400 and "exactly one of" in r.text
        r = c.get("/sightings/search", params={"event_id": "nope:1:0"}, headers=auth)
        assert r.status_code == 404
