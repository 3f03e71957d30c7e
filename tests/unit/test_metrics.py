"""Verification metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from pipeline.evaluation.metrics import (
    best_threshold,
    equal_error_rate,
    kfold_accuracy,
    tar_at_far,
    verification_report,
)


def test_best_threshold_separates() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    t = best_threshold(scores, labels)
    assert 0.3 < t <= 0.7


def test_kfold_is_perfect_on_separable_and_chance_on_noise() -> None:
    rng = np.random.default_rng(1)
    labels = np.tile([1, 0], 300)
    separable = np.where(labels == 1, 0.9, 0.1) + rng.normal(0, 0.01, 600)
    assert kfold_accuracy(separable, labels).accuracy == 1.0
    noise = rng.uniform(0, 1, 600)
    assert abs(kfold_accuracy(noise, labels).accuracy - 0.5) < 0.1


def test_kfold_threshold_comes_from_other_folds() -> None:
    # one fold whose own best threshold differs: its accuracy must not be perfect
    labels = np.array([1, 0] * 50)
    scores = np.where(labels == 1, 0.8, 0.2).astype(float)
    scores[:10] = np.where(labels[:10] == 1, 0.15, 0.1)  # fold 0: genuine pairs score low
    res = kfold_accuracy(scores, labels)
    assert res.fold_accuracies[0] == pytest.approx(0.5)
    assert res.fold_accuracies[1:] == [1.0] * 9


def test_tar_at_far_hand_computed() -> None:
    # 10 impostors, 10 genuines; one impostor scores above 4 genuines
    imp = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.75])
    gen = np.array([0.5, 0.6, 0.7, 0.72, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99])
    scores = np.concatenate([imp, gen])
    labels = np.array([0] * 10 + [1] * 10)
    fpr, tpr, thr = roc_curve(labels, scores)
    tar, t = tar_at_far(fpr, tpr, thr, 0.0)  # no impostor accepted: threshold above 0.75
    assert tar == pytest.approx(0.6) and t > 0.75
    tar, _ = tar_at_far(fpr, tpr, thr, 0.1)  # one impostor allowed: every genuine above 0.4
    assert tar == pytest.approx(1.0)


def test_eer_symmetric_case() -> None:
    # perfectly overlapping uniform scores: EER 0.5; separable: 0
    fpr = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    assert equal_error_rate(fpr, fpr) == pytest.approx(0.5)
    assert equal_error_rate(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0])) == 0.0


def test_report_fields() -> None:
    rng = np.random.default_rng(2)
    labels = np.tile([1, 0], 200)
    scores = labels * 0.5 + rng.normal(0, 0.2, 400)
    rep, (fpr, tpr) = verification_report(scores, labels)
    assert rep.n_pairs == 400 and rep.n_genuine == 200 and rep.n_impostor == 200
    assert 0.85 < rep.accuracy_10fold < 0.99
    assert 0.9 < rep.roc_auc < 1.0
    assert set(rep.tar_at_far) == {"0.01", "0.001"}
    assert rep.far_resolution == pytest.approx(1 / 200)
    assert len(fpr) == len(tpr)
