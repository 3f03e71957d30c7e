"""One batch of a worker: frames -> analyzer requests -> answers -> tracks -> events.

:class:`FrameStep` is the part of a recognition worker that knows frames and knows
neither Kafka nor Ray: it takes the polled records (anything with ``topic``,
``partition``, ``offset``, ``timestamp``, ``key``, ``value`` and ``headers``) and a
callable that analyses frames (the worker's sends them to the analyzer deployment; a
test answers itself), and gives back the batch's detection events, identification
events, dead letters and the faces to keep for review.

- Records that are not frames (no key, bad headers, over the size limit) and frames the
  analyzer rejects become dead letters (the frame's fault); an answer that says a stage
  failed (not the frame's fault) raises ``StageFailed``, so the batch is retried.
- Answers are tracked in record order, which is a camera's sequence order; event ids
  are deterministic (``camera:seq``, ``camera:seq:index``), so a replay repeats them.
- State is bounded: tracks of ``tracker.max_cameras`` cameras, the names of the last
  ``KNOWN_IDENTITIES`` identities, the kept-face counts of the last ``KEPT_TRACKS``
  unknown tracks, and the partition of each tracked camera (dropped with its tracks
  when the partition moves to another worker).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pipeline import metrics
from pipeline.config.camera import CameraSettings
from pipeline.config.face import ImageLimits
from pipeline.config.review import ReviewConfig
from pipeline.config.stream import StreamConfig
from pipeline.face.records import Face
from pipeline.gallery.review.records import RecordedFace
from pipeline.serve.analyzer import AnalyzeRequest, AnalyzeResult
from pipeline.stream.codec import FrameMessage, FrameRejected, parse_record
from pipeline.stream.events import (
    Match,
    RecordRef,
    detection_event,
    dlq_event,
    face_out,
    identity_event,
    now_ms,
)
from pipeline.stream.retry import Partition, StageFailed
from pipeline.stream.schemas import (
    DetectionEvent,
    DlqEvent,
    FaceOut,
    IdentityEvent,
    IdentityRef,
)
from pipeline.stream.tracker import Observation, Tracker, TrackResult

KNOWN_IDENTITIES = 10_000  # names remembered for track labels (LRU)
KEPT_TRACKS = 10_000  # unknown tracks whose kept-face count is remembered (LRU)

K = TypeVar("K")
V = TypeVar("V")
# The frames of a batch -> the analyzer's answers, in the same order.
Analyze = Callable[[list[AnalyzeRequest]], list[AnalyzeResult]]


class Lru(Generic[K, V]):
    """A mapping that keeps its ``capacity`` most recently put keys."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)

    def items(self) -> list[tuple[K, V]]:
        return list(self._items.items())

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class FramePlan:
    """One analysed frame on its way through the batch."""

    msg: FrameMessage
    ref: RecordRef
    result: AnalyzeResult


@dataclass
class BatchOutputs:
    """What one batch publishes (and keeps for review)."""

    plans: list[FramePlan]
    detections: list[DetectionEvent]
    identities: list[IdentityEvent]
    dead: list[DlqEvent]
    kept: list[RecordedFace]


def record_ref(rec: Any) -> RecordRef:
    return RecordRef(rec.topic, rec.partition, rec.offset, rec.timestamp)


