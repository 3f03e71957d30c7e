"""Ingest: read cameras, sample to a target fps, JPEG-encode, produce to the frames topic.

One :class:`CameraIngester` per camera, each in its own thread (``facestream ingest``) or
its own Ray actor (``facestream run``), sharing the frame format of ``codec.py``.

- Sampling follows the source's clock: a file's own timeline (so a file gives the same
  frames however fast it is read), a live stream's wall clock.
- Live sources (RTSP, HTTP, devices) that fail to open, stall or end are reopened with
  doubling backoff; every reopening counts as a reconnect. A file stops at its end, or
  starts over with ``loop``.
- Backpressure: at most ``ingest.max_in_flight`` frames may be sent and unacknowledged
  per camera. Beyond that a live or real-time source drops the new frame and counts it
  (``facestream_ingest_frames_dropped_total{reason="backpressure"}``); a file read as fast
  as possible waits instead. Nothing is skipped without being counted.
- Sequence numbers: each produced frame gets the camera's next ``seq``; with
  ``ingest.resume_seq`` an ingester continues after the last seq already in the topic,
  so event ids (``camera:seq``) never repeat across restarts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2

from pipeline import metrics
from pipeline.config.stream import CameraConfig, StreamConfig
from pipeline.stream import kafka_client
from pipeline.stream.codec import H_SEQ, FrameMessage, encode_bgr_jpeg, headers_dict, to_record
from pipeline.stream.video import (
    FpsSampler,
    SourceError,
    downscale,
    is_live,
    native_fps,
    open_capture,
)

if TYPE_CHECKING:
    from kafka import KafkaProducer

log = logging.getLogger(__name__)


@dataclass
class IngestStats:
    camera: str
    # starting | connecting | streaming | flushing | finished | failed | stopped
    state: str = "starting"
    read: int = 0  # frames decoded from the source
    sampled: int = 0  # frames kept by the fps sampler
    sent: int = 0  # handed to the producer (each got a seq)
    produced: int = 0  # acknowledged by Kafka
    dropped: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    first_seq: int | None = None
    next_seq: int = 0
    loops: int = 0
    error: str | None = None
    pid: int = field(default_factory=os.getpid)
    # CPU seconds of this process (every thread) when its source first opened: its start
    # (imports, the Kafka connection, the seq lookup), which a CPU budget leaves out.
    cpu_before_frames_s: float | None = None

    @property
    def in_flight(self) -> int:
        return self.sent - self.produced - self.dropped["send_failed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "state": self.state,
            "read": self.read,
            "sampled": self.sampled,
            "sent": self.sent,
            "produced": self.produced,
            "dropped": dict(self.dropped),
            "reconnects": self.reconnects,
            "first_seq": self.first_seq,
            "next_seq": self.next_seq,
            "loops": self.loops,
            "in_flight": self.in_flight,
            "error": self.error,
            "pid": self.pid,
            "cpu_before_frames_s": self.cpu_before_frames_s,
        }


def make_producer(cfg: StreamConfig, client_suffix: str = "ingest") -> KafkaProducer:
    # Idempotent (kafka_client.producer): retries must not reorder or duplicate a
    # camera's frames.
    return kafka_client.producer(
        cfg.kafka,
        client_suffix,
        linger_ms=5,
        max_block_ms=5_000,
        max_request_size=cfg.workers.max_frame_bytes + 64 * 1024,
    )


def camera_partition(camera_id: str, n_partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) gives a camera."""
    from kafka.partitioner.default import murmur2

    return (murmur2(camera_id.encode()) & 0x7FFFFFFF) % n_partitions


