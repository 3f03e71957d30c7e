"""What a recognition worker counts: its stats (``RecognitionWorker.get_stats``, the
live summary, the tests) and the Prometheus metrics, kept together so that each event
is counted once, in both.

Bounded: camera ids are Kafka keys that any producer writes, so the per-camera counters
and metric labels keep the configured cameras and the first ``max_camera_labels``
others; any further camera is "other".
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline import metrics
from pipeline.stream.retry import Partition

if TYPE_CHECKING:
    from pipeline.stream.frames import BatchOutputs


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
class WorkerStats:
    worker: str
    labels: CameraLabels = field(default_factory=lambda: CameraLabels(set(), 0), repr=False)
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
    halted: list[Partition] = field(default_factory=list)  # partitions held back
    outputs_dropped: int = 0  # identity events Kafka refused for good
    assignment: list[Partition] = field(default_factory=list)
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

    # -- the retry policy's observer ----------------------------------------------------

    def retried(self, stage: str, error: str) -> None:
        metrics.WORKER_RETRIES.labels(stage=stage).inc()
        self.retries[stage] += 1
        self.last_error = error

    def halted_now(self, partitions: list[Partition]) -> None:
        self.halted = partitions
        metrics.WORKER_HALTED.set(len(partitions))
        if partitions:
            self.state = "halted"
        elif self.state == "halted":
            self.state = "running"

    def replayed(self) -> None:
        """A camera's sequence went backwards: its tracks start over."""
        self.tracker_restarts += 1

    # -- publishing ---------------------------------------------------------------------

    def gave_up(self, reason: str) -> None:
        """A frame dead-lettered after its batch's attempts (and committed)."""
        self.given_up[reason] += 1
        self.batches += 1
        self.dlq[reason] += 1
        metrics.WORKER_DLQ.labels(reason=reason).inc()
        metrics.WORKER_GIVEN_UP.labels(reason=reason).inc()

    def output_dropped(self, topic: str) -> None:
        self.outputs_dropped += 1
        metrics.WORKER_OUTPUTS_DROPPED.labels(topic=topic).inc()

    def commit_refused(self) -> None:
        self.commit_failures += 1
        metrics.WORKER_COMMIT_FAILURES.inc()

    def account(self, out: BatchOutputs) -> None:
        """A batch published and committed."""
        for plan in out.plans:
            per_camera = self.analyzers.setdefault(self.labels.label(plan.msg.camera_id), Counter())
            per_camera[plan.result.analyzer] += 1
        self.batches += 1
        self.frames += len(out.detections)
        now = time.time() * 1000
        for ev in out.detections:
            metrics.WORKER_LATENCY.observe(max(0.0, now - ev.capture_ts_ms) / 1000.0)
            label = self.labels.label(ev.camera_id)
            self.cameras[label] += 1
            metrics.WORKER_FRAMES.labels(camera=label).inc()
            for fo in ev.faces:
                self.faces += 1
                metrics.WORKER_FACES.labels(decision=fo.decision).inc()
                metrics.FACE_SIMILARITY.labels(decision=fo.decision).observe(fo.similarity)
        for ev in out.identities:
            self.identity_events += 1
            metrics.WORKER_IDENTITY_EVENTS.labels(type=ev.type).inc()
        for d in out.dead:
            self.dlq[d.reason] += 1
            metrics.WORKER_DLQ.labels(reason=d.reason).inc()
