"""Two versions of one network on the same faces: the gate of a quantised version.

An INT8 version must match its FP32 parent on verification pairs. Both are measured on
the *same* aligned faces: each image goes through detection, landmarks and alignment
once (as ``facestream eval pairs`` does, the face nearest the centre), and every
version embeds the same chips, so the only difference between the two rows is the
network's numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.evaluation.metrics import VerificationReport, verification_report
from pipeline.evaluation.pairs import Pair, pair_scores
from pipeline.face.analyze import FacePipeline
from pipeline.face.embed import Embedder
from pipeline.face.errors import FaceError
from pipeline.face.image_io import load_image
from pipeline.models.quantize import record_evaluation
from pipeline.models.store import ModelStore


def centre_chips(
    pipeline: FacePipeline,
    paths: list[Path],
    on_progress: Callable[[int], None] | None = None,
) -> dict[Path, np.ndarray]:
    """The aligned chip of the face nearest the centre of each image; an image without
    a usable face is left out (its pairs then score as "different")."""
    chips: dict[Path, np.ndarray] = {}
    for path in paths:
        try:
            faces = pipeline.analyze(load_image(path), pick="center", embed=False)
        except FaceError:
            faces = []
        if faces:
            chips[path] = faces[0].chip
        if on_progress:
            on_progress(1)
    return chips


def pairs_digest(pairs: list[Pair], set_name: str) -> str:
    """Names the pairs a comparison was measured on (the gate compares only numbers
    measured on the same data)."""
    h = hashlib.sha256(set_name.encode())
    for p in pairs:
        h.update(f"{p.a.name}\t{p.b.name}\t{p.same}\n".encode())
    return f"pairs:{set_name}:{h.hexdigest()[:12]}"


def gate_metrics(report: VerificationReport, set_name: str) -> dict[str, float]:
    """The metric names of the promotion gate (``pipeline.models.promotion``)."""
    out = {f"tar@far={far}": tar for far, tar in report.tar_at_far.items()}
    out.update(
        {
            "roc_auc": report.roc_auc,
            "eer": report.eer,
            f"{set_name}.accuracy": report.accuracy_10fold,
        }
    )
    return out


def compare_on_pairs(
    chips: dict[Path, np.ndarray],
    pairs: list[Pair],
    embedders: list[Embedder],
) -> dict[str, VerificationReport]:
    """Model version -> its verification report on ``pairs``, every version embedding
    the same ``chips``."""
    paths = sorted(chips)
    batch = np.stack([chips[p] for p in paths]) if paths else None
    reports: dict[str, VerificationReport] = {}
    for embedder in embedders:
        vectors = {} if batch is None else dict(zip(paths, embedder.embed(batch), strict=True))
        reports[embedder.model_version] = verification_report(*pair_scores(vectors, pairs))[0]
    return reports


def record_comparison(
    store: ModelStore,
    candidate: str,
    embedders: list[Embedder],
    chips: dict[Path, np.ndarray],
    pairs: list[Pair],
    set_name: str,
) -> None:
    """Measure ``embedders`` on ``pairs`` (:func:`compare_on_pairs`) and store the
    numbers in ``candidate``'s lineage, where the promotion gate reads them."""
    reports = compare_on_pairs(chips, pairs, embedders)
    metrics = {v: gate_metrics(r, set_name) for v, r in reports.items()}
    record_evaluation(store, candidate, pairs_digest(pairs, set_name), metrics)
