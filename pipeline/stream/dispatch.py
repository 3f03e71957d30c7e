"""How a recognition worker sends its frames to the frame analyzer deployment.

- **A few frames per request** (``analyzer.frames_per_request``): each Serve call costs
  CPU in both processes (about 5 ms here, measured), and a request costs three of them
  (worker to analyzer, analyzer to embedder, analyzer to search). A poll's frames are
  split evenly over at least as many requests as there are replicas, so a short batch
  still keeps every replica busy.
- **Several batches in flight** (``workers.max_batches_in_flight``): the worker sends
  each poll's frames at once and publishes the batches in poll order, each as soon as
  its answers are in, so the analyzers work while the worker publishes and commits,
  and frames that arrive meanwhile do not wait for the batches before them to finish.
  A batch's answers are only *taken* once every batch before it has been committed;
  when one is rewound (or its partition halted) the batches after it are dropped and
  their partitions rewound too. The order, the at-least-once commit and the per-frame
  model version stay as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pipeline.config.stream import StreamConfig
from pipeline.serve.analyzer import AnalyzeRequest, AnalyzeResult
from pipeline.stream.retry import StageFailed

T = TypeVar("T")
BatchKey = tuple[tuple[str, int, int], ...]


def split_evenly(items: Sequence[T], most: int) -> list[list[T]]:
    """``items`` in order, in as few runs of at most ``most`` as can be, of sizes that
    differ by one at most (9 by 4: 3, 3, 3; not 4, 4, 1): the last request of a batch is
    not left to finish alone."""
    n = -(-len(items) // max(most, 1))
    size, extra = divmod(len(items), n) if n else (0, 0)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return out


def batch_key(records: Sequence[Any]) -> BatchKey:
    return tuple((r.topic, r.partition, r.offset) for r in records)


@dataclass
class Pending:
    """The answers of one batch's requests, on their way."""

    names: list[str]  # the frames' event ids, in order
    responses: list[Any]  # Serve responses, one per request of a few frames
    timeout_s: float
    done: int = 0  # responses known to have answered

    def result(self) -> list[AnalyzeResult]:
        """Every frame's answer, in order; a call that fails is not the frames' fault."""
        try:
            return [a for r in self.responses for a in r.result(timeout_s=self.timeout_s)]
        except Exception as exc:
            raise StageFailed("analyze", f"{type(exc).__name__}: {exc}") from exc

    def analyze(self, requests: list[AnalyzeRequest]) -> list[AnalyzeResult]:
        """The answers, for the frames they were sent for (``FrameStep.run``'s analyzer)."""
        if [r.name for r in requests] != self.names:
            raise RuntimeError("a batch sent ahead is not the batch being processed")
        return self.result()

    def ready(self) -> bool:
        """Whether every request has answered (or failed): ``result`` will not wait."""
        while self.done < len(self.responses):
            try:
                self.responses[self.done].result(timeout_s=0.0)
            except TimeoutError:
                return False
            except Exception:
                pass  # failed: ``result`` raises it as the batch's failure
            self.done += 1
        return True

    def cancel(self) -> None:
        for r in self.responses:
            r.cancel()


class Dispatcher:
    """Sends frames to the analyzers (module doc)."""

    def __init__(self, analyzer: Any, cfg: StreamConfig) -> None:
        self.analyzer = analyzer
        a = cfg.analyzer
        self.per_request = a.frames_per_request
        self.replicas = max(a.autoscaling.min_replicas if a.autoscaling else a.replicas, 1)
        # An analyzer request makes two calls of its own (embedder, then search), each
        # bounded by call_timeout_s, besides its frames' face work and its wait for a
        # replica. Waiting only twice that, a busy machine saw the worker give up first
        # whenever a stage was down, and report "analyze" instead of the stage (the
        # gallery-outage test counted no "search" retry); a third call's worth of slack
        # lets the analyzer's own answer, naming the stage, arrive first.
        self.timeout_s = 3 * cfg.workers.call_timeout_s
        self.warm_up_timeout_s = cfg.workers.call_timeout_s

    def warm_up(self) -> None:
        """An empty request: a handle's first call looks the replicas up, which a
        camera's first frames would otherwise wait for. Best effort: an analyzer not up
        yet is looked up by the first frames, as before."""
        with contextlib.suppress(Exception):
            self.analyzer.analyze.remote([]).result(timeout_s=self.warm_up_timeout_s)

    def send(self, requests: Sequence[AnalyzeRequest]) -> Pending:
        # Never fewer requests than replicas: a short batch still keeps every one busy.
        most = min(self.per_request, -(-len(requests) // self.replicas))
        chunks = split_evenly(requests, most)
        responses = [self.analyzer.analyze.remote(chunk) for chunk in chunks]
        return Pending([r.name for r in requests], responses, self.timeout_s)

    def analyze(self, requests: list[AnalyzeRequest]) -> list[AnalyzeResult]:
        return self.send(requests).result()
