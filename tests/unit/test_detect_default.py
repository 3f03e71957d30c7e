"""The default detector (YuNet, shipped in the package) and the detection size cap, on a
photo that scikit-image ships (no ../shared needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from pipeline.config.face import DetectorConfig, FaceConfig
from pipeline.face.align import Aligner, dlib_chip_template
from pipeline.face.analyze import FacePipeline
from pipeline.face.detect import PACKAGED_YUNET, build_detector, load_onnx_detector_manifest
from pipeline.face.errors import ModelError


def _pipeline(**detector: object) -> FacePipeline:
    cfg = FaceConfig(detector=DetectorConfig(fallbacks=[], **detector))  # type: ignore[arg-type]  # parsed by pydantic
    return FacePipeline.from_config(cfg, Aligner(dlib_chip_template()))


def test_the_shipped_yunet_is_the_default_and_matches_its_manifest() -> None:
    assert DetectorConfig().backend == "yunet"
    manifest, model = load_onnx_detector_manifest(PACKAGED_YUNET)
    assert manifest.sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "Apache-2.0" in (manifest.licence or "")
    assert (model.parent / "LICENSE-YuNet-Apache-2.0.txt").is_file()


def test_a_replaced_detector_file_is_refused(tmp_path: Path) -> None:
    manifest = json.loads(PACKAGED_YUNET.read_text())
    fake = tmp_path / manifest["file"]
    fake.write_bytes(b"not the model")
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="sha256"):
        load_onnx_detector_manifest(tmp_path / "m.json")


@pytest.mark.parametrize("backend", ["yunet", "dlib_hog", "dlib_cnn"])
def test_every_detector_finds_the_face_and_nothing_in_a_blank_frame(backend: str) -> None:
    pipe = _pipeline(backend=backend, max_side=None)
    faces = pipe.analyze(data.astronaut(), pick="largest", embed=False)
    assert len(faces) == 1 and faces[0].quality.passed, faces[0].quality.reasons
    assert pipe.analyze(np.full((360, 640, 3), 90, np.uint8), embed=False) == []


def test_a_big_frame_is_detected_small_and_aligned_at_full_size() -> None:
    small = data.astronaut()  # 512 x 512
    big = cv2.resize(small, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    pipe = _pipeline(max_side=640)
    (s,) = pipe.analyze(small, pick="largest", embed=False)
    (b,) = pipe.analyze(big, pick="largest", embed=False)
    # The big frame's face, found on a 640 px copy, comes back in the big frame's pixels...
    size = s.detection.box[2] - s.detection.box[0]
    assert np.abs(np.array(b.detection.box) / 4 - np.array(s.detection.box)).max() < 0.05 * size
    # ...and its landmarks are found in the full-resolution frame (4x the small ones).
    eye = np.linalg.norm(s.landmarks.points[0] - s.landmarks.points[2])
    assert np.abs(b.landmarks.points / 4 - s.landmarks.points).max() < 0.05 * eye
    assert b.quality.metrics["face_px"] > 3.5 * s.quality.metrics["face_px"]


def test_yunet_boxes_seed_dlib_in_its_own_convention() -> None:
    det = build_detector("yunet")(data.astronaut())[0]
    assert det.dlib_box is not None
    x1, y1, x2, y2 = det.dlib_box
    assert abs((x2 - x1) - (y2 - y1)) < 1e-6  # dlib's boxes are square
    assert det.face_box == det.dlib_box
