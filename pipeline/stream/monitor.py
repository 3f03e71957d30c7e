"""What ``facestream run`` shows: the output topics read back (what Kafka acknowledged,
not what the actors believe) and the recognition group's lag.

:class:`Monitor` counts fps out, faces, identities, DLQ records and latency from the
offsets the topics had at start; :class:`LagProbe` counts the frames not yet committed
by the recognition group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import TopicPartition

from pipeline import metrics
from pipeline.config.stream import StreamConfig
from pipeline.stream import kafka_client
from pipeline.stream.events import Deduper

log = logging.getLogger(__name__)
SEEN_CAPACITY = 100_000  # event ids remembered to count replays (about 10 MB)


@dataclass
class Summary:
    elapsed_s: float = 0.0
    produced: int = 0  # frames acknowledged on the frames topic (by the ingesters)
    processed: int = 0  # distinct detection events read back
    faces: int = 0
    decisions: Counter[str] = field(default_factory=Counter)
    identity_events: int = 0
    identities: Counter[str] = field(default_factory=Counter)  # name -> events
    dlq: int = 0
    dlq_reasons: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0  # repeated event ids read back (at-least-once replays)
    dropped: int = 0
    reconnects: int = 0
    lag: int | None = None
    fps_in: float = 0.0
    fps_out: float = 0.0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    workers_alive: int = 0
    workers: int = 0
    worker_nodes: list[str] = field(default_factory=list)  # Ray nodes the workers run on
    ingest_states: dict[str, str] = field(default_factory=dict)
    model_version: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        for k in ("decisions", "identities", "dlq_reasons"):
            d[k] = dict(d[k])
        return d


class Monitor:
    """Reads the output topics from the offsets they had at start, in a thread."""

    def __init__(
        self, cfg: StreamConfig, window: int = 2_000, seen_capacity: int = SEEN_CAPACITY
    ) -> None:
        self.cfg = cfg
        self._consumer = kafka_client.consumer(cfg.kafka, "monitor")
        t = cfg.topics
        tps = []
        for topic in (t.detections, t.identities, t.dlq):
            for p in sorted(self._consumer.partitions_for_topic(topic) or []):
                tps.append(TopicPartition(topic, p))
        self._consumer.assign(tps)
        self._tps = tps
        starts = self._consumer.end_offsets(tps)
        for tp, off in starts.items():
            self._consumer.seek(tp, off)
        self._init_state(window, seen_capacity)
        self._next = dict(starts)  # the offset after the last record read, per partition
        self._ends: Any = None  # a second consumer: the reading one belongs to the thread
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def _init_state(self, window: int, seen_capacity: int) -> None:
        """Everything but the Kafka consumer (bounded: it lives as long as the run)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Repeats arrive close to the original (one uncommitted batch replayed), so a
        # bounded window of recent ids finds them; a set of every id would grow forever.
        self._seen = Deduper(seen_capacity)
        self.latencies: deque[float] = deque(maxlen=window)
        self.out_times: deque[float] = deque(maxlen=window)
        self.summary = Summary()

    def take(self, topic: str, ev: dict[str, Any]) -> None:
        """Count one output event read back (a repeated id counts as a duplicate)."""
        if self._seen.seen(f"{topic}|{ev.get('event_id')}"):
            self.summary.duplicates += 1
            return
        self._count(topic, ev, self.cfg.topics)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                polled = self._consumer.poll(timeout_ms=300)
            except Exception as exc:
                log.warning("monitor: %s", exc)
                self._stop.wait(1.0)
                continue
            with self._lock:
                for tp, records in polled.items():
                    for rec in records:
                        self._next[tp] = rec.offset + 1
                        try:
                            ev = json.loads(rec.value)
                        except (TypeError, ValueError):
                            continue
                        self.take(tp.topic, ev)

    def _count(self, topic: str, ev: dict[str, Any], t: Any) -> None:
        s = self.summary
        if topic == t.detections:
            s.processed += 1
            self.latencies.append(float(ev.get("latency_ms", 0.0)))
            self.out_times.append(time.monotonic())
            s.model_version = ev.get("model_version") or s.model_version
            for f in ev.get("faces", []):
                s.faces += 1
                s.decisions[f.get("decision", "?")] += 1
        elif topic == t.identities:
            s.identity_events += 1
            s.identities[ev.get("identity", {}).get("name", "?")] += 1
        elif topic == t.dlq:
            s.dlq += 1
            s.dlq_reasons[ev.get("reason", "?")] += 1

    def snapshot(self) -> Summary:
        with self._lock:
            s = Summary(**{k: v for k, v in self.summary.__dict__.items()})
            for k in ("decisions", "identities", "dlq_reasons"):
                setattr(s, k, Counter(getattr(self.summary, k)))
            if self.latencies:
                lat = np.asarray(self.latencies)
                s.latency_p50_ms = float(np.percentile(lat, 50))
                s.latency_p95_ms = float(np.percentile(lat, 95))
            now = time.monotonic()
            recent = [x for x in self.out_times if now - x <= 5.0]
            s.fps_out = len(recent) / 5.0
        return s

    def catch_up(self, timeout_s: float) -> bool:
        """Wait until every output record written so far has been read and counted.

        A drained stream has written all its outputs, but this reader may still be behind
        them: after a broker restart its client waits out a reconnect backoff of up to
        half a minute. A summary taken before it caught up would undercount."""
        deadline = time.monotonic() + timeout_s
        try:
            if self._ends is None:
                self._ends = kafka_client.consumer(self.cfg.kafka, "monitor-ends")
            ends = self._ends.end_offsets(self._tps)
        except Exception as exc:
            log.warning("monitor: the output topics' ends are unknown (%s)", exc)
            return False
        while True:
            with self._lock:
                behind = sum(max(0, end - self._next.get(tp, 0)) for tp, end in ends.items())
            if behind == 0:
                return True
            if time.monotonic() >= deadline:
                log.warning("monitor: %d output records not read back in %.0fs", behind, timeout_s)
                return False
            self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()
        if self._ends is not None:
            with contextlib.suppress(Exception):
                self._ends.close()


class LagProbe:
    """Frames in the topic not yet committed by the recognition group (clients reused
    between calls: the summary asks every second)."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.cfg = cfg
        self._admin: Any = None
        self._consumer: Any = None

    def __call__(self) -> int | None:
        k, topic = self.cfg.kafka, self.cfg.topics.frames
        try:
            if self._admin is None:
                self._admin = kafka_client.admin(k, "lag")
                self._consumer = kafka_client.consumer(k, "lag")
            lag = kafka_client.group_lag(self._admin, self._consumer, k.group_id, topic) or {}
            for partition, n in lag.items():
                metrics.CONSUMER_LAG.labels(group=k.group_id, topic=topic, partition=partition).set(
                    n
                )
            return sum(lag.values())
        except Exception as exc:  # the summary goes on without a lag figure
            log.debug("lag: %s", exc)
            self.close()
            return None

    def close(self) -> None:
        for client in (self._consumer, self._admin):
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self._admin = self._consumer = None
