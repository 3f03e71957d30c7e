"""Recognition workers: Ray actors in one Kafka consumer group.

Each worker loops: poll a few frames -> send each to the frame analyzer deployment
(decode, detect, align, quality gate, embed, search; ``pipeline.serve.analyzer``), all at
once, so that the frames of one camera are analysed by every analyzer replica in
parallel -> take the answers back in sequence order -> per-camera tracking -> publish
detections, identification events and dead letters -> wait for Kafka's acks -> commit
the offsets. Only then does it poll again:

- Order: a camera's frames stay in one partition (keyed by camera id), so one worker
  owns a camera, and its tracker sees the frames in sequence order whichever replica
  analysed them (answers are put back in record order before tracking).
- At-least-once: offsets are committed only after every output of the batch is
  acknowledged. A worker that dies before committing leaves its frames to the group,
  which replays them; the event ids (``camera:seq``) are deterministic, so consumers
  drop the repeats.
- Backpressure: the loop is synchronous, so while the analyzers, the embedder or the
  gallery are slow the worker does not fetch; Kafka's fetch buffers are bounded by
  ``workers.max_partition_fetch_bytes`` / ``fetch_max_bytes``, the deployments' queues
  by ``max_queued_requests``. Nothing grows without bound.
- A frame that cannot be processed (no key, missing headers, corrupt or oversized JPEG,
  or an unexpected error in the face core) goes to the dead-letter topic and the
  stream goes on; a failure of the analyzers, the embedder, the gallery or Kafka is not
  the frame's fault: the batch is rewound and retried after a pause.
- Retries are bounded (``workers.max_batch_attempts``, doubling pauses): a batch that
  keeps failing is split into its frames. A frame that fails on its own for a reason of
  its own (an output Kafka refuses for good, a bug on its data) is dead-lettered
  (``publish_failed`` / ``processing_error``); a stage that fails for every frame (an
  outage, or a dead letter Kafka refuses) halts that partition with an error log and
  ``facestream_worker_halted_partitions``, probed every ``retry_backoff_max_s`` until it
  recovers, so no partition ever loops silently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline import metrics
from pipeline.config.face import ImageLimits
from pipeline.config.review import ReviewConfig
from pipeline.config.stream import StreamConfig
from pipeline.errors import FacestreamError
from pipeline.gallery.review.records import RecordedFace
from pipeline.serve.analyzer import DEPLOYMENT_NAME as ANALYZER
from pipeline.serve.analyzer import AnalyzeRequest, AnalyzeResult
from pipeline.serve.search import DEPLOYMENT_NAME as SEARCH
from pipeline.stream.codec import FrameMessage, FrameRejected, parse_record
from pipeline.stream.events import (
    Match,
    RecordRef,
    detection_event,
    dlq_event,
    face_out,
    identity_event,
)
from pipeline.stream.kafka_client import client_kwargs
from pipeline.stream.schemas import (
    DlqEvent,
    FaceOut,
    IdentityEvent,
    IdentityRef,
    ThresholdRef,
    to_json,
)
from pipeline.stream.tracker import Observation, Tracker

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

log = logging.getLogger(__name__)
KNOWN_IDENTITIES = 10_000  # names remembered for track labels (LRU)
KEPT_TRACKS = 10_000  # unknown tracks whose kept-face count is remembered (LRU)


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


def _retriable(exc: BaseException) -> bool:
    """Kafka errors that may pass on a retry (timeouts, leaders moving, brokers down)."""
    return bool(getattr(exc, "retriable", False)) or type(exc).__name__ == "KafkaTimeoutError"


class CameraLabels:
    """Metric label of a camera: its id for the configured cameras and the first
    ``max_extra`` others seen, else "other". Camera ids are Kafka keys that any producer
    writes, and every label value is a time series kept forever."""

    def __init__(self, configured: set[str], max_extra: int) -> None:
        self._known = set(configured)
        self._extra_left = max_extra

    def label(self, camera_id: str) -> str:
        if camera_id in self._known:
            return camera_id
        if self._extra_left > 0:
            self._extra_left -= 1
            self._known.add(camera_id)
            return camera_id
        return "other"


@dataclass
class FramePlan:
    """One analysed frame on its way through the batch."""

    msg: FrameMessage
    ref: RecordRef
    result: AnalyzeResult


@dataclass
class WorkerStats:
    worker: str
    state: str = "starting"
    batches: int = 0
    frames: int = 0
    faces: int = 0
    dlq: Counter[str] = field(default_factory=Counter)
    identity_events: int = 0
    retries: Counter[str] = field(default_factory=Counter)
    commit_failures: int = 0
    cameras: Counter[str] = field(default_factory=Counter)
    analyzers: dict[str, Counter[str]] = field(default_factory=dict)  # camera -> replica -> n
    tracker_restarts: int = 0  # a camera's sequence went backwards (a replay)
    given_up: Counter[str] = field(default_factory=Counter)  # frames dead-lettered by retries
    halted: list[tuple[str, int]] = field(default_factory=list)  # partitions held back
    outputs_dropped: int = 0  # identity events Kafka refused for good
    assignment: list[tuple[str, int]] = field(default_factory=list)
    model_version: str | None = None
    last_error: str | None = None
    node: str | None = None  # the Ray node the actor runs on

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "state": self.state,
            "batches": self.batches,
            "frames": self.frames,
            "faces": self.faces,
            "dlq": dict(self.dlq),
            "identity_events": self.identity_events,
            "retries": dict(self.retries),
            "commit_failures": self.commit_failures,
            "cameras": dict(self.cameras),
            "analyzers": {c: dict(n) for c, n in self.analyzers.items()},
            "node": self.node,
            "tracker_restarts": self.tracker_restarts,
            "given_up": dict(self.given_up),
            "halted": [list(tp) for tp in self.halted],
            "outputs_dropped": self.outputs_dropped,
            "assignment": list(self.assignment),
            "model_version": self.model_version,
            "last_error": self.last_error,
        }


class RecognitionWorker:
    """One member of the recognition consumer group (run as a Ray actor, or directly)."""

    def __init__(
        self,
        worker_id: str,
        cfg: StreamConfig,
        limits: ImageLimits,
        *,
        metrics_port: int | None = None,
        analyzer_handle: Any = None,
        review: ReviewConfig | None = None,
        autostart: bool = True,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        metrics.serve_metrics(metrics_port)
        if not cfg.kafka.bootstrap_servers:
            raise ValueError("stream.kafka.bootstrap_servers is not set")
        self.worker_id = worker_id
        self.cfg = cfg
        w = cfg.workers
        # A frame's limits: the stream's and the face core's, whichever is lower.
        self.frame_limits = (
            min(limits.max_pixels, w.max_frame_pixels),
            min(limits.max_bytes, w.max_frame_bytes),
        )
        self.stats = WorkerStats(worker_id)
        with contextlib.suppress(Exception):  # outside Ray (unit tests) there is no node
            import ray

            self.stats.node = ray.get_runtime_context().get_node_id()
        self._stop = threading.Event()
        self._names: OrderedDict[str, IdentityRef] = OrderedDict()
        self.tracker = Tracker(cfg.tracker)
        # Bounded like the tracker: an entry per camera, and camera ids are untrusted keys.
        self._camera_partition: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._labels = CameraLabels({c.id for c in cfg.cameras}, w.max_camera_labels)
        # Partition -> (first offset of the failing batch, attempts so far).
        self._attempts: dict[tuple[str, int], tuple[int, int]] = {}
        self._published_batches = 0  # for the tests' crash hook
        if analyzer_handle is None:
            from ray import serve

            analyzer_handle = serve.get_deployment_handle(ANALYZER, app_name=cfg.analyzer.app_name)
        self.analyzer = analyzer_handle
        self.review = review or ReviewConfig()
        self._search: Any = None  # the search deployment keeps faces for review
        self._kept: OrderedDict[str, int] = OrderedDict()  # unknown track -> faces kept

        self.producer = self._make_producer()
        self.consumer = self._make_consumer()
        self._thread = threading.Thread(target=self._loop, name=f"worker-{worker_id}")
        if autostart:
            self._thread.start()

    # -- set-up --------------------------------------------------------------------------

    def _make_producer(self) -> KafkaProducer:
        from kafka import KafkaProducer

        k = self.cfg.kafka
        return KafkaProducer(
            bootstrap_servers=k.bootstrap_servers,
            client_id=f"{k.client_id}-worker-{self.worker_id}",
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_block_ms=10_000,
            request_timeout_ms=k.request_timeout_ms,
            # An output larger than this fails at send() (MessageSizeTooLargeError, not
            # retriable) instead of at the broker: dead letters are cut to fit it.
            max_request_size=self.cfg.workers.max_record_bytes + 64 * 1024,
            **client_kwargs(k),
        )

    def _reset_producer(self) -> None:
        """A new producer after Kafka refused a record for good: kafka-python's idempotent
        producer then fails every later send, to any topic (the dead letter included)."""
        with contextlib.suppress(Exception):
            self.producer.close(timeout=5)
        self.producer = self._make_producer()

    def _make_consumer(self) -> KafkaConsumer:
        from kafka import ConsumerRebalanceListener, KafkaConsumer

        w, k = self.cfg.workers, self.cfg.kafka
        consumer = KafkaConsumer(
            bootstrap_servers=k.bootstrap_servers,
            client_id=f"{k.client_id}-worker-{self.worker_id}",
            group_id=k.group_id,
            enable_auto_commit=False,
            **client_kwargs(k),
            auto_offset_reset="earliest",
            max_poll_records=w.max_poll_records,
            max_partition_fetch_bytes=w.max_partition_fetch_bytes,
            fetch_max_bytes=w.fetch_max_bytes,
            session_timeout_ms=w.session_timeout_ms,
            heartbeat_interval_ms=w.heartbeat_interval_ms,
            max_poll_interval_ms=w.max_poll_interval_ms,
            request_timeout_ms=max(k.request_timeout_ms, w.session_timeout_ms + 5_000),
        )
        worker = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                # Our batch is committed before every poll, so nothing is in flight here;
                # only the tracks of cameras that move away must go.
                lost = {(tp.topic, tp.partition) for tp in revoked}
                cams = [c for c, tp in worker._camera_partition.items() if tp in lost]
                worker.tracker.forget(cams)
                for c in cams:
                    worker._camera_partition.pop(c, None)

            def on_partitions_assigned(self, assigned: Any) -> None:
                worker.stats.assignment = sorted((tp.topic, tp.partition) for tp in assigned)
                log.info("worker %s assigned %s", worker.worker_id, worker.stats.assignment)

        consumer.subscribe([self.cfg.topics.frames], listener=Listener())
        return consumer

    # -- public (actor methods) ----------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()

    def ping(self) -> str:
        return self.worker_id

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Finish the current batch, leave the group (its partitions move at once), close."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)
        self._close()
        return self.get_stats()

    def _close(self) -> None:
        for closer in (
            lambda: self.consumer.close(),
            lambda: self.producer.close(timeout=10),
        ):
            try:
                closer()
            except Exception as exc:  # closing twice or on a dead broker: nothing to add
                log.debug("close: %s", exc)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        self.stats.state = "running"
        w = self.cfg.workers
        while not self._stop.is_set():
            try:
                polled = self.consumer.poll(timeout_ms=w.poll_timeout_ms)
            except Exception as exc:
                self.stats.last_error = f"poll: {exc}"
                log.warning("worker %s: poll failed: %s", self.worker_id, exc)
                self._stop.wait(w.retry_backoff_s)
                continue
            records = sorted(
                (r for rs in polled.values() for r in rs), key=lambda r: (r.partition, r.offset)
            )
            if not records:
                continue
            if self._exhausted(records):
                self._one_by_one(records)
                continue
            try:
                self.process(records)
            except StageFailed as exc:
                self._rewind(records, exc)
                continue
            except Exception as exc:  # a bug: keep the frames, say what happened, go on
                log.exception("worker %s: batch failed", self.worker_id)
                failed = StageFailed("batch", f"{type(exc).__name__}: {exc}", frame_fault=True)
                self._rewind(records, failed)
                continue
            self._succeeded(records)
        self.stats.state = "stopped"

    @staticmethod
    def _firsts(records: list[Any]) -> dict[tuple[str, int], int]:
        first: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            first[key] = min(first.get(key, r.offset), r.offset)
        return first

    def _exhausted(self, records: list[Any]) -> bool:
        """Has a partition of this batch failed ``max_batch_attempts`` times from here?"""
        limit = self.cfg.workers.max_batch_attempts
        for tp, off in self._firsts(records).items():
            at = self._attempts.get(tp)
            if at is not None and at[0] == off and at[1] >= limit:
                return True
        return False

    def _backoff_s(self, attempts: int) -> float:
        w = self.cfg.workers
        return min(w.retry_backoff_max_s, w.retry_backoff_s * 2 ** max(attempts - 1, 0))

    def _succeeded(self, records: list[Any]) -> None:
        for tp in self._firsts(records):
            self._attempts.pop(tp, None)
            if tp in self.stats.halted:
                self.stats.halted.remove(tp)
                metrics.WORKER_HALTED.set(len(self.stats.halted))
                log.warning("worker %s: %s-%d goes on again", self.worker_id, *tp)
        if not self.stats.halted and self.stats.state == "halted":
            self.stats.state = "running"

    def _rewind(self, records: list[Any], exc: StageFailed) -> None:
        """Seek back to the batch's first offsets; the frames are processed again after a
        pause that doubles with each failed attempt of the same batch."""
        from kafka import TopicPartition

        metrics.WORKER_RETRIES.labels(stage=exc.stage).inc()
        self.stats.retries[exc.stage] += 1
        self.stats.last_error = str(exc)
        attempts = 1
        for (topic, part), off in self._firsts(records).items():
            prev = self._attempts.get((topic, part))
            n = prev[1] + 1 if prev is not None and prev[0] == off else 1
            self._attempts[(topic, part)] = (off, n)
            attempts = max(attempts, n)
            try:
                self.consumer.seek(TopicPartition(topic, part), off)
            except Exception as seek_exc:  # the partition moved away: its new owner replays
                log.info("seek %s-%d: %s", topic, part, seek_exc)
        log.warning(
            "worker %s: %s; retrying the batch (attempt %d of %d)",
            self.worker_id,
            exc,
            attempts,
            self.cfg.workers.max_batch_attempts,
        )
        self._stop.wait(self._backoff_s(attempts))

    def _one_by_one(self, records: list[Any]) -> None:
        """The batch is out of attempts: each frame alone, in order. A frame that fails
        for a reason of its own is dead-lettered; one that fails otherwise (an outage)
        halts its partition there, and the other partitions go on."""
        from kafka import TopicPartition

        halted: set[tuple[str, int]] = set()
        for rec in records:
            tp = (rec.topic, rec.partition)
            if tp in halted:
                continue
            try:
                try:
                    self.process([rec], alone=True)
                except StageFailed as exc:
                    if not exc.frame_fault:
                        raise
                    self._give_up(rec, exc)
                except Exception as exc:
                    log.exception("worker %s: frame failed on its own", self.worker_id)
                    self._give_up(
                        rec, StageFailed("batch", f"{type(exc).__name__}: {exc}", frame_fault=True)
                    )
            except Exception as exc:
                halted.add(tp)
                self._halt(rec, exc)
                with contextlib.suppress(Exception):  # moved away: its new owner replays
                    self.consumer.seek(TopicPartition(*tp), rec.offset)
                continue
            self._succeeded([rec])
        if halted:
            attempts = max(self._attempts.get(tp, (0, 1))[1] for tp in halted)
            self._stop.wait(self._backoff_s(attempts))

    def _give_up(self, rec: Any, exc: StageFailed) -> None:
        """Dead-letter one frame that failed on its own after its batch's attempts; raises
        when even the dead letter cannot be written (the caller halts the partition)."""
        reason = "publish_failed" if exc.stage == "publish" else "processing_error"
        w = self.cfg.workers
        detail = (
            f"failed {w.max_batch_attempts} times in its batch and again on its own; "
            f"{exc.stage}: {exc.detail}"
        )
        dead = self._reject(rec, reason, detail)
        self._publish([], [], [dead], alone=True)
        self._commit([rec])
        self.stats.given_up[reason] += 1
        self.stats.batches += 1
        self.stats.dlq[reason] += 1
        metrics.WORKER_DLQ.labels(reason=reason).inc()
        metrics.WORKER_GIVEN_UP.labels(reason=reason).inc()
        log.error(
            "worker %s: %s-%d@%d dead-lettered as %s: %s",
            self.worker_id,
            rec.topic,
            rec.partition,
            rec.offset,
            reason,
            detail,
        )

    def _halt(self, rec: Any, exc: BaseException) -> None:
        tp = (rec.topic, rec.partition)
        prev = self._attempts.get(tp)
        n = prev[1] + 1 if prev is not None and prev[0] == rec.offset else 1
        self._attempts[tp] = (rec.offset, max(n, self.cfg.workers.max_batch_attempts))
        stage = exc.stage if isinstance(exc, StageFailed) else "batch"
        metrics.WORKER_RETRIES.labels(stage=stage).inc()
        self.stats.retries[stage] += 1
        self.stats.last_error = f"halted at {rec.topic}-{rec.partition}@{rec.offset}: {exc}"
        if tp not in self.stats.halted:
            self.stats.halted.append(tp)
            metrics.WORKER_HALTED.set(len(self.stats.halted))
        self.stats.state = "halted"
        log.error(
            "worker %s: partition %s-%d halted at offset %d after %d attempts: %s; probing "
            "every %.1fs",
            self.worker_id,
            rec.topic,
            rec.partition,
            rec.offset,
            self._attempts[tp][1],
            exc,
            self._backoff_s(self._attempts[tp][1]),
        )

    # -- one batch -----------------------------------------------------------------------

    def process(self, records: list[Any], *, alone: bool = False) -> None:
        """One batch: analyse, track, keep faces, publish, commit. ``alone``: a single
        frame after its batch ran out of attempts (identity events Kafka refuses for good
        are then dropped and counted instead of failing the frame)."""
        t_batch = time.perf_counter()
        metrics.WORKER_POLL_BATCH.observe(len(records))
        t0 = time.perf_counter()
        plans, dead = self._analyze(records)
        metrics.WORKER_STAGE.labels(stage="analyze_batch").observe(time.perf_counter() - t0)

        detections, identities, kept = self._track_and_build(plans)

        t0 = time.perf_counter()
        self._keep_faces(kept)
        metrics.WORKER_STAGE.labels(stage="keep_faces").observe(time.perf_counter() - t0)

        t0 = time.perf_counter()
        self._publish(detections, identities, dead, alone=alone)
        metrics.WORKER_STAGE.labels(stage="publish").observe(time.perf_counter() - t0)
        self._crash_hook()

        t0 = time.perf_counter()
        self._commit(records)
        metrics.WORKER_STAGE.labels(stage="commit").observe(time.perf_counter() - t0)

        self._account(plans, detections, identities, dead)
        metrics.WORKER_STAGE.labels(stage="batch").observe(time.perf_counter() - t_batch)

    def _reject(self, rec: Any, reason: str, detail: str) -> DlqEvent:
        return dlq_event(
            RecordRef(rec.topic, rec.partition, rec.offset, rec.timestamp),
            rec.key,
            rec.value,
            rec.headers,
            reason,
            detail,
            worker=self.worker_id,
            max_payload_bytes=self.cfg.dlq_max_payload_bytes,
            max_record_bytes=self.cfg.workers.max_record_bytes,
        )

    def _crash_hook(self) -> None:
        """Tests only (``workers.crash_after_publish_batches``): die between publish and
        commit, the one moment at-least-once delivery must survive."""
        n = self.cfg.workers.crash_after_publish_batches
        if n is None:
            return
        self._published_batches += 1
        if self._published_batches != n:
            return
        with contextlib.suppress(Exception):  # outside Ray: no restart to tell apart
            import ray

            if ray.get_runtime_context().was_current_actor_reconstructed:
                return  # crash once: the restarted actor must get through
        log.error("worker %s: crash_after_publish_batches=%d: exiting", self.worker_id, n)
        logging.shutdown()
        os._exit(17)

    def _analyze(self, records: list[Any]) -> tuple[list[FramePlan], list[DlqEvent]]:
        """Every frame of the batch to the analyzers at once; the answers in record order.

        Rejections (the frame's fault) become dead letters; a failed stage (not the
        frame's fault) raises ``StageFailed``, so the whole batch is retried."""
        w = self.cfg.workers
        dead: list[DlqEvent] = []
        sent: list[tuple[Any, FrameMessage, Any]] = []
        for rec in records:
            try:
                msg = parse_record(rec.key, rec.value, rec.headers)
                if len(msg.data) > w.max_frame_bytes:
                    raise FrameRejected(
                        "too_large",
                        f"{len(msg.data)} bytes exceeds workers.max_frame_bytes="
                        f"{w.max_frame_bytes}",
                    )
            except FrameRejected as exc:
                dead.append(self._reject(rec, exc.code, str(exc)))
                continue
            request = AnalyzeRequest(msg.data, msg.event_id, *self.frame_limits)
            sent.append((rec, msg, self.analyzer.analyze.remote(request)))
        plans: list[FramePlan] = []
        try:
            answers = [r.result(timeout_s=2 * w.call_timeout_s) for _, _, r in sent]
        except Exception as exc:
            raise StageFailed("analyze", f"{type(exc).__name__}: {exc}") from exc
        failed = next((a.failed for a in answers if a.failed is not None), None)
        if failed is not None:
            raise StageFailed(*failed)
        for (rec, msg, _), answer in zip(sent, answers, strict=True):
            if answer.rejected is not None:
                dead.append(self._reject(rec, *answer.rejected))
                continue
            for stage, secs in answer.timings.items():
                metrics.WORKER_STAGE.labels(stage=stage).observe(secs)
            self._camera_partition[msg.camera_id] = (rec.topic, rec.partition)
            self._camera_partition.move_to_end(msg.camera_id)
            while len(self._camera_partition) > self.cfg.tracker.max_cameras:
                self._camera_partition.popitem(last=False)
            ref = RecordRef(rec.topic, rec.partition, rec.offset, rec.timestamp)
            plans.append(FramePlan(msg, ref, answer))
        return plans, dead

    def _identity(self, identity_id: str | None) -> IdentityRef | None:
        if identity_id is None:
            return None
        return self._names.get(identity_id)

    def _remember(self, ref: IdentityRef) -> None:
        self._names[ref.identity_id] = ref
        self._names.move_to_end(ref.identity_id)
        while len(self._names) > KNOWN_IDENTITIES:
            self._names.popitem(last=False)

    def _matches(self, result: AnalyzeResult) -> dict[int, Match]:
        """Open-set answer per embedded face of a frame (keyed by id(face))."""
        out: dict[int, Match] = {}
        for f, cands in zip(result.embedded, result.candidates, strict=True):
            best = cands[0] if cands else None
            if best is None:
                out[id(f)] = Match("unknown", None, None)
                continue
            ref = IdentityRef(
                identity_id=best.identity_id, name=best.name, external_id=best.external_id
            )
            if best.decision == "identity":
                self._remember(ref)
                out[id(f)] = Match("identity", best.similarity, ref)
            else:
                out[id(f)] = Match("unknown", best.similarity, None)
        return out

    def _kept_face(
        self,
        msg: FrameMessage,
        face: Any,
        fo: FaceOut,
        track_id: str,
        version: str,
        identity: IdentityRef | None,
    ) -> RecordedFace | None:
        """The face to keep for review (its crop and vector), or None without a crop."""
        jpeg = face.extras.get("chip_jpeg")
        if not jpeg or face.embedding is None:
            return None
        return RecordedFace(
            face_id=fo.face_id,
            model_version=version,
            camera_id=msg.camera_id,
            track_id=track_id,
            capture_ts_ms=msg.capture_ts_ms,
            decision="identity" if identity is not None else "unknown",
            identity_id=identity.identity_id if identity is not None else None,
            similarity=fo.similarity,
            quality={k: float(v) for k, v in face.quality.metrics.items()},
            crop_jpeg=jpeg,
            embedding=[float(v) for v in face.embedding],
        )

    def _keep_unknown(self, track_id: str) -> bool:
        """The first ``faces_per_track`` unknown faces of a track are kept (bounded)."""
        n = self._kept.get(track_id, 0)
        if n >= self.review.faces_per_track:
            return False
        self._kept[track_id] = n + 1
        self._kept.move_to_end(track_id)
        while len(self._kept) > KEPT_TRACKS:
            self._kept.popitem(last=False)
        return True

    def _track_and_build(
        self, plans: list[FramePlan]
    ) -> tuple[list[Any], list[IdentityEvent], list[RecordedFace]]:
        """Track the frames in record order (a camera's sequence order) and build the
        events, and the faces to keep for review; each frame carries the model version
        its faces were embedded with."""
        from pipeline.stream.events import now_ms

        detections = []
        identities: list[IdentityEvent] = []
        kept: list[RecordedFace] = []
        for plan in plans:
            msg, res = plan.msg, plan.result
            matches = self._matches(res)
            observations = []
            for f in res.faces:
                m = matches.get(id(f))
                ident = m.identity if m is not None and m.decision == "identity" else None
                observations.append(
                    Observation(
                        box=tuple(float(v) for v in f.detection.box),  # type: ignore[arg-type]
                        embedding=f.embedding,
                        identity_id=ident.identity_id if ident else None,
                        name=ident.name if ident else None,
                        similarity=m.similarity if m is not None else None,
                        model_version=f.model_version if f.embedding is not None else None,
                    )
                )
            last = self.tracker.camera(msg.camera_id).last_seq
            if last is not None and msg.seq <= last:
                self.stats.tracker_restarts += 1
            tracks = self.tracker.update(msg.camera_id, msg.seq, msg.capture_ts_ms, observations)
            outs: list[FaceOut] = []
            version, collection = res.model_version, res.collection
            threshold = (
                ThresholdRef.model_validate(
                    {k: res.threshold_info.get(k) for k in ThresholdRef.model_fields}
                )
                if res.threshold_info
                else None
            )
            for i, (f, tr) in enumerate(zip(res.faces, tracks, strict=True)):
                fo = face_out(
                    msg, i, f, matches.get(id(f)), tr, self._identity(tr.confirmed_identity)
                )
                outs.append(fo)
                if (
                    self.review.keep_unknowns
                    and version
                    and fo.decision == "unknown"
                    and tr.confirmed_identity is None
                    and self._keep_unknown(tr.track_id)
                ):
                    face = self._kept_face(msg, f, fo, tr.track_id, version, None)
                    if face is not None:
                        kept.append(face)
                if tr.announcement is not None and version and collection:
                    ident = self._identity(tr.announcement.identity_id)
                    if ident is None:
                        continue
                    crop = (
                        self._kept_face(msg, f, fo, tr.track_id, version, ident)
                        if self.review.event_crops
                        else None
                    )
                    if crop is not None:
                        kept.append(crop)
                    identities.append(
                        identity_event(
                            msg,
                            fo,
                            tr,
                            ident,
                            self._identity(tr.announcement.previous_identity_id),
                            model_version=version,
                            collection=collection,
                            threshold=threshold,
                            crop_id=crop.face_id if crop is not None else None,
                        )
                    )
            embedded = bool(res.embedded)
            assert res.size is not None
            detections.append(
                detection_event(
                    msg,
                    plan.ref,
                    res.size,
                    outs,
                    model_version=version if embedded else None,
                    collection=collection if embedded else None,
                    threshold=res.threshold if embedded else None,
                    threshold_detail=threshold if embedded else None,
                    worker=self.worker_id,
                    analyzer=res.analyzer,
                    timings_ms={f"{k}_ms": v * 1000 for k, v in res.timings.items()},
                    published_ts_ms=now_ms(),
                )
            )
        return detections, identities, kept

    def _keep_faces(self, faces: list[RecordedFace]) -> None:
        """Hand the batch's kept faces to the gallery before its events are published, so
        an event's crop_id can be fetched as soon as the event is read. Idempotent (face
        ids), so a retried batch writes nothing twice."""
        if not faces:
            return
        if self._search is None:
            from ray import serve

            self._search = serve.get_deployment_handle(SEARCH, app_name=self.cfg.search.app_name)
        try:
            self._search.record.remote(faces).result(timeout_s=2 * self.cfg.workers.call_timeout_s)
        except Exception as exc:
            raise StageFailed("keep_faces", f"{type(exc).__name__}: {exc}") from exc

    def _publish(
        self,
        detections: list[Any],
        identities: list[Any],
        dead: list[DlqEvent],
        *,
        alone: bool = False,
    ) -> None:
        t = self.cfg.topics
        w = self.cfg.workers
        sends: list[tuple[str, Any, Any]] = []  # (topic, event, future or the send's error)

        def send(topic: str, ev: Any, key: bytes | None) -> None:
            try:
                sends.append((topic, ev, self.producer.send(topic, key=key, value=to_json(ev))))
            except Exception as exc:  # too large for max_request_size, buffer full, closed
                sends.append((topic, ev, exc))

        for ev in detections:
            send(t.detections, ev, ev.camera_id.encode())
        for ev in identities:
            send(t.identities, ev, ev.camera_id.encode())
        for ev in dead:
            send(t.dlq, ev, ev.camera_id.encode() if ev.camera_id else None)
        try:
            self.producer.flush(timeout=w.output_timeout_s)
        except Exception as exc:
            raise StageFailed("publish", f"{type(exc).__name__}: {exc}") from exc
        failed: list[tuple[str, Any, BaseException]] = []
        for topic, ev, fut in sends:
            if isinstance(fut, BaseException):
                failed.append((topic, ev, fut))
                continue
            try:
                fut.get(timeout=w.output_timeout_s)
            except Exception as exc:
                failed.append((topic, ev, exc))
        if alone:
            # The frame on its own: an identity event refused for good is dropped (and
            # counted); the frame's detection stands.
            for topic, ev, exc in [f for f in failed if f[0] == t.identities]:
                if _retriable(exc):
                    continue
                failed.remove((topic, ev, exc))
                self.stats.outputs_dropped += 1
                metrics.WORKER_OUTPUTS_DROPPED.labels(topic="identities").inc()
                log.error(
                    "worker %s: identity event %s dropped: %r", self.worker_id, ev.event_id, exc
                )
        if failed:
            topic, ev, exc = failed[0]
            detail = f"{len(failed)} of {len(sends)} outputs; {ev.event_id} to {topic}: {exc!r}"
            # Not retriable (too large, refused by the topic): the same frame fails again.
            fault = not any(_retriable(e) for _, _, e in failed)
            if any(not _retriable(e) for _, _, e in failed):
                self._reset_producer()
            raise StageFailed("publish", detail, frame_fault=fault)
        now = time.time() * 1000
        for ev in detections:
            metrics.WORKER_LATENCY.observe(max(0.0, now - ev.capture_ts_ms) / 1000.0)

    def _commit(self, records: list[Any]) -> None:
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
            self.stats.commit_failures += 1
            metrics.WORKER_COMMIT_FAILURES.inc()
            log.warning(
                "worker %s: commit refused (%s); frames will be replayed", self.worker_id, exc
            )

    def _camera_label(self, camera_id: str) -> str:
        return self._labels.label(camera_id)

    def _account(
        self,
        plans: list[FramePlan],
        detections: list[Any],
        identities: list[Any],
        dead: list[DlqEvent],
    ) -> None:
        s = self.stats
        for plan in plans:
            per_camera = s.analyzers.setdefault(self._camera_label(plan.msg.camera_id), Counter())
            per_camera[plan.result.analyzer] += 1
        s.batches += 1
        s.frames += len(detections)
        for ev in detections:
            s.cameras[self._camera_label(ev.camera_id)] += 1
            metrics.WORKER_FRAMES.labels(camera=self._camera_label(ev.camera_id)).inc()
            for fo in ev.faces:
                s.faces += 1
                metrics.WORKER_FACES.labels(decision=fo.decision).inc()
                metrics.FACE_SIMILARITY.labels(decision=fo.decision).observe(fo.similarity)
        for ev in identities:
            s.identity_events += 1
            metrics.WORKER_IDENTITY_EVENTS.labels(type=ev.type).inc()
        for d in dead:
            s.dlq[d.reason] += 1
            metrics.WORKER_DLQ.labels(reason=d.reason).inc()


def worker_actor_class(cfg: StreamConfig) -> Any:
    """The Ray actor class of a worker, with its CPU share and restart policy."""
    import ray

    return ray.remote(
        num_cpus=cfg.workers.num_cpus,
        max_restarts=cfg.workers.max_restarts,
        # A restarted worker replays from the last commit; stale calls are not retried.
        max_task_retries=0,
        scheduling_strategy="SPREAD" if cfg.workers.spread else "DEFAULT",
    )(RecognitionWorker)
