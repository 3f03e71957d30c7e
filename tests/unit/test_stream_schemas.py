"""Output messages: built by the event builders, valid against the JSON Schema files."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from pipeline.face.records import Detection, Face, Landmarks, QualityReport
from pipeline.gallery.records import ThresholdInfo
from pipeline.stream.codec import H_SEQ, FrameMessage
from pipeline.stream.events import (
    Deduper,
    Match,
    RecordRef,
    detection_event,
    dlq_event,
    event_matches,
    face_out,
    identity_event,
    parse_since,
)
from pipeline.stream.schemas import MODELS, generate_schema, load_schema, schema_path, to_json
from pipeline.stream.tracker import Announcement, TrackResult

LIN = {"identity_id": "id-lin", "name": "Lin-Manuel Miranda", "external_id": None}


def _validate(kind: str, payload: bytes) -> dict:
    doc = json.loads(payload)
    jsonschema.Draft202012Validator(load_schema(kind)).validate(doc)
    return doc


def _face(passed: bool = True) -> Face:
    pts = np.array([[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]], dtype=np.float32)
    face = Face(
        Detection((1.0, 2.0, 30.0, 40.0), 1.25, "dlib_hog"),
        Landmarks("dlib5", pts),
        np.zeros((150, 150, 3), dtype=np.uint8),
        QualityReport({"face_px": 38.0, "sharpness": 12.5}, () if passed else ("too blurred",)),
    )
    if passed:
        face.embedding = np.ones(128, dtype=np.float32) / np.sqrt(128)
        face.model_version = "dlib-resnet-v1-x"
    return face


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_schema_files_match_the_models(kind: str) -> None:
    # `python -m pipeline.stream.schemas` regenerates them after a model change.
    assert json.loads(schema_path(kind).read_text()) == generate_schema(kind)
    jsonschema.Draft202012Validator.check_schema(load_schema(kind))


def _frame() -> FrameMessage:
    return FrameMessage("lobby", 42, 1_700_000_000_000, b"jpeg", 640, 360)


def test_detection_and_identity_events_validate() -> None:
    from pipeline.stream.schemas import IdentityRef

    lin = IdentityRef(**LIN)
    ann = Announcement("identified", "id-lin", None, 2, 0.97)
    track = TrackResult("lobby:40:0", "id-lin", ann, 1_699_999_999_600)
    good = face_out(_frame(), 0, _face(), Match("identity", 0.9712345678, lin), track, lin)
    rejected = face_out(
        _frame(), 1, _face(passed=False), None, TrackResult("lobby:42:1", None, None, 0), None
    )
    ev = detection_event(
        _frame(),
        RecordRef("facestream.frames", 3, 1234, 1_700_000_000_001),
        (640, 360),
        [good, rejected],
        model_version="dlib-resnet-v1-x",
        collection="faces_v1",
        threshold=ThresholdInfo(value=0.912, kind="pair", target_far=1e-3, provenance="dlib"),
        worker="w0",
        timings_ms={"detect_ms": 80.123},
        published_ts_ms=1_700_000_000_250,
    )
    doc = _validate("detection", to_json(ev))
    assert doc["schema"] == "facestream.detection/1"
    assert doc["event_id"] == "lobby:42" and doc["latency_ms"] == 250.0
    assert [f["face_id"] for f in doc["faces"]] == ["lobby:42:0", "lobby:42:1"]
    assert [f["decision"] for f in doc["faces"]] == ["identity", "rejected"]
    assert doc["faces"][0]["identity"]["name"] == "Lin-Manuel Miranda"
    assert doc["faces"][1]["quality"]["reasons"] == ["too blurred"]
    assert doc["faces"][1]["model_version"] is None
    assert doc["threshold"] == 0.912 and doc["threshold_detail"]["kind"] == "pair"
    assert doc["threshold_detail"]["extrapolated"] is False

    idev = identity_event(
        _frame(), good, track, lin, None, model_version="v", collection="c", published_ts_ms=1
    )
    doc = _validate("identity", to_json(idev))
    assert doc["event_id"] == "lobby:42:0"
    assert doc["type"] == "identified" and doc["votes"] == 2 and doc["previous"] is None


def test_detection_event_without_faces_validates() -> None:
    ev = detection_event(
        _frame(),
        RecordRef("facestream.frames", 0, 0),
        (640, 360),
        [],
        model_version=None,
        collection=None,
        threshold=None,
        worker="w1",
        timings_ms={},
    )
    assert _validate("detection", to_json(ev))["faces"] == []


def test_dlq_events_validate_with_and_without_identity() -> None:
    ref = RecordRef("facestream.frames", 2, 99, None)
    ev = dlq_event(
        ref,
        b"gate",
        b"\x00junk",
        [(H_SEQ, b"5")],
        "undecodable",
        "bad",
        worker="w0",
        max_payload_bytes=1024,
    )
    doc = _validate("dlq", to_json(ev))
    assert doc["event_id"] == "gate:5" and doc["payload_b64"] == "AGp1bms="
    anon = dlq_event(
        ref, None, b"x" * 2048, None, "missing_key", "no key", worker="w0", max_payload_bytes=1024
    )
    doc = _validate("dlq", to_json(anon))
    assert doc["event_id"] == "facestream.frames:2:99"
    assert doc["payload_b64"] is None and doc["payload_bytes"] == 2048
    assert doc["source"]["offset"] == 99


def test_the_schema_rejects_what_consumers_must_not_see() -> None:
    schema = load_schema("identity")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"event_id": "x"}, schema)
    detection = load_schema("detection")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "facestream.detection/2"}, detection)


def test_deduper_is_bounded() -> None:
    d = Deduper(capacity=3)
    assert [d.seen(x) for x in "abca"] == [False, False, False, True]
    for x in "defg":
        d.seen(x)
    assert not d.seen("a")  # forgotten: the window is bounded


def test_parse_since() -> None:
    now = 1_700_000_000.0
    assert parse_since("10m", now=now) == 1_700_000_000_000 - 600_000
    assert parse_since("1700000000") == 1_700_000_000_000
    assert parse_since("1700000000123") == 1_700_000_000_123
    assert parse_since("2023-11-14T22:13:20Z") == 1_700_000_000_000
    with pytest.raises(ValueError, match="--since"):
        parse_since("yesterday")


def test_event_filters() -> None:
    ev = {"camera_id": "lobby", "identity": LIN}
    assert event_matches(ev, camera="lobby", identity="lin-manuel miranda")
    assert event_matches(ev, identity="id-lin")
    assert not event_matches(ev, camera="gate")
    assert not event_matches(ev, identity="Barack Obama")
    det = {"camera_id": "lobby", "faces": [{"identity": None, "track_identity": LIN}]}
    assert event_matches(det, identity="Lin-Manuel Miranda")
