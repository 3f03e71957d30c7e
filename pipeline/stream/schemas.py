"""The messages of the output topics: pydantic models and their JSON Schema files.

The models build every message the workers publish; the JSON Schema files in
``pipeline/stream/schemas/`` are what consumers in other languages read. The files are
generated from the models (``python -m pipeline.stream.schemas`` rewrites them) and a
test fails when they drift apart.

=========================== ======================== =====================================
topic                        model                    schema file
=========================== ======================== =====================================
``facestream.detections``    :class:`DetectionEvent`  ``schemas/detection.v1.json``
``facestream.identities``    :class:`IdentityEvent`   ``schemas/identity.v1.json``
``facestream.frames.dlq``    :class:`DlqEvent`        ``schemas/dlq.v1.json``
MQTT, webhooks (the bridge)  :class:`BridgeEvent`     ``schemas/bridge.v1.json``
``facestream.bridge.dlq``    :class:`BridgeDlqEvent`  ``schemas/bridge_dlq.v1.json``
=========================== ======================== =====================================
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.gallery.records import ThresholdInfo

SCHEMA_DIR = Path(__file__).with_name("schemas")
DETECTION_SCHEMA: Final = "facestream.detection/1"
IDENTITY_SCHEMA: Final = "facestream.identity/1"
DLQ_SCHEMA: Final = "facestream.dlq/1"
BRIDGE_SCHEMA: Final = "facestream.bridge/1"
BRIDGE_DLQ_SCHEMA: Final = "facestream.bridge_dlq/1"


class _Msg(BaseModel):
    # Producers must not invent fields: consumers validate against the same schema.
    # Serialisation always writes every field, so the schema lists them all as required.
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class IdentityRef(_Msg):
    identity_id: str = Field(description="Gallery identity id.")
    name: str = Field(description="Display name at the time of the event.")
    external_id: str | None = Field(None, description="The operator's own id, when set.")


class ThresholdRef(_Msg):
    """The open-set threshold a decision used, and why that value."""

    value: float = Field(description="Cosine similarity at or above which a face matched.")
    kind: str = Field(
        description="'open_set': from the model's open-set curve at the gallery's size "
        "(target_far is then the stranger false-accept rate); 'pair': the per-comparison "
        "threshold; 'request': set by the caller."
    )
    target_far: float | None = Field(description="The false-accept rate it was derived for.")
    gallery_size: int | None = Field(description="Enrolled faces it was derived for.")
    extrapolated: bool = Field(
        description="True when the gallery is larger than the calibration data could "
        "measure: the curve's last threshold holds, its target is not guaranteed."
    )
    provenance: str = Field(description="Where the value came from (data, date, figures).")

    @classmethod
    def of(cls, info: ThresholdInfo) -> ThresholdRef:
        """The wire form of the gallery's explanation: every field this schema names (the
        one place events build it)."""
        return cls.model_validate(info.model_dump(include=set(cls.model_fields)))


class Quality(_Msg):
    passed: bool = Field(description="Whether the face passed the quality gate (and was embedded).")
    reasons: list[str] = Field(description="Why it failed, one entry per failed check.")
    metrics: dict[str, float] = Field(description="Measured values (size, sharpness, yaw, …).")


class FaceOut(_Msg):
    face_id: str = Field(description="'camera:seq:index', deterministic.")
    box: list[float] = Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] pixels.")
    detector_score: float
    landmarks: list[list[float]] = Field(description="[[x, y], …] in the frame's pixels.")
    landmark_scheme: str
    quality: Quality
    decision: Literal["identity", "unknown", "rejected"] = Field(
        description="This frame's open-set decision: 'identity' when the best similarity "
        "reaches the threshold, 'unknown' otherwise, 'rejected' when the face failed the "
        "quality gate (not embedded, not searched)."
    )
    identity: IdentityRef | None = Field(description="The matched identity ('identity' only).")
    similarity: float | None = Field(description="Best cosine similarity in the gallery.")
    model_version: str | None = Field(description="Embedder version of this face's vector.")
    track_id: str = Field(description="Per-camera track, stable across frames.")
    track_identity: IdentityRef | None = Field(
        description="The identity the track is confirmed as (several agreeing frames), if any."
    )


class FrameRef(_Msg):
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    width: int = Field(ge=0)
    height: int = Field(ge=0)


class DetectionEvent(_Msg):
    schema_: Literal["facestream.detection/1"] = Field(DETECTION_SCHEMA, alias="schema")
    event_id: str = Field(description="'camera:seq': deterministic; drop repeats.")
    camera_id: str
    seq: int = Field(ge=0)
    capture_ts_ms: int = Field(description="Capture time, ms since the Unix epoch.")
    published_ts_ms: int = Field(description="When the worker published this event.")
    latency_ms: float = Field(description="published_ts_ms - capture_ts_ms.")
    frame: FrameRef = Field(description="Where the frame was read from.")
    model_version: str | None = Field(description="Embedder version (null: nothing embedded).")
    collection: str | None = Field(description="Gallery collection searched (null: none).")
    threshold: float | None = Field(description="Open-set threshold applied.")
    threshold_detail: ThresholdRef | None = Field(
        None, description="Why that threshold: target, gallery size, provenance."
    )
    faces: list[FaceOut]
    worker: str = Field(description="Id of the worker that tracked and published the frame.")
    analyzer: str | None = Field(
        None,
        description="Id (host:pid) of the analyzer replica that decoded, detected and "
        "embedded the frame.",
    )
    timings_ms: dict[str, float] = Field(description="Per-stage time spent on this frame.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class IdentityEvent(_Msg):
    schema_: Literal["facestream.identity/1"] = Field(IDENTITY_SCHEMA, alias="schema")
    event_id: str = Field(description="'camera:seq:index' of the face that decided; drop repeats.")
    type: Literal["identified", "identity_changed"] = Field(
        description="'identified': the track is confirmed as someone for the first time; "
        "'identity_changed': a confirmed track now votes for someone else."
    )
    camera_id: str
    seq: int = Field(ge=0)
    track_id: str
    identity: IdentityRef
    previous: IdentityRef | None = Field(description="The identity before ('identity_changed').")
    similarity: float = Field(description="Similarity of the deciding face.")
    best_similarity: float = Field(description="Best similarity of the track to this identity.")
    votes: int = Field(ge=1, description="Frames of the track that named this identity.")
    model_version: str
    collection: str
    box: list[float] = Field(min_length=4, max_length=4)
    threshold: ThresholdRef | None = Field(None, description="The threshold the match passed.")
    crop_id: str | None = Field(
        None,
        description="The deciding face's aligned crop, kept for review and feedback: "
        "GET /sightings/{crop_id}/crop on the REST API (with its token); null when "
        "gallery.review.event_crops is off.",
    )
    track_started_ts_ms: int
    capture_ts_ms: int
    published_ts_ms: int
    latency_ms: float

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SourceRef(_Msg):
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0, description="Offset of the rejected record in its topic.")
    timestamp_ms: int | None
    key: str | None
    headers: dict[str, str]


class DlqEvent(_Msg):
    schema_: Literal["facestream.dlq/1"] = Field(DLQ_SCHEMA, alias="schema")
    event_id: str = Field(
        description="'camera:seq' when the record carried them, else 'topic:partition:offset'."
    )
    reason: str = Field(
        description="missing_key | bad_key | missing_headers | bad_header | size_mismatch | "
        "undecodable | too_large | processing_error | publish_failed"
    )
    detail: str
    camera_id: str | None
    seq: int | None
    source: SourceRef
    payload_bytes: int = Field(ge=0)
    payload_sha256: str
    payload_b64: str | None = Field(
        description="The rejected value, base64, when no larger than stream.dlq_max_payload_bytes "
        "and the whole record stays within workers.max_record_bytes."
    )
    payload_omitted: str | None = Field(
        None,
        description="Why payload_b64 is null although the record had a value (its size and "
        "sha256 are kept); null when the value was copied or empty.",
    )
    worker: str
    published_ts_ms: int

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class KafkaRef(_Msg):
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)


class BridgeEvent(_Msg):
    """What the bridge sends to MQTT and webhooks: an identification, or an unknown
    person on a camera."""

    schema_: Literal["facestream.bridge/1"] = Field(BRIDGE_SCHEMA, alias="schema")
    event_id: str = Field(
        description="'camera:seq:index' of the face that decided: the same on every sink and "
        "when the bridge replays after a restart; receivers drop repeats."
    )
    decision: Literal["identified", "unknown"]
    type: Literal["identified", "identity_changed", "unknown"] = Field(
        description="The identity event's type, or 'unknown': a track whose faces match "
        "nobody (bridge.unknown_min_faces of them) and that is not confirmed as anyone."
    )
    camera_id: str
    seq: int = Field(ge=0)
    track_id: str
    identity: IdentityRef | None = Field(description="Who ('identified' only).")
    similarity: float | None = Field(
        description="Best gallery similarity of the deciding face; for 'unknown' it is below "
        "the threshold (null when the gallery was empty)."
    )
    threshold: ThresholdRef | None = Field(description="The open-set threshold applied.")
    model_version: str | None
    box: list[float] = Field(min_length=4, max_length=4)
    crop_id: str | None = Field(
        description="The deciding face's kept crop (GET /sightings/{crop_id}/crop), if kept."
    )
    unknown_faces: int | None = Field(
        description="'unknown': faces of the track that matched nobody so far."
    )
    capture_ts_ms: int
    rules: list[str] = Field(description="The rules that sent this event to this sink.")
    source: KafkaRef = Field(description="The Kafka record the event was read from.")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BridgeDlqEvent(_Msg):
    schema_: Literal["facestream.bridge_dlq/1"] = Field(BRIDGE_DLQ_SCHEMA, alias="schema")
    event_id: str = Field(description="The event's id, or 'topic:partition:offset'.")
    sink: str | None = Field(description="The sink that did not take it (null: unreadable).")
    reason: Literal["refused", "attempts_exhausted", "unreadable"] = Field(
        description="'refused': the receiver answered a 4xx that a retry cannot change; "
        "'attempts_exhausted': the sink's retry.max_attempts failed; 'unreadable': the "
        "Kafka record is not a valid identity or detection event."
    )
    detail: str
    attempts: int = Field(ge=0)
    event: BridgeEvent | None = Field(description="What was to be sent (null: unreadable).")
    source: SourceRef
    payload_b64: str | None = Field(description="'unreadable': the record's value, base64.")
    published_ts_ms: int

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


MODELS: dict[str, type[BaseModel]] = {
    "detection": DetectionEvent,
    "identity": IdentityEvent,
    "dlq": DlqEvent,
    "bridge": BridgeEvent,
    "bridge_dlq": BridgeDlqEvent,
}


def generate_schema(kind: str) -> dict[str, Any]:
    model = MODELS[kind]
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://facestream.dev/schemas/{kind}.v1.json"
    return schema


def schema_path(kind: str) -> Path:
    return SCHEMA_DIR / f"{kind}.v1.json"


@cache
def load_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema file of an output topic ('detection', 'identity' or 'dlq')."""
    return json.loads(schema_path(kind).read_text())


def to_json(event: BaseModel) -> bytes:
    return event.model_dump_json(by_alias=True).encode()


def write_schemas() -> list[Path]:
    SCHEMA_DIR.mkdir(exist_ok=True)
    paths = []
    for kind in MODELS:
        path = schema_path(kind)
        path.write_text(json.dumps(generate_schema(kind), indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_schemas():
        print(p)
