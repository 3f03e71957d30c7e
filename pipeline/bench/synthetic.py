"""A synthetic face gallery for the search benchmark: face-like vectors, probes and the
exact answers to measure recall against.

The vectors imitate a face gallery, not uniform noise: unit vectors in ``dim``
dimensions drawn around one centre per identity (4 faces each), and the probes are new
draws around enrolled centres. Uniform random vectors are the worst case for
approximate indexes and would understate their recall on faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIM = 128
FACES_PER_IDENTITY = 4
SPREAD = 0.6
RECALL_K = 10


@dataclass
class SyntheticGallery:
    """Face-like vectors, their identities, probes and the exact answers."""

    vectors: np.ndarray  # (rows, dim) unit float32
    identity: np.ndarray  # (rows,) identity index of each face
    probes: np.ndarray  # (probes, dim) unit float32
    exact: np.ndarray  # (probes, RECALL_K) face indexes, best first


def face_like(
    n: int, dim: int, rng: np.random.Generator, spread: float = SPREAD
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around n / FACES_PER_IDENTITY centres, and the centres."""
    centres = rng.standard_normal((max(1, n // FACES_PER_IDENTITY), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = np.arange(n) % len(centres)
    v = centres[owner] + spread * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), centres


def make_gallery(rows: int, probes: int, dim: int = DIM, seed: int = 7) -> SyntheticGallery:
    rng = np.random.default_rng(seed)
    vectors, centres = face_like(rows, dim, rng)
    identity = np.arange(rows) % len(centres)
    q = centres[rng.integers(0, len(centres), probes)]
    q = q + SPREAD * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(dim)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    k = min(RECALL_K, rows)
    exact = np.empty((probes, k), dtype=np.int64)
    for i in range(0, probes, 128):  # chunks keep the score matrix small at 100k rows
        scores = q[i : i + 128] @ vectors.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        exact[i : i + 128] = np.take_along_axis(top, order, axis=1)
    return SyntheticGallery(vectors, identity, q, exact)
