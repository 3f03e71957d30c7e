"""Promotion and rollback of model versions, behind an evaluation gate: the one path for
the offline case (a gallery re-embedded in this process) and the live one (a running
``facestream run`` whose Serve deployments swap in place).

Promotion of version V (``promote(store, swap, V, force)``):

1. Check V: its manifest reads and its files match their sha256.
2. Gate: V must beat the active version A on held-out metrics measured on the *same*
   held-out data (the run that trained V evaluated its parent; a version trained on
   the same split also carries comparable numbers). Refused otherwise, with the
   numbers, unless ``force`` (then the override and the failed gate are recorded).
3. ``swap.switch(A, V)``: whatever serves faces moves to V. The mechanism is a
   parameter (:class:`Swap`): ``pipeline.gallery.swap.GallerySwap`` re-embeds the
   gallery from its stored crops into V's collection and flips the Milvus alias;
   ``pipeline.serve.swap.ServeSwap`` does that inside the running search deployment and
   rolls the embedder replicas in between, so that no request embeds with one version
   and searches another. ``None``: the model store only.
4. ``ModelStore.set_active(V)``: the atomic flip of ``ACTIVE``.
5. One JSON line appended to ``<store>/HISTORY.jsonl``: who, when, from, to, forced,
   the gate's numbers, the swap's counts and time.

Rollback runs steps 3-5 towards the version that was active before the last
promotion to the current one (or ``to``); it is not gated (it is the way back from a
bad promotion).

Steps 3-5 are journalled: ``<store>/SWAP_PENDING.json`` (action, from, to) is written
before step 3 and removed after step 5. A process that dies in between (the gallery
alias moved, ``ACTIVE`` not yet) leaves it behind, and the next start-up repairs the
pair with it (``pipeline.gallery.swap.reconcile``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import getpass
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from pipeline.errors import FacestreamError
from pipeline.face.manifest import verify_files
from pipeline.files import private_dir, private_file
from pipeline.models.store import ModelStore

HISTORY_FILE = "HISTORY.jsonl"
JOURNAL_FILE = "SWAP_PENDING.json"
# Lower is better for these metrics; higher for every other one.
LOWER_IS_BETTER = ("eer",)


def lower_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER


class Swap(Protocol):
    """How a change of model version reaches what serves faces (step 3)."""

    def serving(self) -> str | None:
        """The version served now (None: nothing served yet)."""
        ...

    def switch(self, old: str | None, new: str) -> dict[str, Any] | None:
        """Serve ``new`` instead of ``old``; what was done, for the history (JSON)."""
        ...


class PromotionError(FacestreamError):
    code = "promotion_failed"


class PromotionRefused(PromotionError):
    """The candidate fails the gate against the active model; the message holds the
    numbers."""

    code = "promotion_refused"

    def __init__(self, message: str, gate: GateResult) -> None:
        super().__init__(message)
        self.gate = gate


@dataclass(frozen=True)
class GatePolicy:
    """What "beats" means.

    ``primary`` must be strictly better (by more than ``min_gain``; a negative
    ``min_gain`` lets it be that much worse, as for a quantisation); every other metric
    that both versions have may be worse by at most ``tolerance`` (absolute), and
    guard-set accuracies (``<set>.accuracy``, e.g. LFW) by at most ``guard_tolerance``.
    """

    primary: str = "tar@far=0.01"
    min_gain: float = 0.0
    tolerance: float = 0.01
    guard_tolerance: float = 0.005
    checked: tuple[str, ...] = ("tar@far=0.001", "eer", "roc_auc", "rank1", "dir@far=0.01")


# A quantisation of the active version (``pipeline.models.quantize``) need not beat it,
# only match it: LFW-dev 10-fold accuracy within 0.1 point and TAR@FAR=1e-2 within 0.3
# point of its FP32 parent, measured on the same pairs.
QUANTIZED_POLICY = GatePolicy(
    primary="tar@far=0.01",
    min_gain=-0.003,
    tolerance=0.005,
    guard_tolerance=0.001,
    checked=("roc_auc",),
)


def policy_for(store: ModelStore, candidate: str, active: str) -> GatePolicy:
    """:data:`QUANTIZED_POLICY` for a quantisation of ``active``; else the default."""
    m = store.manifest(candidate)
    return QUANTIZED_POLICY if m.precision != "fp32" and m.parent == active else GatePolicy()


@dataclass
class GateRow:
    metric: str
    active: float | None
    candidate: float | None
    rule: str
    ok: bool

    @property
    def delta(self) -> float | None:
        if self.active is None or self.candidate is None:
            return None
        return self.candidate - self.active


@dataclass
class GateResult:
    candidate: str
    active: str
    passed: bool
    comparable: bool
    heldout_digest: str | None
    rows: list[GateRow] = field(default_factory=list)
    reason: str = ""

    def table(self) -> str:
        lines = [f"  {'metric':<24}{'active':>10}{'candidate':>11}{'delta':>10}  rule"]
        for r in self.rows:
            a = "-" if r.active is None else f"{r.active:.4f}"
            c = "-" if r.candidate is None else f"{r.candidate:.4f}"
            d = "-" if r.delta is None else f"{r.delta:+.4f}"
            mark = "ok" if r.ok else "FAILS"
            lines.append(f"  {r.metric:<24}{a:>10}{c:>11}{d:>10}  {r.rule} ({mark})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, r in zip(d["rows"], self.rows, strict=True):
            row["delta"] = r.delta
        return d


def _evaluations(lineage: dict[str, Any]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    ev = lineage.get("evaluation")
    if not isinstance(ev, dict):
        return None, {}
    models = ev.get("models")
    return ev.get("heldout_digest"), models if isinstance(models, dict) else {}


def comparable_metrics(
    store: ModelStore, candidate: str, active: str
) -> tuple[str | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(held-out digest, active's metrics, candidate's metrics) on the same held-out data.

    Sources, in order: the candidate's own evaluation (which ran its parent, and any
    other version it compared against), then the active version's evaluation when it
    was measured on the same held-out digest.
    """
    digest, models = _evaluations(store.manifest(candidate).lineage)
    cand = models.get(candidate)
    if cand is None:
        return digest, None, None
    if active in models:
        return digest, models[active], cand
    a_digest, a_models = _evaluations(store.manifest(active).lineage)
    if digest is not None and a_digest == digest and active in a_models:
        return digest, a_models[active], cand
    return digest, None, cand


