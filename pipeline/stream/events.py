"""Building the output events, dropping duplicates, and reading topics back.

Delivery is at-least-once: a worker that dies after publishing but before committing
its offsets has its frames processed again by another worker, which publishes the same
event ids. :class:`Deduper` is what a consumer uses to drop those repeats.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.face.records import Face
from pipeline.gallery.records import ThresholdInfo
from pipeline.stream.codec import FrameMessage, frame_event_id, headers_dict, identify_record
from pipeline.stream.schemas import (
    DetectionEvent,
    DlqEvent,
    FaceOut,
    FrameRef,
    IdentityEvent,
    IdentityRef,
    Quality,
    SourceRef,
    ThresholdRef,
    to_json,
)
from pipeline.stream.tracker import TrackResult

if TYPE_CHECKING:
    from pipeline.config.stream import KafkaConfig


def now_ms() -> int:
    return int(time.time() * 1000)


def face_event_id(camera_id: str, seq: int, index: int) -> str:
    return f"{frame_event_id(camera_id, seq)}:{index}"


@dataclass(frozen=True)
class Match:
    """The open-set answer for one embedded face."""

    decision: str  # "identity" | "unknown"
    similarity: float | None
    identity: IdentityRef | None


@dataclass(frozen=True)
class RecordRef:
    """Where a frame came from (its topic, partition and offset)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = None


def _round(values: Sequence[float], nd: int = 1) -> list[float]:
    return [round(float(v), nd) for v in values]


def face_out(
    frame: FrameMessage,
    index: int,
    face: Face,
    match: Match | None,
    track: TrackResult,
    track_identity: IdentityRef | None,
) -> FaceOut:
    det = face.detection
    if match is None:
        decision, identity, similarity = "rejected", None, None
    else:
        decision, identity, similarity = match.decision, match.identity, match.similarity
    return FaceOut(
        face_id=face_event_id(frame.camera_id, frame.seq, index),
        box=_round(det.box),
        detector_score=round(float(det.score), 4),
        landmarks=face.landmarks.to_list(),
        landmark_scheme=face.landmarks.scheme,
        quality=Quality(
            passed=face.quality.passed,
            reasons=list(face.quality.reasons),
            metrics={k: round(float(v), 4) for k, v in face.quality.metrics.items()},
        ),
        decision=decision,
        identity=identity if decision == "identity" else None,
        similarity=None if similarity is None else round(similarity, 6),
        model_version=face.model_version,
        track_id=track.track_id,
        track_identity=track_identity,
    )


def detection_event(
    frame: FrameMessage,
    ref: RecordRef,
    size: tuple[int, int],
    faces: list[FaceOut],
    *,
    model_version: str | None,
    collection: str | None,
    threshold: ThresholdInfo | None,
    worker: str,
    timings_ms: dict[str, float],
    analyzer: str | None = None,
    published_ts_ms: int | None = None,
) -> DetectionEvent:
    published = published_ts_ms if published_ts_ms is not None else now_ms()
    return DetectionEvent(
        event_id=frame.event_id,
        camera_id=frame.camera_id,
        seq=frame.seq,
        capture_ts_ms=frame.capture_ts_ms,
        published_ts_ms=published,
        latency_ms=float(published - frame.capture_ts_ms),
        frame=FrameRef(
            topic=ref.topic,
            partition=ref.partition,
            offset=ref.offset,
            width=size[0],
            height=size[1],
        ),
        model_version=model_version,
        collection=collection,
        threshold=threshold.value if threshold is not None else None,
        threshold_detail=ThresholdRef.of(threshold) if threshold is not None else None,
        faces=faces,
        worker=worker,
        analyzer=analyzer,
        timings_ms={k: round(v, 2) for k, v in timings_ms.items()},
    )


def identity_event(
    frame: FrameMessage,
    face: FaceOut,
    track: TrackResult,
    identity: IdentityRef,
    previous: IdentityRef | None,
    *,
    model_version: str,
    collection: str,
    threshold: ThresholdInfo | None = None,
    crop_id: str | None = None,
    published_ts_ms: int | None = None,
) -> IdentityEvent:
    assert track.announcement is not None
    published = published_ts_ms if published_ts_ms is not None else now_ms()
    return IdentityEvent(
        event_id=face.face_id,
        type=track.announcement.kind,
        camera_id=frame.camera_id,
        seq=frame.seq,
        track_id=track.track_id,
        identity=identity,
        previous=previous,
        similarity=face.similarity if face.similarity is not None else 0.0,
        best_similarity=round(track.announcement.best_similarity, 6),
        votes=track.announcement.votes,
        model_version=model_version,
        collection=collection,
        box=face.box,
        threshold=ThresholdRef.of(threshold) if threshold is not None else None,
        crop_id=crop_id,
        track_started_ts_ms=track.track_started_ts_ms,
        capture_ts_ms=frame.capture_ts_ms,
        published_ts_ms=published,
        latency_ms=float(published - frame.capture_ts_ms),
    )


# A DLQ record's source headers and key are written by whoever produced the frame; when
# they alone would overflow the record they are cut to these sizes.
_HEADER_LIMIT = 64
_TEXT_LIMIT = 256


