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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.evaluation.embcache import OK, EmbeddingCache, ImageEmbedding, embed_paths
from pipeline.evaluation.metrics import all_pairs
from pipeline.evaluation.pairs import Pair
from pipeline.face.analyze import FacePipeline
from pipeline.face.manifest import Threshold, write_manifest
from pipeline.gallery.errors import CalibrationError
from pipeline.models.store import ModelStore


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
    n = len(vectors)
    if n * (n - 1) // 2 > max_impostors:
        raise CalibrationError(
            f"{n} images make {n * (n - 1) // 2} pairs; use fewer images (at most "
            f"{max_impostors} pairs are scored)"
        )
    scores, same = all_pairs(vectors, labels)
    return scores[same == 1], scores[same == 0]


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


def calibrate_on(
    embeddings: dict[Path, ImageEmbedding], identities: dict[str, list[Path]], target_far: float
) -> Calibration:
    """Threshold at ``target_far`` from every pair of quality-passing photos."""
    vecs, labels = [], []
    for i, paths in enumerate(identities.values()):
        for p in paths:
            e = embeddings.get(p)
            if e is not None and e.status == OK and e.vector is not None:
                vecs.append(e.vector)
                labels.append(i)
    if len(vecs) < 2:
        raise CalibrationError("fewer than 2 usable photos to calibrate on")
    genuine, impostor = pair_scores(np.stack(vecs), np.asarray(labels))
    return threshold_at_far(genuine, impostor, target_far)


def _both_vectors(
    emb: dict[Path, ImageEmbedding], pair: Pair
) -> tuple[np.ndarray, np.ndarray] | None:
    """The pair's two embeddings when both photos gave a face that passed the gate."""
    a, b = emb[pair.a], emb[pair.b]
    if a.status != OK or b.status != OK or a.vector is None or b.vector is None:
        return None
    return a.vector, b.vector


def calibrate_on_pairs(
    pipe: FacePipeline,
    pairs: list[Pair],
    cache: EmbeddingCache | None,
    target_far: float,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[Calibration, int]:
    """Threshold at ``target_far`` from the pairs whose two photos both give a face that
    passes the quality gate; (calibration, usable pairs)."""
    paths = sorted({p for pr in pairs for p in (pr.a, pr.b)})
    emb = embed_paths(pipe, paths, cache, on_progress=on_progress)
    usable = [(pr, v) for pr in pairs if (v := _both_vectors(emb, pr)) is not None]
    sims = np.array([float(a @ b) for _, (a, b) in usable])
    same = np.array([pr.same for pr, _ in usable])
    return threshold_at_far(sims[same == 1], sims[same == 0], target_far), len(usable)


def calibrate_on_folders(
    pipe: FacePipeline,
    identities: dict[str, list[Path]],
    cache: EmbeddingCache | None,
    target_far: float,
    on_progress: Callable[[int], None] | None = None,
) -> Calibration:
    """Threshold at ``target_far`` from every pair of the identities' photos."""
    paths = [p for ps in identities.values() for p in ps]
    emb = embed_paths(pipe, paths, cache, on_progress=on_progress)
    return calibrate_on(emb, identities, target_far)


def store_calibration(store: ModelStore, version: str, cal: Calibration, source: str) -> Threshold:
    """Write the calibrated threshold, with its provenance, into the version's manifest."""
    # The open-set curve stays: it decides 1:N searches, this value 1:1 verification.
    thr = Threshold(
        value=round(cal.threshold, 6),
        target_far=cal.target_far,
        provenance=provenance(cal, source),
        open_set=store.manifest(version).threshold.open_set,
    )
    write_threshold(store, version, thr)
    return thr


def write_threshold(store: ModelStore, version: str, threshold: Threshold) -> None:
    """Replace the threshold in a version's manifest (atomically; the version id stays:
    the threshold is a decision rule, not part of what makes embeddings comparable)."""
    manifest = store.manifest(version)
    write_manifest(store.folder(version), manifest.model_copy(update={"threshold": threshold}))


def provenance(cal: Calibration, source: str) -> str:
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    return f"facestream calibrate {today}: {source}; {cal.describe()}"
