"""Face detectors: YuNet (the default, shipped in the package), dlib HOG, dlib MMOD CNN,
and ONNX detectors described by a manifest.

Every detector maps an RGB uint8 image to a list of ``Detection`` (box, score, and
landmarks when the model predicts them). Boxes are (x1, y1, x2, y2) in pixels with
x2/y2 exclusive, the convention of dlib's ``rectangle.right() + 1``.

YuNet's box is taller and narrower than dlib's. The embedder's chip is cut from dlib's
5-point landmarks, whose shape predictor was trained on dlib HOG boxes, so a YuNet
detection also carries ``dlib_box``: its box mapped to the HOG convention by the
constants below, measured on LFW-dev faces that both detectors found
(``facestream bench detectors``). Seeded so, the predictor lands on the same
points as from a HOG box, and the chips (hence the embeddings) stay those of the model
version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import cv2
import dlib
import numpy as np
from pydantic import BaseModel, Field, ValidationError

from pipeline.face.errors import ModelError
from pipeline.face.landmarks import EYES_NOSE_MOUTH5
from pipeline.face.packaged_models import MMOD_CNN, packaged_model
from pipeline.face.records import Detection, Landmarks

# dlib HOG box from a YuNet box (x, y, w, h): centre shifted by (DX * w, DY * h), a square
# of side SIDE * h. Medians over 382 LFW-dev faces found by both (spread of the side
# ratio 0.07); see pipeline/bench/detectors.py.
YUNET_TO_DLIB_DX = -0.029
YUNET_TO_DLIB_DY = 0.043
YUNET_TO_DLIB_SIDE = 0.868
PACKAGED_YUNET = Path(__file__).resolve().parent / "weights" / "yunet_s.json"


class Detector(Protocol):
    name: str

    def __call__(self, image: np.ndarray) -> list[Detection]: ...


def _clip_box(
    x1: float, y1: float, x2: float, y2: float, shape: Sequence[int]
) -> tuple[float, float, float, float]:
    h, w = shape[:2]
    return (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector (fast on CPU, frontal faces)."""

    name = "dlib_hog"

    def __init__(self, upsample: int = 1) -> None:
        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample

    def __call__(self, image: np.ndarray) -> list[Detection]:
        rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
        return [
            Detection(
                box=_clip_box(r.left(), r.top(), r.right() + 1, r.bottom() + 1, image.shape),
                score=float(s),
                detector=self.name,
            )
            for r, s in zip(rects, scores, strict=True)
        ]


class DlibCnnDetector:
    """dlib's MMOD CNN detector: slower, finds profile, small and dim faces HOG misses."""

    name = "dlib_cnn"

    def __init__(self, upsample: int = 1, model_path: Path | None = None) -> None:
        path = model_path or packaged_model(MMOD_CNN)
        try:
            self._detector = dlib.cnn_face_detection_model_v1(str(path))
        except RuntimeError as exc:
            raise ModelError(f"cannot load MMOD detector {path}: {exc}") from exc
        self.upsample = upsample

    def __call__(self, image: np.ndarray) -> list[Detection]:
        dets = self._detector(image, self.upsample)
        out = []
        for d in dets:
            r = d.rect
            out.append(
                Detection(
                    box=_clip_box(r.left(), r.top(), r.right() + 1, r.bottom() + 1, image.shape),
                    score=float(d.confidence),
                    detector=self.name,
                )
            )
        return out


class OnnxDetectorManifest(BaseModel):
    """Description of an ONNX face detector file supplied by the user."""

    name: str
    format: Literal["yunet"] = Field(
        description="Output decoding family. 'yunet': OpenCV's FaceDetectorYN layout."
    )
    file: str = Field(description="ONNX file, relative to the manifest's folder or absolute.")
    sha256: str | None = None
    input_size: tuple[int, int] | None = Field(
        None, description="Fixed (width, height) of the network; None for dynamic-shape files."
    )
    score_threshold: float = 0.6
    nms_threshold: float = 0.3
    top_k: int = 5000
    landmark_scheme: str = EYES_NOSE_MOUTH5
    licence: str | None = None


def load_onnx_detector_manifest(path: Path) -> tuple[OnnxDetectorManifest, Path]:
    """Read and validate a detector manifest; return it and the resolved model path."""
    if not path.is_file():
        raise ModelError(f"detector manifest not found: {path}")
    try:
        manifest = OnnxDetectorManifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ModelError(f"invalid detector manifest {path}: {exc}") from exc
    model = Path(manifest.file)
    if not model.is_absolute():
        model = path.parent / model
    if not model.is_file():
        raise ModelError(f"detector model file not found: {model} (from {path})")
    if manifest.sha256 is not None:
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        if digest != manifest.sha256:
            raise ModelError(
                f"detector model {model} has sha256 {digest[:12]}..., its manifest says "
                f"{manifest.sha256[:12]}... (corrupt or replaced)"
            )
    return manifest, model


