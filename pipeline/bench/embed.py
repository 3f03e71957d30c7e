"""``facestream bench embed``: the batched ONNX Runtime embedder against dlib's own runtime.

Both sides embed the same aligned faces. The peer is dlib's ``compute_face_descriptor``
called the way the ``face_recognition`` package calls it: one face per call, with the
image and the 5-point shape, so dlib cuts the chip itself. Per-stage times of the face
core (decode, detect, landmarks, align, embed) are measured on the same images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np

from pipeline.face.analyze import FacePipeline, StageClock
from pipeline.face.embed import Embedder
from pipeline.face.image_io import load_image
from pipeline.face.packaged_models import RESNET_V1, packaged_model
from pipeline.face.records import Face
from pipeline.models.quantize import quantized_of
from pipeline.models.store import ModelStore


@dataclass
class Sample:
    image: np.ndarray
    face: Face


@dataclass
class Row:
    runtime: str
    batch: int
    faces_per_s: float
    ms_per_face: float


def collect_faces(
    pipeline: FacePipeline,
    paths: list[Path],
    n_faces: int,
    on_progress: Callable[[], None] | None = None,
) -> tuple[list[Sample], dict[str, float], int]:
    """Run the face core (without embedding) until ``n_faces`` faces are aligned.

    Returns the samples, the summed seconds per stage, and the number of images read.
    """
    stages: dict[str, float] = {}
    clock = StageClock(stages)
    samples: list[Sample] = []
    n_images = 0
    for path in paths:
        if len(samples) >= n_faces:
            break
        with clock("decode"):
            image = load_image(path)
        n_images += 1
        faces = pipeline.analyze(image, pick="center", embed=False, timings=stages)
        samples.extend(Sample(image, f) for f in faces[:1])
        if on_progress:
            on_progress()
    return samples, stages, n_images


def _rate(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Best-of-``repeats`` faces/s: the least disturbed run on a noisy shared machine."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def face_recognition_style(samples: list[Sample]) -> Callable[[], object]:
    """dlib's descriptor, one face per call from image + shape, as face_recognition does."""
    net = dlib.face_recognition_model_v1(str(packaged_model(RESNET_V1)))
    shapes = []
    for s in samples:
        x1, y1, x2, y2 = (round(v) for v in s.face.detection.box)
        rect = dlib.rectangle(x1, y1, x2 - 1, y2 - 1)
        pts = [dlib.point(round(float(x)), round(float(y))) for x, y in s.face.landmarks.points]
        shapes.append(dlib.full_object_detection(rect, pts))

    def run() -> object:
        return [
            net.compute_face_descriptor(s.image, sh, 1)
            for s, sh in zip(samples, shapes, strict=True)
        ]

    return run


def embedder_run(embedder: Embedder, chips: np.ndarray, batch: int) -> Callable[[], object]:
    def run() -> object:
        return [embedder.embed(chips[i : i + batch]) for i in range(0, len(chips), batch)]

    return run


def bench_embedders(
    samples: list[Sample],
    embedders: dict[str, Embedder],
    batches: tuple[int, ...] = (1, 8, 32),
    repeats: int = 3,
) -> list[Row]:
    chips = np.stack([s.face.chip for s in samples])
    n = len(chips)
    rows = []
    rate = _rate(face_recognition_style(samples), n, repeats)
    rows.append(Row("dlib, face_recognition style", 1, rate, 1000 / rate))
    for name, emb in embedders.items():
        for b in batches:
            emb.embed(chips[:b])  # warm-up: ORT allocates per shape on first use
            rate = _rate(embedder_run(emb, chips, b), n, repeats)
            rows.append(Row(name, b, rate, 1000 / rate))
    return rows


def _without_tta(embedder: Embedder) -> Embedder:
    m = embedder.manifest
    plain = m.model_copy(
        update={"preprocessing": m.preprocessing.model_copy(update={"tta": "none"})}
    )
    return Embedder(plain, embedder.backend)


def embedder_variants(active: Embedder, store: ModelStore) -> dict[str, Embedder]:
    """The rows of ``facestream bench embed``: the active embedder without TTA, the same
    on one ONNX Runtime thread, every INT8 version made from it
    (``facestream models quantize``) without TTA and on one thread, and the active
    embedder as it is (with its TTA)."""
    version = active.model_version
    rows = {
        "onnxruntime": _without_tta(active),
        "onnxruntime, 1 thread": _without_tta(store.load_embedder(version, intra_op_threads=1)),
    }
    for v in quantized_of(store, version):
        rows[f"onnxruntime int8 ({v})"] = _without_tta(store.load_embedder(v))
        rows[f"onnxruntime int8, 1 thread ({v})"] = _without_tta(
            store.load_embedder(v, intra_op_threads=1)
        )
    rows[f"onnxruntime, tta={active.manifest.preprocessing.tta} (active)"] = active
    return rows


def stage_ms_per_image(
    stages: dict[str, float], n_images: int, rows: list[Row], batch: int = 32
) -> dict[str, float]:
    """Milliseconds per image of each face-core stage, and the active embedder's time per
    face at ``batch``."""
    emb_rate = next(
        r.faces_per_s for r in rows if r.runtime.endswith("(active)") and r.batch == batch
    )
    out = {k: 1000 * v / n_images for k, v in stages.items()}
    out[f"embed (batch {batch}, per face)"] = 1000 / emb_rate
    return out
