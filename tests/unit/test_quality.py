"""The quality gate: each check fires with its own reason and threshold."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config.face import QualityConfig
from pipeline.face.analyze import FacePipeline
from pipeline.face.image_io import load_image
from pipeline.face.landmarks import DLIB5
from pipeline.face.quality import assess, pose, sharpness
from pipeline.face.records import Detection, Landmarks

# a frontal dlib5 face: eye corners level, nose on the midline
FRONTAL = Landmarks(
    DLIB5, np.array([[90, 50], [70, 50], [30, 50], [50, 50], [60, 80]], dtype=np.float32)
)


def test_pose_of_frontal_and_turned_faces() -> None:
    yaw, roll = pose(FRONTAL)
    assert abs(yaw) < 1e-6 and abs(roll) < 1e-6
    turned = Landmarks(DLIB5, FRONTAL.points + np.array([[0, 0]] * 4 + [[25, 0]], dtype=np.float32))
    assert pose(turned)[0] == pytest.approx(25 / 40)  # eye centres 40 px apart


def test_sharpness_drops_with_blur() -> None:
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 255, (150, 150, 3), dtype=np.uint8)
    assert sharpness(cv2.GaussianBlur(chip, (0, 0), 4)) < sharpness(chip) / 10


def test_every_check_reports_value_and_threshold() -> None:
    flat = np.full((150, 150, 3), 100, dtype=np.uint8)
    tiny = Detection((0, 0, 20, 20), -0.5, "t")
    turned = Landmarks(DLIB5, FRONTAL.points + np.array([[0, 0]] * 4 + [[40, 0]], dtype=np.float32))
    rep = assess(tiny, turned, flat, QualityConfig(min_detector_score=0.0))
    assert not rep.passed
    text = " | ".join(rep.reasons)
    assert "face too small: 20px < min_face_px 40" in text
    assert "too blurred" in text and "min_sharpness 5" in text
    assert "head turned too far" in text
    assert "low detector score: -0.500 < min_detector_score 0" in text


def test_disabled_checks_pass() -> None:
    flat = np.full((150, 150, 3), 100, dtype=np.uint8)
    cfg = QualityConfig(min_face_px=None, min_sharpness=None, max_yaw=None, max_roll_deg=None)
    assert assess(Detection((0, 0, 5, 5), 0.0, "t"), FRONTAL, flat, cfg).passed


@pytest.mark.shared_data
def test_real_faces_pass_and_blurred_fail(
    face_pipeline: FacePipeline, lfw_images: list[Path]
) -> None:
    img = load_image(lfw_images[2])
    face = face_pipeline.single_face(img, pick="center")
    assert face.quality.passed, face.quality.reasons
    assert face.embedding is not None
    blurred = cv2.GaussianBlur(img, (0, 0), 6)
    faces = face_pipeline.analyze(blurred, pick="center")
    # blur either hides the face from the detector or fails the gate, never passes silently
    assert not faces or (not faces[0].quality.passed and faces[0].embedding is None)
