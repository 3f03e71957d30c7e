"""The gallery on real Milvus Lite and real LFW faces: enrol, search, remove, re-embed,
cross-version refusal, all-or-nothing enrolment, tight crops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.face import DetectorConfig, FaceConfig
from pipeline.face.errors import ModelError
from pipeline.gallery.blobs import decode_crop
from pipeline.gallery.errors import (
    DuplicateExternalId,
    EnrollmentRejected,
    GalleryError,
    IdentityNotFound,
    ModelVersionMismatch,
    NoActiveCollection,
    ReembedError,
)
from pipeline.gallery.service import Gallery
from pipeline.gallery.vectors import Snapshot
from pipeline.models.store import ModelStore
from tests.support.gallery import (
    as_input,
    lfw_root,
    open_gallery,
    photos,
    png,
    tight_crop,
)
from tests.support.models import TwoVersions
from tests.support.stores import drop_milvus_space, milvus_space_settings

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

ENROLLED = ["Abdullah_Gul", "Abel_Pacheco", "Aaron_Peirsol"]
STRANGER = "Adrien_Brody"


@pytest.fixture
def store(two_versions: TwoVersions) -> ModelStore:
    return two_versions.store


@pytest.fixture(scope="module")
def lfw(shared_dir: Path) -> Path:
    return lfw_root(shared_dir)


@pytest.fixture
def gallery(tmp_path: Path, store: ModelStore, milvus_space: dict[str, str]) -> Iterator[Gallery]:
    g = open_gallery(tmp_path / "gallery", store, space=milvus_space)
    yield g
    g.close()


def enrol_people(gallery: Gallery, lfw: Path, people: list[str]) -> dict[str, str]:
    """name -> identity id, enrolling each person's first two photos."""
    return {
        p: gallery.enroll(as_input(photos(lfw, p)[:2]), name=p, pick="center").identity.identity_id
        for p in people
    }


def best(gallery: Gallery, path: Path, **kw: object):  # type: ignore[no-untyped-def]  # returns what the gallery's result holds
    """The result for the centre face of a probe photo."""
    res = gallery.search_image(path.read_bytes(), name=path.name, **kw)  # type: ignore[arg-type]  # the search options each test passes
    assert res.faces, f"no face found in {path}"
    centre = min(res.faces, key=lambda f: abs((f.box[0] + f.box[2]) / 2 - 125) + abs(f.box[1] - 60))
    return res, centre


def test_enrol_then_search_finds_each_person_and_a_stranger_is_unknown(
    gallery: Gallery, lfw: Path, two_versions: TwoVersions
) -> None:
    store, v_flip, _ = two_versions
    with pytest.raises(NoActiveCollection):
        gallery.search_image(photos(lfw, ENROLLED[0])[2].read_bytes())
    ids = enrol_people(gallery, lfw, ENROLLED)
    curve = store.manifest(v_flip).threshold.open_set
    assert curve is not None  # the default version ships calibrated for 1:N search
    n_faces = gallery.catalogue.counts()[1]
    thr = curve.at(n_faces)[0]
    for person in ENROLLED:
        res, face = best(gallery, photos(lfw, person)[2])
        assert res.model_version == v_flip
        assert (res.threshold.kind, res.threshold.value) == ("open_set", thr)
        assert (
            res.threshold.gallery_size == n_faces and curve.provenance in res.threshold.provenance
        )
        assert face.decision == "identity", face
        assert face.identity is not None and face.identity.identity_id == ids[person]
        assert face.identity.name == person
        assert face.similarity is not None and face.similarity >= thr
        # top-k are distinct people, best first, each with its own decision
        cand_ids = [c.identity_id for c in face.candidates]
        assert len(cand_ids) == len(set(cand_ids)) == len(ENROLLED)
        sims = [c.similarity for c in face.candidates]
        assert sims == sorted(sims, reverse=True)
        for c in face.candidates:
            assert c.decision == ("identity" if c.similarity >= thr else "unknown")
    _, face = best(gallery, photos(lfw, STRANGER)[0])
    assert face.decision == "unknown" and face.identity is None
    assert face.candidates and face.similarity == face.candidates[0].similarity
    assert face.similarity < thr
    # a request's threshold overrides the calibrated one and says so
    res, face = best(gallery, photos(lfw, STRANGER)[0], threshold=-1.0)
    assert res.threshold.overridden and face.decision == "identity"


