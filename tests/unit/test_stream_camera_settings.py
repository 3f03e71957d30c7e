"""Per-camera settings (``[[stream.cameras]]``): validation, how they resolve for listed
and unlisted cameras, the face core's gate for one image, the threshold a camera's
faces are decided at, and the worker's requests and kept unknowns per camera."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from skimage import data

from pipeline.config.camera import CameraSettings, CameraTuning, stream_quality
from pipeline.config.face import DetectorConfig, FaceConfig, ImageLimits, QualityConfig
from pipeline.config.review import ReviewConfig
from pipeline.config.stream import StreamConfig, load_stream_file
from pipeline.face.align import Aligner, dlib_chip_template
from pipeline.face.analyze import FacePipeline
from pipeline.gallery.records import ThresholdInfo
from pipeline.stream.frames import FrameStep
from tests.unit.test_stream_frames import Analyzer, answer, frame


def _cams(*cams: dict[str, Any]) -> StreamConfig:
    return StreamConfig.model_validate(
        {"cameras": [{"url": "x.mp4", **c} for c in cams], "tracker": {"confirm_hits": 2}}
    )


@pytest.mark.parametrize(
    ("camera", "field"),
    [
        ({"threshold_offset": 0.25}, "cameras.0.threshold_offset"),
        ({"threshold_offset": -0.21}, "cameras.0.threshold_offset"),
        ({"threshold_offset": "strict"}, "cameras.0.threshold_offset"),
        ({"quality": {"min_face_px": -1}}, "cameras.0.quality.min_face_px"),
        ({"quality": {"min_sharpness": -0.5}}, "cameras.0.quality.min_sharpness"),
        ({"quality": {"max_yaw": 0}}, "cameras.0.quality.max_yaw"),
        ({"quality": {"max_roll_deg": 200}}, "cameras.0.quality.max_roll_deg"),
        ({"quality": {"min_face": 60}}, "cameras.0.quality.min_face"),  # misspelt
        ({"keep_unknowns": "sometimes"}, "cameras.0.keep_unknowns"),
    ],
)
def test_bad_camera_settings_are_refused_naming_the_field(
    camera: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        _cams({"id": "gate", **camera})
    locs = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert locs == {field}, locs


def test_the_bounds_themselves_are_accepted() -> None:
    cfg = _cams({"id": "a", "threshold_offset": 0.2}, {"id": "b", "threshold_offset": -0.2})
    assert [c.threshold_offset for c in cfg.cameras] == [0.2, -0.2]


def test_toml_camera_with_its_own_quality_table(tmp_path: Path) -> None:
    path = tmp_path / "cams.toml"
    path.write_text(
        """
[[stream.cameras]]
id = "lobby"
url = "rtsp://10.0.0.12/stream1"

[[stream.cameras]]
id = "gate"
url = "http://10.0.0.13/video.mjpg"
threshold_offset = 0.05
keep_unknowns = true