def resume_seq(cfg: StreamConfig, camera_id: str, *, timeout_s: float = 120.0) -> int:
    """The seq after the camera's last frame in the topic (0 for a new camera).

    The partition is shared with other cameras, so its last ``resume_scan_records``
    records may hold none of this camera's frames while older ones do: the scan steps
    back window by window (each twice the last) until it finds the camera's frames or
    reaches the partition's start. Stopping at the first window would restart the seq at
    0 and repeat event ids that consumers then drop as replays."""
    from kafka import TopicPartition

    topic = cfg.topics.frames
    consumer = kafka_client.consumer(cfg.kafka, "resume", max_poll_records=2_000)
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            return 0
        tp = TopicPartition(topic, camera_partition(camera_id, len(parts)))
        consumer.assign([tp])
        begin = consumer.beginning_offsets([tp])[tp]
        end = consumer.end_offsets([tp])[tp]
        key = camera_id.encode()
        deadline = time.monotonic() + timeout_s
        step, hi = cfg.ingest.resume_scan_records, end
        while hi > begin:
            lo = max(begin, hi - step)
            last = _last_seq(consumer, tp, key, lo, hi, deadline)
            if last is not None:
                return last + 1
            hi, step = lo, step * 2
        return 0
    finally:
        consumer.close()


def _last_seq(consumer: Any, tp: Any, key: bytes, lo: int, hi: int, deadline: float) -> int | None:
    """The highest seq of ``key``'s frames in offsets [lo, hi), None when it has none."""
    consumer.seek(tp, lo)
    last: int | None = None
    while consumer.position(tp) < hi:
        if time.monotonic() > deadline:
            # Guessing 0 would repeat event ids; refuse to start instead.
            raise TimeoutError(f"resume scan of {tp.topic}-{tp.partition} did not finish")
        for records in consumer.poll(timeout_ms=500).values():
            for rec in records:
                if rec.offset < hi and rec.key == key:
                    raw = headers_dict(rec.headers).get(H_SEQ, "")
                    if raw.isdigit():
                        last = max(last if last is not None else -1, int(raw))
    return last