def yunet_dlib_box(x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
    """The dlib-HOG-convention box of a YuNet box (x, y, width, height)."""
    cx = x + w / 2 + YUNET_TO_DLIB_DX * w
    cy = y + h / 2 + YUNET_TO_DLIB_DY * h
    half = YUNET_TO_DLIB_SIDE * h / 2
    return (cx - half, cy - half, cx + half, cy + half)


class YuNetDetector:
    """YuNet (Apache-2.0) through OpenCV's ``FaceDetectorYN``, which decodes its outputs.

    Fixed-size files are run at their native size with the image letterboxed into it;
    dynamic files are run at the image's own size (rounded up to a multiple of 32).
    """

    def __init__(self, manifest: OnnxDetectorManifest, model_path: Path) -> None:
        self.name = f"onnx:{manifest.name}"
        self.manifest = manifest
        # OpenCV 5 warns on every load that its new DNN engine ignores the target it
        # sets by default; nothing for the user to act on.
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        size = manifest.input_size or (320, 320)
        try:
            self._det = cv2.FaceDetectorYN.create(
                str(model_path),
                "",
                size,
                manifest.score_threshold,
                manifest.nms_threshold,
                manifest.top_k,
            )
        except cv2.error as exc:
            raise ModelError(f"cannot load YuNet model {model_path}: {exc}") from exc

    def __call__(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if self.manifest.input_size is not None:
            net_w, net_h = self.manifest.input_size
            scale = min(net_w / w, net_h / h)
            resized = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))))
            canvas = np.zeros((net_h, net_w, 3), dtype=np.uint8)
            canvas[: resized.shape[0], : resized.shape[1]] = resized
        else:
            scale = 1.0
            net_w, net_h = -(-w // 32) * 32, -(-h // 32) * 32
            canvas = np.zeros((net_h, net_w, 3), dtype=np.uint8)
            canvas[:h, :w] = bgr
        self._det.setInputSize((net_w, net_h))
        _, faces = self._det.detect(canvas)
        out: list[Detection] = []
        if faces is None:
            return out
        for f in faces:
            x, y, bw, bh = (float(v) / scale for v in f[:4])
            pts = (np.asarray(f[4:14], dtype=np.float32).reshape(5, 2) / scale).astype(np.float32)
            out.append(
                Detection(
                    box=_clip_box(x, y, x + bw, y + bh, image.shape),
                    score=float(f[14]),
                    detector=self.name,
                    landmarks=Landmarks(scheme=self.manifest.landmark_scheme, points=pts),
                    dlib_box=yunet_dlib_box(x, y, bw, bh),
                )
            )
        return out


def build_detector(
    backend: str, *, upsample: int = 1, onnx_manifest: Path | None = None
) -> Detector:
    """Construct a detector by backend name (see ``DetectorConfig``)."""
    if backend == "yunet":
        return YuNetDetector(*load_onnx_detector_manifest(PACKAGED_YUNET))
    if backend == "dlib_hog":
        return DlibHogDetector(upsample=upsample)
    if backend == "dlib_cnn":
        return DlibCnnDetector(upsample=upsample)
    if backend == "onnx":
        if onnx_manifest is None:
            raise ModelError("the 'onnx' detector needs a manifest (detector.onnx_manifest)")
        manifest, model_path = load_onnx_detector_manifest(onnx_manifest)
        if manifest.format == "yunet":
            return YuNetDetector(manifest, model_path)
    raise ModelError(f"unknown detector backend {backend!r}")


class CappedDetector:
    """Detects on a copy scaled down to ``max_side`` pixels on its longer side and maps the
    detections back: detection cost stays bounded on 1080p frames, while landmarks and
    the aligned chip still come from the full-resolution image (small faces keep their
    pixels)."""

    def __init__(self, detector: Detector, max_side: int) -> None:
        self.detector = detector
        self.max_side = max_side
        self.name = detector.name

    def __call__(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        longest = max(h, w)
        if longest <= self.max_side:
            return self.detector(image)
        scale = self.max_side / longest
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return [d.scaled(1.0 / scale) for d in self.detector(small)]


class CascadeDetector:
    """A primary detector, then fallbacks tried in order on images where it finds nothing."""

    def __init__(self, detectors: Sequence[Detector], min_score: float | None = None) -> None:
        if not detectors:
            raise ValueError("CascadeDetector needs at least one detector")
        self.detectors = list(detectors)
        self.min_score = min_score
        self.name = "+".join(d.name for d in self.detectors)

    def __call__(self, image: np.ndarray) -> list[Detection]:
        for det in self.detectors:
            found = det(image)
            if self.min_score is not None:
                found = [d for d in found if d.score >= self.min_score]
            if found:
                return found
        return []
