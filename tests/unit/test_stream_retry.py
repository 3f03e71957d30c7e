"""The worker's retry policy on its own: no frames, no Kafka, no Ray; the callables are
the test's. Bounded attempts with doubling pauses, then one record at a time: a record
that fails for a reason of its own is given up, an outage halts its partition while the
others go on, and a halted partition goes on again once it passes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pipeline.stream.retry import Partition, RetryPolicy, StageFailed, first_offsets


@dataclass(frozen=True)
class Rec:
    topic: str
    partition: int
    offset: int


@dataclass
class Observer:
    retries: list[str] = field(default_factory=list)
    halted: list[list[Partition]] = field(default_factory=list)

    def retried(self, stage: str, error: str) -> None:
        self.retries.append(stage)

    def halted_now(self, partitions: list[Partition]) -> None:
        self.halted.append(partitions)


@dataclass
class Harness:
    """A policy whose seeks, pauses, processed batches and given-up records are noted."""

    fail: dict[int, BaseException | None] = field(default_factory=dict)  # offset -> error
    seeks: list[tuple[str, int, int]] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    calls: list[tuple[list[int], bool]] = field(default_factory=list)
    given_up: list[tuple[int, str]] = field(default_factory=list)
    give_up_fails: bool = False
    observer: Observer = field(default_factory=Observer)

    def __post_init__(self) -> None:
        self.policy = RetryPolicy(
            max_attempts=3,
            backoff_s=1.0,
            backoff_max_s=3.0,
            seek=lambda t, p, o: self.seeks.append((t, p, o)),
            wait=self.waits.append,
            observer=self.observer,
            name="w0",
        )

    def process(self, records: Sequence[Any], alone: bool) -> None:
        self.calls.append(([r.offset for r in records], alone))
        for r in records:
            exc = self.fail.get(r.offset)
            if exc is not None:
                raise exc

    def give_up(self, rec: Any, exc: StageFailed) -> None:
        if self.give_up_fails:
            raise StageFailed("publish", "the dead letter was refused too")
        self.given_up.append((rec.offset, exc.stage))

    def run(self, records: list[Rec]) -> bool:
        return self.policy.run(records, self.process, self.give_up)


A = [Rec("f", 0, 10), Rec("f", 0, 11)]
B = [Rec("f", 1, 50), Rec("f", 1, 51)]


def test_a_batch_that_passes_is_processed_once_without_a_pause() -> None:
    h = Harness()
    assert h.run(A + B)  # every partition went on: the batch polled after it may go too
    assert h.calls == [([10, 11, 50, 51], False)] and not h.waits and not h.seeks
    assert first_offsets(A + B) == {("f", 0): 10, ("f", 1): 50}


def test_a_failing_batch_is_rewound_with_doubling_capped_pauses() -> None:
    h = Harness(fail={51: StageFailed("analyze", "replicas busy")})
    for _ in range(3):
        assert not h.run(A + B)  # the consumer would poll the rewound batch again
    assert h.seeks == [("f", 0, 10), ("f", 1, 50)] * 3
    assert h.waits == [1.0, 2.0, 3.0]  # doubled, capped at backoff_max_s
    assert h.observer.retries == ["analyze"] * 3
    assert h.policy.exhausted(A + B) and not h.policy.exhausted(B[1:])


def test_an_outage_halts_only_its_partition_and_passes_later() -> None:
    h = Harness(fail={51: StageFailed("analyze", "embedder unreachable")})
    for _ in range(3):
        h.run(A + B)
    h.seeks.clear()
    h.waits.clear()
    assert not h.run(A + B)  # out of attempts: one record at a time; one partition halted
    assert h.calls[-4:] == [([10], True), ([11], True), ([50], True), ([51], True)]
    assert h.policy.halted == [("f", 1)] and h.observer.halted[-1] == [("f", 1)]
    assert h.seeks == [("f", 1, 51)]  # partition 1 held at the failing record
    assert h.waits == [3.0] and not h.given_up
    # Partition 0 went on (nothing left of it to retry); partition 1 is probed from 51.
    assert ("f", 0) not in h.policy.attempts
    h.run([Rec("f", 1, 51)])  # still failing: still halted, nothing given up
    assert h.policy.halted == [("f", 1)] and not h.given_up
    h.fail.clear()
    h.run([Rec("f", 1, 51), Rec("f", 1, 52)])
    assert h.policy.halted == [] and h.observer.halted[-1] == []
    assert h.policy.attempts == {}


def test_a_frame_that_fails_on_its_own_is_given_up_and_its_partition_goes_on() -> None:
    refused = StageFailed("publish", "MessageSizeTooLargeError", frame_fault=True)
    h = Harness(fail={11: refused})
    for _ in range(3):
        h.run(A + B)
    assert h.run(A + B)  # given up and committed: its partition goes on
    assert h.given_up == [(11, "publish")]
    assert h.policy.halted == [] and h.policy.attempts == {}
    assert h.calls[-4:] == [([10], True), ([11], True), ([50], True), ([51], True)]


def test_a_bug_is_the_frames_fault_and_a_dead_letter_refused_halts() -> None:
    h = Harness(fail={50: KeyError("boom")})
    for _ in range(3):
        h.run(B)
    assert h.observer.retries == ["batch"] * 3
    h.run(B)
    assert h.given_up == [(50, "batch")]
    h2 = Harness(fail={50: ValueError("bad data")}, give_up_fails=True)
    for _ in range(4):
        h2.run(B)
    assert h2.policy.halted == [("f", 1)] and h2.seeks[-1] == ("f", 1, 50)
    assert h2.observer.retries[-1] == "publish"  # the halt names the dead letter's stage


@pytest.mark.parametrize("attempts", [1, 2, 5])
def test_the_pause_never_exceeds_its_cap(attempts: int) -> None:
    h = Harness()
    assert h.policy.backoff(attempts) == min(3.0, 2 ** (attempts - 1))