class CameraIngester:
    """Reads one camera and produces its sampled frames until the end or ``stop``."""

    def __init__(
        self,
        camera: CameraConfig,
        cfg: StreamConfig,
        producer: KafkaProducer,
        stop: threading.Event | None = None,
        *,
        start_seq: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.camera = camera
        self.cfg = cfg
        self.producer = producer
        self.stop_event = stop or threading.Event()
        self.live = is_live(camera.url)
        self.stats = IngestStats(camera.id, next_seq=start_seq)
        self.quality = camera.jpeg_quality or cfg.ingest.jpeg_quality
        self._clock = clock
        self._acked = threading.Condition()
        self._labels = {"camera": camera.id}

    # -- producing -----------------------------------------------------------------------

    def _on_ack(self, _meta: Any) -> None:
        with self._acked:
            self.stats.produced += 1
            self._acked.notify_all()
        metrics.INGEST_FRAMES.labels(**self._labels).inc()

    def _on_error(self, exc: BaseException) -> None:
        with self._acked:
            self.stats.dropped["send_failed"] += 1
            self._acked.notify_all()
        metrics.INGEST_DROPPED.labels(reason="send_failed", **self._labels).inc()
        log.warning("camera %s: a frame was not produced: %s", self.camera.id, exc)

    def _drop(self, reason: str) -> None:
        self.stats.dropped[reason] += 1
        metrics.INGEST_DROPPED.labels(reason=reason, **self._labels).inc()

    def _may_drop(self) -> bool:
        # A camera cannot be paused: waiting would only make it drop frames itself, later
        # and uncounted. A file read at full speed can simply wait.
        return self.live or self.camera.realtime

    def produce(self, bgr: Any, pts_ms: float | None) -> bool:
        """Encode and send one frame (BGR, as OpenCV reads it); False when it was dropped
        (and counted)."""
        limit = self.cfg.ingest.max_in_flight
        with self._acked:
            if self.stats.in_flight >= limit:
                if self._may_drop():
                    self._drop("backpressure")
                    return False
                while self.stats.in_flight >= limit and not self.stop_event.is_set():
                    self._acked.wait(timeout=0.5)
                if self.stop_event.is_set():
                    return False
        from kafka.errors import KafkaTimeoutError

        capture_ts = int(self._clock() * 1000)
        h, w = bgr.shape[:2]
        msg = FrameMessage(
            camera_id=self.camera.id,
            seq=self.stats.next_seq,
            capture_ts_ms=capture_ts,
            data=encode_bgr_jpeg(bgr, self.quality),
            width=int(w),
            height=int(h),
            pts_ms=pts_ms,
        )
        key, value, headers = to_record(msg)
        try:
            future = self.producer.send(
                self.cfg.topics.frames, key=key, value=value, headers=headers
            )
        except KafkaTimeoutError:
            self._drop("buffer_full")
            return False
        with self._acked:
            if self.stats.first_seq is None:
                self.stats.first_seq = msg.seq
            self.stats.next_seq += 1
            self.stats.sent += 1
        metrics.INGEST_BYTES.labels(**self._labels).inc(len(value))
        future.add_callback(self._on_ack)
        future.add_errback(self._on_error)
        return True

    # -- reading -------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        ing = self.cfg.ingest
        return min(ing.reconnect_max_s, ing.reconnect_initial_s * (2 ** max(attempt - 1, 0)))

    def _reconnect_wait(self, attempt: int, why: str) -> bool:
        """Count a reconnect and wait; False when the camera should be given up."""
        self.stats.reconnects += 1
        metrics.INGEST_RECONNECTS.labels(**self._labels).inc()
        limit = self.cfg.ingest.max_reconnects
        if limit is not None and attempt > limit:
            self.stats.state = "failed"
            self.stats.error = f"gave up after {limit} reconnects: {why}"
            return False
        delay = self._backoff(attempt)
        log.warning("camera %s: %s; reconnect %d in %.1fs", self.camera.id, why, attempt, delay)
        self.stats.state = "connecting"
        return not self.stop_event.wait(delay)

    def run(self) -> IngestStats:
        """Ingest until the source ends (files), ``stop`` is set, or the camera fails."""
        cam, ing = self.camera, self.cfg.ingest
        attempt = 0
        metrics.INGEST_CONNECTED.labels(**self._labels).set(0)
        try:
            while not self.stop_event.is_set():
                self.stats.state = "connecting"
                try:
                    cap = open_capture(cam.url, ing.open_timeout_s, ing.read_timeout_s)
                except SourceError as exc:
                    if not self.live:
                        self.stats.state, self.stats.error = "failed", str(exc)
                        return self.stats
                    attempt += 1
                    if not self._reconnect_wait(attempt, str(exc)):
                        return self.stats
                    continue
                metrics.INGEST_CONNECTED.labels(**self._labels).set(1)
                if self.stats.cpu_before_frames_s is None:
                    self.stats.cpu_before_frames_s = time.process_time()
                try:
                    delivered = self._pump(cap)
                finally:
                    cap.release()
                    metrics.INGEST_CONNECTED.labels(**self._labels).set(0)
                if self.stop_event.is_set():
                    break
                if delivered:
                    attempt = 0
                if not self.live:
                    if cam.loop and delivered:
                        self.stats.loops += 1
                        continue
                    self.stats.state = "finished"
                    return self.stats
                attempt += 1
                if not self._reconnect_wait(attempt, "stream ended or stalled"):
                    return self.stats
            self.stats.state = "stopped"
            return self.stats
        except Exception as exc:  # a bug or an unexpected OpenCV failure: say so, stop
            log.exception("camera %s: ingest failed", cam.id)
            self.stats.state, self.stats.error = "failed", f"{type(exc).__name__}: {exc}"
            return self.stats
        finally:
            final = self.stats.state
            if final not in ("finished", "failed"):
                final = "stopped"  # stop was asked for, mid-read or mid-backoff
            if self.stats.in_flight:
                # Not done until Kafka has the frames: whoever waits for "finished"
                # (the runner's drain, a test's accounting) must not miss the last ones.
                self.stats.state = "flushing"
            self.flush()
            self.stats.state = final

    def _pump(self, cap: cv2.VideoCapture) -> int:
        """Read one opened capture until it ends; the number of frames it delivered."""
        cam = self.camera
        sampler = FpsSampler(cam.fps)
        native = native_fps(cap)
        wall0 = time.monotonic()
        index = 0
        self.stats.state = "streaming"
        while not self.stop_event.is_set():
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            self.stats.read += 1
            pts_ms = index * 1000.0 / native
            index += 1
            if self.live:
                clock_ms = time.monotonic() * 1000.0
            else:
                clock_ms = pts_ms
                if cam.realtime:
                    # Play the file at its own speed, like the camera it stands in for.
                    delay = wall0 + pts_ms / 1000.0 - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
            if not sampler.keep(clock_ms):
                continue
            self.stats.sampled += 1
            self.produce(downscale(bgr, cam.max_side), None if self.live else pts_ms)
        return index

    def flush(self, timeout_s: float = 30.0, attempts: int = 5) -> None:
        """Wait for Kafka to acknowledge what was sent. A broker restart can outlast one
        flush; frames still buffered when the camera says "finished" would land after a
        reader that trusts that state has moved on, so a finished source keeps waiting,
        bounded: the producer's own delivery timeout (2 min) fails what never lands, and
        those frames are counted as ``send_failed``."""
        tries = 1 if self.stop_event.is_set() else attempts
        for attempt in range(1, tries + 1):
            try:
                self.producer.flush(timeout=timeout_s)
                return
            except Exception as exc:  # the counts say what was not acknowledged
                log.warning(
                    "camera %s: flush %d of %d failed, %d frames unacknowledged: %s",
                    self.camera.id,
                    attempt,
                    tries,
                    self.stats.in_flight,
                    exc,
                )


class IngestActor:
    """One camera's ingester in a Ray actor (``facestream run``); the thread does the work
    so that ``stats`` and ``stop`` answer while it runs."""

    def __init__(self, camera: CameraConfig, cfg: StreamConfig, metrics_port: int | None = None):
        logging.basicConfig(level=logging.INFO)
        metrics.serve_metrics(metrics_port)
        self.producer = make_producer(cfg, f"ingest-{camera.id}")
        start = resume_seq(cfg, camera.id) if cfg.ingest.resume_seq else 0
        self.stop_event = threading.Event()
        self.ingester = CameraIngester(camera, cfg, self.producer, self.stop_event, start_seq=start)
        self.thread = threading.Thread(target=self.ingester.run, name=f"ingest-{camera.id}")
        self.thread.start()

    def stats(self) -> dict[str, Any]:
        return self.ingester.stats.as_dict()

    def done(self) -> bool:
        return not self.thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        self.stop_event.set()
        self.thread.join(timeout=timeout_s)
        self.producer.close(timeout=timeout_s)
        return self.stats()


def run_ingest(
    cfg: StreamConfig,
    cameras: list[CameraConfig],
    stop: threading.Event,
    on_tick: Callable[[list[IngestStats]], None] | None = None,
    tick_s: float = 1.0,
) -> list[IngestStats]:
    """``facestream ingest``: every camera in a thread of this process, one producer."""
    producer = make_producer(cfg)
    try:
        ingesters = []
        for cam in cameras:
            start = resume_seq(cfg, cam.id) if cfg.ingest.resume_seq else 0
            ingesters.append(CameraIngester(cam, cfg, producer, stop, start_seq=start))
        threads = [
            threading.Thread(target=i.run, name=f"ingest-{i.camera.id}", daemon=True)
            for i in ingesters
        ]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads) and not stop.is_set():
                if on_tick is not None:
                    on_tick([i.stats for i in ingesters])
                stop.wait(tick_s)
        except KeyboardInterrupt:
            stop.set()  # Ctrl-C: stop reading, but deliver what was already sent
        for t in threads:
            t.join(timeout=30)
        producer.flush(timeout=30)
        if on_tick is not None:
            on_tick([i.stats for i in ingesters])
        return [i.stats for i in ingesters]
    finally:
        producer.close(timeout=30)
