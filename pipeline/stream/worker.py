"""Recognition workers: Ray actors in one Kafka consumer group.

Each worker loops: poll a few frames -> send them to the frame analyzer deployment
(decode, detect, align, quality gate, embed, search; ``pipeline.serve.analyzer``), a few
frames per request, all at once, so that the frames of one camera are analysed by every
analyzer replica in parallel -> take the answers back in sequence order -> per-camera
tracking -> publish detections, identification events and dead letters -> wait for
Kafka's acks -> commit the offsets. Several polled batches are out at once
(``workers.max_batches_in_flight``; ``dispatch``): each poll's frames go to the analyzers
at once, and the batches are published in poll order as their answers come in, so the
analyzers work while the worker publishes and new frames do not wait for older batches.
A batch's answers are taken only after every batch before it was committed, and dropped
(their partitions rewound) when one was not:

- Order: a camera's frames stay in one partition (keyed by camera id), so one worker
  owns a camera, and its tracker sees the frames in sequence order whichever replica
  analysed them (answers are put back in record order before tracking).
- At-least-once: offsets are committed only after every output of the batch is
  acknowledged. A worker that dies before committing leaves its frames to the group,
  which replays them; the event ids (``camera:seq``) are deterministic, so consumers
  drop the repeats.
- Backpressure: at most ``workers.max_batches_in_flight`` batches are out at once, so
  while the analyzers, the embedder or the gallery are slow the worker does not fetch;
  Kafka's fetch buffers are bounded by ``workers.max_partition_fetch_bytes`` /
  ``fetch_max_bytes``, the deployments' queues by ``max_queued_requests``. Nothing grows
  without bound.
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

The worker wires five parts, each in its own module: sending frames to the analyzers
(``dispatch.Dispatcher``), the frames of a batch to tracks and events
(``frames.FrameStep``, no Kafka or Ray), the bounded retries (``retry.RetryPolicy``,
frame-agnostic), publishing and committing (``publisher.Publisher``) and what it counts
(``stats.WorkerStats``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline import metrics
from pipeline.config.face import ImageLimits
from pipeline.config.review import ReviewConfig
from pipeline.config.stream import StreamConfig
from pipeline.gallery.review.records import RecordedFace
from pipeline.serve.analyzer import DEPLOYMENT_NAME as ANALYZER
from pipeline.serve.recorder import DEPLOYMENT_NAME as RECORDER
from pipeline.stream import kafka_client
from pipeline.stream.dispatch import BatchKey, Dispatcher, Pending, batch_key
from pipeline.stream.frames import FrameStep
from pipeline.stream.publisher import Publisher
from pipeline.stream.retry import RetryPolicy, StageFailed, first_offsets
from pipeline.stream.stats import CameraLabels, WorkerStats
from pipeline.stream.tracker import assignment_solver

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

log = logging.getLogger(__name__)
# The poll's wait while batches are out: short, so an answered batch is published soon.
IN_FLIGHT_POLL_MS = 10


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
        labels = CameraLabels({c.id for c in cfg.cameras}, w.max_camera_labels)
        self.stats = WorkerStats(worker_id, labels)
        with contextlib.suppress(Exception):  # outside Ray (unit tests) there is no node
            import ray

            self.stats.node = ray.get_runtime_context().get_node_id()
        self._stop = threading.Event()
        self.step = FrameStep(worker_id, cfg, limits, review, on_replay=self.stats.replayed)
        self._published_batches = 0  # for the tests' crash hook
        if analyzer_handle is None:
            from ray import serve

            analyzer_handle = serve.get_deployment_handle(ANALYZER, app_name=cfg.analyzer.app_name)
        self.analyzer = Dispatcher(analyzer_handle, cfg)
        # Batches polled and sent to the analyzers, their answers not taken yet
        # (``workers.max_batches_in_flight``; ``dispatch``).
        self._sent: dict[BatchKey, Pending] = {}
        self._out: deque[list[Any]] = deque()  # batches sent, oldest first, not published
        self._recorder: Any = None  # the review recorder deployment, at the first kept face

        self.consumer = self._make_consumer()
        self.publisher = Publisher(cfg, self._make_producer, self.consumer, self.stats)
        self.retry = RetryPolicy(
            max_attempts=w.max_batch_attempts,
            backoff_s=w.retry_backoff_s,
            backoff_max_s=w.retry_backoff_max_s,
            seek=self._seek,
            wait=self._stop.wait,
            observer=self.stats,
            name=worker_id,
        )
        self._thread = threading.Thread(target=self._loop, name=f"worker-{worker_id}")
        if autostart:
            self._thread.start()

    # -- set-up --------------------------------------------------------------------------

    def _make_producer(self) -> KafkaProducer:
        return kafka_client.producer(
            self.cfg.kafka,
            f"worker-{self.worker_id}",
            linger_ms=2,
            max_block_ms=10_000,
            # An output larger than this fails at send() (MessageSizeTooLargeError, not
            # retriable) instead of at the broker: dead letters are cut to fit it.
            max_request_size=self.cfg.workers.max_record_bytes + 64 * 1024,
        )

    def _make_consumer(self) -> KafkaConsumer:
        from kafka import ConsumerRebalanceListener

        w, k = self.cfg.workers, self.cfg.kafka
        consumer = kafka_client.consumer(
            k,
            f"worker-{self.worker_id}",
            group_id=k.group_id,
            auto_offset_reset="earliest",
            max_poll_records=w.max_poll_records,
            max_partition_fetch_bytes=w.max_partition_fetch_bytes,
            fetch_max_bytes=w.fetch_max_bytes,
            fetch_max_wait_ms=w.fetch_max_wait_ms,
            session_timeout_ms=w.session_timeout_ms,
            heartbeat_interval_ms=w.heartbeat_interval_ms,
            max_poll_interval_ms=w.max_poll_interval_ms,
            request_timeout_ms=max(k.request_timeout_ms, w.session_timeout_ms + 5_000),
        )
        worker = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked: Any) -> None:
                # Every published batch is committed before the next poll; the batches
                # in flight are not published yet, so they are dropped and replayed from
                # their partitions' committed offsets, by us or their new owner.
                worker._drop_all()
                # And the tracks of cameras that move away go.
                worker.step.forget({(tp.topic, tp.partition) for tp in revoked})

            def on_partitions_assigned(self, assigned: Any) -> None:
                worker.stats.assignment = sorted((tp.topic, tp.partition) for tp in assigned)
                log.info("worker %s assigned %s", worker.worker_id, worker.stats.assignment)

        consumer.subscribe([self.cfg.topics.frames], listener=Listener())
        return consumer

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        from kafka import TopicPartition

        self.consumer.seek(TopicPartition(topic, partition), offset)

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
        self.publisher.close()
        return self.get_stats()

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        """Poll and send; publish the batches in order as their answers come in
        (``dispatch``'s module doc)."""
        self._warm_up()
        self.stats.state = "running"
        w = self.cfg.workers
        while not self._stop.is_set():
            full = len(self._out) >= w.max_batches_in_flight
            if not full:
                # While batches are out, poll briefly: their answers are checked between.
                records = self._poll(IN_FLIGHT_POLL_MS if self._out else w.poll_timeout_ms)
                if records:
                    self._send(records)
                    self._out.append(records)
            self._publish_answered(wait=full)
        while self._out:  # stopping: the batches in hand are published, not dropped
            self._publish_answered(wait=True)
        self.stats.state = "stopped"

    def _warm_up(self) -> None:
        """Before the first poll, what a camera's first frames would otherwise wait for:
        the tracker's solver import (``tracker.assignment_solver``) and the analyzer
        handle's first call. Measured on the shared clip: a new camera's first second of
        frames waited up to 0.8 s on these (``facestream bench stream``)."""
        assignment_solver()
        self.analyzer.warm_up()

    def _publish_answered(self, *, wait: bool) -> None:
        """Publish and commit the oldest batches whose answers are in (the oldest in any
        case, waiting for it, with ``wait``); when one is rewound or halted, the batches
        after it are dropped."""
        while self._out:
            pending = self._sent.get(batch_key(self._out[0]))
            if not wait and pending is not None and not pending.ready():
                return
            wait = False
            records = self._out.popleft()
            if not self._finish(records):
                self._drop_all()

    def _poll(self, timeout_ms: int) -> list[Any]:
        """The next batch in (partition, offset) order; none when the poll failed."""
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms)
        except Exception as exc:
            self.stats.last_error = f"poll: {exc}"
            log.warning("worker %s: poll failed: %s", self.worker_id, exc)
            if not self._out:
                self._stop.wait(self.cfg.workers.retry_backoff_s)
            return []
        return sorted(
            (r for rs in polled.values() for r in rs), key=lambda r: (r.partition, r.offset)
        )

    def _send(self, records: list[Any]) -> None:
        """Send a polled batch's frames to the analyzers now; ``process`` takes the answers."""
        sent, _ = self.step.requests(records)
        self._sent[batch_key(records)] = self.analyzer.send([req for _, _, req in sent])

    def _finish(self, records: list[Any]) -> bool:
        """Publish and commit a sent batch (retried as ``RetryPolicy`` says); True when
        every partition went on past it."""
        try:
            return self.retry.run(records, self.process, self._give_up)
        finally:
            self._sent.pop(batch_key(records), None)

    def _drop_all(self) -> None:
        """Drop every batch in flight, oldest first (so each partition goes back to the
        first of its frames that was not published)."""
        while self._out:
            self._unsend(self._out.popleft())

    def _unsend(self, records: list[Any]) -> None:
        """Drop a batch in flight: its answers are not taken, and each of its partitions
        not rewound already goes back to the batch's first offset, so it is polled again."""
        pending = self._sent.pop(batch_key(records), None)
        if pending is not None:
            pending.cancel()
        for (topic, partition), offset in first_offsets(records).items():
            with contextlib.suppress(Exception):  # moved away: its new owner replays it
                from kafka import TopicPartition

                if self.consumer.position(TopicPartition(topic, partition)) > offset:
                    self._seek(topic, partition, offset)

    def process(self, records: Sequence[Any], alone: bool = False) -> None:
        """One batch: analyse, track, keep faces, publish, commit. ``alone``: a single
        frame after its batch ran out of attempts (identity events Kafka refuses for good
        are then dropped and counted instead of failing the frame)."""
        t_batch = time.perf_counter()
        metrics.WORKER_POLL_BATCH.observe(len(records))
        sent = None if alone else self._sent.pop(batch_key(records), None)
        out = self.step.run(records, self.analyzer.analyze if sent is None else sent.analyze)
        stage = metrics.WORKER_STAGE
        t0 = time.perf_counter()
        self._keep_faces(out.kept)
        stage.labels(stage="keep_faces").observe(time.perf_counter() - t0)
        t0 = time.perf_counter()
        self.publisher.publish(out.detections, out.identities, out.dead, alone=alone)
        stage.labels(stage="publish").observe(time.perf_counter() - t0)
        self._crash_hook()
        t0 = time.perf_counter()
        self.publisher.commit(records)
        stage.labels(stage="commit").observe(time.perf_counter() - t0)
        self.stats.account(out)
        stage.labels(stage="batch").observe(time.perf_counter() - t_batch)

    def _give_up(self, rec: Any, exc: StageFailed) -> None:
        """Dead-letter one frame that failed on its own after its batch's attempts; raises
        when even the dead letter cannot be written (the retry policy halts the partition)."""
        reason = "publish_failed" if exc.stage == "publish" else "processing_error"
        detail = (
            f"failed {self.cfg.workers.max_batch_attempts} times in its batch and again on "
            f"its own; {exc.stage}: {exc.detail}"
        )
        self.publisher.publish([], [], [self.step.reject(rec, reason, detail)], alone=True)
        self.publisher.commit([rec])
        self.stats.gave_up(reason)
        log.error(
            "worker %s: %s-%d@%d dead-lettered as %s: %s",
            self.worker_id,
            rec.topic,
            rec.partition,
            rec.offset,
            reason,
            detail,
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

    def _keep_faces(self, faces: list[RecordedFace]) -> None:
        """Hand the batch's kept faces to the review recorder before its events are
        published, so an event's crop_id can be fetched as soon as the event is read.
        Idempotent (face ids), so a retried batch writes nothing twice."""
        if not faces:
            return
        if self._recorder is None:
            from ray import serve

            app = self.cfg.recorder.app_name
            self._recorder = serve.get_deployment_handle(RECORDER, app_name=app)
        timeout_s = 2 * self.cfg.workers.call_timeout_s
        try:
            self._recorder.record.remote(faces).result(timeout_s=timeout_s)
        except Exception as exc:
            raise StageFailed("keep_faces", f"{type(exc).__name__}: {exc}") from exc


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
