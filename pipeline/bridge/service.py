"""The bridge: a consumer group of its own on the identities and detections topics that
hands each sink its events and commits a record only once every sink acknowledged it.

One thread reads Kafka (and is the only one to touch the consumer); each sink has its
own thread (``sink``). A sink that is down holds back its events and the commit of
their records; the other sinks go on until the down one holds ``bridge.max_queue``
events, then reading pauses until it drains.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from pipeline import metrics
from pipeline.bridge.derive import UnknownPeople, from_identity, parse_record
from pipeline.bridge.ledger import Ledger, Ticket
from pipeline.bridge.mqtt import MqttSink
from pipeline.bridge.rules import Router, compile_rules
from pipeline.bridge.sink import Delivery, Sink, SinkWorker
from pipeline.bridge.webhook import WebhookSink
from pipeline.config.bridge import MQTT_SINK, BridgeConfig
from pipeline.config.gallery import GalleryConfig, resolved_paths
from pipeline.config.stream import StreamConfig
from pipeline.errors import StartupFailed
from pipeline.gallery.catalogue import Catalogue
from pipeline.gallery.records import Identity
from pipeline.stream import kafka_client
from pipeline.stream.events import RecordRef, now_ms, source_ref
from pipeline.stream.schemas import BridgeDlqEvent, BridgeEvent, KafkaRef, to_json
from pipeline.stream.topics import ensure_topics

if TYPE_CHECKING:
    from pipeline.stream.runner import StreamRunner

log = logging.getLogger(__name__)
POLL_MS = 200
PEOPLE_PAGE = 1000
DLQ_TIMEOUT_S = 30.0


def _lookup(catalogue: Catalogue) -> Any:
    def find(who: str) -> list[Identity]:
        by_id = catalogue.find([who])
        if by_id:
            return list(by_id.values())
        return [p for p in _all_people(catalogue) if p.external_id == who] or (
            catalogue.find_by_name(who)
        )

    return find


def _all_people(catalogue: Catalogue) -> list[Identity]:
    people: list[Identity] = []
    while page := catalogue.list(limit=PEOPLE_PAGE, offset=len(people)):
        people += page
    return people


class Bridge:
    def __init__(
        self,
        cfg: BridgeConfig,
        stream: StreamConfig,
        gallery: GalleryConfig,
        *,
        cameras: Iterable[str] = (),
        start_from: Literal["latest", "earliest"] = "latest",
    ) -> None:
        self.cfg = cfg
        self.stream = stream
        self.gallery = gallery
        self.cameras = {c.id for c in stream.cameras} | set(cfg.cameras) | set(cameras)
        self.start_from = start_from
        self.ledger = Ledger()
        self.unknowns = UnknownPeople(cfg.unknown_min_faces, cfg.unknown_clear_s)
        self.read = 0
        self.unreadable = 0
        self.workers: dict[str, SinkWorker] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._catalogue: Catalogue | None = None
        self.router: Router | None = None
        # Per partition, the next offset not yet committed (read by drain()).
        self._done_to: dict[Any, int] = {}
        self._done_lock = threading.Lock()

    # -- start and stop -------------------------------------------------------------------
    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Check the rules against the gallery and the cameras, connect the sinks, join the
        consumer group; return once partitions are assigned (events published after this
        are delivered, with ``start_from="latest"`` too)."""
        if not self.cfg.sink_names():
            raise StartupFailed("bridge", "no sinks: configure bridge.mqtt or bridge.webhooks")
        _, _, url = resolved_paths(self.gallery)
        pw = self.gallery.catalogue_password
        self._catalogue = Catalogue(url, pw.get_secret_value() if pw else None)
        try:
            self.router = Router(
                compile_rules(self.cfg.effective_rules(), self.cameras, _lookup(self._catalogue))
            )
            if self.stream.kafka.create_topics:
                dlq = {self.cfg.dlq_topic: self.stream.kafka.output_partitions}
                ensure_topics(self.stream, dlq)
            self._producer = kafka_client.producer(self.stream.kafka, "bridge")
            for sink in self._sinks():
                self.workers[sink.name] = SinkWorker(sink, self.ledger, self._dead_letter)
                self.workers[sink.name].start()
            self._consumer = self._subscribe()
        except ValueError as exc:  # a webhook's secret file missing or too short
            self.stop()
            raise StartupFailed("bridge", str(exc)) from None
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._loop, name="bridge-consumer", daemon=True)
        self._thread.start()
        if not self._ready.wait(ready_timeout_s) or self._error is not None:
            err = self._error or TimeoutError(f"no partitions assigned in {ready_timeout_s:g}s")
            self.stop()
            raise StartupFailed("bridge", f"{type(err).__name__}: {err}")

    def _sinks(self) -> list[Sink]:
        # The webhooks first: a bad secret refuses the start before MQTT connects.
        sinks: list[Sink] = [WebhookSink(w) for w in self.cfg.webhooks]
        if self.cfg.mqtt is not None:
            catalogue = self._catalogue
            assert catalogue is not None
            mqtt = MqttSink(self.cfg.mqtt, lambda: _all_people(catalogue), self.cameras)
            mqtt.start()
            sinks.append(mqtt)
        return sinks

    def _subscribe(self) -> Any:
        from kafka import ConsumerRebalanceListener

        bridge = self
        t = self.stream.topics
        consumer = kafka_client.consumer(
            self.stream.kafka,
            "bridge",
            group_id=self.cfg.group_id,
            auto_offset_reset=self.start_from,
            max_poll_records=500,
            fetch_max_wait_ms=100,
        )

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                bridge._commit()
                bridge.ledger.forget(set(revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                pass

        consumer.subscribe([t.identities, t.detections], listener=Listener())
        return consumer

    def stop(self) -> None:
        """Stop reading, let the sinks finish what they hold (``stop_timeout_s``), commit
        what they acknowledged, close everything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        for worker in self.workers.values():
            worker.stop(self.cfg.stop_timeout_s)
        if self._consumer is not None:
            try:
                self._commit()
            finally:
                self._consumer.close(autocommit=False)
                self._consumer = None
        if self._producer is not None:
            self._producer.close(timeout=10)
            self._producer = None
        if self._catalogue is not None:
            self._catalogue.close()
            self._catalogue = None

    def failed(self) -> BaseException | None:
        """The error that stopped the reading thread, if one did."""
        return self._error

    # -- the reading thread ---------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._pace()
                batch = self._consumer.poll(timeout_ms=POLL_MS)
                for tp, records in batch.items():
                    for rec in records:
                        self._handle(tp, rec)
                self._commit()
                if not self._ready.is_set() and self._consumer.assignment():
                    for tp in self._consumer.assignment():
                        pos = self._consumer.position(tp)  # resolves "latest" before ready
                        with self._done_lock:
                            self._done_to.setdefault(tp, pos)
                    self._ready.set()
        except BaseException as exc:
            log.exception("bridge: the Kafka reader stopped")
            self._error = exc
            self._ready.set()

    def _pace(self) -> None:
        """Pause reading while a sink holds ``max_queue`` events (it is down)."""
        full = any(w.held() >= self.cfg.max_queue for w in self.workers.values())
        parts = self._consumer.assignment()
        if full:
            self._consumer.pause(*parts)
        elif self._consumer.paused():
            self._consumer.resume(*self._consumer.paused())

    def _handle(self, tp: Any, rec: Any) -> None:
        self.read += 1
        kind = "identities" if tp.topic == self.stream.topics.identities else "detections"
        ref = KafkaRef(topic=tp.topic, partition=tp.partition, offset=rec.offset)
        try:
            ev = parse_record(kind, rec.value)
        except ValidationError as exc:
            self.unreadable += 1
            self._unreadable(rec, ref, str(exc))
            self.ledger.add(tp, rec.offset, 0)
            return
        clear = None
        if kind == "identities":
            events = [from_identity(ev, ref)]
        else:
            events, clear = self.unknowns.observe(ev, ref)
        deliveries: list[tuple[str, Delivery]] = []
        ticket = Ticket(tp, rec.offset)
        assert self.router is not None
        for event in events:
            for sink, rules in self.router.route(event).items():
                routed = event.model_copy(update={"rules": rules})
                deliveries.append((sink, Delivery(ticket, event=routed)))
        if clear is not None and MQTT_SINK in self.workers:
            deliveries.append((MQTT_SINK, Delivery(ticket, clear=clear)))
        self.ledger.add(tp, rec.offset, len(deliveries))
        for sink, d in deliveries:
            self.workers[sink].put(d)

    def _commit(self) -> None:
        from kafka.structs import OffsetAndMetadata

        offsets = self.ledger.committable()
        metrics.BRIDGE_UNCOMMITTED.set(self.ledger.pending())
        if not offsets:
            return
        try:
            self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except Exception as exc:
            # Kafka away or the group rebalancing: a later commit covers these offsets
            # (or the records are read again, under the same event ids).
            log.warning("bridge: commit failed: %s", exc)
            return
        with self._done_lock:
            self._done_to.update(offsets)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every record now in the topics is read and acknowledged by every
        sink (committed); False when that took longer than ``timeout_s`` (a sink is down:
        its events stay uncommitted and are delivered by the next start)."""
        t = self.stream.topics
        probe = kafka_client.consumer(self.stream.kafka, "bridge-probe")
        try:
            from kafka import TopicPartition

            tps = [
                TopicPartition(topic, p)
                for topic in (t.identities, t.detections)
                for p in sorted(probe.partitions_for_topic(topic) or [])
            ]
            ends = probe.end_offsets(tps)
        finally:
            probe.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._error is None:
            with self._done_lock:
                if all(self._done_to.get(tp, 0) >= end for tp, end in ends.items() if end):
                    return True
            time.sleep(0.1)
        return False

    # -- dead letters -----------------------------------------------------------------------
    def _send_dlq(self, dead: BridgeDlqEvent, key: bytes | None) -> None:
        self._producer.send(self.cfg.dlq_topic, key=key, value=to_json(dead)).get(DLQ_TIMEOUT_S)

    def _unreadable(self, rec: Any, ref: KafkaRef, detail: str) -> None:
        dead = BridgeDlqEvent(
            event_id=f"{ref.topic}:{ref.partition}:{ref.offset}",
            sink=None,
            reason="unreadable",
            detail=detail[:2000],
            attempts=0,
            event=None,
            source=source_ref(
                RecordRef(ref.topic, ref.partition, ref.offset, rec.timestamp),
                rec.key,
                rec.headers,
            ),
            payload_b64=base64.b64encode(rec.value or b"").decode()[:1_000_000],
            published_ts_ms=now_ms(),
        )
        # Not acknowledged: the reading thread stops (the record is read again later).
        self._send_dlq(dead, rec.key)

    def _dead_letter(
        self,
        sink: str,
        d: Delivery,
        reason: Literal["refused", "attempts_exhausted"],
        detail: str,
        attempts: int,
    ) -> None:
        ev: BridgeEvent | None = d.event
        src = d.ticket
        key = ev.camera_id.encode() if ev is not None else None
        dead = BridgeDlqEvent(
            event_id=d.event_id,
            sink=sink,
            reason=reason,
            detail=detail[:2000],
            attempts=attempts,
            event=ev,
            source=source_ref(RecordRef(src.tp.topic, src.tp.partition, src.offset), key, None),
            payload_b64=None,
            published_ts_ms=now_ms(),
        )
        self._send_dlq(dead, key)

    # -- what it did ----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "unreadable": self.unreadable,
            "uncommitted": self.ledger.pending(),
            "sinks": {
                name: {**w.stats.as_dict(), "queued": w.held()} for name, w in self.workers.items()
            },
            "suppressed": dict(self.router.suppressed) if self.router else {},
        }


class BridgeCompanion:
    """The bridge inside ``facestream run --bridge`` (a runner's companion): started with
    the run's settings and cameras before any camera plays; on stop it first delivers
    what the run published (up to ``bridge.stop_timeout_s``)."""

    part = "the event bridge (MQTT, webhooks)"

    def __init__(self) -> None:
        self.bridge: Bridge | None = None
        self.final: dict[str, Any] | None = None  # the counts, once stopped

    def start(self, runner: StreamRunner) -> None:
        s = runner.settings
        self.bridge = Bridge(
            s.bridge, runner.cfg, s.gallery, cameras=[c.id for c in runner.cfg.cameras]
        )
        self.bridge.start()
        runner.notes.append(f"event bridge: sinks {', '.join(s.bridge.sink_names())}")

    def stop(self) -> None:
        if self.bridge is None:
            return
        b, self.bridge = self.bridge, None
        try:
            timeout = b.cfg.stop_timeout_s
            if b.failed() is None and not b.drain(timeout):
                log.warning("the bridge did not deliver everything within %.0fs", timeout)
        finally:
            b.stop()
            self.final = b.stats()