def test_enrolment_is_all_or_nothing_and_says_why_each_image_failed(
    gallery: Gallery, lfw: Path
) -> None:
    good = photos(lfw, ENROLLED[0])[0]
    blank = np.full((200, 200, 3), 128, dtype=np.uint8)
    images = [
        (good.name, good.read_bytes()),
        ("blank.png", png(blank)),
        ("junk.jpg", b"not an image"),
    ]
    with pytest.raises(EnrollmentRejected) as info:
        # scene mode: the tight-crop retry on the blank image would only cost time here
        gallery.enroll(images, name="Someone", pick="center", crop_mode="scene")
    verdicts = {v.image: v for v in info.value.verdicts}
    assert verdicts[good.name].accepted
    assert not verdicts["blank.png"].accepted
    assert verdicts["blank.png"].reasons == ("no face found in the photo",)
    assert not verdicts["junk.jpg"].accepted
    assert "not a recognised image format" in verdicts["junk.jpg"].reasons[0]
    # nothing was written anywhere
    assert gallery.list() == []
    assert gallery.catalogue.counts() == (0, 0)
    assert gallery.catalogue.crop_count() == 0
    snap = gallery.active()
    assert snap is None or gallery.vectors.count(snap.collection) == 0


def test_quality_gate_rejects_a_tiny_face_with_the_measured_reason(
    gallery: Gallery, lfw: Path
) -> None:
    import cv2

    from pipeline.face.image_io import load_image

    small = cv2.resize(load_image(photos(lfw, ENROLLED[0])[0]), (80, 80), cv2.INTER_AREA)
    with pytest.raises(EnrollmentRejected) as info:
        gallery.enroll([("small.png", png(small))], name="Small", pick="center")
    (verdict,) = info.value.verdicts
    assert not verdict.accepted
    assert any(r.startswith("face too small") for r in verdict.reasons), verdict.reasons
    assert verdict.quality is not None and verdict.quality["face_px"] < 40
    assert gallery.catalogue.counts() == (0, 0)


@pytest.fixture
def hog_gallery(
    tmp_path: Path, store: ModelStore, milvus_space: dict[str, str]
) -> Iterator[Gallery]:
    """A gallery on dlib's HOG detector with the CNN fallback (the default before YuNet):
    the scene detectors that miss the tight crops below."""
    face = FaceConfig(detector=DetectorConfig(backend="dlib_hog", fallbacks=["dlib_cnn"]))
    g = open_gallery(tmp_path / "gallery", store, face, space=milvus_space)
    yield g
    g.close()


def test_the_default_detector_finds_faces_in_tight_low_res_crops(
    hog_gallery: Gallery, gallery: Gallery, lfw: Path
) -> None:
    # The crops that HOG and the CNN miss (below): YuNet finds the faces in them as is.
    campbell = [tight_crop(hog_gallery, p) for p in photos(lfw, "Alastair_Campbell")[:2]]
    pipe = gallery.pipeline(gallery.serving_version())
    assert all(len(pipe.analyze(c, embed=False)) == 1 for c in campbell)


def test_tight_low_res_crops_enrol_and_match_scene_photos(hog_gallery: Gallery, lfw: Path) -> None:
    gallery = hog_gallery
    # 56 px crops from eyebrows to chin: the scene detectors find no face in these two.
    campbell = [tight_crop(gallery, p) for p in photos(lfw, "Alastair_Campbell")[:2]]
    crops = [(f"campbell-{i}.png", png(c)) for i, c in enumerate(campbell)]
    with pytest.raises(EnrollmentRejected) as info:
        gallery.enroll(crops, name="Alastair Campbell", crop_mode="scene")
    assert all("no face found" in v.reasons[0] for v in info.value.verdicts)
    # auto: pad and re-detect finds them
    res = gallery.enroll(crops, name="Alastair Campbell")
    assert [r.crop_mode for r in res.images] == ["tight", "tight"]
    assert all(r.quality and r.quality["face_px"] <= 56 for r in res.images)  # crop pixels
    # Even padded, no detector fires on these; an explicit tight crop is taken as the face.
    sandler = [tight_crop(gallery, p) for p in photos(lfw, "Adam_Sandler")[:2]]
    s_crops = [(f"sandler-{i}.png", png(c)) for i, c in enumerate(sandler)]
    with pytest.raises(EnrollmentRejected):
        gallery.enroll(s_crops, name="Adam Sandler")
    s_res = gallery.enroll(s_crops, name="Adam Sandler", crop_mode="tight")
    assert [r.crop_mode for r in s_res.images] == ["tight", "tight"]
    # scene photos of both are identified from the crops alone
    for person, ident in (("Alastair_Campbell", res.identity), ("Adam_Sandler", s_res.identity)):
        _, face = best(gallery, photos(lfw, person)[2])
        assert face.decision == "identity", (person, face.candidates)
        assert face.identity is not None and face.identity.identity_id == ident.identity_id
    # and a tight crop probe of another photo finds the person too
    probe = tight_crop(gallery, photos(lfw, "Alastair_Campbell")[3])
    out = gallery.search_image(png(probe), crop_mode="tight")
    assert out.faces[0].identity is not None
    assert out.faces[0].identity.identity_id == res.identity.identity_id


