"""Alignment: warp a face to the template its embedder was trained on.

The template (output size and the target positions of the landmarks) comes from the
model manifest, never from code, so a model's preprocessing travels with its version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, Field, model_validator

from pipeline.face.errors import LandmarkSchemeError
from pipeline.face.landmarks import SCHEMES
from pipeline.face.records import Landmarks


class AlignmentTemplate(BaseModel):
    """Where the landmarks of one scheme must land in the aligned chip."""

    scheme: str = Field(description="Landmark scheme the template expects (see SCHEMES).")
    size: tuple[int, int] = Field(description="Chip (width, height) in pixels.")
    points: list[tuple[float, float]] = Field(description="Target (x, y) of each landmark.")
    source: str = Field("", description="Where the template comes from.")
    sampling: Literal["direct", "dlib_chip"] = Field(
        "direct",
        description="'direct': sample the image at the fitted transform (insightface style). "
        "'dlib_chip': dlib's extract_image_chip geometry, which maps the chip's corner pixels "
        "to the corners of a rectangle one pixel smaller than the fitted scale implies.",
    )

    @model_validator(mode="after")
    def _check(self) -> AlignmentTemplate:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown landmark scheme {self.scheme!r}; known: {sorted(SCHEMES)}")
        if len(self.points) != len(SCHEMES[self.scheme]):
            raise ValueError(
                f"template has {len(self.points)} points, scheme {self.scheme} has "
                f"{len(SCHEMES[self.scheme])}"
            )
        return self


def template_digest(template: AlignmentTemplate) -> str:
    """Digest of what defines an aligned crop's geometry (not its description)."""
    payload = json.dumps(template.model_dump(mode="json", exclude={"source"}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst.

    Umeyama's closed form, as dlib's ``find_similarity_transform`` uses. Written here
    because OpenCV's ``estimateAffinePartial2D`` only offers robust (RANSAC/LMEDS)
    fits, which differ from dlib's plain least squares on five points.
    Returns a 2x3 matrix.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    cov = d.T @ s / len(src)
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign)) / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def _dlib_chip_mapping(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Reproduce dlib's chip geometry from the fitted similarity ``m`` (chip -> image).

    dlib keeps only the angle and scale s of the fit and centres a rectangle of
    (cols * s - 1) x (rows * s - 1) pixels on m(cols / 2, rows / 2); the chip's corner
    pixels map to that rectangle's corners. Matching this matters: the embedder
    learnt on exactly these chips.
    """
    cols, rows = size
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    rot = m[:, :2] / scale
    centre = m @ np.array([cols / 2.0, rows / 2.0, 1.0])
    sx = (cols * scale - 1.0) / (cols - 1.0)
    sy = (rows * scale - 1.0) / (rows - 1.0)
    lin = rot @ np.diag([sx, sy])
    out = np.zeros((2, 3))
    out[:, :2] = lin
    out[:, 2] = centre - lin @ np.array([(cols - 1) / 2.0, (rows - 1) / 2.0])
    return out


class Aligner:
    """Warps faces to a template with bilinear sampling (dlib's ``extract_image_chip``).

    Like dlib, a face much larger than the chip is first reduced through an image
    pyramid so that bilinear sampling does not alias.
    """

    def __init__(self, template: AlignmentTemplate) -> None:
        self.template = template
        self._dst = np.asarray(template.points, dtype=np.float64)

    def __call__(self, image: np.ndarray, landmarks: Landmarks) -> np.ndarray:
        if landmarks.scheme != self.template.scheme:
            raise LandmarkSchemeError(
                f"landmarks are {landmarks.scheme!r} but the template expects "
                f"{self.template.scheme!r}"
            )
        pts = landmarks.points.astype(np.float64)
        # chip -> image: each chip pixel samples the image at m @ (x, y, 1).
        m = similarity_transform(self._dst, pts)
        if self.template.sampling == "dlib_chip":
            m = _dlib_chip_mapping(m, self.template.size)
        scale = float(np.hypot(m[0, 0], m[1, 0]))
        level = 0
        # dlib steps down its pyramid while the chip's footprint keeps more than the chip's
        # own area after halving, i.e. while the image->chip scale is above 2.
        while scale / 2.0 > 1.0:
            scale /= 2.0
            level += 1
        src = image
        if level:
            for _ in range(level):
                src = cv2.pyrDown(src)
            factor = 2.0**level
            # pyrDown maps image pixel p to (p + 0.5) / 2 - 0.5 per level
            m = m.copy()
            m[:, :2] /= factor
            m[:, 2] = (m[:, 2] + 0.5) / factor - 0.5
        w, h = self.template.size
        return cv2.warpAffine(
            src,
            m,
            (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )


def dlib_chip_template(size: int = 150, padding: float = 0.25) -> AlignmentTemplate:
    """The template of dlib's ``get_face_chip`` for 5-point shapes.

    Used by ``models bootstrap`` to write the manifest of dlib's ResNet; the numbers are
    dlib's normalised 5-point mean shape (``get_face_chip_details``).
    """
    mean_shape = [
        (0.8595674595992, 0.2134981538014),
        (0.6460604764104, 0.2289674387677),
        (0.1205750620789, 0.2137274526848),
        (0.3340850613712, 0.2290642403242),
        (0.4901123135679, 0.6277975316475),
    ]
    pts = [
        ((padding + x) / (2 * padding + 1) * size, (padding + y) / (2 * padding + 1) * size)
        for x, y in mean_shape
    ]
    return AlignmentTemplate(
        scheme="dlib5",
        size=(size, size),
        points=pts,
        source=f"dlib get_face_chip_details, 5-point mean shape, size={size}, padding={padding}",
        sampling="dlib_chip",
    )
