"""StreamConfig: defaults, start-up validation, file and environment sources."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config.settings import Settings
from pipeline.config.stream import CameraConfig, StreamConfig, load_stream_file


def test_defaults_are_valid_and_name_the_documented_topics() -> None:
    cfg = StreamConfig()
    assert cfg.topics.all() == [
        "facestream.frames",
        "facestream.detections",
        "facestream.identities",
        "facestream.frames.dlq",
    ]
    assert cfg.kafka.bootstrap_servers is None
    assert cfg.metrics.port is None  # off unless asked for


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"cameras": [{"id": "a", "url": "x.mp4"}, {"id": "a", "url": "y.mp4"}]}, "unique"),
        ({"cameras": [{"id": "lobby:1", "url": "x.mp4"}]}, "id"),
        ({"cameras": [{"id": "a", "url": "x.mp4", "fps": 0}]}, "fps"),
        ({"cameras": [{"id": "a", "url": "x.mp4", "fsp": 5}]}, "fsp"),  # misspelt key
        ({"topics": {"detections": "facestream.frames"}}, "different"),
        ({"workers": {"session_timeout_ms": 6000, "heartbeat_interval_ms": 3000}}, "heartbeat"),
        ({"embedder": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}, "min_replicas"),
        ({"tracker": {"confirm_hits": 20, "vote_window": 5}}, "confirm_hits"),
        ({"ingest": {"reconnect_initial_s": 60, "reconnect_max_s": 30}}, "reconnect"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_field(data: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        StreamConfig.model_validate(data)
    assert field in str(info.value)


def test_toml_file_with_a_stream_table(tmp_path: Path) -> None:
    path = tmp_path / "cams.toml"
    path.write_text(
        """
[stream.kafka]
bootstrap_servers = "k1:9092,k2:9092"

[[stream.cameras]]
id = "lobby"
url = "rtsp://user:pw@10.0.0.12/stream1"
fps = 2

[[stream.cameras]]
id = "gate"
url = "http://10.0.0.13/video.mjpg"
max_side = 960
"""
    )
    cfg = load_stream_file(path)
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert [c.id for c in cfg.cameras] == ["lobby", "gate"]
    assert cfg.cameras[0].fps == 2 and cfg.cameras[1].max_side == 960


def test_toml_file_top_level_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[workers]\ncount = 4\n[embedder]\nreplicas = 2\n")
    cfg = load_stream_file(path)
    assert cfg.workers.count == 4 and cfg.embedder.replicas == 2


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_STREAM__KAFKA__BOOTSTRAP_SERVERS", "broker:9092")
    monkeypatch.setenv("FACESTREAM_STREAM__WORKERS__COUNT", "3")
    cfg = Settings().stream
    assert cfg.kafka.bootstrap_servers == "broker:9092"
    assert cfg.workers.count == 3


def test_a_settings_section_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_STREAM__WORKERS__COUNT", "3")

    section = StreamConfig.model_validate({"workers": {"count": 5}})
    assert Settings(stream=section).stream.workers.count == 5


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="stream config file not found"):
        load_stream_file(tmp_path / "nope.toml")


def test_camera_defaults() -> None:
    cam = CameraConfig(id="c1", url="0")
    assert (cam.fps, cam.max_side, cam.loop, cam.realtime) == (5.0, 1280, False, True)


def test_video_frames_are_gated_more_strictly_than_stills() -> None:
    from pipeline.config.face import FaceConfig, QualityConfig
    from pipeline.config.stream import WorkerConfig
    from pipeline.stream.runner import stream_face_config

    face = FaceConfig()
    video = stream_face_config(face, WorkerConfig())
    assert face.quality.min_sharpness == 5 and video.quality.min_sharpness == 10
    assert face.detector.fallbacks and video.detector.fallbacks == []
    strict = FaceConfig(quality=QualityConfig(min_sharpness=20))
    assert stream_face_config(strict, WorkerConfig()).quality.min_sharpness == 20
    kept = stream_face_config(face, WorkerConfig(detector_fallbacks=True, min_sharpness=None))
    assert kept == face
