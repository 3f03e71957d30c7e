"""TensorRT backend parity with ONNX Runtime. Runs only where CUDA and TensorRT exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pipeline.face.analyze import FacePipeline
from pipeline.face.embed import Embedder
from pipeline.face.image_io import load_image
from pipeline.models.store import ModelStore


def _gpu_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the 'tensorrt' package is not installed (it needs NVIDIA's index and a GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    return None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_gpu_missing() is not None, reason=str(_gpu_missing())),
]


@pytest.mark.shared_data
def test_tensorrt_matches_onnxruntime(
    model_store: ModelStore, face_pipeline: FacePipeline, lfw_images: list[Path]
) -> None:
    chips = []
    for path in lfw_images[:64]:
        chips.extend(
            f.chip for f in face_pipeline.analyze(load_image(path), pick="center", embed=False)
        )
    batch = np.stack(chips)
    ort = model_store.load_embedder()
    trt = model_store.load_embedder(backend="tensorrt")
    assert isinstance(trt, Embedder) and trt.model_version == ort.model_version
    a, b = ort.embed(batch), trt.embed(batch)
    cos = np.sum(a * b, axis=1)
    # FP16 engine: close to, not bit-identical with, the FP32 reference
    assert cos.mean() >= 0.9995 and cos.min() >= 0.998, (cos.mean(), cos.min())
    # dynamic batch: sizes 1 and 7 give the same vectors as the big batch
    np.testing.assert_allclose(trt.embed(batch[:1]), b[:1], atol=2e-3)
    np.testing.assert_allclose(trt.embed(batch[:7]), b[:7], atol=2e-3)
