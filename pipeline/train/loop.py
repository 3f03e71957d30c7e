"""The training loop: ``train_loop_per_worker`` for Ray Train's ``TorchTrainer``.

The same function runs on a laptop (``ray.init()`` local, one CPU worker) and in a
KubeRay RayJob (N GPU workers): Ray Train sets up torch.distributed, and
``prepare_model`` wraps the module in DDP when there is more than one worker. The
data (aligned chips as uint8 arrays) and the base weights travel through the Ray
object store, so workers need no shared file system to read them; checkpoints go to
``RunConfig.storage_path``, which must be shared storage (s3://, a PVC) on a cluster.

``Training`` holds the model, optimiser and schedule and does one step at a time; it
runs without Ray too (tests use it directly).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config.train import TrainConfig
from pipeline.face.manifest import Preprocessing
from pipeline.files import private_dir, private_umask
from pipeline.nets.dlib_resnet import DlibResNet
from pipeline.train.augment import augment_batch
from pipeline.train.data import pk_sampler
from pipeline.train.losses import build_loss, init_head, param_groups
from pipeline.train.model import (
    EmbeddingNet,
    TrainModule,
    chips_to_input,
    class_means,
    embed_chips,
)

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.json"


class NonFiniteLoss(FloatingPointError):
    pass


@dataclass
class WorkerData:
    """What every worker trains and validates on (numpy, from the object store)."""

    train_chips: np.ndarray
    train_labels: np.ndarray
    n_classes: int
    heldout_chips: np.ndarray
    heldout_labels: np.ndarray
    replay_chips: np.ndarray | None = None  # unlabelled general faces (rehearsal)


def lr_factor(step: int, total: int, warmup: int, cosine: bool) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    return cfg.steps_per_epoch or max(1, n_train // cfg.sampler.batch_size)


@dataclass
class Training:
    cfg: TrainConfig
    pre: Preprocessing
    module: TrainModule
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    rng: np.random.Generator
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    wrapped: nn.Module | None = None  # the DDP wrapper, when distributed
    step: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    anchor: list[torch.Tensor] | None = None  # warm-start weights, for L2-SP
    replay_chips: np.ndarray | None = None
    teacher: torch.Tensor | None = None  # the base model's unit embeddings of replay_chips
    last_distill: float = 0.0

    @classmethod
    def create(
        cls,
        cfg: TrainConfig,
        base_state: dict[str, torch.Tensor],
        pre: Preprocessing,
        data: WorkerData,
        *,
        rank: int = 0,
        total_steps: int | None = None,
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        device: torch.device | None = None,
        fresh_head: bool = True,
    ) -> Training:
        """A new run from ``base_state``. ``fresh_head`` False skips the class-mean
        initialisation (a checkpoint is about to overwrite it)."""
        torch.manual_seed(cfg.seed)  # identical head init on every rank (DDP checks too)
        net = DlibResNet()
        net.load_state_dict(base_state)
        embed = EmbeddingNet(net, cfg.freeze)
        loss = build_loss(cfg.loss, data.n_classes, net.fc.out_features)
        if cfg.init_head == "class_means" and fresh_head:
            means = class_means(net, data.train_chips, data.train_labels, data.n_classes, pre)
            init_head(loss, means)
        module = TrainModule(embed, loss)
        wrapped = wrap(module) if wrap is not None else None
        o = cfg.optim
        groups: list[dict[str, Any]] = [
            {
                "params": [p for p in embed.parameters() if p.requires_grad],
                "lr": o.lr,
                "name": "net",
                # L2-SP decays towards the warm start instead of towards zero.
                "weight_decay": 0.0 if o.l2sp else o.weight_decay,
            },
            *param_groups(loss, o.head_lr, cfg.loss),
        ]
        if o.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay
            )
        else:
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        total = total_steps or cfg.epochs * steps_per_epoch(cfg, len(data.train_labels))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, total, o.warmup_steps, o.cosine_decay)
        )
        tr = cls(
            cfg,
            pre,
            module,
            opt,
            sched,
            np.random.default_rng([cfg.seed, rank]),
            device or torch.device("cpu"),
            wrapped,
        )
        if o.l2sp:
            tr.anchor = [p.detach().clone() for p in tr.trainable()]
        if cfg.replay is not None and data.replay_chips is not None and len(data.replay_chips):
            # Computed before any step, from the base weights: the target never moves.
            tr.replay_chips = data.replay_chips
            tr.teacher = torch.from_numpy(embed_chips(net, data.replay_chips, pre)).to(tr.device)
        return tr

    @property
    def net(self) -> DlibResNet:
        return self.module.embed.net

    def train_step(self, chips: np.ndarray, labels: np.ndarray) -> float:
        """One optimiser step on a batch of uint8 chips; returns the loss (before the step)."""
        self.module.train()
        batch = augment_batch(chips, self.cfg.augment, self.rng)
        teacher = None
        if self.teacher is not None and self.replay_chips is not None:
            assert self.cfg.replay is not None
            n = min(self.cfg.replay.batch, len(self.replay_chips))
            pick = self.rng.choice(len(self.replay_chips), size=n, replace=False)
            # Replay faces are not augmented: the teacher embedded them as they are.
            batch = np.concatenate([batch, self.replay_chips[pick]])
            teacher = self.teacher[torch.from_numpy(pick).to(self.teacher.device)]
        x = chips_to_input(batch, self.pre).to(self.device)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(self.device)
        task, distill = (self.wrapped or self.module)(x, y, teacher)
        if not torch.isfinite(task) or not torch.isfinite(distill):
            raise NonFiniteLoss(
                f"loss {self.cfg.loss.name} became {task.item()} at step {self.step}; lower "
                "optim.lr / optim.head_lr or the loss scale"
            )
        loss = task
        if teacher is not None:
            assert self.cfg.replay is not None
            loss = task + self.cfg.replay.weight * distill
            self.last_distill = float(distill.item())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.l2sp:
            self._l2sp_grad(self.cfg.optim.l2sp)
        if self.cfg.optim.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return float(task.item())

    @torch.no_grad()
    def _l2sp_grad(self, alpha: float) -> None:
        """Add the gradient of alpha/2 ||w - w0||^2 (w0: the warm start) to the network's
        trainable weights. Applied after the DDP all-reduce, so every rank adds the same."""
        if self.anchor is None:
            raise RuntimeError("L2-SP needs the warm-start weights (Training.create keeps them)")
        for p, a in zip(self.trainable(), self.anchor, strict=True):
            if p.grad is not None:
                p.grad.add_(p - a, alpha=alpha)

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.module.embed.parameters() if p.requires_grad]

    # -- checkpoints --------------------------------------------------------------------

    @private_umask()  # owner-only, like all local data (pipeline.files)
    def save(self, folder: Path) -> None:
        private_dir(folder)
        torch.save(
            {
                "module": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "rng": self.rng.bit_generator.state,
            },
            folder / STATE_FILE,
        )
        # The bare network weights, in the model store's format (DlibResNet state_dict).
        torch.save(self.net.state_dict(), folder / MODEL_FILE)
        (folder / HISTORY_FILE).write_text(json.dumps(self.history, indent=1) + "\n")

    def load(self, folder: Path) -> None:
        # weights_only: a checkpoint on shared storage must not be able to run code here.
        state = torch.load(folder / STATE_FILE, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.rng.bit_generator.state = state["rng"]
        hist = folder / HISTORY_FILE
        self.history = json.loads(hist.read_text()) if hist.is_file() else []


def quick_heldout(
    net: nn.Module, chips: np.ndarray, labels: np.ndarray, pre: Preprocessing
) -> dict[str, float]:
    """Held-out TAR@FAR=1e-2 and EER of the torch model (no TTA): the per-epoch signal."""
    from sklearn.metrics import roc_curve

    from pipeline.evaluation.metrics import equal_error_rate, tar_at_far

    if len(chips) < 2:
        return {}
    net.eval()
    v = embed_chips(net, chips, pre)
    iu = np.triu_indices(len(v), k=1)
    scores = (v @ v.T)[iu]
    same = (labels[iu[0]] == labels[iu[1]]).astype(int)
    if same.min() == same.max():
        return {}
    fpr, tpr, thr = roc_curve(same, scores)
    return {
        "val_tar@1e-2": tar_at_far(fpr, tpr, thr, 1e-2)[0],
        "val_eer": equal_error_rate(fpr, tpr),
    }


def run_epoch(
    tr: Training,
    data: WorkerData,
    steps: int,
    *,
    rank: int = 0,
    world: int = 1,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train one epoch of ``steps`` P x K batches; returns the epoch's metrics."""
    cfg = tr.cfg
    bs = cfg.sampler.batch_size
    # PML's sampler draws from numpy's global generator: seed it per (run, epoch, rank) so
    # a resumed run sees the batches it would have seen.
    np.random.seed((cfg.seed * 1_000_003 + tr.epoch * 1_009 + rank) % 2**32)
    idx = np.fromiter(iter(pk_sampler(data.train_labels, cfg.sampler.p, cfg.sampler.k, steps)), int)
    t0 = time.perf_counter()
    losses, distills = [], []
    for s in range(steps):
        b = idx[s * bs : (s + 1) * bs]
        losses.append(tr.train_step(data.train_chips[b], data.train_labels[b]))
        distills.append(tr.last_distill)
        if on_step is not None:
            on_step(s, losses[-1])
    wall = time.perf_counter() - t0
    head = max(1, steps // 5)
    metrics: dict[str, Any] = {
        "epoch": tr.epoch + 1,
        "step": tr.step,
        "loss": float(np.mean(losses)),
        "loss_first": float(np.mean(losses[:head])),
        "loss_last": float(np.mean(losses[-head:])),
        "lr": float(tr.optimizer.param_groups[0]["lr"]),
        **({"distill": float(np.mean(distills))} if tr.teacher is not None else {}),
        "images_per_s": world * bs * steps / wall,
        "epoch_s": wall,
    }
    tr.epoch += 1
    return metrics


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` is built by ``pipeline.train.job``."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["cfg"])
    pre = Preprocessing.model_validate(config["preprocessing"])
    data: WorkerData = ray.get(config["data"])
    base_state: dict[str, torch.Tensor] = ray.get(config["base_state"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    steps = steps_per_epoch(cfg, len(data.train_labels))

    ckpt = ray.train.get_checkpoint()
    resume_dir = cfg.resume_from
    tr = Training.create(
        cfg,
        base_state,
        pre,
        data,
        rank=rank,
        fresh_head=ckpt is None and not resume_dir,
        # prepare_model moves the module to the worker's device and wraps it in DDP only
        # when there is more than one worker.
        wrap=ray.train.torch.prepare_model,
        device=ray.train.torch.get_device(),
    )
    if ckpt is not None:
        with ckpt.as_directory() as d:
            tr.load(Path(d))
    elif resume_dir:
        tr.load(Path(resume_dir))

    # Progress as plain lines from rank 0 (about ten per epoch): they read the same in a
    # terminal, in `ray job logs` and in a KubeRay pod log, unlike a redrawn bar.
    every = max(1, steps // 10)

    def on_step(s: int, loss: float) -> None:
        if rank == 0 and cfg.progress and ((s + 1) % every == 0 or s + 1 == steps):
            print(
                f"epoch {tr.epoch + 1}/{cfg.epochs} step {s + 1}/{steps} loss {loss:.4f}",
                flush=True,
            )

    if rank == 0 and cfg.eval.per_epoch and tr.step == 0 and not tr.history:
        # Epoch 0: the base model on the same signal, so the curve has its starting point.
        base = {"epoch": 0, "step": 0}
        base.update(quick_heldout(tr.net, data.heldout_chips, data.heldout_labels, pre))
        tr.history.append(base)
        print("epoch " + json.dumps(base), flush=True)
    while tr.epoch < cfg.epochs:
        metrics = run_epoch(tr, data, steps, rank=rank, world=world, on_step=on_step)
        if rank == 0 and cfg.eval.per_epoch:
            metrics.update(quick_heldout(tr.net, data.heldout_chips, data.heldout_labels, pre))
        tr.history.append(metrics)
        if rank == 0:
            print(
                "epoch "
                + json.dumps(
                    {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
                ),
                flush=True,
            )
            with tempfile.TemporaryDirectory(prefix="fs-ckpt-") as tmp:
                tr.save(Path(tmp))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics, checkpoint=None)
