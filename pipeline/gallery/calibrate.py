"""Threshold calibration: the cosine threshold that meets a target false-accept rate.

Impostor pairs (two different people) give the false-accept rate of a threshold t: the
fraction of impostor similarities >= t. The calibrated threshold is the smallest t whose
measured FAR does not exceed the target; the genuine pairs (same person) give the
true-accept rate it leaves. A target FAR needs at least 1 / FAR impostor pairs to be
measurable at all, so fewer is refused rather than guessed.

The result is stored in the model version's manifest (``threshold``: value, target_far,
provenance); searches use it unless a request overrides it.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import numpy as np

from pipeline.face.manifest import MANIFEST_NAME, Threshold
from pipeline.gallery.errors import CalibrationError
from pipeline.registry import ModelStore


@dataclass(frozen=True)
class Calibration:
    threshold: float
    target_far: float
    measured_far: float
    tar: float
    n_genuine: int
    n_impostor: int

    def describe(self) -> str:
        return (
            f"FAR {self.measured_far:.2e} (target {self.target_far:g}) and TAR "
            f"{100 * self.tar:.2f}% on {self.n_genuine} genuine / {self.n_impostor} impostor pairs"
        )


def pair_scores(
    vectors: np.ndarray, labels: np.ndarray, max_impostors: int = 20_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) cosine similarities of every pair of unit ``vectors``."""
    labels = np.asarray(labels)
    n = len(vectors)
    if n * (n - 1) // 2 > max_impostors:
        raise CalibrationError(
            f"{n} images make {n * (n - 1) // 2} pairs; use fewer images (at most "
            f"{max_impostors} pairs are scored)"
        )
    sims = vectors @ vectors.T
    iu = np.triu_indices(n, k=1)
    same = labels[iu[0]] == labels[iu[1]]
    s = sims[iu]
    return s[same].astype(np.float64), s[~same].astype(np.float64)


def threshold_at_far(genuine: np.ndarray, impostor: np.ndarray, target_far: float) -> Calibration:
    """The smallest threshold whose FAR on ``impostor`` is <= ``target_far``."""
    if not 0.0 < target_far < 1.0:
        raise CalibrationError(f"target FAR must be in (0, 1), got {target_far}")
    n_imp = len(impostor)
    if n_imp * target_far < 1.0:
        raise CalibrationError(
            f"{n_imp} impostor pairs cannot measure a FAR of {target_far:g} (needs at least "
            f"{int(np.ceil(1 / target_far))}); add identities or raise --target-far"
        )
    if len(genuine) == 0:
        raise CalibrationError("no genuine pairs: every identity needs at least 2 images")
    desc = np.sort(impostor)[::-1]
    allowed = int(np.floor(target_far * n_imp))  # impostors that may score >= t
    # Just above the first impostor that must be rejected: exactly `allowed` (or fewer,
    # on ties) impostors remain at or above the threshold.
    t = float(np.nextafter(desc[allowed], np.inf))
    far = float(np.mean(impostor >= t))
    tar = float(np.mean(genuine >= t))
    return Calibration(t, target_far, far, tar, len(genuine), n_imp)


def write_threshold(store: ModelStore, version: str, threshold: Threshold) -> None:
    """Replace the threshold in a version's manifest (atomically; the version id stays:
    the threshold is a decision rule, not part of what makes embeddings comparable)."""
    manifest = store.manifest(version)
    updated = manifest.model_copy(update={"threshold": threshold})
    path = store.folder(version) / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text(updated.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)


def provenance(cal: Calibration, source: str) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return f"facestream calibrate {today}: {source}; {cal.describe()}"
