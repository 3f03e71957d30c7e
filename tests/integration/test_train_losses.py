"""Every loss trains the real network on real face crops: finite, and lower after a few
steps. The batch is fixed (16 AT&T faces of 4 people, no augmentation) so "lower" is
measured on the same inputs before and after, not on a different random batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.config.face import FaceConfig
from pipeline.config.train import (
    LOSS_NAMES,
    AugmentConfig,
    DataConfig,
    OptimConfig,
    SamplerConfig,
    TrainConfig,
    loss_config,
)
from pipeline.face.align import Aligner
from pipeline.face.analyze import FacePipeline
from pipeline.face.manifest import Preprocessing
from pipeline.models.store import ModelStore
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


def test_replay_holds_general_faces_where_the_base_model_put_them(
    batch: tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor], Preprocessing],
) -> None:
    """Train on two people; replay the other two. With replay their embeddings drift less
    from the base model's than without, and the distillation term starts at 0."""
    from pipeline.config.train import ReplayConfig
    from pipeline.train.model import embed_chips

    chips, labels, base_state, pre = batch
    train, other = labels < 2, labels >= 2

    def run(replay: bool) -> tuple[Training, float]:
        cfg = TrainConfig(
            data=DataConfig(root=Path(".")),
            loss=loss_config("arcface", scale=16.0, margin=0.3),
            sampler=SamplerConfig(p=2, k=4),
            augment=AugmentConfig(enabled=False),
            optim=OptimConfig(lr=5e-3, head_lr=2e-2, cosine_decay=False),
            replay=ReplayConfig(root=Path("."), batch=8, weight=30.0) if replay else None,
            freeze=14,
            epochs=1,
            steps_per_epoch=STEPS,
        )
        data = WorkerData(chips[train], labels[train], 2, chips[:0], labels[:0], chips[other])
        tr = Training.create(cfg, base_state, pre, data)
        first = None
        for _ in range(STEPS):
            tr.train_step(chips[train], labels[train])
            first = tr.last_distill if first is None else first
        return tr, float(first or 0.0)

    def drift(tr: Training) -> float:
        base = embed_chips(tr_base.net, chips[other], pre)
        now = embed_chips(tr.net, chips[other], pre)
        return float(np.mean(1.0 - np.sum(base * now, axis=1)))

    tr_base = Training.create(
        TrainConfig(data=DataConfig(root=Path(".")), freeze=14, init_head="random"),
        base_state,
        pre,
        WorkerData(chips, labels, 4, chips[:0], labels[:0]),
    )
    plain, _ = run(replay=False)
    kept, first_distill = run(replay=True)
    assert first_distill == pytest.approx(0.0, abs=1e-5)  # student == teacher at step 0
    assert kept.teacher is not None and plain.teacher is None
    assert drift(kept) < 0.5 * drift(plain), (drift(kept), drift(plain))
