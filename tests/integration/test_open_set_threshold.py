"""The open-set threshold on a real gallery (Milvus Lite, LFW faces): derived from the
gallery's size as people are enrolled and removed, explained in every search result,
added to an older default manifest in place, and ``facestream eval openset`` at two
gallery sizes."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config.serve import SearchServeConfig
from pipeline.evaluation.calibrate import write_threshold
from pipeline.evaluation.embcache import split_of
from pipeline.face.image_io import load_image
from pipeline.image_folders import identity_folders
from pipeline.models.bootstrap import load_shipped_curve
from pipeline.models.store import ModelStore
from pipeline.serve.search import GallerySearchDeployment
from tests.support.gallery import as_input, lfw_root, open_gallery, photos
from tests.support.models import TwoVersions, private_store

pytestmark = [pytest.mark.integration, pytest.mark.shared_data]

PEOPLE = ["Abel_Pacheco", "Abdullah_Gul", "Adrien_Brody", "Amelie_Mauresmo"]


@pytest.fixture(scope="module")
def lfw(shared_dir: Path) -> Path:
    return lfw_root(shared_dir)


@pytest.fixture
def flip_store(tmp_path: Path, two_versions: TwoVersions) -> tuple[ModelStore, str]:
    """A store holding a copy of the default (flip) version, for tests that rewrite it."""
    v_flip = two_versions.flip
    return private_store(two_versions.store, tmp_path / "models", v_flip), v_flip


def test_threshold_follows_the_gallery_size_and_explains_itself(
    tmp_path: Path, flip_store: tuple[ModelStore, str], lfw: Path
) -> None:
    store, version = flip_store
    curve = store.manifest(version).threshold.open_set
    assert curve is not None  # bootstrap ships the default version calibrated
    g = open_gallery(tmp_path / "g", store)
    g.FACE_COUNT_TTL_S = 0.0  # every search sees the size it was asked at
    try:
        probe = photos(lfw, PEOPLE[0])[-1].read_bytes()
        first = g.enroll(as_input(photos(lfw, PEOPLE[0])[:1]), name="A", pick="center")
        t1 = g.search_image(probe).threshold
        assert (t1.kind, t1.gallery_size, t1.value) == ("open_set", 1, curve.at(1)[0])
        assert t1.target_far == curve.target_far and not t1.extrapolated
        assert "1 enrolled faces" in t1.provenance and curve.provenance in t1.provenance
        ids = [first.identity.identity_id]
        for name in PEOPLE[1:]:
            res = g.enroll(as_input(photos(lfw, name)[:2]), name=name, pick="center")
            ids.append(res.identity.identity_id)
        grown = g.search_image(probe)
        assert grown.threshold.gallery_size == 7
        assert grown.threshold.value == curve.at(7)[0] > t1.value
        # each candidate's decision is taken at the threshold the result reports
        for c in grown.faces[0].candidates:
            assert (c.decision == "identity") == (c.similarity >= grown.threshold.value)
        g.remove(ids[1])  # 2 faces fewer: the threshold comes back down
        shrunk = g.search_image(probe).threshold
        assert (shrunk.gallery_size, shrunk.value) == (5, curve.at(5)[0])
        assert shrunk.value < grown.threshold.value
        asked = g.search_image(probe, threshold=0.5).threshold
        assert (asked.kind, asked.value, asked.overridden) == ("request", 0.5, True)
        # the stream's search deployment hands the whole explanation on
        vec = g.search_image(probe)  # embed through the gallery's own face core
        assert vec.faces and vec.faces[0].similarity is not None
        cls = GallerySearchDeployment.func_or_class
        dep = cls.__new__(cls)
        dep.gallery, dep.cfg = g, SearchServeConfig()
        dep._pairs, dep._pair_vectors = Counter(), Counter()
        pipe = g.pipeline(version)
        face = pipe.analyze(load_image(photos(lfw, PEOPLE[0])[-1]), pick="center")[0]
        assert face.embedding is not None
        out = dep._search_version(version, face.embedding[None, :])
        assert out.threshold is not None
        assert out.threshold.value == curve.at(5)[0]
        assert out.threshold.kind == "open_set"
        assert out.threshold.gallery_size == 5
        # the object itself travels to the workers (Ray pickles it), whole
        assert pickle.loads(pickle.dumps(out.threshold)) == out.threshold
    finally:
        g.close()


def test_an_older_default_manifest_gets_the_shipped_curve_in_place(
    tmp_path: Path, flip_store: tuple[ModelStore, str], lfw: Path
) -> None:
    store, version = flip_store
    shipped = load_shipped_curve()
    assert shipped is not None and shipped.model_version == version
    old = store.manifest(version).threshold.model_copy(update={"open_set": None})
    write_threshold(store, version, old)  # as bootstrapped before the curve shipped
    assert store.manifest(version).threshold.open_set is None
    g = open_gallery(tmp_path / "g", store)
    try:
        g.enroll(as_input(photos(lfw, PEOPLE[0])[:2]), name="A", pick="center")
        thr = g.search_image(photos(lfw, PEOPLE[0])[-1].read_bytes()).threshold
    finally:
        g.close()
    assert thr.kind == "open_set" and thr.value == shipped.open_set.at(2)[0]
    upgraded = store.manifest(version)
    assert upgraded.threshold.open_set == shipped.open_set
    assert upgraded.threshold.value == old.value  # 1:1 verification keeps its value
    assert upgraded.version == version and store.versions() == [version]
    assert store.load_embedder(version).model_version == version  # files still verify


def test_calibrate_open_set_replaces_the_shipped_curve(
    tmp_path: Path, flip_store: tuple[ModelStore, str], lfw: Path
) -> None:
    store, version = flip_store
    before = store.manifest(version).threshold
    subset = tmp_path / "lfw"
    # 60 calibration-split people, up to 3 photos each: ~140 faces measure a 5% FAR
    names = [n for n in identity_folders(lfw, min_images=2) if split_of(n) < 1 / 3][:60]
    for name in names:
        (subset / name).mkdir(parents=True)
        for p in photos(lfw, name)[:3]:
            (subset / name / p.name).symlink_to(p)
    env = {"FACESTREAM_MODELS__STORE": str(store.root)}
    result = CliRunner().invoke(
        app,
        ["calibrate", "--open-set", "--root", str(subset), "--target-far", "0.05",
         "--bootstrap", "50", "--cache-dir", str(tmp_path / "cache")],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    thr = store.manifest(version).threshold
    assert thr.open_set is not None and thr.open_set != before.open_set
    assert thr.open_set.target_far == 0.05 and "B=50" in thr.open_set.method
    assert f"{len(names)} identity folders" in thr.open_set.provenance
    assert thr.value == before.value and thr.provenance == before.provenance
    assert f"{thr.open_set.points[0][1]:.4f}" in result.stdout
    # too few faces for the target are refused, and nothing is written
    result = CliRunner().invoke(
        app,
        ["calibrate", "--open-set", "--root", str(subset), "--target-far", "0.001",
         "--cache-dir", str(tmp_path / "cache")],
        env=env,
    )  # fmt: skip
    assert result.exit_code == 2 and "cannot measure a stranger FAR" in result.stderr
    assert store.manifest(version).threshold == thr


def test_eval_openset_reports_both_gallery_sizes_at_the_gallery_threshold(
    tmp_path: Path, flip_store: tuple[ModelStore, str], lfw: Path
) -> None:
    store, version = flip_store
    curve = store.manifest(version).threshold.open_set
    assert curve is not None
    # 30 people with >= 4 photos (6 at most) to probe, and 60 with fewer: distractors
    subset = tmp_path / "lfw"
    many = list(identity_folders(lfw, min_images=4).items())[:30]
    few = [(n, ps) for n, ps in identity_folders(lfw).items() if len(ps) < 4][:60]
    for name, paths in many + few:
        (subset / name).mkdir(parents=True)
        for p in paths[:6]:
            (subset / name / p.name).symlink_to(p)
    out_dir = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["eval", "openset", "--root", str(subset), "--growth", "3", "--out", str(out_dir),
         "--cache-dir", str(tmp_path / "cache")],
        env={"FACESTREAM_MODELS__STORE": str(store.root)},
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    rep = json.loads((out_dir / "report.json").read_text())
    first, grown = rep["sizes"]
    assert first["gallery_faces"] == rep["gallery_faces"] > 0
    assert grown["gallery_faces"] == 3 * first["gallery_faces"]  # enough distractors here
    assert grown["gallery_identities"] == first["gallery_identities"] + rep["distractor_identities"]
    # each size is measured at the threshold the gallery derives for it
    for size in (first, grown):
        assert size["threshold_kind"] == "open_set"
        assert size["threshold"] == curve.at(size["gallery_faces"])[0]
        assert size["far_at_threshold"] * rep["n_never_enrolled_probes"] == pytest.approx(
            size["false_accepts"]
        )
        assert size["dir_at_threshold"] <= size["rank1"]
    assert grown["threshold"] > first["threshold"]
    assert first["rank1"] >= 0.9  # dlib's model on frontal LFW faces
    assert rep["threshold_target_far"] == curve.target_far
    # distractors are report-split people that are neither enrolled nor probes
    assert rep["n_calibration_identities"] + rep["n_enrolled"] + rep["n_never_enrolled"] == 30
    assert "stranger FAR" in result.stdout and f"{first['gallery_faces']} faces" in result.stdout
