"""The worker's frame step without Kafka or Ray: records in, the test's own analyzer
answers, and out come the detection events, the identification event of a confirmed
track, the dead letters and the crops to keep, with deterministic ids."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from pipeline.config.face import ImageLimits
from pipeline.config.review import ReviewConfig
from pipeline.config.stream import StreamConfig
from pipeline.face.records import Detection, Face, Landmarks, QualityReport
from pipeline.gallery.records import ThresholdInfo
from pipeline.serve.analyzer import AnalyzeRequest, AnalyzeResult
from pipeline.serve.search import SearchHit
from pipeline.stream.codec import FrameMessage, frame_headers
from pipeline.stream.frames import FrameStep
from pipeline.stream.retry import StageFailed
from pipeline.stream.schemas import DetectionEvent, IdentityEvent, load_schema, to_json

ANN = SearchHit("id-ann", "Ann", None, 0.95, "identity")
VERSION = "m-1"


@dataclass(frozen=True)
class Rec:
    """A frames-topic record as kafka-python hands it over."""

    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def frame(seq: int, camera: str = "lobby", offset: int | None = None) -> Rec:
    msg = FrameMessage(camera, seq, 1_700_000_000_000 + 100 * seq, b"\xff\xd8jpeg", 64, 48)
    off = seq if offset is None else offset
    return Rec("frames", 2, off, msg.capture_ts_ms, camera.encode(), msg.data, frame_headers(msg))


def face(x: float, embedding: np.ndarray | None = None) -> Face:
    points = np.array([[x + 5, 10], [x + 15, 10], [x + 10, 15], [x + 6, 20], [x + 14, 20]])
    out = Face(
        detection=Detection((x, 0.0, x + 20.0, 30.0), 0.9, "test"),
        landmarks=Landmarks("dlib5", points.astype(np.float32)),
        chip=np.empty((0, 0, 3), dtype=np.uint8),
        quality=QualityReport({"face_px": 20.0}),
    )
    if embedding is not None:
        out.embedding, out.model_version = embedding, VERSION
        out.extras["chip_jpeg"] = b"\xff\xd8crop"
    return out


def answer(*hits: SearchHit | None, rejected: tuple[str, str] | None = None) -> AnalyzeResult:
    """One frame's answer: a face per hit (None: embedded, nothing in the gallery)."""
    vec = np.ones(4, dtype=np.float32) / 2
    faces = [face(100.0 * i, vec) for i in range(len(hits))]
    return AnalyzeResult(
        analyzer="host:1",
        size=(64, 48),
        faces=faces,
        candidates=[[h] if h is not None else [] for h in hits],
        model_version=VERSION,
        collection="faces_m_1",
        threshold=ThresholdInfo(
            value=0.9, kind="open_set", target_far=0.01, gallery_size=5, provenance="test"
        ),
        timings={"detect": 0.01},
        rejected=rejected,
    )


@dataclass
class Analyzer:
    """Answers in request order from a list; records what it was asked."""

    answers: list[AnalyzeResult]
    asked: list[AnalyzeRequest] = field(default_factory=list)

    def __call__(self, requests: list[AnalyzeRequest]) -> list[AnalyzeResult]:
        self.asked += requests
        return [self.answers.pop(0) for _ in requests]


def step(**review: Any) -> FrameStep:
    cfg = StreamConfig.model_validate({"tracker": {"confirm_hits": 2}})
    return FrameStep("w0", cfg, ImageLimits(), ReviewConfig(**review))


def test_two_frames_of_a_known_face_confirm_a_track_and_announce_it_once() -> None:
    s = step()
    out = s.run([frame(0), frame(1)], Analyzer([answer(ANN), answer(ANN)]))
    assert [d.event_id for d in out.detections] == ["lobby:0", "lobby:1"]
    assert [f.decision for d in out.detections for f in d.faces] == ["identity", "identity"]
    (event,) = out.identities
    assert event.event_id == "lobby:1:0" and event.type == "identified"
    assert event.identity.name == "Ann" and event.model_version == VERSION
    assert event.track_id == out.detections[0].faces[0].track_id
    # The deciding face's crop is kept (event_crops is on by default) and named by the event.
    assert [k.face_id for k in out.kept] == ["lobby:1:0"] and event.crop_id == "lobby:1:0"
    assert out.kept[0].decision == "identity" and out.kept[0].identity_id == "id-ann"
    assert not out.dead
    for ev, kind in ((out.detections[0], "detection"), (event, "identity")):
        _valid(to_json(ev), kind)


