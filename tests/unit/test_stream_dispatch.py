"""How a worker splits a poll's frames into analyzer requests (``pipeline.stream.dispatch``)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.config.stream import StreamConfig
from pipeline.serve.analyzer import AnalyzeRequest
from pipeline.stream.dispatch import Dispatcher, Pending, split_evenly
from pipeline.stream.retry import StageFailed


@pytest.mark.parametrize(
    ("n", "most", "sizes"),
    [(0, 4, []), (1, 4, [1]), (4, 4, [4]), (5, 4, [3, 2]), (8, 4, [4, 4]), (9, 4, [3, 3, 3])],
)
def test_runs_are_as_few_as_can_be_and_even(n: int, most: int, sizes: list[int]) -> None:
    runs = split_evenly(list(range(n)), most)
    assert [len(r) for r in runs] == sizes
    assert [x for r in runs for x in r] == list(range(n))  # in order, none lost


class Handle:
    """Records what would go to the analyzer deployment (no Serve here: only the split
    is under test; the stream tests run the real deployment)."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.analyze = self

    def remote(self, chunk: list[AnalyzeRequest]) -> Any:
        self.requests.append([r.name for r in chunk])
        return None


def frames(n: int) -> list[AnalyzeRequest]:
    return [AnalyzeRequest(b"", f"cam:{i}", 1, 1) for i in range(n)]


@pytest.mark.parametrize(("n", "sizes"), [(1, [1]), (3, [2, 1]), (8, [4, 4]), (12, [4, 4, 4])])
def test_a_batch_goes_in_requests_of_a_few_frames_never_fewer_than_replicas(
    n: int, sizes: list[int]
) -> None:
    cfg = StreamConfig.model_validate({"analyzer": {"replicas": 2, "frames_per_request": 4}})
    handle = Handle()
    pending = Dispatcher(handle, cfg).send(frames(n))
    assert [len(r) for r in handle.requests] == sizes
    assert pending.names == [f"cam:{i}" for i in range(n)]
    with pytest.raises(RuntimeError, match="not the batch"):
        pending.analyze(frames(n + 1))  # answers are only taken for the frames they were sent for


class Answer:
    """A response that answers after ``polls`` checks (``result`` with a zero timeout
    raises ``TimeoutError`` until then, as a Serve response does)."""

    def __init__(self, polls: int, fail: bool = False) -> None:
        self.polls, self.fail = polls, fail

    def result(self, timeout_s: float | None = None) -> list[Any]:
        if self.polls > 0 and timeout_s == 0.0:
            self.polls -= 1
            raise TimeoutError
        if self.fail:
            raise RuntimeError("replica died")
        return []


def test_a_batch_is_ready_once_every_request_answered_or_failed() -> None:
    pending = Pending(["cam:0", "cam:1"], [Answer(0), Answer(2, fail=True)], 1.0)
    assert not pending.ready() and not pending.ready()  # the second is still out
    assert pending.ready()  # it failed: ready, and ``result`` says so as the batch's failure
    with pytest.raises(StageFailed, match="analyze: RuntimeError: replica died"):
        pending.result()
