"""Detectors on real faces: dlib HOG and CNN, and an ONNX detector (YuNet) from a manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config.face import DetectorConfig, FaceConfig
from pipeline.face.align import Aligner, AlignmentTemplate
from pipeline.face.analyze import FacePipeline, pick_faces
from pipeline.face.detect import DlibCnnDetector, DlibHogDetector, build_detector
from pipeline.face.errors import ModelError, MultipleFacesError, NoFaceError
from pipeline.face.image_io import load_image
from pipeline.face.landmarks import EYES_NOSE_MOUTH5
from pipeline.face.records import Detection


def _yunet_manifest(shared_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "yunet.json"
    path.write_text(
        json.dumps(
            {
                "name": "yunet_s_640",
                "format": "yunet",
                "file": str(shared_dir / "weights/yunet/yunet_s_640_640.onnx"),
                "input_size": [640, 640],
                "licence": "Apache-2.0",
            }
        )
    )
    return path


@pytest.mark.shared_data
def test_hog_and_cnn_find_the_lfw_face(lfw_images: list[Path]) -> None:
    img = load_image(lfw_images[0])
    for det in (DlibHogDetector(1), DlibCnnDetector(0)):
        found = pick_faces(det(img), img.shape, "center")
        assert len(found) == 1
        cx, cy = found[0].center
        assert abs(cx - 125) < 30 and abs(cy - 125) < 30  # LFW centres the labelled face


@pytest.mark.shared_data
def test_yunet_from_manifest_gives_five_landmarks(
    shared_dir: Path, lfw_images: list[Path], tmp_path: Path
) -> None:
    det = build_detector("onnx", onnx_manifest=_yunet_manifest(shared_dir, tmp_path))
    img = load_image(lfw_images[0])
    found = pick_faces(det(img), img.shape, "center")
    assert len(found) == 1 and found[0].score > 0.6
    lm = found[0].landmarks
    assert lm is not None and lm.scheme == EYES_NOSE_MOUTH5 and lm.points.shape == (5, 2)
    left_eye, right_eye, nose = lm.points[0], lm.points[1], lm.points[2]
    x1, y1, x2, y2 = found[0].box
    assert x1 < left_eye[0] < right_eye[0] < x2  # image-left eye first
    assert y1 < left_eye[1] < nose[1] < y2


@pytest.mark.shared_data
def test_yunet_detector_feeds_the_dlib_template(
    shared_dir: Path, lfw_images: list[Path], tmp_path: Path, face_pipeline: FacePipeline
) -> None:
    """YuNet boxes + the 5-point predictor give chips the dlib embedder recognises."""
    cfg = FaceConfig(
        detector=DetectorConfig(
            backend="onnx", fallbacks=[], onnx_manifest=_yunet_manifest(shared_dir, tmp_path)
        )
    )
    yunet = FacePipeline.from_config(cfg, face_pipeline.aligner, face_pipeline.embedder)
    img = load_image(lfw_images[1])
    a = yunet.single_face(img, pick="center", gate=False).embedding
    b = face_pipeline.single_face(img, pick="center", gate=False).embedding
    assert a is not None and b is not None and float(a @ b) > 0.95


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        build_detector("onnx", onnx_manifest=tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x", "format": "retinanet", "file": "x.onnx"}')
    with pytest.raises(ModelError, match="invalid detector manifest"):
        build_detector("onnx", onnx_manifest=bad)
    nofile = tmp_path / "nofile.json"
    nofile.write_text('{"name": "x", "format": "yunet", "file": "x.onnx"}')
    with pytest.raises(ModelError, match="model file not found"):
        build_detector("onnx", onnx_manifest=nofile)


def test_onnx_backend_needs_manifest_at_startup() -> None:
    with pytest.raises(ValueError, match="onnx_manifest is required"):
        DetectorConfig(backend="onnx")


def test_pick_policies() -> None:
    small = Detection((0, 0, 10, 10), 1.0, "t")
    big_centre = Detection((40, 40, 80, 80), 1.0, "t")
    shape = (120, 120, 3)
    assert pick_faces([small, big_centre], shape, "largest") == [big_centre]
    assert pick_faces([small, big_centre], shape, "center") == [big_centre]
    assert pick_faces([small, big_centre], shape, "all") == [small, big_centre]
    with pytest.raises(MultipleFacesError, match="--pick largest"):
        pick_faces([small, big_centre], shape, "error")


def test_blank_image_has_no_face(face_pipeline: FacePipeline) -> None:
    blank = np.full((200, 200, 3), 128, dtype=np.uint8)
    assert face_pipeline.analyze(blank) == []
    with pytest.raises(NoFaceError):
        face_pipeline.single_face(blank)


def test_template_scheme_without_landmark_model_is_refused(face_pipeline: FacePipeline) -> None:
    template = AlignmentTemplate(
        scheme=EYES_NOSE_MOUTH5,
        size=(112, 112),
        points=[(38, 51), (73, 51), (56, 71), (41, 92), (70, 92)],
    )
    pipe = FacePipeline(DlibHogDetector(0), Aligner(template), FaceConfig())
    det = Detection((10, 10, 60, 60), 1.0, "dlib_hog")
    with pytest.raises(Exception, match="no 'eyes_nose_mouth5' landmarks"):
        pipe.landmarks(np.zeros((100, 100, 3), dtype=np.uint8), det)
