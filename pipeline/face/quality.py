"""Quality gate: face size, sharpness, pose from the landmarks, detector score.

Each check has its own threshold in ``QualityConfig`` (``None`` disables it) and each
failure is reported with the measured value and the threshold, so an operator can see
why an enrolment photo or a frame's face was rejected.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from pipeline.config.face import QualityConfig
from pipeline.face.landmarks import eye_centres, nose_point
from pipeline.face.records import Detection, Landmarks, QualityReport


def sharpness(chip: np.ndarray) -> float:
    """Variance of the Laplacian of the grey chip: low on blurred or flat faces."""
    grey = cv2.cvtColor(chip, cv2.COLOR_RGB2GRAY) if chip.ndim == 3 else chip
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def pose(landmarks: Landmarks) -> tuple[float, float]:
    """(yaw proxy, roll in degrees) from 5 landmarks.

    The yaw proxy is the nose's signed offset from the eyes' perpendicular bisector,
    over the eye distance: about 0 for a frontal face, growing towards +-0.5 as the
    head turns to profile. It needs no 3-D model and works for every 5-point scheme.
    """
    left, right = eye_centres(landmarks)
    nose = nose_point(landmarks)
    axis = right - left
    dist = float(np.hypot(*axis))
    if dist < 1e-6:
        return 1.0, 0.0
    mid = (left + right) / 2.0
    yaw = float(np.dot(nose - mid, axis) / (dist * dist))
    roll = math.degrees(math.atan2(float(axis[1]), float(axis[0])))
    return yaw, roll


def _face_px(detection: Detection) -> float:
    """The face's size in pixels, in dlib's box convention whatever the detector: a
    threshold means the same face size with every detector."""
    x1, y1, x2, y2 = detection.face_box
    return min(x2 - x1, y2 - y1)


def assess(
    detection: Detection, landmarks: Landmarks, chip: np.ndarray, cfg: QualityConfig
) -> QualityReport:
    """Measure one face and apply the thresholds of ``cfg``."""
    yaw, roll = pose(landmarks)
    metrics = {
        "face_px": round(_face_px(detection), 2),
        "sharpness": round(sharpness(chip), 2),
        "yaw": round(yaw, 4),
        "roll_deg": round(roll, 2),
        "detector_score": round(detection.score, 4),
    }
    reasons: list[str] = []
    if cfg.min_face_px is not None and metrics["face_px"] < cfg.min_face_px:
        reasons.append(
            f"face too small: {metrics['face_px']:.0f}px < min_face_px {cfg.min_face_px:g}"
        )
    if cfg.min_sharpness is not None and metrics["sharpness"] < cfg.min_sharpness:
        reasons.append(
            f"too blurred: sharpness {metrics['sharpness']:.1f} < "
            f"min_sharpness {cfg.min_sharpness:g}"
        )
    if cfg.max_yaw is not None and abs(yaw) > cfg.max_yaw:
        reasons.append(f"head turned too far: |yaw| {abs(yaw):.2f} > max_yaw {cfg.max_yaw:g}")
    if cfg.max_roll_deg is not None and abs(roll) > cfg.max_roll_deg:
        reasons.append(
            f"head tilted too far: |roll| {abs(roll):.0f} deg > max_roll_deg {cfg.max_roll_deg:g}"
        )
    if cfg.min_detector_score is not None and detection.score < cfg.min_detector_score:
        reasons.append(
            f"low detector score: {detection.score:.3f} < min_detector_score "
            f"{cfg.min_detector_score:g}"
        )
    return QualityReport(metrics=metrics, reasons=tuple(reasons))
