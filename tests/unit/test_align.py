"""Alignment reproduces dlib's face chip, which the default embedder was trained on."""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np
import pytest

from pipeline.face.align import Aligner, AlignmentTemplate, dlib_chip_template, similarity_transform
from pipeline.face.detect import DlibHogDetector
from pipeline.face.errors import LandmarkSchemeError
from pipeline.face.image_io import load_image
from pipeline.face.landmarks import DlibShapePredictor5
from pipeline.face.packaged_models import SHAPE_5, packaged_model
from pipeline.face.records import Landmarks


def test_similarity_transform_recovers_known_transform() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, t = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_template_validation() -> None:
    with pytest.raises(ValueError, match="unknown landmark scheme"):
        AlignmentTemplate(scheme="x", size=(10, 10), points=[(0, 0)])
    with pytest.raises(ValueError, match="has 2 points"):
        AlignmentTemplate(scheme="dlib5", size=(10, 10), points=[(0, 0), (1, 1)])


def test_scheme_mismatch_is_refused() -> None:
    aligner = Aligner(dlib_chip_template())
    lm = Landmarks("eyes_nose_mouth5", np.zeros((5, 2), dtype=np.float32))
    with pytest.raises(LandmarkSchemeError):
        aligner(np.zeros((100, 100, 3), dtype=np.uint8), lm)


@pytest.mark.shared_data
def test_chips_match_dlib_get_face_chip(lfw_images: list[Path]) -> None:
    detector, landmarker = DlibHogDetector(1), DlibShapePredictor5()
    aligner = Aligner(dlib_chip_template(150, 0.25))
    predictor = dlib.shape_predictor(str(packaged_model(SHAPE_5)))
    diffs = []
    for path in lfw_images[:40]:
        img = load_image(path)
        dets = detector(img)
        if not dets:
            continue
        ours = aligner(img, landmarker(img, dets[0]))
        x1, y1, x2, y2 = (int(v) for v in dets[0].box)
        shape = predictor(img, dlib.rectangle(x1, y1, x2 - 1, y2 - 1))
        ref = dlib.get_face_chip(img, shape, size=150, padding=0.25)
        diffs.append(np.abs(ours.astype(int) - ref.astype(int)).mean())
    assert len(diffs) >= 30
    # bilinear rounding differs by at most one grey level between OpenCV and dlib
    assert max(diffs) < 1.0, diffs
