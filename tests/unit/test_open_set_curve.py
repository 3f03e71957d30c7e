"""Open-set calibration: the stranger-FAR arithmetic, the curve in the manifest, the shipped
curve of the default model and its in-place upgrade at start-up, and the threshold
precedence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.openset_curve import CalibrationFaces, StrangerFAR, gallery_grid
from pipeline.face.align import dlib_chip_template
from pipeline.face.manifest import (
    MANIFEST_NAME,
    ModelManifest,
    OpenSetCurve,
    Threshold,
    read_manifest,
    sha256_file,
    version_digest,
)
from pipeline.face.packaged_models import RESNET_V1, packaged_model
from pipeline.gallery.errors import CalibrationError
from pipeline.gallery.service import threshold_info
from pipeline.models.bootstrap import (
    DEFAULT_NAME,
    add_shipped_curves,
    default_preprocessing,
    load_shipped_curve,
    upgrade_default_threshold,
)
from pipeline.models.store import ModelStore


def synthetic_pool(
    n_ids: int = 80, per_id: int = 4, dim: int = 12, seed: int = 5
) -> CalibrationFaces:
    """Identities as noisy copies of a random centre; a few look-alike pairs of identities
    share most of their centre, so false accepts cluster as they do on real faces."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim))
    for a in range(0, min(10, n_ids) - 1, 2):  # up to 5 look-alike pairs
        centres[a + 1] = centres[a] + 0.35 * rng.standard_normal(dim)
    vecs, labels = [], []
    for i in range(n_ids):
        for _ in range(per_id):
            vecs.append(centres[i] + 0.3 * rng.standard_normal(dim))
            labels.append(i)
    v = np.array(vecs, dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return CalibrationFaces(v, np.array(labels), n_ids)


def brute_force_far(pool: CalibrationFaces, t: float, n: int) -> float:
    """FAR(t, n) straight from the definition, every pair scored."""
    sims = pool.vectors @ pool.vectors.T
    out = []
    for i in range(len(pool.labels)):
        other = pool.labels != pool.labels[i]
        q = float(np.mean(sims[i, other] >= t))
        out.append(1.0 - (1.0 - q) ** n)
    return float(np.mean(out))


@pytest.fixture(scope="module")
def est() -> StrangerFAR:
    return StrangerFAR(synthetic_pool(), 0.05, n_bootstrap=200)


def test_point_estimate_matches_the_definition(est: StrangerFAR) -> None:
    for t, n in [(0.5, 1), (0.6, 10), (0.7, 100), (0.8, 320)]:
        point, _ = est.far(t, n)
        assert point == pytest.approx(brute_force_far(est.pool, t, n), rel=1e-9, abs=1e-12)


def test_far_grows_with_the_gallery_and_the_thresholds_with_it(est: StrangerFAR) -> None:
    fars = [est.far(0.7, n)[0] for n in (1, 10, 100, 320)]
    assert fars == sorted(fars) and fars[-1] > 5 * fars[0]
    curve = est.curve()
    assert [p.gallery_faces for p in curve] == gallery_grid(320)
    ts = [p.threshold for p in curve]
    assert ts == sorted(ts) and ts[-1] > ts[0] + 0.05


def test_threshold_is_the_smallest_whose_upper_bound_meets_the_target(est: StrangerFAR) -> None:
    sims = est.pool.vectors @ est.pool.vectors.T
    impostor = np.sort(sims[est.pool.labels[:, None] != est.pool.labels[None, :]])
    for n in (1, 30, 320):
        point, _ = est.threshold(n)
        assert point.far_upper <= 0.05
        # the upper bound is above the estimate: it carries the identity-level uncertainty
        assert point.far_upper > point.far_point
        # one similarity lower (the first impostor the threshold rejects) breaks the target
        below = float(impostor[impostor < point.threshold][-1])
        assert est.far(below, n)[1] > 0.05


def test_bootstrap_is_reproducible_and_seeded() -> None:
    pool = synthetic_pool()
    a = StrangerFAR(pool, 0.05, seed=1).threshold(50)[0]
    b = StrangerFAR(pool, 0.05, seed=1).threshold(50)[0]
    assert a == b
    others = {StrangerFAR(pool, 0.05, seed=s).threshold(50)[0].threshold for s in (2, 3, 4)}
    assert others != {a.threshold}  # the seed matters: B resamples are not all alike


def test_too_few_faces_or_identities_are_refused() -> None:
    with pytest.raises(CalibrationError, match=r"cannot measure a stranger FAR of 0\.01"):
        StrangerFAR(synthetic_pool(n_ids=20, per_id=4), 0.01)  # 80 faces < 100
    with pytest.raises(CalibrationError, match="identities"):
        StrangerFAR(synthetic_pool(n_ids=8, per_id=20), 0.05)  # 160 faces, 8 identities
    with pytest.raises(CalibrationError, match="target FAR"):
        StrangerFAR(synthetic_pool(), 0.0)


def test_gallery_grid_is_logarithmic_from_one_to_the_pool() -> None:
    grid = gallery_grid(2061)
    assert grid[0] == 1 and grid[-1] == 2061 and grid == sorted(set(grid))
    ratios = np.array(grid[20:]) / np.array(grid[19:-1])
    assert ratios.max() < 1.1  # 32 points per decade


CURVE = OpenSetCurve(
    points=[(1, 0.90), (10, 0.92), (100, 0.94), (150, 0.95)],
    target_far=0.01,
    confidence=0.95,
    measured_up_to=150,
    method="test",
    provenance="test data",
)


def test_curve_lookup_takes_the_next_larger_gallery_and_flags_extrapolation() -> None:
    assert CURVE.at(0) == (0.90, False)
    assert CURVE.at(1) == (0.90, False)
    assert CURVE.at(2) == (0.92, False)  # never the smaller gallery's lower threshold
    assert CURVE.at(10) == (0.92, False)
    assert CURVE.at(100) == (0.94, False)
    assert CURVE.at(120) == (0.95, False)
    assert CURVE.at(150) == (0.95, False)
    assert CURVE.at(151) == (0.95, True)  # beyond what calibration measured: held
    assert CURVE.at(10**6) == (0.95, True)
    with pytest.raises(ValueError, match="ascending"):
        OpenSetCurve(**{**CURVE.model_dump(), "points": [(150, 0.9), (1, 0.8)]})
    with pytest.raises(ValueError, match="measured_up_to"):
        OpenSetCurve(**{**CURVE.model_dump(), "points": [(1, 0.9), (100, 0.94)]})


def test_threshold_round_trips_and_old_manifests_still_parse() -> None:
    thr = Threshold(value=0.912, target_far=1e-3, provenance="pairs", open_set=CURVE)
    assert Threshold.model_validate_json(thr.model_dump_json()) == thr
    old = '{"value": 0.912, "metric": "cosine", "target_far": null, "provenance": "dlib"}'
    assert Threshold.model_validate_json(old).open_set is None


def test_precedence_request_then_curve_then_pair_value() -> None:
    with_curve = Threshold(value=0.5, target_far=1e-3, provenance="pairs", open_set=CURVE)
    info = threshold_info(with_curve, None, 7)
    assert (info.kind, info.value, info.gallery_size, info.target_far) == (
        "open_set",
        0.92,
        7,
        0.01,
    )
    assert "7 enrolled faces" in info.provenance and "test data" in info.provenance
    assert not info.extrapolated and not info.overridden
    big = threshold_info(with_curve, None, 1000)
    assert big.extrapolated and "extrapolated" in big.provenance and big.value == 0.95
    req = threshold_info(with_curve, 0.3, 7)
    assert (req.kind, req.value, req.overridden) == ("request", 0.3, True)
    # 1:1 verification passes no gallery size: the per-comparison value decides
    pair = threshold_info(with_curve, None)
    assert (pair.kind, pair.value, pair.target_far) == ("pair", 0.5, 1e-3)
    no_curve = threshold_info(with_curve.model_copy(update={"open_set": None}), None, 7)
    assert (no_curve.kind, no_curve.value, no_curve.gallery_size) == ("pair", 0.5, 7)


def default_version() -> str:
    digest = version_digest(
        sha256_file(packaged_model(RESNET_V1)),
        default_preprocessing(),
        dlib_chip_template(150, 0.25),
    )
    return f"{DEFAULT_NAME}-{digest}"


def test_the_shipped_curve_belongs_to_the_default_version_and_meets_its_target() -> None:
    shipped = load_shipped_curve()
    assert shipped is not None
    assert shipped.model_version == default_version()
    curve = shipped.open_set
    assert curve.target_far == 0.01 and curve.confidence == 0.95
    ts = [t for _, t in curve.points]
    assert ts == sorted(ts) and curve.points[-1][0] == curve.measured_up_to
    assert all(d["far_upper"] <= curve.target_far for d in shipped.detail)
    assert "lfw-dev" in curve.provenance and f"{curve.measured_up_to} faces" in curve.provenance
    assert "--open-set" in shipped.regenerate and "--ship" in shipped.regenerate


def test_upgrade_adds_the_shipped_curve_in_place_and_keeps_the_version(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    shipped = load_shipped_curve()
    assert shipped is not None
    version = shipped.model_version
    store = ModelStore(tmp_path / "models")
    folder = store.folder(version)
    folder.mkdir(parents=True)
    manifest = ModelManifest(
        name=DEFAULT_NAME,
        version=version,
        format="onnx",
        files={},
        preprocessing=default_preprocessing(),
        alignment=dlib_chip_template(150, 0.25),
        embedding_dim=128,
        threshold=Threshold(value=0.912, provenance="an older bootstrap"),
    )
    (folder / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2))
    thr = upgrade_default_threshold(store, version, manifest.threshold)
    assert thr.open_set == shipped.open_set and thr.value == 0.912
    on_disk = read_manifest(folder)
    assert on_disk.threshold == thr
    assert on_disk.model_copy(update={"threshold": manifest.threshold}) == manifest
    assert store.versions() == [version]
    # another version (another TTA, a trained one) gets nothing: the curve is not its own
    other = manifest.model_copy(update={"version": "dlib-resnet-v1-00000000"})
    store.folder(other.version).mkdir()
    (store.folder(other.version) / MANIFEST_NAME).write_text(other.model_dump_json())
    same = upgrade_default_threshold(store, other.version, other.threshold)
    assert same.open_set is None and read_manifest(store.folder(other.version)) == other


def _old_default_store(root: Path) -> tuple[ModelStore, str]:
    """A store holding the default version as bootstrapped before its curve shipped."""
    shipped = load_shipped_curve()
    assert shipped is not None
    version = shipped.model_version
    store = ModelStore(root)
    store.folder(version).mkdir(parents=True)
    manifest = ModelManifest(
        name=DEFAULT_NAME,
        version=version,
        format="onnx",
        files={},
        preprocessing=default_preprocessing(),
        alignment=dlib_chip_template(150, 0.25),
        embedding_dim=128,
        threshold=Threshold(value=0.912, provenance="an older bootstrap"),
    )
    (store.folder(version) / MANIFEST_NAME).write_text(manifest.model_dump_json())
    return store, version


def test_the_curve_is_added_at_start_up_and_searches_only_read(tmp_path: Path) -> None:
    from pipeline.gallery.service import Gallery

    store, version = _old_default_store(tmp_path / "models")
    shipped = load_shipped_curve()
    assert shipped is not None
    assert add_shipped_curves(store) == {}  # written in place, nothing kept in memory
    assert read_manifest(store.folder(version)).threshold.open_set == shipped.open_set
    assert add_shipped_curves(ModelStore(tmp_path / "empty")) == {}
    # A search reads the manifest as it is: it never writes it (the curve removed after
    # start-up stays removed, as an operator's edit would).
    store2, _ = _old_default_store(tmp_path / "models2")
    g = Gallery.__new__(Gallery)
    g.store, g._thresholds_in_memory = store2, {}
    before = (store2.folder(version) / MANIFEST_NAME).read_text()
    assert g.threshold(version).open_set is None
    assert (store2.folder(version) / MANIFEST_NAME).read_text() == before


def test_a_read_only_store_gets_the_curve_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.gallery.service import Gallery
    from pipeline.models import bootstrap

    store, version = _old_default_store(tmp_path / "models")

    def refuse(*_: object) -> None:
        raise PermissionError("read-only file system")

    monkeypatch.setattr(bootstrap, "write_manifest", refuse)
    kept = add_shipped_curves(store)
    assert list(kept) == [version] and kept[version].open_set is not None
    assert read_manifest(store.folder(version)).threshold.open_set is None
    g = Gallery.__new__(Gallery)
    g.store, g._thresholds_in_memory = store, kept
    assert g.threshold(version).open_set == kept[version].open_set
