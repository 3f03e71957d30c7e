"""One thread per sink: its events in order, each tried until the sink acknowledges it,
with doubling pauses; after the last try (or a refusal a retry cannot change) a
dead-letter record. A sink that is down holds its own queue back, nobody else's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from pipeline import metrics
from pipeline.bridge.derive import CameraClear
from pipeline.bridge.ledger import Ledger, Ticket
from pipeline.config.bridge import Retry
from pipeline.stream.schemas import BridgeEvent

log = logging.getLogger(__name__)


class Refused(Exception):
    """The receiver refused this event for good (a retry would send the same body)."""


@dataclass(frozen=True)
class Delivery:
    """An event (or a camera's "unknown person gone", MQTT only) for one sink, and the
    record it came from."""

    ticket: Ticket
    event: BridgeEvent | None = None
    clear: CameraClear | None = None

    @property
    def event_id(self) -> str:
        if self.event is not None:
            return self.event.event_id
        assert self.clear is not None
        return f"{self.clear.camera_id}:clear:{self.clear.ts_ms}"


class Sink(Protocol):
    name: str
    retry: Retry

    def deliver(self, d: Delivery) -> None:
        """Return once the receiver acknowledged; raise :class:`Refused` or any error."""

    def idle(self) -> None:
        """Called now and then while nothing is queued (periodic upkeep)."""

    def close(self) -> None: ...


DeadLetter = Callable[[str, Delivery, Literal["refused", "attempts_exhausted"], str, int], None]


@dataclass
class SinkStats:
    sent: int = 0
    failed: int = 0  # dead-lettered
    retried: int = 0
    last_error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent,
            "failed": self.failed,
            "retried": self.retried,
            "last_error": self.last_error,
        }


class SinkWorker:
    def __init__(self, sink: Sink, ledger: Ledger, dead_letter: DeadLetter) -> None:
        self.sink = sink
        self.ledger = ledger
        self.dead_letter = dead_letter
        self.stats = SinkStats()
        self._queue: deque[Delivery] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bridge-{sink.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.sink.name

    def start(self) -> None:
        self._thread.start()

    def put(self, d: Delivery) -> None:
        with self._cond:
            self._queue.append(d)
            self._cond.notify()
        metrics.BRIDGE_QUEUE.labels(sink=self.name).set(len(self._queue))

    def held(self) -> int:
        """Events waiting or being tried."""
        with self._cond:
            return len(self._queue)

    def stop(self, drain_s: float) -> None:
        """Let the sink finish what it holds for up to ``drain_s``, then stop it (what is
        left stays uncommitted: the next start reads it again)."""
        deadline = time.monotonic() + drain_s
        with self._cond:
            while self._queue and time.monotonic() < deadline and self._thread.is_alive():
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.sink.close()

    def _next(self) -> Delivery | None:
        while not self._stop.is_set():
            with self._cond:
                if self._queue:
                    return self._queue[0]
                self._cond.wait(0.5)
                if self._queue or self._stop.is_set():
                    continue
            try:
                self.sink.idle()
            except Exception as exc:
                log.warning("bridge sink %s: %s", self.name, exc)
        return None

    def _finish(self, d: Delivery) -> None:
        with self._cond:
            self._queue.popleft()
            self._cond.notify_all()
        self.ledger.done(d.ticket)
        metrics.BRIDGE_QUEUE.labels(sink=self.name).set(len(self._queue))

    def _run(self) -> None:
        while (d := self._next()) is not None:
            if self._try(d):
                self._finish(d)

    def _try(self, d: Delivery) -> bool:
        """Deliver ``d`` or dead-letter it; False only when the bridge is stopping."""
        retry = self.sink.retry
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                self.sink.deliver(d)
            except Refused as exc:
                return self._give_up(d, "refused", str(exc), attempt)
            except Exception as exc:
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if attempt >= retry.max_attempts:
                    return self._give_up(d, "attempts_exhausted", self.stats.last_error, attempt)
                self.stats.retried += 1
                metrics.BRIDGE_RETRIES.labels(sink=self.name).inc()
                log.info("bridge sink %s: %s; retry %d", self.name, self.stats.last_error, attempt)
                self._stop.wait(retry.delay_s(attempt))
                continue
            self.stats.sent += 1
            metrics.BRIDGE_EVENTS.labels(sink=self.name, outcome="sent").inc()
            return True
        return False

    def _give_up(
        self, d: Delivery, reason: Literal["refused", "attempts_exhausted"], detail: str, n: int
    ) -> bool:
        # The dead letter is this event's acknowledgement: until Kafka has it, the event
        # stays at the head of the queue (and its record uncommitted).
        pause = 0
        while not self._stop.is_set():
            try:
                self.dead_letter(self.name, d, reason, detail, n)
            except Exception as exc:
                pause += 1
                log.warning("bridge sink %s: dead letter not written: %s", self.name, exc)
                self._stop.wait(self.sink.retry.delay_s(pause))
                continue
            self.stats.failed += 1
            metrics.BRIDGE_EVENTS.labels(sink=self.name, outcome="dead_lettered").inc()
            return True
        return False