def gate_check(
    store: ModelStore, candidate: str, active: str, policy: GatePolicy | None = None
) -> GateResult:
    """Does ``candidate`` beat ``active`` on the same held-out data (or, for a
    quantisation of ``active``, match it: :func:`policy_for`)?"""
    policy = policy or policy_for(store, candidate, active)
    digest, a, c = comparable_metrics(store, candidate, active)
    if c is None:
        return GateResult(
            candidate,
            active,
            False,
            False,
            digest,
            reason=f"{candidate} carries no held-out evaluation (it was made by neither "
            "`facestream train` nor `facestream models quantize`)",
        )
    if a is None:
        return GateResult(
            candidate,
            active,
            False,
            False,
            digest,
            reason=f"no metrics of the active version {active} on {candidate}'s held-out "
            f"split ({digest}); it was trained from {store.manifest(candidate).parent}. "
            f"Fine-tune from {active} to get a comparable evaluation",
        )
    rows: list[GateRow] = []
    pa, pc = a.get(policy.primary), c.get(policy.primary)
    ok = pa is not None and pc is not None and _better(policy.primary, pc, pa, policy.min_gain)
    rule = (
        "must be better" if policy.min_gain >= 0 else f"may be at most {-policy.min_gain:g} worse"
    )
    rows.append(GateRow(policy.primary, pa, pc, rule, ok))
    guards = sorted(k for k in c if k.endswith(".accuracy") and k in a)
    for k in (*policy.checked, *guards):
        va, vc = a.get(k), c.get(k)
        if va is None or vc is None:
            continue
        tol = policy.guard_tolerance if k in guards else policy.tolerance
        worse = (vc - va) if lower_is_better(k) else (va - vc)
        rows.append(GateRow(k, va, vc, f"may be at most {tol:g} worse", worse <= tol + 1e-12))
    passed = all(r.ok for r in rows)
    reason = "" if passed else "fails: " + ", ".join(r.metric for r in rows if not r.ok)
    return GateResult(candidate, active, passed, True, digest, rows, reason)


def _better(metric: str, cand: float, active: float, min_gain: float) -> bool:
    gain = (active - cand) if lower_is_better(metric) else (cand - active)
    # A negative min_gain is a tolerance ("at most this much worse"), inclusive.
    return gain > min_gain if min_gain >= 0 else gain >= min_gain - 1e-12


# -- history -----------------------------------------------------------------------------


