"""Held-out evaluation of a model version, and the base-vs-candidate comparison report.

Both models are run exactly as production runs them: the ONNX file through
``Embedder`` (preprocessing and test-time augmentation from the manifest), on the
aligned chips the production face core made (the training job's crop cache).

Verification (every pair of held-out faces): 10-fold accuracy, ROC AUC, EER and TAR at
FAR 1e-2 / 1e-3. All pairs are scored, so impostors far outnumber genuine pairs; the
reported 10-fold accuracy is on a balanced subset (every genuine pair and as many
random impostor pairs), where a chance-level model scores 50%.

Identification (open set): held-out identities are split at random into enrolled
(``gallery_images`` photos each form the gallery) and never-enrolled halves; each
other enrolled photo is a mated probe and every never-enrolled photo a non-mated one.
Rank-1 is the closed-set hit rate of mated probes. DIR@FAR is the share of mated
probes identified correctly *and* above the threshold that lets ``dir_far`` of the
non-mated probes in. ``identification_rounds`` random halvings are pooled, so every
identity serves in both roles and the FAR has enough non-mated probes behind it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.train import EvalConfig, PairsSet
from pipeline.evaluation.calibrate import threshold_at_far
from pipeline.evaluation.metrics import all_pairs, kfold_accuracy, plot_roc, verification_report
from pipeline.evaluation.pairs import Pair, read_pairs
from pipeline.face.embed import Embedder
from pipeline.gallery.errors import CalibrationError

# The aligned chip of an image from the production face core (None: no face found).
ChipSource = Callable[[Path], "np.ndarray | None"]


def _far_key(far: float) -> str:
    return f"{far:g}"


def verification(
    vectors: np.ndarray, labels: np.ndarray, fars: tuple[float, ...], seed: int = 0
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    scores, same = all_pairs(vectors, labels)
    if same.min() == same.max():
        raise ValueError("verification needs both genuine and impostor pairs")
    rng = np.random.default_rng(seed)
    # verification_report's folds are contiguous blocks; shuffle so each fold mixes
    # identities instead of holding one person's pairs.
    perm = rng.permutation(len(scores))
    report, roc = verification_report(scores[perm], same[perm], fars)
    gen = np.nonzero(same == 1)[0]
    imp = rng.choice(
        np.nonzero(same == 0)[0], size=min(len(gen), int((same == 0).sum())), replace=False
    )
    bal = rng.permutation(np.concatenate([gen, imp]))
    kf = kfold_accuracy(scores[bal], same[bal])
    out = report.to_dict()
    out["accuracy_10fold_all_pairs"] = out.pop("accuracy_10fold")
    out["accuracy_10fold_all_pairs_std"] = out.pop("accuracy_10fold_std")
    out["accuracy_10fold"] = kf.accuracy
    out["accuracy_10fold_std"] = kf.std
    out["n_balanced_pairs"] = len(bal)
    del out["fold_thresholds"]
    return out, roc


def threshold_for_far(nonmated: np.ndarray, far: float) -> float | None:
    """Smallest threshold letting at most ``far`` of the non-mated scores in (None when
    there are too few non-mated probes to measure that FAR)."""
    try:
        return threshold_at_far(np.array([1.0]), nonmated, far).threshold
    except CalibrationError:
        return None


def identification(
    vectors: np.ndarray,
    labels: np.ndarray,
    *,
    gallery_images: int = 1,
    rounds: int = 10,
    far: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ids = np.unique(labels)
    if len(ids) < 2:
        raise ValueError("identification needs at least 2 identities")
    by_id = {int(i): np.nonzero(labels == i)[0] for i in ids}
    correct_all, mated_all, nonmated_all = [], [], []
    for _ in range(rounds):
        order = rng.permutation(ids)
        enrolled, never = order[: len(order) // 2], order[len(order) // 2 :]
        g_idx, g_lab, probes = [], [], []
        for i in enrolled:
            rows = rng.permutation(by_id[int(i)])
            g_idx += list(rows[:gallery_images])
            g_lab += [int(i)] * len(rows[:gallery_images])
            probes += list(rows[gallery_images:])
        gal = vectors[g_idx]
        g_lab_arr = np.asarray(g_lab)
        never_idx = np.concatenate([by_id[int(i)] for i in never])
        if probes:
            s = vectors[probes] @ gal.T
            best = s.argmax(axis=1)
            correct_all.append(g_lab_arr[best] == labels[probes])
            mated_all.append(s.max(axis=1))
        nonmated_all.append((vectors[never_idx] @ gal.T).max(axis=1))
    correct = np.concatenate(correct_all) if correct_all else np.zeros(0, bool)
    mated = np.concatenate(mated_all) if mated_all else np.zeros(0)
    nonmated = np.concatenate(nonmated_all)
    t = threshold_for_far(nonmated, far)
    return {
        "rank1": float(correct.mean()) if len(correct) else float("nan"),
        f"dir@far={_far_key(far)}": (
            float((correct & (mated >= t)).mean()) if t is not None and len(correct) else None
        ),
        "threshold_at_far": t,
        "far": far,
        "gallery_images": gallery_images,
        "rounds": rounds,
        "n_mated_probes": len(correct),
        "n_nonmated_probes": len(nonmated),
    }


def embed_set(embedder: Embedder, chips: np.ndarray) -> np.ndarray:
    return embedder.embed(chips) if len(chips) else np.zeros((0, embedder.dim), np.float32)


# -- guard pairs (e.g. LFW) --------------------------------------------------------------


@dataclass
class GuardChips:
    """A pairs set's chips from the production face core (None: no face found)."""

    name: str
    pairs: list[Pair]
    chips: dict[Path, np.ndarray | None]