class FrameStep:
    """Frames -> tracks -> events for one worker (module doc)."""

    def __init__(
        self,
        worker_id: str,
        cfg: StreamConfig,
        limits: ImageLimits,
        review: ReviewConfig | None = None,
        *,
        on_replay: Callable[[], None] = lambda: None,
    ) -> None:
        self.worker_id = worker_id
        self.cfg = cfg
        w = cfg.workers
        # A frame's limits: the stream's and the face core's, whichever is lower.
        self.max_pixels = min(limits.max_pixels, w.max_frame_pixels)
        self.max_bytes = min(limits.max_bytes, w.max_frame_bytes)
        self.review = review or ReviewConfig()
        # Each camera's threshold offset, quality gate and keep_unknowns (unlisted
        # cameras: the global ones).
        self.cameras = CameraSettings(cfg.cameras, self.review.keep_unknowns)
        self.on_replay = on_replay
        self.tracker = Tracker(cfg.tracker)
        self.names: Lru[str, IdentityRef] = Lru(KNOWN_IDENTITIES)
        # Bounded like the tracker: an entry per camera, and camera ids are untrusted keys.
        self.camera_partition: Lru[str, Partition] = Lru(cfg.tracker.max_cameras)
        self.kept_per_track: Lru[str, int] = Lru(KEPT_TRACKS)

    def run(self, records: Sequence[Any], analyze: Analyze) -> BatchOutputs:
        """The batch's outputs; ``StageFailed`` when a stage outside the frames failed."""
        t0 = time.perf_counter()
        sent, dead = self.requests(records)
        answers = analyze([request for _, _, request in sent]) if sent else []
        plans = self.take(sent, answers, dead)
        metrics.WORKER_STAGE.labels(stage="analyze_batch").observe(time.perf_counter() - t0)
        detections, identities, kept = self.events(plans)
        return BatchOutputs(plans, detections, identities, dead, kept)

    def reject(self, rec: Any, reason: str, detail: str) -> DlqEvent:
        """The dead letter of ``rec`` (always within ``workers.max_record_bytes``)."""
        return dlq_event(
            record_ref(rec),
            rec.key,
            rec.value,
            rec.headers,
            reason,
            detail,
            worker=self.worker_id,
            max_payload_bytes=self.cfg.dlq_max_payload_bytes,
            max_record_bytes=self.cfg.workers.max_record_bytes,
        )

    def forget(self, partitions: set[Partition]) -> None:
        """The partitions moved to another worker: their cameras' tracks go."""
        cams = [c for c, tp in self.camera_partition.items() if tp in partitions]
        self.tracker.forget(cams)
        for c in cams:
            self.camera_partition.pop(c)

    # -- analysing -----------------------------------------------------------------------

    def requests(
        self, records: Sequence[Any]
    ) -> tuple[list[tuple[Any, FrameMessage, AnalyzeRequest]], list[DlqEvent]]:
        """The analyzer request of every frame, and the dead letters of the records that
        are not frames."""
        limit = self.cfg.workers.max_frame_bytes
        dead: list[DlqEvent] = []
        sent: list[tuple[Any, FrameMessage, AnalyzeRequest]] = []
        for rec in records:
            try:
                msg = parse_record(rec.key, rec.value, rec.headers)
                if len(msg.data) > limit:
                    raise FrameRejected(
                        "too_large",
                        f"{len(msg.data)} bytes exceeds workers.max_frame_bytes={limit}",
                    )
            except FrameRejected as exc:
                dead.append(self.reject(rec, exc.code, str(exc)))
                continue
            request = AnalyzeRequest(
                msg.data,
                msg.event_id,
                self.max_pixels,
                self.max_bytes,
                self.cameras.tuning(msg.camera_id),
            )
            sent.append((rec, msg, request))
        return sent, dead

    def take(
        self,
        sent: list[tuple[Any, FrameMessage, AnalyzeRequest]],
        answers: list[AnalyzeResult],
        dead: list[DlqEvent],
    ) -> list[FramePlan]:
        """The answers in record order; rejected frames join ``dead``. A failed stage (not
        the frame's fault) raises ``StageFailed``, so the whole batch is retried."""
        failed = next((a.failed for a in answers if a.failed is not None), None)
        if failed is not None:
            raise StageFailed(*failed)
        plans: list[FramePlan] = []
        for (rec, msg, _), answer in zip(sent, answers, strict=True):
            if answer.rejected is not None:
                dead.append(self.reject(rec, *answer.rejected))
                continue
            for stage, secs in answer.timings.items():
                metrics.WORKER_STAGE.labels(stage=stage).observe(secs)
            self.camera_partition.put(msg.camera_id, (rec.topic, rec.partition))
            plans.append(FramePlan(msg, record_ref(rec), answer))
        return plans

    # -- tracking and events -------------------------------------------------------------

    def events(
        self, plans: list[FramePlan]
    ) -> tuple[list[DetectionEvent], list[IdentityEvent], list[RecordedFace]]:
        """Track the frames in record order (a camera's sequence order) and build the
        events, and the faces to keep for review; each frame carries the model version
        its faces were embedded with."""
        detections: list[DetectionEvent] = []
        identities: list[IdentityEvent] = []
        kept: list[RecordedFace] = []
        for plan in plans:
            detections.append(self._frame(plan, identities, kept))
        return detections, identities, kept

    def _frame(
        self, plan: FramePlan, identities: list[IdentityEvent], kept: list[RecordedFace]
    ) -> DetectionEvent:
        """One frame: its faces through the tracker, its identity events and kept faces
        appended, its detection event returned."""
        msg, res = plan.msg, plan.result
        matches = self._matches(res)
        last = self.tracker.camera(msg.camera_id).last_seq
        if last is not None and msg.seq <= last:
            self.on_replay()
        tracks = self.tracker.update(
            msg.camera_id, msg.seq, msg.capture_ts_ms, _observations(res, matches)
        )
        outs: list[FaceOut] = []
        for i, (f, tr) in enumerate(zip(res.faces, tracks, strict=True)):
            fo = face_out(msg, i, f, matches.get(id(f)), tr, self._name(tr.confirmed_identity))
            outs.append(fo)
            self._keep_unknown(msg, res, f, fo, tr, kept)
            event = self._announce(msg, res, f, fo, tr, kept)
            if event is not None:
                identities.append(event)
        embedded = bool(res.embedded)
        assert res.size is not None
        return detection_event(
            msg,
            plan.ref,
            res.size,
            outs,
            model_version=res.model_version if embedded else None,
            collection=res.collection if embedded else None,
            threshold=res.threshold if embedded else None,
            worker=self.worker_id,
            analyzer=res.analyzer,
            timings_ms={f"{k}_ms": v * 1000 for k, v in res.timings.items()},
            published_ts_ms=now_ms(),
        )

    def _name(self, identity_id: str | None) -> IdentityRef | None:
        return None if identity_id is None else self.names.get(identity_id)

    def _matches(self, result: AnalyzeResult) -> dict[int, Match]:
        """Open-set answer per embedded face of a frame (keyed by id(face))."""
        out: dict[int, Match] = {}
        for f, cands in zip(result.embedded, result.candidates, strict=True):
            best = cands[0] if cands else None
            if best is None:
                out[id(f)] = Match("unknown", None, None)
                continue
            if best.decision != "identity":
                out[id(f)] = Match("unknown", best.similarity, None)
                continue
            ref = IdentityRef(
                identity_id=best.identity_id, name=best.name, external_id=best.external_id
            )
            self.names.put(ref.identity_id, ref)
            out[id(f)] = Match("identity", best.similarity, ref)
        return out

    def _keep_unknown(
        self,
        msg: FrameMessage,
        res: AnalyzeResult,
        face: Face,
        fo: FaceOut,
        track: TrackResult,
        kept: list[RecordedFace],
    ) -> None:
        """The first ``faces_per_track`` unknown faces of an unconfirmed track are kept
        (opt-in: ``review.keep_unknowns``, or the camera's own ``keep_unknowns``)."""
        if not (
            self.cameras.keep_unknowns(msg.camera_id)
            and res.model_version
            and fo.decision == "unknown"
            and track.confirmed_identity is None
        ):
            return
        n = self.kept_per_track.get(track.track_id) or 0
        if n >= self.review.faces_per_track:
            return
        self.kept_per_track.put(track.track_id, n + 1)
        recorded = _recorded(msg, face, fo, track.track_id, res.model_version, None)
        if recorded is not None:
            kept.append(recorded)

    def _announce(
        self,
        msg: FrameMessage,
        res: AnalyzeResult,
        face: Face,
        fo: FaceOut,
        track: TrackResult,
        kept: list[RecordedFace],
    ) -> IdentityEvent | None:
        """The identity event of a track confirmed (or changed) on this face, with its
        crop kept for review (``review.event_crops``)."""
        version, collection = res.model_version, res.collection
        if track.announcement is None or not version or not collection:
            return None
        ident = self._name(track.announcement.identity_id)
        if ident is None:
            return None
        crop = (
            _recorded(msg, face, fo, track.track_id, version, ident)
            if self.review.event_crops
            else None
        )
        if crop is not None:
            kept.append(crop)
        return identity_event(
            msg,
            fo,
            track,
            ident,
            self._name(track.announcement.previous_identity_id),
            model_version=version,
            collection=collection,
            threshold=res.threshold,
            crop_id=crop.face_id if crop is not None else None,
        )


def _observations(res: AnalyzeResult, matches: dict[int, Match]) -> list[Observation]:
    out = []
    for f in res.faces:
        m = matches.get(id(f))
        ident = m.identity if m is not None and m.decision == "identity" else None
        x0, y0, x1, y1 = f.detection.box
        out.append(
            Observation(
                box=(float(x0), float(y0), float(x1), float(y1)),
                embedding=f.embedding,
                identity_id=ident.identity_id if ident else None,
                name=ident.name if ident else None,
                similarity=m.similarity if m is not None else None,
                model_version=f.model_version if f.embedding is not None else None,
            )
        )
    return out


def _recorded(
    msg: FrameMessage,
    face: Face,
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
