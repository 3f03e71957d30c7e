"""Every loss trains the real network on real face crops: finite, and lower after a few
steps. The batch is fixed (16 AT&T faces of 4 people, no augmentation) so "lower" is
measured on the same inputs before and after, not on a different random batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config import FaceConfig
from pipeline.face.align import Aligner
from pipeline.face.analyze import FacePipeline
from pipeline.face.manifest import Preprocessing
from pipeline.registry import ModelStore
from pipeline.train.config import (
    LOSS_NAMES,
    AugmentConfig,
    DataConfig,
    OptimConfig,
    SamplerConfig,
    TrainConfig,
    loss_config,
)
from pipeline.train.data import CropCache, load_faces
from pipeline.train.loop import Training, WorkerData
from pipeline.train.model import chips_to_input, load_torch_model

pytestmark = pytest.mark.shared_data

STEPS = 5
# Small scales for the margin losses: at 64 a 16-face batch saturates the softmax.
PARAMS: dict[str, dict[str, Any]] = {
    "cosface": {"scale": 16.0},
    "arcface": {"scale": 16.0, "margin": 0.3},
    "combined": {"scale": 16.0},
    "sphereface": {"scale": 4.0},
}


@pytest.fixture(scope="module")
def batch(
    shared_dir: Path, model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor], Preprocessing]:
    att = shared_dir / "data" / "att-faces"
    if not att.is_dir():
        pytest.skip(f"AT&T faces not found at {att}")
    net, manifest = load_torch_model(model_store, model_store.active_version())
    pipe = FacePipeline.from_config(FaceConfig(), Aligner(manifest.alignment), None)
    cache = CropCache(tmp_path_factory.mktemp("crops"), pipe)
    images = {f"s{i}": [att / f"s{i}" / f"{j}.pgm" for j in range(1, 5)] for i in (1, 2, 3, 4)}
    faces = load_faces(images, cache)
    assert len(faces) == 16, faces.failures
    return faces.chips, faces.labels, net.state_dict(), manifest.preprocessing


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_lowers_itself_on_real_faces(
    name: str, batch: tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor], Preprocessing]
) -> None:
    chips, labels, base_state, pre = batch
    cfg = TrainConfig(
        data=DataConfig(root=Path(".")),
        loss=loss_config(name, **PARAMS.get(name, {})),
        sampler=SamplerConfig(p=4, k=4),
        augment=AugmentConfig(enabled=False),
        optim=OptimConfig(lr=2e-3, head_lr=2e-2, cosine_decay=False),
        freeze=14,  # train the last residual block and the projection: quick on a CPU
        epochs=1,
        steps_per_epoch=STEPS,
    )
    data = WorkerData(chips, labels, 4, chips[:0], labels[:0])
    tr = Training.create(cfg, base_state, pre, data)
    x = chips_to_input(chips, pre)
    y = torch.from_numpy(labels)

    def current() -> float:
        with torch.no_grad():
            return float(tr.module(x, y)[0])

    before = current()
    seen = [tr.train_step(chips, labels) for _ in range(STEPS)]
    after = current()
    assert all(np.isfinite(seen)) and np.isfinite(after)
    assert after < before, f"{name}: {before:.4f} -> {after:.4f} ({seen})"