def _cut(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[:_TEXT_LIMIT] + "…"


def source_ref(
    ref: RecordRef, key: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None
) -> SourceRef:
    """Where a dead-lettered record was, as dead letters name it."""
    return SourceRef(
        topic=ref.topic,
        partition=ref.partition,
        offset=ref.offset,
        timestamp_ms=ref.timestamp_ms,
        key=key.decode("utf-8", "backslashreplace") if key is not None else None,
        headers=headers_dict(headers),
    )


def dlq_event(
    ref: RecordRef,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    reason: str,
    detail: str,
    *,
    worker: str,
    max_payload_bytes: int,
    max_record_bytes: int = 900 * 1024,
) -> DlqEvent:
    """The dead letter of one frames-topic record, never larger than ``max_record_bytes``
    (JSON): a dead letter the broker refuses would hold its whole partition back."""
    camera, seq = identify_record(key, headers)
    data = value or b""
    event_id = (
        frame_event_id(camera, seq)
        if camera is not None and seq is not None
        else f"{ref.topic}:{ref.partition}:{ref.offset}"
    )
    omitted: str | None = None
    if len(data) > max_payload_bytes:
        omitted = f"{len(data)} bytes exceed stream.dlq_max_payload_bytes={max_payload_bytes}"
    event = DlqEvent(
        event_id=event_id,
        reason=reason,
        detail=detail[:2000],
        camera_id=camera,
        seq=seq,
        source=source_ref(ref, key, headers),
        payload_bytes=len(data),
        payload_sha256=hashlib.sha256(data).hexdigest(),
        payload_b64=None,
        payload_omitted=omitted,
        worker=worker,
        published_ts_ms=now_ms(),
    )
    size = len(to_json(event))
    if size > max_record_bytes:
        # Untrusted key and headers alone overflow the record: keep their beginnings.
        src = event.source
        cut = {_cut(k): _cut(v) for k, v in list(src.headers.items())[:_HEADER_LIMIT]}
        key_text = _cut(src.key) if src.key is not None else None
        event = event.model_copy(
            update={"source": src.model_copy(update={"headers": cut, "key": key_text})}
        )
        size = len(to_json(event))
    if data and omitted is None:
        # The copy's exact JSON size: base64 is 4 characters per 3 bytes, plus the quotes
        # that replace "null".
        copy = 4 * ((len(data) + 2) // 3)
        if size - len("null") + copy + 2 <= max_record_bytes:
            return event.model_copy(update={"payload_b64": base64.b64encode(data).decode()})
        omitted = (
            f"{len(data)} bytes ({copy} in base64) would not fit the record "
            f"(workers.max_record_bytes={max_record_bytes}); sha256 and size kept"
        )
        event = event.model_copy(update={"payload_omitted": omitted})
    return event


class Deduper:
    """Remembers the last ``capacity`` event ids; ``seen(id)`` is True for a repeat.

    Bounded on purpose: a consumer that runs for months must not grow without limit.
    Repeats arrive close to the original (the frames of one uncommitted batch), so a
    window of recent ids catches them.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return False


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(value: str, now: float | None = None) -> int:
    """A start time in ms since the epoch from '10m' / '2h' (ago), an ISO time or epoch
    seconds / milliseconds."""
    text = value.strip()
    m = _RELATIVE.match(text)
    if m:
        ref = time.time() if now is None else now
        return int(ref * 1000 - float(m.group(1)) * _UNITS_MS[m.group(2)])
    if re.fullmatch(r"\d+(\.\d+)?", text):
        number = float(text)
        # Epoch seconds stay below 1e11 until the year 5138; larger values are ms.
        return int(number * 1000) if number < 1e11 else int(number)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {value!r}: expected a duration (30s, 10m, 2h, 1d), an ISO time or epoch"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def event_matches(
    event: dict[str, Any], camera: str | None = None, identity: str | None = None
) -> bool:
    """Filter on camera id and on identity (id, external id or name, case-insensitive)."""
    if camera is not None and event.get("camera_id") != camera:
        return False
    if identity is None:
        return True
    wanted = identity.casefold()
    refs = []
    if isinstance(event.get("identity"), dict):
        refs.append(event["identity"])
    for face in event.get("faces") or []:
        for key in ("identity", "track_identity"):
            if isinstance(face.get(key), dict):
                refs.append(face[key])
    for ref in refs:
        for key in ("identity_id", "external_id", "name"):
            if ref.get(key) is not None and str(ref[key]).casefold() == wanted:
                return True
    return False


def read_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    since_ms: int | None = None,
    follow: bool = False,
    stop: Callable[[], bool] | None = None,
    idle_timeout_s: float = 5.0,
    dedupe: bool = True,
    kafka: KafkaConfig | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the JSON events of ``topic`` (all partitions, no consumer group).

    Without ``follow`` it stops at the end offsets it found when it started; with it,
    it waits for new events until ``stop()`` returns True. Duplicate event ids (the
    at-least-once repeats) are dropped unless ``dedupe`` is False.
    """
    from kafka import TopicPartition

    from pipeline.stream import kafka_client

    at = kafka_client.with_bootstrap(bootstrap_servers, kafka)
    consumer = kafka_client.consumer(at, "events", auto_offset_reset="earliest")
    seen = Deduper()
    try:
        parts = consumer.partitions_for_topic(topic)
        deadline = time.monotonic() + idle_timeout_s
        while not parts and time.monotonic() < deadline:
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise LookupError(f"topic {topic!r} not found on {bootstrap_servers}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if since_ms is not None:
            found = consumer.offsets_for_times({tp: since_ms for tp in tps})
            ends = consumer.end_offsets(tps)
            for tp in tps:
                off = found.get(tp)
                consumer.seek(tp, off.offset if off is not None else ends[tp])
        else:
            consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        while True:
            if stop is not None and stop():
                return
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    try:
                        event = json.loads(rec.value)
                    except (TypeError, ValueError):
                        continue  # not ours; the topic's schema says JSON
                    if dedupe and seen.seen(str(event.get("event_id"))):
                        continue
                    yield event
            if not follow and all(consumer.position(tp) >= ends[tp] for tp in tps):
                return
    finally:
        consumer.close()
