"""ONNX Runtime backend: the embedder's runtime on machines without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.face.embed import to_tensor
from pipeline.face.errors import ModelError
from pipeline.face.manifest import Preprocessing


class OrtBackend:
    """Runs an ONNX embedder on batches of chips."""

    def __init__(
        self,
        model_path: Path,
        preprocessing: Preprocessing,
        *,
        intra_op_threads: int = 0,
        providers: list[str] | None = None,
    ) -> None:
        opts = ort.SessionOptions()
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own untyped exceptions
            raise ModelError(f"cannot load ONNX model {model_path}: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        self._pre = preprocessing

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        (out,) = self._session.run(None, {self._input: to_tensor(chips, self._pre)})[:1]
        return np.asarray(out, dtype=np.float32)
