"""Verification metrics: 10-fold accuracy, ROC AUC, EER, TAR at FAR.

Pure functions over similarity scores and same/different labels, shared by
``facestream eval pairs``, the training job's evaluation and threshold calibration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold


@dataclass
class KFoldResult:
    accuracy: float
    std: float
    thresholds: list[float]
    fold_accuracies: list[float]


def all_pairs(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine scores, same 0/1) of every pair i < j of unit ``vectors``."""
    labels = np.asarray(labels)
    iu = np.triu_indices(len(vectors), k=1)
    scores = (vectors @ vectors.T)[iu].astype(np.float64)
    same = (labels[iu[0]] == labels[iu[1]]).astype(np.int64)
    return scores, same


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising accuracy of ``score >= t`` (midpoints between sorted scores)."""
    s = np.sort(np.unique(scores))
    candidates = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2.0, [s[-1] + 1e-6]])
    # accuracy for every candidate at once: positives above, negatives below
    pos = np.sort(scores[labels == 1])
    neg = np.sort(scores[labels == 0])
    tp = len(pos) - np.searchsorted(pos, candidates, side="left")
    tn = np.searchsorted(neg, candidates, side="left")
    acc = (tp + tn) / len(scores)
    return float(candidates[int(np.argmax(acc))])


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, n_folds: int = 10) -> KFoldResult:
    """LFW protocol: choose the threshold on n-1 folds, measure on the held-out fold.

    Folds are contiguous blocks in file order (no shuffling), as in the LFW View-2
    protocol, whose pairs file is ordered by fold.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    accs, thrs = [], []
    for train, test in KFold(n_splits=n_folds, shuffle=False).split(scores):
        t = best_threshold(scores[train], labels[train])
        accs.append(float(np.mean((scores[test] >= t) == (labels[test] == 1))))
        thrs.append(t)
    return KFoldResult(float(np.mean(accs)), float(np.std(accs)), thrs, accs)


def tar_at_far(
    fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray, far: float
) -> tuple[float, float]:
    """(TAR, threshold) at the highest ROC point whose FAR does not exceed ``far``."""
    ok = np.nonzero(fpr <= far)[0]
    i = int(ok[np.argmax(tpr[ok])])
    return float(tpr[i]), float(thresholds[i])


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """EER, linearly interpolated where FAR crosses FRR = 1 - TAR."""
    frr = 1.0 - tpr
    diff = fpr - frr
    i = int(np.nonzero(diff >= 0)[0][0])
    if i == 0:
        return float(fpr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1) if d1 != d0 else 0.0
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


@dataclass
class VerificationReport:
    n_pairs: int
    n_genuine: int
    n_impostor: int
    accuracy_10fold: float
    accuracy_10fold_std: float
    fold_thresholds: list[float]
    roc_auc: float
    eer: float
    tar_at_far: dict[str, float]
    threshold_at_far: dict[str, float]
    far_resolution: float = field(default=0.0)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def verification_report(
    scores: np.ndarray, labels: np.ndarray, fars: tuple[float, ...] = (1e-2, 1e-3)
) -> tuple[VerificationReport, tuple[np.ndarray, np.ndarray]]:
    """All verification metrics, plus the ROC curve (fpr, tpr) for plotting.

    ``far_resolution`` is 1 / number of impostor pairs: a TAR at a FAR below it means
    "no impostor accepted", not a measured rate.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    fpr, tpr, thr = roc_curve(labels, scores)
    kf = kfold_accuracy(scores, labels)
    tars, thrs = {}, {}
    for far in fars:
        tars[f"{far:g}"], thrs[f"{far:g}"] = tar_at_far(fpr, tpr, thr, far)
    n_imp = int((labels == 0).sum())
    report = VerificationReport(
        n_pairs=len(scores),
        n_genuine=int((labels == 1).sum()),
        n_impostor=n_imp,
        accuracy_10fold=kf.accuracy,
        accuracy_10fold_std=kf.std,
        fold_thresholds=kf.thresholds,
        roc_auc=float(roc_auc_score(labels, scores)),
        eer=equal_error_rate(fpr, tpr),
        tar_at_far=tars,
        threshold_at_far=thrs,
        far_resolution=1.0 / max(n_imp, 1),
    )
    return report, (fpr, tpr)


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str, title: str) -> None:
    """Write a ROC plot (log-scale FAR) of one or more named curves to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=name)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.8, 1.0)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
