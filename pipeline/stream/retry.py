"""Bounded retries of a consumer's batches: what a recognition worker does when a batch
fails, written without frames, Kafka or Ray (the callables do the work).

A batch is a list of records, each with a ``topic``, ``partition`` and ``offset``. The
policy runs it through ``process``; a :class:`StageFailed` rewinds every partition of
the batch to its first offset (``seek``) and pauses (``wait``), the pause doubling from
``backoff_s`` up to ``backoff_max_s`` with each failed attempt of the same batch. After
``max_attempts`` the records go one at a time:

- a record that fails on its own for a reason of its own (``frame_fault``: retrying it
  cannot help) is handed to ``give_up`` (the worker dead-letters and commits it), and
  its partition goes on;
- a record that fails otherwise (an outage), or whose ``give_up`` fails too, halts its
  partition there: rewound to it, probed every ``backoff_max_s``, nothing past it
  processed, while the other partitions go on. It goes on again once it passes.

The ``observer`` hears of every retry and of the halted partitions (the worker's stats).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pipeline.errors import FacestreamError

log = logging.getLogger(__name__)
Partition = tuple[str, int]  # (topic, partition)


class StageFailed(FacestreamError):
    """A stage failed: rewind and retry. ``frame_fault``: retrying the same frame cannot
    help (Kafka refused one of its outputs for good, or the worker's code failed on it),
    so once its batch is out of attempts the frame alone is dead-lettered; otherwise
    (an outage) the partition is held back."""

    code = "stage_failed"

    def __init__(self, stage: str, detail: str, *, frame_fault: bool = False) -> None:
        super().__init__(f"{stage}: {detail}")
        self.stage = stage
        self.detail = detail
        self.frame_fault = frame_fault


def retriable(exc: BaseException) -> bool:
    """Kafka errors that may pass on a retry (timeouts, leaders moving, brokers down)."""
    return bool(getattr(exc, "retriable", False)) or type(exc).__name__ == "KafkaTimeoutError"


def as_stage_failed(exc: Exception) -> StageFailed:
    """``exc`` as a failure of the batch: a ``StageFailed`` as it is, anything else (a
    bug on the records' data) as a fault of the frame."""
    if isinstance(exc, StageFailed):
        return exc
    return StageFailed("batch", f"{type(exc).__name__}: {exc}", frame_fault=True)


class Record(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...


class RetryObserver(Protocol):
    def retried(self, stage: str, error: str) -> None:
        """A batch (or a record alone) failed at ``stage`` and is held back."""

    def halted_now(self, partitions: list[Partition]) -> None:
        """The partitions halted now (called whenever that list changes)."""


def first_offsets(records: Sequence[Record]) -> dict[Partition, int]:
    """The first offset of each partition of a batch."""
    first: dict[Partition, int] = {}
    for r in records:
        key = (r.topic, r.partition)
        first[key] = min(first.get(key, r.offset), r.offset)
    return first


class RetryPolicy:
    """Runs batches through ``process`` with bounded, doubling retries (module doc)."""

    def __init__(
        self,
        *,
        max_attempts: int,
        backoff_s: float,
        backoff_max_s: float,
        seek: Callable[[str, int, int], None],
        wait: Callable[[float], Any],
        observer: RetryObserver,
        name: str = "",
    ) -> None:
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.seek = seek
        self.wait = wait
        self.observer = observer
        self.name = name
        # Partition -> (first offset of the failing batch, attempts so far).
        self.attempts: dict[Partition, tuple[int, int]] = {}
        self.halted: list[Partition] = []

    def run(
        self,
        records: Sequence[Record],
        process: Callable[[Sequence[Record], bool], None],
        give_up: Callable[[Record, StageFailed], None],
    ) -> bool:
        """One polled batch: ``process(records, alone)``, retried or split up as the
        module doc says; ``give_up(record, failure)`` takes a frame that failed alone.
        True when every partition of the batch went on past it; False when one was
        rewound (or halted), so the records polled after it must not be processed yet."""
        if self.exhausted(records):
            return self.one_by_one(records, process, give_up)
        try:
            process(records, False)
        except Exception as exc:
            if not isinstance(exc, StageFailed):  # a bug: keep the frames, say what happened
                log.exception("worker %s: batch failed", self.name)
            self.rewind(records, as_stage_failed(exc))
            return False
        self.succeeded(records)
        return True

    def exhausted(self, records: Sequence[Record]) -> bool:
        """Has a partition of this batch failed ``max_attempts`` times from here?"""
        for tp, off in first_offsets(records).items():
            at = self.attempts.get(tp)
            if at is not None and at[0] == off and at[1] >= self.max_attempts:
                return True
        return False

    def backoff(self, attempts: int) -> float:
        return min(self.backoff_max_s, self.backoff_s * 2 ** max(attempts - 1, 0))

    def succeeded(self, records: Sequence[Record]) -> None:
        for tp in first_offsets(records):
            self.attempts.pop(tp, None)
            if tp in self.halted:
                self.halted.remove(tp)
                self.observer.halted_now(list(self.halted))
                log.warning("worker %s: %s-%d goes on again", self.name, *tp)

    def _seek(self, tp: Partition, offset: int) -> None:
        try:
            self.seek(tp[0], tp[1], offset)
        except Exception as exc:  # the partition moved away: its new owner replays
            log.info("seek %s-%d: %s", tp[0], tp[1], exc)

    def rewind(self, records: Sequence[Record], exc: StageFailed) -> None:
        """Seek back to the batch's first offsets; the frames are processed again after a
        pause that doubles with each failed attempt of the same batch."""
        self.observer.retried(exc.stage, str(exc))
        attempts = 1
        for tp, off in first_offsets(records).items():
            prev = self.attempts.get(tp)
            n = prev[1] + 1 if prev is not None and prev[0] == off else 1
            self.attempts[tp] = (off, n)
            attempts = max(attempts, n)
            self._seek(tp, off)
        log.warning(
            "worker %s: %s; retrying the batch (attempt %d of %d)",
            self.name,
            exc,
            attempts,
            self.max_attempts,
        )
        self.wait(self.backoff(attempts))

    def one_by_one(
        self,
        records: Sequence[Record],
        process: Callable[[Sequence[Record], bool], None],
        give_up: Callable[[Record, StageFailed], None],
    ) -> bool:
        """The batch is out of attempts: each record alone, in order. One that fails for
        a reason of its own is given up; one that fails otherwise (an outage) halts its
        partition there, and the other partitions go on. True when none halted."""
        halted: set[Partition] = set()
        for rec in records:
            tp = (rec.topic, rec.partition)
            if tp in halted:
                continue
            try:
                try:
                    process([rec], True)
                except Exception as exc:
                    failed = as_stage_failed(exc)
                    if not failed.frame_fault:
                        raise
                    if failed is not exc:
                        log.exception("worker %s: frame failed on its own", self.name)
                    give_up(rec, failed)
            except Exception as exc:
                halted.add(tp)
                self.halt(rec, exc)
                self._seek(tp, rec.offset)
                continue
            self.succeeded([rec])
        if halted:
            attempts = max(self.attempts.get(tp, (0, 1))[1] for tp in halted)
            self.wait(self.backoff(attempts))
        return not halted

    def halt(self, rec: Record, exc: BaseException) -> None:
        tp = (rec.topic, rec.partition)
        prev = self.attempts.get(tp)
        n = prev[1] + 1 if prev is not None and prev[0] == rec.offset else 1
        self.attempts[tp] = (rec.offset, max(n, self.max_attempts))
        stage = exc.stage if isinstance(exc, StageFailed) else "batch"
        self.observer.retried(stage, f"halted at {rec.topic}-{rec.partition}@{rec.offset}: {exc}")
        if tp not in self.halted:
            self.halted.append(tp)
            self.observer.halted_now(list(self.halted))
        log.error(
            "worker %s: partition %s-%d halted at offset %d after %d attempts: %s; probing "
            "every %.1fs",
            self.name,
            rec.topic,
            rec.partition,
            rec.offset,
            self.attempts[tp][1],
            exc,
            self.backoff(self.attempts[tp][1]),
        )
