"""Threshold calibration: the FAR arithmetic, and the manifest it writes being used by search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.calibrate import pair_scores, threshold_at_far, write_threshold
from pipeline.face.manifest import Threshold
from pipeline.gallery.errors import CalibrationError
from tests.support.gallery import as_input, lfw_root, open_gallery, photos
from tests.support.models import TwoVersions, private_store


def test_threshold_meets_the_target_far_exactly_when_scores_allow() -> None:
    impostor = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.2, 0.95, 0.99, 0.995])
    cal = threshold_at_far(genuine, impostor, 0.01)
    assert cal.measured_far == pytest.approx(0.01)  # 0.990 .. 0.999 accepted
    assert 0.989 < cal.threshold <= 0.990
    assert cal.tar == pytest.approx(0.5)  # 0.99 and 0.995
    # the smallest such threshold: one step lower lets an 11th impostor in
    assert np.mean(impostor >= np.nextafter(cal.threshold, -np.inf)) > 0.01
    assert (cal.n_genuine, cal.n_impostor) == (4, 1000)


def test_ties_never_push_the_far_over_the_target() -> None:
    impostor = np.concatenate([np.full(995, 0.5), np.full(5, 0.7)])
    cal = threshold_at_far(np.array([0.9]), impostor, 0.01)
    assert cal.measured_far <= 0.01
    assert cal.measured_far == pytest.approx(0.005)  # the 0.7s pass, the 0.5 block cannot
    assert 0.5 < cal.threshold <= 0.7


def test_unmeasurable_targets_are_refused() -> None:
    with pytest.raises(CalibrationError, match="cannot measure"):
        threshold_at_far(np.array([0.9]), np.zeros(999), 1e-3)
    with pytest.raises(CalibrationError, match="genuine"):
        threshold_at_far(np.array([]), np.zeros(1000), 1e-2)
    with pytest.raises(CalibrationError, match="target FAR"):
        threshold_at_far(np.array([0.9]), np.zeros(1000), 0.0)


def test_pair_scores_split_genuine_and_impostor_pairs() -> None:
    rng = np.random.default_rng(3)
    v = rng.standard_normal((7, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 1, 1, 2, 3])
    genuine, impostor = pair_scores(v, labels)
    assert len(genuine) == 3 + 1 and len(impostor) == 21 - 4
    assert genuine[0] == pytest.approx(float(v[0] @ v[1]))


@pytest.mark.integration
@pytest.mark.shared_data
def test_search_uses_the_calibrated_threshold_from_the_manifest(
    tmp_path: Path, two_versions: TwoVersions, shared_dir: Path
) -> None:
    # The plain-TTA version: no shipped open-set curve (that one is the flip version's, and
    # takes precedence in 1:N search; tests/integration/test_open_set_threshold.py).
    v_plain = two_versions.plain
    private = private_store(two_versions.store, tmp_path / "models", v_plain)
    lfw = lfw_root(shared_dir)
    new = Threshold(value=0.9123, target_far=1e-3, provenance="test calibration")
    write_threshold(private, v_plain, new)
    assert private.manifest(v_plain).threshold == new
    assert private.load_embedder(v_plain).model_version == v_plain  # files still verify
    g = open_gallery(tmp_path / "g", private)
    try:
        g.enroll(as_input(photos(lfw, "Abel_Pacheco")[:1]), name="A", pick="center")
        probe = photos(lfw, "Abel_Pacheco")[1].read_bytes()
        res = g.search_image(probe)
        assert (res.threshold.value, res.threshold.target_far) == (0.9123, 1e-3)
        assert res.threshold.provenance == "test calibration" and res.threshold.kind == "pair"
        # re-read on every search: a new calibration applies without a restart
        write_threshold(private, v_plain, new.model_copy(update={"value": 0.5}))
        assert g.search_image(probe).threshold.value == 0.5
        assert g.search_image(probe, threshold=0.99).threshold.overridden
    finally:
        g.close()
