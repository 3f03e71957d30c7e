"""Embedding: preprocessing, batching, test-time augmentation and L2 normalisation.

The network itself runs in a backend (``pipeline.runtime``: ONNX Runtime, TensorRT, or
dlib's own runtime); this module owns everything around it that defines a model
version's numbers, so every backend produces the same embedding for the same chip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import cv2
import numpy as np

from pipeline.face.errors import ModelError
from pipeline.face.manifest import ModelManifest, Preprocessing


class Backend(Protocol):
    """Runs a network on a batch of aligned chips and returns raw (unnormalised) vectors."""

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """chips: (n, h, w, 3) uint8 RGB -> (n, d) float32."""
        ...


def to_tensor(chips: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """Turn (n, h, w, 3) uint8 RGB chips into the network's float32 input tensor."""
    w, h = pre.input_size
    if chips.shape[1:3] != (h, w):
        chips = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in chips])
    x: np.ndarray = chips.astype(np.float32)
    if pre.colour_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    if pre.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def l2_normalise(v: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(norms, 1e-12)).astype(np.float32)


class Embedder:
    """Maps aligned chips to L2-normalised float32 vectors of one model version."""

    def __init__(self, manifest: ModelManifest, backend: Backend, batch_size: int = 32) -> None:
        self.manifest = manifest
        self.backend = backend
        self.batch_size = batch_size

    @property
    def model_version(self) -> str:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    def warm_up(self) -> None:
        """One blank chip through the runtime: its first run allocates its buffers (a
        tenth of a second or more), which a server pays before it takes requests."""
        w, h = self.manifest.preprocessing.input_size
        self.embed(np.zeros((1, h, w, 3), dtype=np.uint8))

    def embed(self, chips: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(n, h, w, 3) uint8 RGB chips -> (n, dim) unit-norm float32."""
        batch = np.asarray(chips, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[None]
        n = len(batch)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.manifest.preprocessing.tta == "flip":
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        out = np.concatenate(
            [
                self._run(batch[i : i + self.batch_size])
                for i in range(0, len(batch), self.batch_size)
            ]
        )
        if self.manifest.preprocessing.tta == "flip":
            out = out[:n] + out[n:]
        return l2_normalise(out)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        raw = np.asarray(self.backend(np.ascontiguousarray(chunk)), dtype=np.float32)
        if raw.shape != (len(chunk), self.dim):
            raise ModelError(
                f"model {self.model_version} returned shape {raw.shape}, expected "
                f"({len(chunk)}, {self.dim})"
            )
        return raw