def guard_chips(
    spec: PairsSet, chip_of: ChipSource, on_progress: Callable[[int], None] | None = None
) -> GuardChips:
    pairs = read_pairs(spec.pairs, spec.root)
    if spec.limit is not None:
        pairs = pairs[: spec.limit]
    chips: dict[Path, np.ndarray | None] = {}
    for p in sorted({p for pair in pairs for p in (pair.a, pair.b)}):
        chips[p] = chip_of(p)
        if on_progress is not None:
            on_progress(1)
    return GuardChips(spec.name, pairs, chips)


def guard_eval(embedder: Embedder, g: GuardChips, fars: tuple[float, ...]) -> dict[str, Any]:
    """Pairs metrics; a pair with an image where no face was found scores -1 ("different"),
    as in ``facestream eval pairs``."""
    found = {p: c for p, c in g.chips.items() if c is not None}
    vecs = (
        dict(zip(found, embed_set(embedder, np.stack(list(found.values()))), strict=True))
        if found
        else {}
    )
    scores = np.array(
        [float(vecs[p.a] @ vecs[p.b]) if p.a in vecs and p.b in vecs else -1.0 for p in g.pairs]
    )
    labels = np.array([p.same for p in g.pairs])
    report, _ = verification_report(scores, labels, fars)
    out = report.to_dict()
    del out["fold_thresholds"]
    out["failure_to_detect"] = sum(c is None for c in g.chips.values())
    return out


# -- one model, and the comparison -------------------------------------------------------


@dataclass
class ModelEval:
    version: str
    verification: dict[str, Any]
    identification: dict[str, Any]
    guards: dict[str, dict[str, Any]] = field(default_factory=dict)
    roc: tuple[np.ndarray, np.ndarray] | None = None

    def summary(self) -> dict[str, float | None]:
        """Flat metrics: what lineage records and the promotion gate compares."""
        v, i = self.verification, self.identification
        out: dict[str, float | None] = {
            "accuracy": v["accuracy_10fold"],
            "roc_auc": v["roc_auc"],
            "eer": v["eer"],
        }
        for far, tar in v["tar_at_far"].items():
            out[f"tar@far={far}"] = tar
        out["rank1"] = i["rank1"]
        out[f"dir@far={_far_key(i['far'])}"] = i[f"dir@far={_far_key(i['far'])}"]
        for name, g in self.guards.items():
            out[f"{name}.accuracy"] = g["accuracy_10fold"]
            for far, tar in g["tar_at_far"].items():
                out[f"{name}.tar@far={far}"] = tar
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "summary": self.summary(),
            "verification": self.verification,
            "identification": self.identification,
            "guards": self.guards,
        }


def evaluate_model(
    embedder: Embedder,
    chips: np.ndarray,
    labels: np.ndarray,
    cfg: EvalConfig,
    guards: list[GuardChips] | None = None,
    seed: int = 0,
) -> ModelEval:
    """Verification and identification on held-out ``chips`` (one identity label each),
    plus the guard pairs sets."""
    vecs = embed_set(embedder, chips)
    ver, roc = verification(vecs, labels, cfg.fars, seed)
    ident = identification(
        vecs,
        labels,
        gallery_images=cfg.gallery_images,
        rounds=cfg.identification_rounds,
        far=cfg.dir_far,
        seed=seed,
    )
    g = {gc.name: guard_eval(embedder, gc, cfg.fars) for gc in guards or []}
    return ModelEval(embedder.model_version, ver, ident, g, roc)


def comparison_rows(
    base: dict[str, float | None], cand: dict[str, float | None]
) -> list[tuple[str, float | None, float | None, float | None]]:
    rows = []
    for k in base:
        b, c = base[k], cand.get(k)
        rows.append((k, b, c, None if b is None or c is None else c - b))
    return rows


def write_report(
    out_dir: Path,
    base: ModelEval,
    cand: ModelEval,
    meta: dict[str, Any],
) -> tuple[Path, Path]:
    """``report.json`` (both models' metrics and the run's facts) and ``roc.png`` (both
    held-out ROC curves in one plot)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        **meta,
        "base": base.to_dict(),
        "candidate": cand.to_dict(),
        "delta": {k: d for k, _, _, d in comparison_rows(base.summary(), cand.summary())},
    }
    rpath = out_dir / "report.json"
    rpath.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    ppath = out_dir / "roc.png"
    curves = {}
    for label, ev in ((f"{base.version} (base)", base), (f"{cand.version} (fine-tuned)", cand)):
        assert ev.roc is not None
        curves[label] = ev.roc
    n = base.verification["n_pairs"]
    plot_roc(curves, str(ppath), f"held-out identities, {n} pairs")
    return rpath, ppath


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
