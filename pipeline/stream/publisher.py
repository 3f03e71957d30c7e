"""Publish a batch's outputs, wait for Kafka's acks, then commit its offsets.

At-least-once: :meth:`Publisher.publish` returns only once Kafka acknowledged
(``acks=all``) every detection, identity event and dead letter of the batch, and the
worker commits (:meth:`Publisher.commit`) only after that. Anything not acknowledged
raises ``StageFailed("publish", ...)``: the batch is rewound and published again, with
the same event ids. A refusal for good (a record too large for the topic) is the
frame's fault (``frame_fault``); a timeout or an unavailable broker is not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.config.stream import StreamConfig
from pipeline.stream.retry import StageFailed, retriable
from pipeline.stream.schemas import DetectionEvent, DlqEvent, IdentityEvent, to_json
from pipeline.stream.stats import WorkerStats

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

log = logging.getLogger(__name__)


class Publisher:
    """The worker's producer and the commits of its consumer."""

    def __init__(
        self,
        cfg: StreamConfig,
        make_producer: Callable[[], KafkaProducer],
        consumer: KafkaConsumer,
        stats: WorkerStats,
    ) -> None:
        self.cfg = cfg
        self.make_producer = make_producer
        self.producer = make_producer()
        self.consumer = consumer
        self.stats = stats

    def reset_producer(self) -> None:
        """A new producer after Kafka refused a record for good: kafka-python's idempotent
        producer then fails every later send, to any topic (the dead letter included)."""
        with contextlib.suppress(Exception):
            self.producer.close(timeout=5)
        self.producer = self.make_producer()

    def publish(
        self,
        detections: Sequence[DetectionEvent],
        identities: Sequence[IdentityEvent],
        dead: Sequence[DlqEvent],
        *,
        alone: bool = False,
    ) -> None:
        """Send every output and wait for its ack. ``alone``: a single frame after its
        batch ran out of attempts; an identity event Kafka refuses for good is then
        dropped (and counted) instead of failing the frame: its detection stands."""
        t = self.cfg.topics
        sends: list[tuple[str, Any, Any]] = []  # (topic, event, future or the send's error)
        for topic, events in ((t.detections, detections), (t.identities, identities)):
            for ev in events:
                sends.append((topic, ev, self._send(topic, ev, ev.camera_id.encode())))
        for ev in dead:
            key = ev.camera_id.encode() if ev.camera_id else None
            sends.append((t.dlq, ev, self._send(t.dlq, ev, key)))
        failed = self._acks(sends)
        if alone:
            failed = self._drop_refused_identities(failed)
        if failed:
            topic, ev, exc = failed[0]
            detail = f"{len(failed)} of {len(sends)} outputs; {ev.event_id} to {topic}: {exc!r}"
            # Not retriable (too large, refused by the topic): the same frame fails again.
            fault = not any(retriable(e) for _, _, e in failed)
            if any(not retriable(e) for _, _, e in failed):
                self.reset_producer()
            raise StageFailed("publish", detail, frame_fault=fault)

    def _send(self, topic: str, ev: Any, key: bytes | None) -> Any:
        try:
            return self.producer.send(topic, key=key, value=to_json(ev))
        except Exception as exc:  # too large for max_request_size, buffer full, closed
            return exc

    def _acks(self, sends: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, BaseException]]:
        """Flush, then every send that was not acknowledged, with its error."""
        timeout = self.cfg.workers.output_timeout_s
        try:
            self.producer.flush(timeout=timeout)
        except Exception as exc:
            raise StageFailed("publish", f"{type(exc).__name__}: {exc}") from exc
        failed: list[tuple[str, Any, BaseException]] = []
        for topic, ev, fut in sends:
            if isinstance(fut, BaseException):
                failed.append((topic, ev, fut))
                continue
            try:
                fut.get(timeout=timeout)
            except Exception as exc:
                failed.append((topic, ev, exc))
        return failed

    def _drop_refused_identities(
        self, failed: list[tuple[str, Any, BaseException]]
    ) -> list[tuple[str, Any, BaseException]]:
        keep = []
        for topic, ev, exc in failed:
            if topic != self.cfg.topics.identities or retriable(exc):
                keep.append((topic, ev, exc))
                continue
            self.stats.output_dropped("identities")
            log.error(
                "worker %s: identity event %s dropped: %r", self.stats.worker, ev.event_id, exc
            )
        return keep

    def commit(self, records: Sequence[Any]) -> None:
        """Commit the offsets after ``records`` (the batch's outputs are acknowledged)."""
        from kafka import TopicPartition
        from kafka.errors import CommitFailedError, KafkaTimeoutError
        from kafka.structs import OffsetAndMetadata

        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, -1), r.offset)
        offsets = {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in last.items()}
        try:
            # Bounded: without a timeout kafka-python retries a commit for as long as the
            # broker or coordinator is away, and the worker (and its stop()) hangs.
            timeout_ms = int(self.cfg.workers.output_timeout_s * 1000)
            self.consumer.commit(offsets, timeout_ms=timeout_ms)
        except (CommitFailedError, KafkaTimeoutError) as exc:
            # The group moved these partitions while we worked, or the commit was not
            # acknowledged in time: the outputs are out, the frames are replayed (by us or
            # the new owner), and consumers drop the repeated event ids.
            self.stats.commit_refused()
            log.warning(
                "worker %s: commit refused (%s); frames will be replayed", self.stats.worker, exc
            )

    def close(self) -> None:
        for closer in (
            lambda: self.consumer.close(),
            lambda: self.producer.close(timeout=10),
        ):
            try:
                closer()
            except Exception as exc:  # closing twice or on a dead broker: nothing to add
                log.debug("close: %s", exc)
