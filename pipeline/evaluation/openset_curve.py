"""Open-set calibration: the threshold that keeps strangers out of a gallery of N faces.

A pair-calibrated threshold bounds the false-accept rate of one comparison, but a
stranger (someone never enrolled) is compared with every enrolled face and accepted when
the best of those N similarities reaches the threshold, so the stranger false-accept
rate grows with the gallery. This module estimates it from a calibration set of
identities and gives the threshold per gallery size:

- Probes are every usable calibration face. For probe i, ``q_i(t)`` is the fraction of
  the faces of the *other* calibration identities with similarity >= t (its own
  identity's faces are left out: they are not strangers to it).
- A gallery of N faces drawn like the pool falsely accepts probe i with probability
  ``1 - (1 - q_i(t))**N``; FAR(t, N) is the mean over probes.
- False accepts cluster in a few look-alike identities, so the point estimate does not
  carry over to people outside the calibration set. The threshold t(N) is the smallest t
  whose *upper confidence bound* of FAR(t, N) meets the target, under an identity-level
  bootstrap: calibration identities are resampled with replacement (as probes and as the
  pool at once), B times with a fixed seed, and the bound is the ``confidence`` quantile
  of the resampled FARs.
- t(N) is computed on a log grid of N from 1 to the pool's size (its number of faces);
  larger galleries cannot be measured with this data and hold the last value
  (``OpenSetCurve.at`` flags them as extrapolated).

Only impostor similarities (pairs of two identities) above a floor far below any
threshold the target can produce are kept, sorted in descending order, so the faces
counted at a threshold are a prefix of that list and each bootstrap evaluation is one
sparse product.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from pipeline.evaluation.calibrate import write_threshold
from pipeline.evaluation.embcache import OK, EmbeddingCache, ImageEmbedding, embed_paths
from pipeline.face.analyze import FacePipeline
from pipeline.face.manifest import OpenSetCurve, Threshold
from pipeline.gallery.errors import CalibrationError
from pipeline.models.bootstrap import ShippedCurve
from pipeline.models.store import ModelStore

METHOD = "leave-identity-out stranger FAR, identity bootstrap upper bound"
DEFAULT_TARGET_FAR = 0.01
DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOTSTRAP = 200
DEFAULT_SEED = 20240611
POINTS_PER_DECADE = 32
MIN_IDENTITIES = 10
# Impostor similarities kept: those above the level that this many times the target FAR
# of single comparisons reaches. The threshold at N=1 already sits near the target's own
# level and grows with N; a search that reaches the floor is refused, never truncated.
FLOOR_MARGIN = 20.0
BLOCK = 1024


@dataclass(frozen=True)
class CalibrationFaces:
    """Unit vectors of the usable calibration faces and the identity of each."""

    vectors: np.ndarray  # (M, d) float32
    labels: np.ndarray  # (M,) identity index 0..n_identities-1
    n_identities: int


@dataclass(frozen=True)
class CurvePoint:
    gallery_faces: int
    threshold: float
    far_point: float  # FAR(t, N) at the threshold, all calibration identities
    far_upper: float  # its bootstrap upper bound (<= target)


def pool_from(
    embeddings: dict[Path, ImageEmbedding], identities: dict[str, list[Path]]
) -> CalibrationFaces:
    """The quality-passing faces of ``identities`` (identities without one are dropped)."""
    vecs: list[np.ndarray] = []
    labels: list[int] = []
    for paths in identities.values():
        usable = [
            e.vector
            for p in paths
            if (e := embeddings.get(p)) is not None and e.status == OK and e.vector is not None
        ]
        if usable:
            label = labels[-1] + 1 if labels else 0
            vecs += usable
            labels += [label] * len(usable)
    if not vecs:
        raise CalibrationError("no usable calibration face (none passed the quality gate)")
    return CalibrationFaces(np.stack(vecs).astype(np.float32), np.asarray(labels), labels[-1] + 1)


def gallery_grid(pool_faces: int, per_decade: int = POINTS_PER_DECADE) -> list[int]:
    """Gallery sizes 1 .. ``pool_faces`` on a log grid (both ends included)."""
    steps = max(1, math.ceil(per_decade * math.log10(max(pool_faces, 1))))
    grid = np.unique(np.round(np.geomspace(1, pool_faces, steps + 1)).astype(int))
    return [int(n) for n in grid]


class StrangerFAR:
    """FAR(t, N) of a calibration pool and its identity-bootstrap upper bound."""

    def __init__(
        self,
        pool: CalibrationFaces,
        target_far: float = DEFAULT_TARGET_FAR,
        *,
        confidence: float = DEFAULT_CONFIDENCE,
        n_bootstrap: int = DEFAULT_BOOTSTRAP,
        seed: int = DEFAULT_SEED,
    ) -> None:
        if not 0.0 < target_far < 1.0:
            raise CalibrationError(f"target FAR must be in (0, 1), got {target_far}")
        if not 0.0 < confidence < 1.0:
            raise CalibrationError(f"confidence must be in (0, 1), got {confidence}")
        m = len(pool.labels)
        need = math.ceil(1.0 / target_far)
        if m < need or pool.n_identities < MIN_IDENTITIES:
            raise CalibrationError(
                f"{m} usable faces of {pool.n_identities} identities cannot measure a stranger "
                f"FAR of {target_far:g} (needs at least {need} faces of {MIN_IDENTITIES} "
                "identities); add identities or raise --target-far"
            )
        self.pool = pool
        self.target_far = target_far
        self.confidence = confidence
        self.n_bootstrap = n_bootstrap
        self.seed = seed
        self.n_faces = m
        ident_faces = np.bincount(pool.labels, minlength=pool.n_identities).astype(np.float64)
        self._ident_faces = ident_faces
        self._sims, self._probe, self._ident = self._impostors(pool, target_far)
        # Prefix lengths that end between two distinct similarities: the only ones a
        # threshold can select (ties are accepted or rejected together).
        self._cuts = np.concatenate(
            [[0], np.nonzero(np.diff(self._sims) < 0)[0] + 1, [len(self._sims)]]
        )
        rng = np.random.default_rng(seed)
        # Column 0 is the data itself (every identity once); 1.. are the bootstrap draws.
        draws = [np.ones(pool.n_identities)]
        for _ in range(n_bootstrap):
            picks = rng.integers(0, pool.n_identities, pool.n_identities)
            draws.append(np.bincount(picks, minlength=pool.n_identities).astype(np.float64))
        self._w = np.stack(draws, axis=1)  # (identities, 1 + B)
        w_probe = self._w[pool.labels]  # (M, 1 + B): how often each probe is drawn
        self._w_probe = w_probe
        self._w_probe_sum = w_probe.sum(axis=0)
        total = ident_faces @ self._w  # (1 + B,) faces in each resampled pool
        # Pool size seen by each probe: every resampled face but its own identity's.
        self._denominator = total[None, :] - w_probe * ident_faces[pool.labels][:, None]

    @staticmethod
    def _impostors(
        pool: CalibrationFaces, target_far: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Impostor similarities above the floor, descending, with probe and identity."""
        v, labels = pool.vectors, pool.labels
        m = len(labels)
        # Pass 1: the floor, from a histogram of every impostor similarity.
        edges = np.linspace(-1.0, 1.0, 20001)
        hist = np.zeros(len(edges) - 1, dtype=np.int64)
        for s in range(0, m, BLOCK):
            block = v[s : s + BLOCK] @ v.T
            other = labels[s : s + BLOCK, None] != labels[None, :]
            hist += np.histogram(np.clip(block[other], -1.0, 1.0), bins=edges)[0]
        keep = min(1.0, FLOOR_MARGIN * target_far) * hist.sum()
        above = np.cumsum(hist[::-1])[::-1]  # impostors in bin i or above
        floor = float(edges[np.nonzero(above >= keep)[0][-1]]) if keep < hist.sum() else -2.0
        # Pass 2: the entries above it.
        sims, probes, idents = [], [], []
        for s in range(0, m, BLOCK):
            block = v[s : s + BLOCK] @ v.T
            mask = (labels[s : s + BLOCK, None] != labels[None, :]) & (block >= floor)
            i, j = np.nonzero(mask)
            sims.append(block[i, j])
            probes.append(i + s)
            idents.append(labels[j])
        sim = np.concatenate(sims)
        order = np.argsort(-sim, kind="stable")
        return sim[order], np.concatenate(probes)[order], np.concatenate(idents)[order]

    def _prefix(self, t: float) -> int:
        """How many kept impostor similarities are >= t."""
        return int(np.searchsorted(-self._sims, -t, side="right"))

    def _fars(self, k: int, n: int) -> np.ndarray:
        """FAR(t, n) for every column (0: the data, 1..: bootstrap) when the first ``k``
        kept impostor similarities are accepted."""
        m, n_id = self.n_faces, self.pool.n_identities
        counts = sparse.csr_matrix(
            (np.ones(k), (self._probe[:k], self._ident[:k])), shape=(m, n_id)
        )
        accepted = counts @ self._w  # (M, 1 + B) resampled impostor faces >= t per probe
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(self._denominator > 0, accepted / self._denominator, 0.0)
            # 1 - (1 - q)^n without losing small q to rounding (q = 1 gives log1p(-1) = -inf).
            p_false = -np.expm1(n * np.log1p(-np.minimum(q, 1.0)))
        return (self._w_probe * p_false).sum(axis=0) / self._w_probe_sum

    def far(self, t: float, n: int) -> tuple[float, float]:
        """(point estimate, upper confidence bound) of the stranger FAR at (t, n)."""
        if t < self._sims[-1]:
            raise CalibrationError(f"threshold {t} is below the kept impostor floor")
        fars = self._fars(self._prefix(t), n)
        return float(fars[0]), float(np.quantile(fars[1:], self.confidence))

    def threshold(self, n: int, *, hi: int | None = None) -> tuple[CurvePoint, int]:
        """The smallest threshold whose upper bound of FAR(t, n) is <= the target, and the
        index of its cut (for ``hi`` of a larger gallery).

        ``hi`` is a cut index known to fail (the FAR only grows with n, so one that failed
        for a smaller gallery fails for this one too)."""
        cuts = self._cuts

        def ok(c: int) -> bool:
            upper = float(np.quantile(self._fars(int(cuts[c]), n)[1:], self.confidence))
            return upper <= self.target_far

        lo, top = 0, len(cuts) - 1 if hi is None else hi  # ok(lo) holds: nobody accepted
        if hi is None and ok(top):
            raise CalibrationError(
                "every kept impostor similarity fits under the target FAR; the floor of "
                "the kept similarities is too high for this data (a bug: report it)"
            )
        while top - lo > 1:  # invariant: ok(lo), not ok(top)
            mid = (lo + top) // 2
            if ok(mid):
                lo = mid
            else:
                top = mid
        # Just above the first similarity that must be rejected, rounded up to the 1e-6
        # the manifest stores (rounding up only rejects more strangers).
        first_rejected = float(self._sims[int(cuts[lo])])
        t = math.ceil(float(np.nextafter(first_rejected, np.inf)) * 1e6) / 1e6
        point, upper = self.far(t, n)
        return CurvePoint(n, t, point, upper), lo + 1

    def curve(self, on_progress: Callable[[int], None] | None = None) -> list[CurvePoint]:
        """t(N) on the log grid of gallery sizes up to the pool's size."""
        out: list[CurvePoint] = []
        hi: int | None = None
        for n in gallery_grid(self.n_faces):
            point, hi = self.threshold(n, hi=hi)
            out.append(point)
            if on_progress is not None:
                on_progress(1)
        return out


