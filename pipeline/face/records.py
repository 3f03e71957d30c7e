"""Value types passed between the stages of the face core."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Landmarks:
    """Facial landmark points in image pixel coordinates.

    ``scheme`` names the point order (see ``pipeline.face.landmarks.SCHEMES``): an
    alignment template only accepts landmarks of its own scheme.
    """

    scheme: str
    points: np.ndarray  # (n, 2) float32, x then y

    def to_list(self) -> list[list[float]]:
        return [[round(float(x), 2), round(float(y), 2)] for x, y in self.points]


@dataclass(frozen=True)
class Detection:
    """One face found by a detector: box (x1, y1, x2, y2), score and optional landmarks."""

    box: tuple[float, float, float, float]
    score: float
    detector: str
    landmarks: Landmarks | None = None
    # The face's box in the convention of dlib's HOG detector (square, about brow to chin),
    # which dlib's 5-point shape predictor was trained on and the size gate is measured
    # in; None when ``box`` already is one (dlib's own detectors).
    dlib_box: tuple[float, float, float, float] | None = None

    @property
    def face_box(self) -> tuple[float, float, float, float]:
        """``dlib_box`` when the detector has another convention, else ``box``."""
        return self.dlib_box or self.box

    def scaled(self, factor: float) -> Detection:
        """The detection in an image ``factor`` times the size of the one it was found in."""

        def box(b: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
            return (b[0] * factor, b[1] * factor, b[2] * factor, b[3] * factor)

        lm = self.landmarks
        return Detection(
            box=box(self.box),
            score=self.score,
            detector=self.detector,
            landmarks=Landmarks(lm.scheme, (lm.points * factor).astype(np.float32)) if lm else None,
            dlib_box=box(self.dlib_box) if self.dlib_box else None,
        )

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def center(self) -> tuple[float, float]:
        return ((self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0)


@dataclass(frozen=True)
class QualityReport:
    """Quality measurements of one face and the verdict of the gate.

    ``reasons`` is empty when the face passed; otherwise each entry says which
    measurement failed, its value and the threshold.
    """

    metrics: dict[str, float]
    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.reasons


@dataclass
class Face:
    """A detected face carried through landmarks, alignment, quality and embedding."""

    detection: Detection
    landmarks: Landmarks
    chip: np.ndarray  # aligned RGB uint8 chip, (h, w, 3)
    quality: QualityReport
    embedding: np.ndarray | None = None
    model_version: str | None = None
    extras: dict[str, object] = field(default_factory=dict)


def embeddings_of(faces: Sequence[Face]) -> np.ndarray:
    """The faces' embeddings, one row per face, in order; every face must be embedded."""
    vecs = []
    for f in faces:
        if f.embedding is None:
            raise ValueError("a face without an embedding: embed the faces first")
        vecs.append(f.embedding)
    return np.stack(vecs)