[stream.cameras.quality]
min_face_px = 60
max_yaw = 0.3
"""
    )
    lobby, gate = load_stream_file(path).cameras
    assert lobby.threshold_offset == 0 and lobby.keep_unknowns is None
    assert lobby.quality.overrides() == {}
    assert gate.threshold_offset == 0.05 and gate.keep_unknowns is True
    assert gate.quality.overrides() == {"min_face_px": 60.0, "max_yaw": 0.3}


def test_resolution_listed_unlisted_and_unchanged_cameras() -> None:
    cfg = _cams(
        {"id": "lobby"},
        {"id": "gate", "threshold_offset": -0.05, "quality": {"min_sharpness": 4}},
        {"id": "dock", "keep_unknowns": False},
    )
    cams = CameraSettings(cfg.cameras, keep_unknowns=True)
    # Nothing to apply for a camera that changes neither threshold nor gate.
    assert cams.tuning("lobby") is None and cams.tuning("dock") is None
    assert cams.tuning("elsewhere") is None
    assert cams.tuning("gate") == CameraTuning("gate", -0.05, (("min_sharpness", 4.0),))
    # keep_unknowns: the camera's own, else the global one (unlisted cameras too).
    assert [cams.keep_unknowns(c) for c in ("lobby", "dock", "elsewhere")] == [True, False, True]
    assert CameraSettings(cfg.cameras, keep_unknowns=False).keep_unknowns("dock") is False
    assert not CameraSettings(cfg.cameras, keep_unknowns=False).any_keeps_unknowns()
    keeps = _cams({"id": "gate", "keep_unknowns": True})
    assert CameraSettings(keeps.cameras, keep_unknowns=False).any_keeps_unknowns()


def test_a_cameras_gate_replaces_the_streams_values_even_softer_ones() -> None:
    base = stream_quality(QualityConfig(), min_sharpness=10.0)
    assert base.min_sharpness == 10.0  # the stream's stricter sharpness...
    assert stream_quality(QualityConfig(min_sharpness=12), 10.0).min_sharpness == 12
    tuning = CameraTuning("gate", 0.0, (("min_face_px", 80.0), ("min_sharpness", 4.0)))
    gate = tuning.gate(base)
    assert (gate.min_face_px, gate.min_sharpness) == (80.0, 4.0)  # ...and the camera's
    assert (gate.max_yaw, gate.max_roll_deg) == (base.max_yaw, base.max_roll_deg)
    assert CameraTuning("lobby", 0.1).gate(base) is base


def test_status_rows_show_the_values_in_force_and_who_set_them() -> None:
    cfg = _cams({"id": "lobby"}, {"id": "gate", "quality": {"min_face_px": 60}})
    base = stream_quality(QualityConfig(), 10.0)
    lobby, gate = CameraSettings(cfg.cameras, keep_unknowns=False).rows(base)
    assert (lobby["min_face_px"], lobby["quality_overrides"]) == (40.0, {})
    assert lobby["quality"]["min_sharpness"] == 10.0 and lobby["keep_unknowns_from"] == "global"
    assert (gate["min_face_px"], gate["quality_overrides"]) == (60.0, {"min_face_px": 60.0})


def test_the_face_core_applies_the_gate_it_is_given_for_one_image() -> None:
    cfg = FaceConfig(detector=DetectorConfig(fallbacks=[]))
    pipe = FacePipeline.from_config(cfg, Aligner(dlib_chip_template()))
    image = data.astronaut()
    (plain,) = pipe.analyze(image, pick="largest", embed=False)
    assert plain.quality.passed, plain.quality.reasons
    strict = cfg.quality.model_copy(update={"min_face_px": 10_000.0})
    (gated,) = pipe.analyze(image, pick="largest", embed=False, quality=strict)
    assert not gated.quality.passed
    assert gated.quality.reasons[0].startswith("face too small") and "10000" in str(
        gated.quality.reasons
    )
    # The pipeline's own gate is untouched by a per-image one.
    (again,) = pipe.analyze(image, pick="largest", embed=False)
    assert again.quality.passed


def test_a_threshold_with_a_camera_offset_says_so() -> None:
    base = ThresholdInfo(
        value=0.6, kind="open_set", target_far=0.01, gallery_size=5, provenance="curve of m-1"
    )
    assert base.with_offset(0.0, "lobby") is base
    shifted = base.with_offset(0.05, "gate")
    assert shifted.value == pytest.approx(0.65)
    assert shifted.provenance.startswith("curve of m-1; ")
    assert "+0.0500 for camera 'gate'" in shifted.provenance
    assert (shifted.kind, shifted.target_far, shifted.gallery_size) == ("open_set", 0.01, 5)
    assert base.with_offset(-0.1, "dock").value == pytest.approx(0.5)


def test_the_worker_sends_each_frame_with_its_cameras_tuning() -> None:
    cfg = _cams({"id": "lobby"}, {"id": "gate", "threshold_offset": 0.1})
    s = FrameStep("w0", cfg, ImageLimits())
    analyzer = Analyzer([answer(), answer(), answer()])
    s.run([frame(0), frame(0, camera="gate"), frame(0, camera="elsewhere")], analyzer)
    assert [r.tuning for r in analyzer.asked] == [None, CameraTuning("gate", 0.1), None]


def test_unknowns_are_kept_per_camera() -> None:
    cfg = _cams({"id": "lobby", "keep_unknowns": True}, {"id": "gate"})
    s = FrameStep("w0", cfg, ImageLimits(), ReviewConfig(keep_unknowns=False))
    frames = [frame(0), frame(0, camera="gate"), frame(1), frame(1, camera="gate")]
    out = s.run(frames, Analyzer([answer(None) for _ in frames]))
    assert [k.face_id for k in out.kept] == ["lobby:0:0", "lobby:1:0"]
    # The other way round: kept everywhere but at a camera that says no.
    cfg = _cams({"id": "gate", "keep_unknowns": False})
    s = FrameStep("w0", cfg, ImageLimits(), ReviewConfig(keep_unknowns=True))
    out = s.run(frames, Analyzer([answer(None) for _ in frames]))
    assert {k.camera_id for k in out.kept} == {"lobby"}
