"""dlib's own CPU runtime for its ResNet: the reference the ONNX port is measured against."""

from __future__ import annotations

from pathlib import Path

import dlib
import numpy as np

from pipeline.face.errors import ModelError


class DlibBackend:
    """``compute_face_descriptor`` on aligned 150x150 chips (dlib's batch overload)."""

    def __init__(self, model_path: Path) -> None:
        try:
            self._net = dlib.face_recognition_model_v1(str(model_path))
        except RuntimeError as exc:
            raise ModelError(f"cannot load dlib model {model_path}: {exc}") from exc

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        vecs = self._net.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return np.asarray([np.asarray(v) for v in vecs], dtype=np.float32).reshape(len(chips), -1)
