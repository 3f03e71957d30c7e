"""Round-trip numpy arrays through Ray's object store with a task and an actor."""

from __future__ import annotations

import numpy as np
import pytest
import ray

pytestmark = pytest.mark.integration

# Large enough (~1.2 MB) to live in the shared-memory object store, not inline in the RPC.
SHAPE = (8, 112, 112, 3)


@ray.remote
def normalise(batch: np.ndarray) -> np.ndarray:
    return (batch.astype(np.float32) / 255.0).reshape(len(batch), -1)


@ray.remote
class Gallery:
    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> int:
        # Arrays from the object store are read-only views; keep a private copy.
        self.rows.append(np.array(rows, copy=True))
        return sum(len(r) for r in self.rows)

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.rows)


@pytest.mark.usefixtures("ray_local")
def test_task_and_actor_round_trip_arrays() -> None:
    rng = np.random.default_rng(7)
    batches = [rng.integers(0, 256, size=SHAPE, dtype=np.uint8) for _ in range(3)]

    refs = [ray.put(batch) for batch in batches]
    fetched = ray.get(refs)
    for batch, back in zip(batches, fetched, strict=True):
        np.testing.assert_array_equal(back, batch)

    # Passing refs lets the task read the stored arrays without the driver re-sending them.
    normalised_refs = [normalise.remote(ref) for ref in refs]
    gallery = Gallery.remote()
    counts = ray.get([gallery.add.remote(ref) for ref in normalised_refs])
    assert counts == [8, 16, 24]

    expected = np.concatenate([(b.astype(np.float32) / 255.0).reshape(len(b), -1) for b in batches])
    stacked = ray.get(gallery.stacked.remote())
    assert stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked, expected)
    ray.kill(gallery)