def test_remove_erases_every_version_and_the_crops(
    gallery: Gallery, lfw: Path, two_versions: TwoVersions
) -> None:
    _, v_flip, v_plain = two_versions
    ids = enrol_people(gallery, lfw, ENROLLED[:2])
    gone, kept = ids[ENROLLED[0]], ids[ENROLLED[1]]
    assert gallery.catalogue.crop_count(gone) == 2
    gallery.reembed(v_plain)  # now the person has rows in two collections
    colls = gallery.vectors.collections()
    assert sorted(colls.values()) == sorted([v_flip, v_plain])
    assert all(gallery.vectors.count(c, gone) == 2 for c in colls)

    res = gallery.remove(gone)
    assert res.faces_removed == 2 and res.crops_deleted == 2
    assert res.rows_deleted == {c: 2 for c in colls}
    assert all(gallery.vectors.count(c, gone) == 0 for c in colls)
    assert gallery.catalogue.crop_count(gone) == 0
    assert gallery.catalogue.crop_count(kept) == 2
    with pytest.raises(IdentityNotFound):
        gallery.show(gone)
    with pytest.raises(IdentityNotFound):
        gallery.remove(gone)
    # a search can no longer find the person; the other one is still there
    _, face = best(gallery, photos(lfw, ENROLLED[0])[2])
    assert face.decision == "unknown"
    assert gone not in {c.identity_id for c in face.candidates}
    _, face = best(gallery, photos(lfw, ENROLLED[1])[2])
    assert face.identity is not None and face.identity.identity_id == kept
    # nor can a search in the old version's collection
    pipe = gallery.pipeline(v_flip)
    probe = pipe.analyze(
        __import__("pipeline.face.image_io", fromlist=["load_image"]).load_image(
            photos(lfw, ENROLLED[0])[2]
        ),
        pick="center",
    )[0]
    _, _, cands = gallery.search_vectors(
        probe.embedding[None], v_flip, collection=gallery.vectors.collection_name(v_flip)
    )
    assert gone not in {c.identity_id for c in cands[0]}


def test_reembed_builds_the_new_collection_flips_the_alias_and_searches_follow(
    gallery: Gallery, lfw: Path, two_versions: TwoVersions
) -> None:
    store, v_flip, v_plain = two_versions
    ids = enrol_people(gallery, lfw, ENROLLED)
    before = gallery.active()
    assert before == Snapshot(gallery.vectors.collection_name(v_flip), v_flip)
    res = gallery.reembed(v_plain)
    assert (res.from_version, res.to_version) == (v_flip, v_plain)
    assert res.faces == 6 and res.identities == 3
    after = gallery.active()
    assert after == Snapshot(gallery.vectors.collection_name(v_plain), v_plain)
    assert gallery.vectors.client.describe_alias(gallery.config.alias)["collection_name"] == (
        after.collection
    )
    assert gallery.vectors.count(after.collection) == 6
    # the old collection is kept (searches that resolved the alias before the flip finish)
    assert gallery.vectors.count(before.collection) == 6
    # the rows are exactly the new model's embedding of the stored (lossless) crops
    plain = store.load_embedder(v_plain)
    for face in gallery.catalogue.faces():
        stored = decode_crop(
            gallery.catalogue.crop_png(face.face_id), face.crop_sha256, face.face_id
        )
        row = gallery.vectors.client.query(
            after.collection, ids=[face.face_id], output_fields=["embedding", "model_version"]
        )[0]
        assert row["model_version"] == v_plain
        np.testing.assert_allclose(row["embedding"], plain.embed(stored[None])[0], atol=1e-6)
    # later searches embed with the new version and search its collection
    for person in ENROLLED:
        out, face = best(gallery, photos(lfw, person)[3])
        assert out.model_version == v_plain and out.collection == after.collection
        assert out.threshold.value == store.manifest(v_plain).threshold.value
        assert face.identity is not None and face.identity.identity_id == ids[person]
    # enrolments now go to the new collection
    new = gallery.enroll(as_input(photos(lfw, STRANGER)[:2]), name=STRANGER, pick="center")
    assert new.model_version == v_plain and new.collection == after.collection
    with pytest.raises(ReembedError, match="already the active"):
        gallery.reembed(v_plain)
    with pytest.raises(ModelError):
        gallery.reembed("no-such-version")
    # and back: the stale v_flip collection is rebuilt, now with the 4th person
    back = gallery.reembed(v_flip)
    assert back.faces == 8 and gallery.vectors.count(before.collection) == 8


