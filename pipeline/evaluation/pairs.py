"""``facestream eval pairs``: the whole face core on every image of a pairs file.

No ground-truth crops: each image goes through detection, landmarks, alignment and
embedding exactly as in production. Where an image holds several faces the one
nearest the centre is taken (the LFW convention: the labelled person is centred).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import FacestreamError
from pipeline.evaluation.embcache import embed_paths
from pipeline.evaluation.metrics import plot_roc, verification_report
from pipeline.face.analyze import FacePipeline


class PairsFileError(FacestreamError):
    code = "bad_pairs_file"


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    same: int


def read_pairs(pairs_file: Path, root: Path) -> list[Pair]:
    """Parse ``path_a<TAB>path_b<TAB>same(1|0)`` lines; paths are relative to ``root``."""
    if not pairs_file.is_file():
        raise PairsFileError(f"pairs file not found: {pairs_file}")
    pairs = []
    for no, line in enumerate(pairs_file.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3 or parts[2].strip() not in ("0", "1"):
            raise PairsFileError(
                f"{pairs_file}:{no}: expected 'path_a<TAB>path_b<TAB>same(1|0)', got {line!r}"
            )
        pairs.append(Pair(root / parts[0], root / parts[1], int(parts[2])))
    if not pairs:
        raise PairsFileError(f"{pairs_file}: no pairs")
    return require_both_kinds(pairs, str(pairs_file))


def require_both_kinds(pairs: list[Pair], what: str) -> list[Pair]:
    """``pairs`` when it holds same and different pairs; accuracy, ROC and TAR@FAR mean
    nothing without both."""
    same = sum(p.same for p in pairs)
    if same in (0, len(pairs)):
        kind = "same" if same else "different"
        raise PairsFileError(
            f"{what}: all {len(pairs)} pairs are '{kind}' pairs; verification needs both "
            "same (1) and different (0) pairs"
        )
    return pairs


def pair_scores(
    vectors: dict[Path, np.ndarray], pairs: list[Pair]
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine per pair, label per pair). A pair with an image where no face was found
    scores -1 (the decision "different"), so detection failures count against accuracy
    instead of being skipped."""
    scores = np.array(
        [
            float(vectors[p.a] @ vectors[p.b]) if p.a in vectors and p.b in vectors else -1.0
            for p in pairs
        ]
    )
    return scores, np.array([p.same for p in pairs])


def evaluate_pairs(
    pipeline: FacePipeline,
    pairs: list[Pair],
    out_dir: Path,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Run the evaluation and write ``report.json`` and ``roc.png`` into ``out_dir``
    (scores: :func:`pair_scores`)."""
    paths = sorted({p for pair in pairs for p in (pair.a, pair.b)})
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    emb = embed_paths(pipeline, paths, None, on_progress=on_progress, timings=stages)
    wall = time.perf_counter() - t0
    vectors = {p: e.vector for p, e in emb.items() if e.vector is not None}
    failures = {p: e.reason for p, e in emb.items() if e.vector is None}
    n_images = len(paths)
    report, (fpr, tpr) = verification_report(*pair_scores(vectors, pairs))
    assert pipeline.embedder is not None
    version = pipeline.embedder.model_version
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_roc({version: (fpr, tpr)}, str(out_dir / "roc.png"), f"ROC, {len(pairs)} pairs")
    result: dict[str, object] = {
        "model_version": version,
        "detector": getattr(pipeline.detector, "name", "?"),
        "verification": report.to_dict(),
        "n_images": n_images,
        "failure_to_detect": len(failures),
        "failures": {str(p): why for p, why in sorted(failures.items())},
        "pairs_with_failure": int(sum(1 for p in pairs if p.a in failures or p.b in failures)),
        "seconds_per_image": wall / max(n_images, 1),
        "stage_ms_per_image": {k: 1000.0 * v / max(n_images, 1) for k, v in stages.items()},
    }
    (out_dir / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