def test_records_that_are_not_frames_and_rejected_frames_become_dead_letters() -> None:
    s = step()
    keyless = Rec("frames", 2, 7, None, None, b"x", [])
    analyzer = Analyzer([answer(), answer(rejected=("undecodable", "corrupt JPEG"))])
    out = s.run([keyless, frame(0, offset=8), frame(1, offset=9)], analyzer)
    assert [r.name for r in analyzer.asked] == ["lobby:0", "lobby:1"]  # the keyless one not
    assert [(d.event_id, d.reason) for d in out.dead] == [
        ("frames:2:7", "missing_key"),
        ("lobby:1", "undecodable"),
    ]
    assert [d.event_id for d in out.detections] == ["lobby:0"] and out.detections[0].faces == []


def test_a_stage_that_failed_outside_the_frame_fails_the_batch() -> None:
    failed = answer()
    failed.failed = ("embed", "embedder timed out")
    with pytest.raises(StageFailed) as err:
        step().run([frame(0), frame(1)], Analyzer([answer(), failed]))
    assert err.value.stage == "embed" and not err.value.frame_fault


def test_a_replay_repeats_the_event_ids_and_restarts_the_tracks() -> None:
    replays: list[int] = []
    cfg = StreamConfig.model_validate({"tracker": {"confirm_hits": 2}})
    s = FrameStep("w0", cfg, ImageLimits(), on_replay=lambda: replays.append(1))
    first = s.run([frame(0), frame(1)], Analyzer([answer(ANN), answer(ANN)]))
    again = s.run([frame(0), frame(1)], Analyzer([answer(ANN), answer(ANN)]))
    assert replays == [1]
    for out in (first, again):
        assert [e.event_id for e in out.detections] == ["lobby:0", "lobby:1"]
        assert [e.event_id for e in out.identities] == ["lobby:1:0"]


def test_unknown_faces_are_kept_only_when_asked_and_a_few_per_track() -> None:
    frames = [frame(i) for i in range(5)]
    off = step().run(frames, Analyzer([answer(None) for _ in frames]))
    assert off.kept == [] and {f.decision for d in off.detections for f in d.faces} == {"unknown"}
    on = step(keep_unknowns=True, faces_per_track=3)
    out = on.run(frames, Analyzer([answer(None) for _ in frames]))
    assert [k.face_id for k in out.kept] == ["lobby:0:0", "lobby:1:0", "lobby:2:0"]
    assert {k.decision for k in out.kept} == {"unknown"}


def test_moving_partitions_forget_their_cameras_tracks() -> None:
    s = step()
    s.run([frame(0), frame(0, camera="gate")], Analyzer([answer(ANN), answer(ANN)]))
    assert set(s.tracker.cameras) == {"lobby", "gate"}
    s.forget({("frames", 2)})
    assert not s.tracker.cameras and len(s.camera_partition) == 0


def _valid(raw: bytes, kind: str) -> None:
    import json

    import jsonschema

    jsonschema.validate(json.loads(raw), load_schema(kind))
    model = DetectionEvent if kind == "detection" else IdentityEvent
    model.model_validate_json(raw)


def test_events_carry_the_whole_threshold_explanation_extrapolated_included() -> None:
    """A gallery larger than the calibration could measure: the curve's last threshold
    holds and the explanation says so; events must carry that flag (the README says
    they do), as the REST API and the CLI do."""
    big = [answer(ANN), answer(ANN)]
    for a in big:
        assert a.threshold is not None
        a.threshold = a.threshold.model_copy(update={"gallery_size": 50_000, "extrapolated": True})
    out = step().run([frame(0), frame(1)], Analyzer(big))
    detection = json.loads(to_json(out.detections[1]))
    identity = json.loads(to_json(out.identities[0]))
    for explained in (detection["threshold_detail"], identity["threshold"]):
        assert explained["extrapolated"] is True and explained["gallery_size"] == 50_000
    for schema in (load_schema("detection"), load_schema("identity")):
        assert "extrapolated" in schema["$defs"]["ThresholdRef"]["required"]