def test_cross_version_search_and_insert_are_refused(
    gallery: Gallery, lfw: Path, two_versions: TwoVersions
) -> None:
    _, v_flip, v_plain = two_versions
    enrol_people(gallery, lfw, ENROLLED[:1])
    from pipeline.face.image_io import load_image

    image = load_image(photos(lfw, ENROLLED[0])[2])
    old = gallery.pipeline(v_flip).analyze(image, pick="center")[0].embedding
    new = gallery.pipeline(v_plain).analyze(image, pick="center")[0].embedding
    gallery.reembed(v_plain)
    with pytest.raises(ModelVersionMismatch, match=v_plain):
        gallery.search_vectors(old[None], v_flip)  # active collection is v_plain now
    with pytest.raises(ModelVersionMismatch):
        gallery.search_vectors(
            old[None], v_flip, collection=gallery.vectors.collection_name(v_plain)
        )
    with pytest.raises(ModelVersionMismatch):
        gallery.vectors.insert(
            gallery.vectors.collection_name(v_plain),
            v_flip,
            [{"face_id": "x", "identity_id": "y", "crop": "z"}],
            old[None],
        )
    # each version searches its own collection
    _, _, cands = gallery.search_vectors(new[None], v_plain)
    assert cands[0][0].name == ENROLLED[0]
    _, _, cands = gallery.search_vectors(
        old[None], v_flip, collection=gallery.vectors.collection_name(v_flip)
    )
    assert cands[0][0].name == ENROLLED[0]
    # a collection that does not say which model made its vectors is never searched
    gallery.vectors.client.create_collection("faces_unlabelled", dimension=128)
    with pytest.raises(ModelVersionMismatch, match=r"no facestream\.model_version"):
        gallery.search_vectors(new[None], v_plain, collection="faces_unlabelled")


def test_identity_records_rename_list_show_external_ids(gallery: Gallery, lfw: Path) -> None:
    person = ENROLLED[0]
    res = gallery.enroll(
        as_input(photos(lfw, person)[:1]),
        name=person,
        external_id="emp-42",
        metadata={"team": "blue"},
        pick="center",
    )
    ident = res.identity
    with pytest.raises(DuplicateExternalId):
        gallery.enroll(as_input(photos(lfw, ENROLLED[1])[:1]), name="x", external_id="emp-42")
    assert gallery.catalogue.counts() == (1, 1)  # the duplicate left nothing behind
    more = gallery.enroll(
        as_input(photos(lfw, person)[1:2]), identity_id=ident.identity_id, pick="center"
    )
    assert more.identity.n_faces == 2
    detail = gallery.show(ident.identity_id)
    assert detail.metadata == {"team": "blue"} and detail.external_id == "emp-42"
    assert [f.source for f in detail.faces] == [p.name for p in photos(lfw, person)[:2]]
    assert all(f.enrolled_version == res.model_version for f in detail.faces)
    assert all(gallery.catalogue.crop_png(f.face_id) for f in detail.faces)
    renamed = gallery.rename(ident.identity_id, "Abdullah Gül")
    assert renamed.name == "Abdullah Gül"
    assert [i.name for i in gallery.list(name_contains="Gül")] == ["Abdullah Gül"]
    assert gallery.list(name_contains="%") == []  # LIKE wildcards are literal
    _, face = best(gallery, photos(lfw, person)[2])
    assert face.identity is not None and face.identity.name == "Abdullah Gül"
    with pytest.raises(IdentityNotFound):
        gallery.rename("nobody", "x")
    with pytest.raises(GalleryError, match="needs a name"):
        gallery.enroll(as_input(photos(lfw, person)[:1]))
    with pytest.raises(GalleryError, match="invalid identity id"):
        gallery.vectors.delete_identity('x" or identity_id != "')


