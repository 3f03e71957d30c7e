"""The face core end to end: detect -> landmarks -> align -> quality -> embed.

Enrolment, the stream workers, evaluation and training all call this one class, so
there is a single copy of the preprocessing that defines a model version.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from pipeline.config.face import FaceConfig, PickPolicy, QualityConfig
from pipeline.face.align import Aligner
from pipeline.face.detect import CappedDetector, CascadeDetector, Detector, build_detector
from pipeline.face.embed import Embedder
from pipeline.face.errors import (
    LandmarkSchemeError,
    ModelError,
    MultipleFacesError,
    NoFaceError,
)
from pipeline.face.landmarks import DLIB5, DlibShapePredictor5
from pipeline.face.quality import assess
from pipeline.face.records import Detection, Face, Landmarks


class StageClock:
    """Adds the wall time of named stages into a dict (a no-op without one)."""

    def __init__(self, sink: dict[str, float] | None) -> None:
        self.sink = sink

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.sink is None:
            yield
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sink[stage] = self.sink.get(stage, 0.0) + time.perf_counter() - t0


def pick_faces(
    detections: Sequence[Detection], image_shape: Sequence[int], policy: PickPolicy
) -> list[Detection]:
    """Apply the several-faces policy: 'error', 'largest', 'center' or 'all'."""
    dets = list(detections)
    if policy == "all" or len(dets) <= 1:
        return dets
    if policy == "largest":
        return [max(dets, key=lambda d: d.width * d.height)]
    if policy == "center":
        cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
        return [min(dets, key=lambda d: (d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2)]
    raise MultipleFacesError(
        f"{len(dets)} faces found where one was expected; choose one with "
        "--pick largest|center, or take every face with --pick all"
    )


class FacePipeline:
    """Runs the face core on RGB uint8 images."""

    def __init__(
        self,
        detector: Detector,
        aligner: Aligner,
        config: FaceConfig,
        embedder: Embedder | None = None,
        landmarker: DlibShapePredictor5 | None = None,
    ) -> None:
        self.detector = detector
        self.aligner = aligner
        self.config = config
        self.embedder = embedder
        scheme = aligner.template.scheme
        if landmarker is None and scheme == DLIB5:
            landmarker = DlibShapePredictor5()
        self.landmarker = landmarker

    @classmethod
    def from_config(
        cls, config: FaceConfig, aligner: Aligner, embedder: Embedder | None = None
    ) -> FacePipeline:
        d = config.detector
        backends = [d.backend, *[b for b in d.fallbacks if b != d.backend]]
        detectors = [
            build_detector(b, upsample=d.upsample, onnx_manifest=d.onnx_manifest) for b in backends
        ]
        detector: Detector = CascadeDetector(detectors, d.min_score)
        if d.max_side is not None:
            detector = CappedDetector(detector, d.max_side)
        return cls(detector, aligner, config, embedder)

    def landmarks(self, image: np.ndarray, det: Detection) -> Landmarks:
        scheme = self.aligner.template.scheme
        if det.landmarks is not None and det.landmarks.scheme == scheme:
            return det.landmarks
        if self.landmarker is not None and self.landmarker.scheme == scheme:
            return self.landmarker(image, det)
        raise LandmarkSchemeError(
            f"detector {det.detector} gives no {scheme!r} landmarks and no landmark model "
            f"for that scheme is configured"
        )

    def analyze(
        self,
        image: np.ndarray,
        *,
        pick: PickPolicy | None = None,
        embed: bool = True,
        gate: bool = True,
        timings: dict[str, float] | None = None,
        quality: QualityConfig | None = None,
    ) -> list[Face]:
        """Every face of ``image`` (after the pick policy), aligned and quality-assessed.

        With ``gate``, faces failing the quality gate are returned without an embedding
        (their ``quality.reasons`` say why); without it, every face is embedded.
        ``quality`` replaces the configured gate for this image (a camera's own).
        """
        gate_cfg = quality or self.config.quality
        clock = StageClock(timings)
        with clock("detect"):
            dets = pick_faces(self.detector(image), image.shape, pick or self.config.pick)
        faces = []
        for det in dets:
            with clock("landmarks"):
                lm = self.landmarks(image, det)
            with clock("align"):
                chip = self.aligner(image, lm)
            with clock("quality"):
                faces.append(Face(det, lm, chip, assess(det, lm, chip, gate_cfg)))
        if embed and self.embedder is not None:
            with clock("embed"):
                self.embed_faces([f for f in faces if f.quality.passed or not gate])
        return faces

    def embed_faces(self, faces: Sequence[Face]) -> None:
        """Embed the chips of ``faces`` in batches, setting embedding and model_version."""
        if not faces:
            return
        if self.embedder is None:
            raise ModelError("this face pipeline has no embedder")
        vecs = self.embedder.embed(np.stack([f.chip for f in faces]))
        for f, v in zip(faces, vecs, strict=True):
            f.embedding = v
            f.model_version = self.embedder.model_version

    def single_face(
        self, image: np.ndarray, *, pick: PickPolicy = "error", gate: bool = True
    ) -> Face:
        """Exactly one face, or NoFaceError / MultipleFacesError with a clear message."""
        faces = self.analyze(image, pick=pick, gate=gate)
        if not faces:
            raise NoFaceError("no face found in the image")
        if len(faces) > 1:  # only reachable with pick='all'
            raise MultipleFacesError(f"{len(faces)} faces found where one was expected")
        return faces[0]
