"""From the pipeline's Kafka records to what the bridge sends: identity events as they
are, unknown people from the detections, and each camera's "unknown person present".

An unknown person is a track whose faces match nobody: ``unknown_min_faces`` faces
with the decision 'unknown' while the tracker has not confirmed the track as anyone.
Every such face after that is a candidate event; the rules' cooldown makes it one
alert per track and cooldown. Decisions use capture times only, so a replay after a
restart derives the same events with the same ids.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pipeline.stream.schemas import (
    BridgeEvent,
    DetectionEvent,
    FaceOut,
    IdentityEvent,
    KafkaRef,
)

MAX_TRACKS = 20_000  # unknown tracks remembered (oldest forgotten first)


@dataclass(frozen=True)
class CameraClear:
    """A camera's unknown person is gone: no unknown face for ``bridge.unknown_clear_s``
    (capture time of the frame that showed it). "Present" needs no message of its own:
    it is the unknown-person event itself."""

    camera_id: str
    ts_ms: int


def from_identity(ev: IdentityEvent, ref: KafkaRef) -> BridgeEvent:
    return BridgeEvent(
        event_id=ev.event_id,
        decision="identified",
        type=ev.type,
        camera_id=ev.camera_id,
        seq=ev.seq,
        track_id=ev.track_id,
        identity=ev.identity,
        similarity=ev.similarity,
        threshold=ev.threshold,
        model_version=ev.model_version,
        box=ev.box,
        crop_id=ev.crop_id,
        unknown_faces=None,
        capture_ts_ms=ev.capture_ts_ms,
        rules=[],
        source=ref,
    )


def _unknown(ev: DetectionEvent, face: FaceOut, count: int, ref: KafkaRef) -> BridgeEvent:
    return BridgeEvent(
        event_id=face.face_id,
        decision="unknown",
        type="unknown",
        camera_id=ev.camera_id,
        seq=ev.seq,
        track_id=face.track_id,
        identity=None,
        similarity=face.similarity,
        threshold=ev.threshold_detail,
        model_version=face.model_version,
        box=face.box,
        crop_id=None,
        unknown_faces=count,
        capture_ts_ms=ev.capture_ts_ms,
        rules=[],
        source=ref,
    )


class UnknownPeople:
    """Per camera and track: faces that matched nobody; per camera: whether an unknown
    person is present (bounded state)."""

    def __init__(self, min_faces: int, clear_s: float, max_tracks: int = MAX_TRACKS) -> None:
        self.min_faces = min_faces
        self.clear_ms = int(clear_s * 1000)
        self.max_tracks = max_tracks
        self._tracks: OrderedDict[tuple[str, str], int] = OrderedDict()  # -1: identified
        self._last_unknown_ms: dict[str, int] = {}  # cameras now "present"

    def _count(self, key: tuple[str, str], face: FaceOut) -> int:
        n = self._tracks.pop(key, 0)
        if face.track_identity is not None or n < 0:
            n = -1  # confirmed as someone: never an unknown person again
        elif face.decision == "unknown":
            n += 1
        self._tracks[key] = n
        while len(self._tracks) > self.max_tracks:
            self._tracks.popitem(last=False)
        return n

    def observe(
        self, ev: DetectionEvent, ref: KafkaRef
    ) -> tuple[list[BridgeEvent], CameraClear | None]:
        """The unknown-person events of one detection event, and whether it shows the
        camera's unknown person gone."""
        events = []
        for face in ev.faces:
            if face.decision == "rejected":
                continue
            n = self._count((ev.camera_id, face.track_id), face)
            if face.decision == "unknown" and n >= self.min_faces:
                events.append(_unknown(ev, face, n, ref))
        cam, ts = ev.camera_id, ev.capture_ts_ms
        if events:
            self._last_unknown_ms[cam] = max(ts, self._last_unknown_ms.get(cam, ts))
        elif cam in self._last_unknown_ms and ts - self._last_unknown_ms[cam] >= self.clear_ms:
            del self._last_unknown_ms[cam]
            return events, CameraClear(cam, ts)
        return events, None


def parse_record(topic_kind: str, value: bytes) -> Any:
    """The identity or detection event of a record's value (pydantic's error when it is
    not one)."""
    model = IdentityEvent if topic_kind == "identities" else DetectionEvent
    return model.model_validate_json(value)