def test_run_enroll_finds_a_person_among_many_whose_names_contain_theirs(
    gallery: Gallery, lfw: Path
) -> None:
    """``facestream run --enroll Ann=...`` when "Ann" is enrolled after 101 people whose
    names contain "Ann" (issue 18, bug 3): already enrolled, not enrolled twice."""
    from pipeline.stream.runner import enroll_each

    with gallery.catalogue.transaction() as con:
        for i in range(101):
            gallery.catalogue.add_identity(con, f"ann{i:03d}", f"Ann {i:03d}", None, {})
        gallery.catalogue.add_identity(con, "ann", "Ann", None, {})
    (done,) = enroll_each(gallery, {"Ann": photos(lfw, ENROLLED[0])[0]}, strict=True)
    assert (done.status, done.identity_id) == ("already enrolled", "ann")
    assert gallery.catalogue.counts() == (102, 0)


def test_failed_crop_write_leaves_no_partial_state(gallery: Gallery, lfw: Path) -> None:
    import sqlalchemy as sa

    person = ENROLLED[0]
    res = gallery.enroll(as_input(photos(lfw, person)[:1]), name=person, pick="center")
    ident = res.identity.identity_id
    snap = gallery.active()
    assert snap is not None
    # A real database failure on the second crop of a two-photo enrolment, after both
    # faces were analysed and embedded and the first face row and crop were written.
    with gallery.catalogue.engine.begin() as con:
        con.execute(
            sa.text(
                "CREATE TRIGGER crops_full BEFORE INSERT ON crops "
                "WHEN (SELECT COUNT(*) FROM crops) >= 2 "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        )
    with pytest.raises(sa.exc.IntegrityError, match="disk is full"):
        gallery.enroll(as_input(photos(lfw, person)[1:3]), identity_id=ident, pick="center")
    assert gallery.show(ident).n_faces == 1
    assert gallery.catalogue.crop_count(ident) == 1
    assert gallery.vectors.count(snap.collection, ident) == 1
    with gallery.catalogue.engine.begin() as con:
        con.execute(sa.text("DROP TRIGGER crops_full"))
    more = gallery.enroll(as_input(photos(lfw, person)[1:3]), identity_id=ident, pick="center")
    assert more.identity.n_faces == 3 and gallery.vectors.count(snap.collection, ident) == 3
    assert gallery.catalogue.crop_count(ident) == 3


def test_searches_in_flight_during_a_flip_never_mix_versions(
    gallery: Gallery, lfw: Path, two_versions: TwoVersions
) -> None:
    import threading

    from pipeline.face.image_io import load_image

    _, v_flip, v_plain = two_versions
    ids = enrol_people(gallery, lfw, ENROLLED)
    gallery.pipeline(v_plain)  # loaded up front, so the flip is not delayed by it
    probe = load_image(photos(lfw, ENROLLED[0])[2])
    results, errors = [], []
    done = threading.Event()

    def searching() -> None:
        while not done.is_set() or not results:
            try:
                results.append(gallery.search_image(probe, pick="center"))
            except Exception as exc:  # any error fails the test below
                errors.append(exc)
                return

    worker = threading.Thread(target=searching)
    worker.start()
    try:
        gallery.reembed(v_plain)
    finally:
        done.set()
        worker.join(timeout=120)
    final = gallery.search_image(probe, pick="center")
    assert errors == []
    expected = {gallery.vectors.collection_name(v): v for v in (v_flip, v_plain)}
    for res in [*results, final]:
        # each answer comes from one collection, embedded by that collection's model
        assert expected[res.collection] == res.model_version
        face = res.faces[0]
        assert face.identity is not None and face.identity.identity_id == ids[ENROLLED[0]]
    assert final.model_version == v_plain


def test_a_catalogue_whose_vector_store_is_empty_gets_its_vectors_back(
    tmp_path: Path,
    store: ModelStore,
    lfw: Path,
    milvus_space: dict[str, str],
    milvus_server: str,
) -> None:
    with open_gallery(tmp_path / "gallery", store, space=milvus_space) as g:
        ids = enrol_people(g, lfw, ENROLLED[:2])
        assert g.restore_vectors() is None  # nothing missing
    # The same catalogue on a Milvus without its collections (data lost, another server,
    # or a gallery from the Milvus Lite days).
    empty = milvus_space_settings(milvus_server)
    try:
        with open_gallery(tmp_path / "gallery", store, space=empty) as g:
            assert g.active() is None
            restored = g.restore_vectors()
            assert restored is not None and restored.faces == 4 and restored.identities == 2
            for person in ENROLLED[:2]:
                _, face = best(g, photos(lfw, person)[2])
                assert face.identity is not None and face.identity.identity_id == ids[person]
    finally:
        drop_milvus_space(empty)