@dataclass
class PromotionRecord:
    action: str  # "promote" | "rollback"
    from_version: str | None
    to_version: str
    forced: bool
    at: str
    user: str
    reason: str = ""
    gate: dict[str, Any] | None = None
    reembed: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def store_lock(store: ModelStore, *, wait: bool = True) -> Iterator[bool]:
    """One promotion or rollback at a time per store (across processes). Yields
    whether the lock is held: always with ``wait``, else False when another process
    holds it (a promotion is running)."""
    private_dir(store.root)
    fd = private_file(store.root / ".promotion.lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PendingSwap:
    """The journal of a promotion or rollback between steps 3 and 5."""

    action: str
    from_version: str | None
    to_version: str
    at: str


def write_journal(store: ModelStore, pending: PendingSwap) -> None:
    """Write the journal atomically and durably: it must exist before the alias moves."""
    path = store.root / JOURNAL_FILE
    tmp = path.with_name(f".{JOURNAL_FILE}.tmp")
    with os.fdopen(private_file(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
        f.write(json.dumps(asdict(pending), sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def pending_swap(store: ModelStore) -> PendingSwap | None:
    """The journal left by a promotion or rollback that did not finish, else None."""
    path = store.root / JOURNAL_FILE
    try:
        return PendingSwap(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise PromotionError(f"{path}: unreadable swap journal ({exc})") from exc


def clear_journal(store: ModelStore) -> None:
    with contextlib.suppress(FileNotFoundError):
        (store.root / JOURNAL_FILE).unlink()


def record(store: ModelStore, rec: PromotionRecord) -> None:
    """Append one line to ``HISTORY.jsonl`` (fsynced: it is the audit trail)."""
    path = store.root / HISTORY_FILE
    with os.fdopen(private_file(path, os.O_WRONLY | os.O_APPEND), "a") as f:
        f.write(json.dumps(rec.to_dict(), sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def history(store: ModelStore) -> list[PromotionRecord]:
    path = store.root / HISTORY_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(PromotionRecord(**json.loads(line)))
    return out


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _active(store: ModelStore) -> str | None:
    try:
        return store.active_version()
    except FacestreamError:
        return None


def _finish(
    store: ModelStore,
    swap: Swap | None,
    old: str | None,
    new: str,
    rec: PromotionRecord,
    t0: float,
) -> PromotionRecord:
    """Steps 3-5: switch what serves faces, flip ``ACTIVE``, record (journalled)."""
    write_journal(store, PendingSwap(rec.action, old, new, rec.at))
    rec.reembed = swap.switch(old, new) if swap is not None else None
    store.set_active(new)
    rec.seconds = round(time.perf_counter() - t0, 3)
    record(store, rec)
    clear_journal(store)
    return rec


def promote(
    store: ModelStore,
    swap: Swap | None,
    version: str,
    force: bool = False,
    *,
    policy: GatePolicy | None = None,
    reason: str = "",
) -> PromotionRecord:
    """Make ``version`` the active model (see the module docstring for the steps).

    ``swap`` None promotes the model store only (nothing serves faces here).
    Raises ``PromotionRefused`` when the gate fails and ``force`` is False.
    """
    t0 = time.perf_counter()
    with store_lock(store):
        verify_files(store.manifest(version), store.folder(version))
        active = _active(store)
        if active == version and (swap is None or swap.serving() in (None, version)):
            raise PromotionError(f"{version} is already the active version")
        gate = gate_check(store, version, active, policy) if active else None
        if gate is not None and not gate.passed and not force:
            raise PromotionRefused(
                f"promotion of {version} refused: it fails the gate against the active model "
                f"{active}"
                f" on the held-out metrics"
                + (f" (held-out split {gate.heldout_digest})" if gate.heldout_digest else "")
                + (f"\n{gate.table()}" if gate.rows else "")
                + f"\n{gate.reason}.\nUse --force to promote anyway (recorded in "
                f"{store.root / HISTORY_FILE}).",
                gate,
            )
        rec = PromotionRecord(
            action="promote",
            from_version=active,
            to_version=version,
            forced=bool(force and gate is not None and not gate.passed),
            at=utc_now(),
            user=current_user(),
            reason=reason,
            gate=gate.to_dict() if gate else None,
        )
        return _finish(store, swap, active, version, rec, t0)


def rollback_target(store: ModelStore, current: str) -> str:
    """The version that was active before the latest promotion to ``current``."""
    for rec in reversed(history(store)):
        if rec.action == "promote" and rec.to_version == current and rec.from_version:
            return rec.from_version
    raise PromotionError(
        f"nothing to roll back to: {current} did not become active through "
        f"`facestream models promote` (see {store.root / HISTORY_FILE}); name a version "
        "with --to"
    )


def rollback(
    store: ModelStore,
    swap: Swap | None,
    to: str | None = None,
    *,
    reason: str = "",
) -> PromotionRecord:
    """Return to the previous version (or ``to``): steps 3-5 of a promotion, ungated."""
    t0 = time.perf_counter()
    with store_lock(store):
        current = store.active_version()
        target = to or rollback_target(store, current)
        if target == current:
            raise PromotionError(f"{target} is already the active version")
        verify_files(store.manifest(target), store.folder(target))
        rec = PromotionRecord(
            action="rollback",
            from_version=current,
            to_version=target,
            forced=False,
            at=utc_now(),
            user=current_user(),
            reason=reason,
        )
        return _finish(store, swap, current, target, rec, t0)


__all__ = [
    "HISTORY_FILE",
    "JOURNAL_FILE",
    "GatePolicy",
    "GateResult",
    "PendingSwap",
    "PromotionError",
    "PromotionRecord",
    "PromotionRefused",
    "Swap",
    "clear_journal",
    "gate_check",
    "history",
    "lower_is_better",
    "pending_swap",
    "promote",
    "record",
    "rollback",
    "rollback_target",
    "store_lock",
    "write_journal",
]
