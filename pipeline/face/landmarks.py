"""Landmark schemes and the dlib 5-point shape predictor.

A scheme fixes the meaning and order of the points. Alignment templates name the
scheme they expect, so landmarks of one detector can never be silently warped to a
template made for another.
"""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np

from pipeline.face.errors import ModelError
from pipeline.face.packaged_models import SHAPE_5, packaged_model
from pipeline.face.records import Detection, Landmarks

# dlib's 5-point model: two corners of the eye on the image's right, two of the eye on the
# image's left (outer first), then the base of the nose.
DLIB5 = "dlib5"
# The order of YuNet, RetinaFace, SCRFD and the ArcFace template: eye centres (image-left
# first), nose tip, mouth corners (image-left first).
EYES_NOSE_MOUTH5 = "eyes_nose_mouth5"

SCHEMES: dict[str, tuple[str, ...]] = {
    DLIB5: ("eye_r_outer", "eye_r_inner", "eye_l_outer", "eye_l_inner", "nose_base"),
    EYES_NOSE_MOUTH5: ("eye_l", "eye_r", "nose_tip", "mouth_l", "mouth_r"),
}


def eye_centres(lm: Landmarks) -> tuple[np.ndarray, np.ndarray]:
    """(image-left eye centre, image-right eye centre) for any known scheme."""
    p = lm.points
    if lm.scheme == DLIB5:
        return (p[2] + p[3]) / 2.0, (p[0] + p[1]) / 2.0
    if lm.scheme == EYES_NOSE_MOUTH5:
        return p[0], p[1]
    raise ModelError(f"unknown landmark scheme {lm.scheme!r}")


def nose_point(lm: Landmarks) -> np.ndarray:
    if lm.scheme == DLIB5:
        return lm.points[4]
    if lm.scheme == EYES_NOSE_MOUTH5:
        return lm.points[2]
    raise ModelError(f"unknown landmark scheme {lm.scheme!r}")


class DlibShapePredictor5:
    """dlib's 5-point shape predictor (CC0, shipped by ``face_recognition_models``)."""

    scheme = DLIB5

    def __init__(self, model_path: Path | None = None) -> None:
        path = model_path or packaged_model(SHAPE_5)
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as exc:
            raise ModelError(f"cannot load shape predictor {path}: {exc}") from exc

    def __call__(self, image: np.ndarray, detection: Detection) -> Landmarks:
        x1, y1, x2, y2 = detection.face_box
        # dlib rectangles are inclusive of their right/bottom pixel
        rect = dlib.rectangle(round(x1), round(y1), round(x2) - 1, round(y2) - 1)
        shape = self._predictor(image, rect)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float32)
        return Landmarks(scheme=DLIB5, points=pts)
