"""Metric-learning losses, selected by config.

pytorch-metric-learning (PML) provides ArcFace, CosFace, SphereFace (A-Softmax),
contrastive and triplet losses and the batch-hard / hard-triplet miners; they are used
as they are. Written here is only what PML lacks, each a small ``nn.Module`` in PML's
spirit (one job, composable) and unit-tested against hand-computed values:

- ``SoftmaxLoss``: cross-entropy over a linear classification head with bias.
- ``CenterLoss`` and ``SoftmaxCenterLoss``: Wen et al. 2016, softmax + lambda * centre.
- ``CombinedMarginLoss``: InsightFace's s (cos(m1 theta + m2) - m3), a PML
  ``LargeMarginSoftmaxLoss`` subclass like PML's own ArcFace.
- ``SiameseLoss``: a verification head, sigmoid(sum_k w_k |f1_k - f2_k| + b), trained
  with binary cross-entropy over the pairs of a batch.

Every loss maps (raw embeddings (n, d), labels (n,)) to a scalar. Those with learnt
parameters (class weights, centres, the siamese head) are trained with the network at
``optim.head_lr``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn

from pipeline.config.train import (
    ArcFaceLossConfig,
    CenterLossConfig,
    CombinedMarginLossConfig,
    ContrastiveLossConfig,
    CosFaceLossConfig,
    LossConfig,
    SiameseLossConfig,
    SoftmaxLossConfig,
    SphereFaceLossConfig,
    TripletLossConfig,
)

# acos has an infinite derivative at +-1; a cosine of exactly 1 (an embedding on its
# class weight) would turn the margin losses' gradient into NaN.
_COS_EPS = 1e-6


class SoftmaxLoss(nn.Module):
    """Softmax cross-entropy over ``Linear(d, classes)`` (with bias), batch mean."""

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        self.head = nn.Linear(embedding_size, num_classes)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings), labels)


class CenterLoss(nn.Module):
    """0.5 * mean_i ||x_i / ||x_i|| - c_{y_i}||^2 with learnt class centres c.

    On the L2-normalised embedding, because production compares unit vectors by cosine:
    on raw features the loss could be lowered by shrinking every norm, which says nothing
    about angles. The centres are parameters trained by the optimiser (the usual modern
    form of the paper's alpha-rate centre update; ``centers_lr_scale`` plays alpha).
    """

    def __init__(self, num_classes: int, embedding_size: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_size) * 0.01)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings, dim=1)
        return 0.5 * (x - self.centers[labels]).pow(2).sum(dim=1).mean()


class SoftmaxCenterLoss(nn.Module):
    """Softmax cross-entropy + ``center_weight`` * centre loss (Wen et al. 2016)."""

    def __init__(self, num_classes: int, embedding_size: int, center_weight: float) -> None:
        super().__init__()
        self.softmax = SoftmaxLoss(num_classes, embedding_size)
        self.center = CenterLoss(num_classes, embedding_size)
        self.center_weight = center_weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.softmax(embeddings, labels) + self.center_weight * self.center(
            embeddings, labels
        )


class CombinedMarginLoss(pml_losses.LargeMarginSoftmaxLoss):
    """InsightFace's combined margin: target logit s * (psi(m1 theta + m2) - m3), others
    s * cos theta, on L2-normalised embeddings and class weights.

    psi(t) = (-1)^k cos(t) - 2k with k = floor(t / pi) (SphereFace's extension): equal to
    cos(t) on [0, pi] and monotonically decreasing beyond, so an embedding far from its
    class still gets a gradient towards it instead of the cosine turning back up.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        m1: float = 1.0,
        m2: float = 0.3,
        m3: float = 0.2,
        scale: float = 64.0,
        **kwargs: object,
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            embedding_size=embedding_size,
            margin=m2,
            scale=scale,
            **kwargs,
        )
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def init_margin(self) -> None:
        pass  # the margins are plain floats (the base class's A-Softmax tables unused)

    def cast_types(self, dtype: torch.dtype, device: torch.device) -> None:
        self.W.data = self.W.data.to(device=device, dtype=dtype)

    def modify_cosine_of_target_classes(
        self, cosine_of_target_classes: torch.Tensor
    ) -> torch.Tensor:
        cos = cosine_of_target_classes.clamp(-1 + _COS_EPS, 1 - _COS_EPS)
        t = self.m1 * torch.acos(cos) + self.m2
        with torch.no_grad():
            k = torch.floor(t / math.pi)
        psi = torch.where(k.remainder(2) == 0, 1.0, -1.0) * torch.cos(t) - 2.0 * k
        return psi - self.m3

    def scale_logits(self, logits: torch.Tensor, *_: object) -> torch.Tensor:
        return logits * self.scale


class SiameseLoss(nn.Module):
    """Verification head p(same | x1, x2) = sigmoid(sum_k w_k |f1_k - f2_k| + b) on
    L2-normalised embeddings, binary cross-entropy over every pair (i < j) of the batch.

    With ``balance`` the positive and the negative pairs each weigh half (a P x K batch
    holds P * K(K-1)/2 positives among (PK)(PK-1)/2 pairs). w starts at -1 and b at
    0.75 times the expected L1 distance of two random unit vectors, so p(same) starts
    low for strangers and higher for close pairs instead of 0.5 everywhere.
    """

    def __init__(self, embedding_size: int, balance: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(-torch.ones(embedding_size))
        self.bias = nn.Parameter(torch.tensor(0.75 * math.sqrt(4.0 * embedding_size / math.pi)))
        self.balance = balance

    def pair_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs()
        return d @ self.weight + self.bias

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        i, j = torch.triu_indices(len(labels), len(labels), offset=1, device=labels.device)
        logits = self.pair_logits(embeddings[i], embeddings[j])
        same = (labels[i] == labels[j]).to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, same, reduction="none")
        pos, neg = same > 0.5, same < 0.5
        if self.balance and pos.any() and neg.any():
            return 0.5 * bce[pos].mean() + 0.5 * bce[neg].mean()
        return bce.mean()


class MinedLoss(nn.Module):
    """A PML pair/triplet loss fed by a PML miner: loss(x, y, miner(x, y))."""

    def __init__(self, loss: nn.Module, miner: nn.Module | None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tuples = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, tuples)


def build_loss(cfg: LossConfig, num_classes: int, embedding_size: int) -> nn.Module:
    """The loss module of ``cfg`` for ``num_classes`` training identities."""
    if isinstance(cfg, SoftmaxLossConfig):
        return SoftmaxLoss(num_classes, embedding_size)
    if isinstance(cfg, CenterLossConfig):
        return SoftmaxCenterLoss(num_classes, embedding_size, cfg.center_weight)
    if isinstance(cfg, ContrastiveLossConfig):
        # PML's default distance: Euclidean on L2-normalised embeddings.
        return MinedLoss(
            pml_losses.ContrastiveLoss(pos_margin=cfg.pos_margin, neg_margin=cfg.neg_margin), None
        )
    if isinstance(cfg, TripletLossConfig):
        miner: nn.Module
        if cfg.mining == "batch_hard":
            miner = pml_miners.BatchHardMiner()
        else:
            miner = pml_miners.TripletMarginMiner(margin=cfg.margin, type_of_triplets=cfg.mining)
        return MinedLoss(pml_losses.TripletMarginLoss(margin=cfg.margin), miner)
    if isinstance(cfg, SphereFaceLossConfig):
        return pml_losses.SphereFaceLoss(
            num_classes=num_classes,
            embedding_size=embedding_size,
            margin=cfg.margin,
            scale=cfg.scale,
        )
    if isinstance(cfg, CosFaceLossConfig):
        return pml_losses.CosFaceLoss(
            num_classes=num_classes,
            embedding_size=embedding_size,
            margin=cfg.margin,
            scale=cfg.scale,
        )
    if isinstance(cfg, ArcFaceLossConfig):
        # PML takes the ArcFace margin in degrees; the config (like the paper) in radians.
        return pml_losses.ArcFaceLoss(
            num_classes=num_classes,
            embedding_size=embedding_size,
            margin=float(np.degrees(cfg.margin)),
            scale=cfg.scale,
        )
    if isinstance(cfg, CombinedMarginLossConfig):
        return CombinedMarginLoss(
            num_classes, embedding_size, m1=cfg.m1, m2=cfg.m2, m3=cfg.m3, scale=cfg.scale
        )
    if isinstance(cfg, SiameseLossConfig):
        return SiameseLoss(embedding_size, balance=cfg.balance)
    raise ValueError(f"unknown loss config {cfg!r}")


# Softmax heads start at this multiple of the unit class mean: the raw dlib embedding has
# a norm of about 1.4, so logits of ~14 cos(theta) give a confident but not saturated
# softmax on the first step.
_SOFTMAX_INIT_SCALE = 10.0


@torch.no_grad()
def init_head(loss: nn.Module, class_means: torch.Tensor) -> bool:
    """Start the loss's class parameters at the base model's class means (imprinting).

    ``class_means`` (classes, d) are means of L2-normalised embeddings. Returns whether
    the loss has class parameters at all.
    """
    unit = F.normalize(class_means, dim=1)
    if isinstance(loss, SoftmaxLoss):
        loss.head.weight.copy_(unit * _SOFTMAX_INIT_SCALE)
        loss.head.bias.zero_()
        return True
    if isinstance(loss, SoftmaxCenterLoss):
        init_head(loss.softmax, class_means)
        loss.center.centers.copy_(class_means)
        return True
    if isinstance(loss, pml_losses.LargeMarginSoftmaxLoss):
        loss.W.copy_(unit.t())  # PML stores W as (d, classes)
        return True
    return False


def param_groups(loss: nn.Module, head_lr: float, cfg: LossConfig) -> list[dict[str, object]]:
    """Optimiser parameter groups of the loss (empty for parameter-free losses)."""
    if isinstance(loss, SoftmaxCenterLoss) and isinstance(cfg, CenterLossConfig):
        return [
            {"params": list(loss.softmax.parameters()), "lr": head_lr, "name": "head"},
            {
                "params": list(loss.center.parameters()),
                "lr": head_lr * cfg.centers_lr_scale,
                "name": "centers",
                "weight_decay": 0.0,  # decay would pull the centres towards 0, not the data
            },
        ]
    params = [p for p in loss.parameters() if p.requires_grad]
    return [{"params": params, "lr": head_lr, "name": "head"}] if params else []