def open_set_curve(
    pool: CalibrationFaces,
    source: str,
    target_far: float = DEFAULT_TARGET_FAR,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[OpenSetCurve, list[CurvePoint]]:
    """The manifest's open-set curve for ``pool``; ``source`` names the data set."""
    est = StrangerFAR(pool, target_far, confidence=confidence, n_bootstrap=n_bootstrap, seed=seed)
    points = est.curve(on_progress)
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    provenance = (
        f"facestream calibrate --open-set {today}: {source}; {pool.n_identities} identities, "
        f"{est.n_faces} faces, {est.n_faces} probes; t({points[0].gallery_faces})="
        f"{points[0].threshold:.4f} .. t({points[-1].gallery_faces})={points[-1].threshold:.4f}"
    )
    method = (
        f"{METHOD}: B={n_bootstrap}, seed {seed}, {100 * confidence:g}% upper bound; "
        "beyond the pool size the last threshold holds (extrapolated)"
    )
    curve = OpenSetCurve(
        points=[(p.gallery_faces, p.threshold) for p in points],
        target_far=target_far,
        confidence=confidence,
        measured_up_to=est.n_faces,
        method=method,
        provenance=provenance,
    )
    return curve, points


def calibrate_open_set_on_folders(
    pipe: FacePipeline,
    identities: dict[str, list[Path]],
    cache: EmbeddingCache | None,
    source: str,
    target_far: float = DEFAULT_TARGET_FAR,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[OpenSetCurve, list[CurvePoint]]:
    """Embed the identities' photos (cached) and measure their open-set curve."""
    paths = [p for ps in identities.values() for p in ps]
    embeddings = embed_paths(pipe, paths, cache, on_progress=on_progress)
    pool = pool_from(embeddings, identities)
    return open_set_curve(pool, source, target_far, confidence=confidence, n_bootstrap=n_bootstrap)


def store_open_set(store: ModelStore, version: str, curve: OpenSetCurve) -> Threshold:
    """Put ``curve`` into the version's manifest, replacing any (the shipped one too); the
    per-comparison value stays, for 1:1 verification."""
    thr = store.manifest(version).threshold.model_copy(update={"open_set": curve})
    write_threshold(store, version, thr)
    return thr


def write_shipped(
    path: Path,
    version: str,
    data_set: str,
    curve: OpenSetCurve,
    points: list[CurvePoint],
    command: str,
) -> ShippedCurve:
    """Write the default model's shipped curve (numbers and provenance, no faces)."""
    shipped = ShippedCurve(
        model_version=version,
        data_set=data_set,
        regenerate=command,
        open_set=curve,
        detail=[
            {
                "gallery_faces": p.gallery_faces,
                "threshold": p.threshold,
                "far_point": round(p.far_point, 6),
                "far_upper": round(p.far_upper, 6),
            }
            for p in points
        ],
    )
    path.write_text(_compact_json(shipped.model_dump(mode="json")) + "\n")
    return shipped


def _compact_json(obj: object, indent: str = "") -> str:
    """JSON with one short list or object per line (the file is read in code review)."""
    flat = json.dumps(obj)
    if len(flat) <= 96 or not isinstance(obj, dict | list):
        return flat
    inner = indent + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {_compact_json(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    items = [inner + _compact_json(v, inner) for v in obj]
    return "[\n" + ",\n".join(items) + f"\n{indent}]"
