"""Each training loss against a value worked out by hand on a tiny case.

The losses come from ``build_loss`` (the config -> module factory the trainer uses), so
these also pin the config's units and conventions (e.g. the ArcFace margin is given in
radians, while pytorch-metric-learning takes degrees). The "by hand" side is written
with ``math`` on scalars, independently of the implementations.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from pipeline.config.train import loss_config
from pipeline.train.losses import (
    CenterLoss,
    CombinedMarginLoss,
    SiameseLoss,
    SoftmaxCenterLoss,
    SoftmaxLoss,
    build_loss,
    init_head,
)


def ce(logits: list[float], target: int) -> float:
    """Cross-entropy of one sample, by hand."""
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def unit(deg: float, norm: float = 1.0) -> list[float]:
    return [norm * math.cos(math.radians(deg)), norm * math.sin(math.radians(deg))]


def set_class_weights(loss: torch.nn.Module, columns: list[list[float]]) -> None:
    """PML's class weights W are (dim, classes)."""
    with torch.no_grad():
        loss.W.copy_(torch.tensor(columns, dtype=torch.float32).t())


# Two classes with unit weights along x and y; a sample at 60 degrees has theta = 60
# to class 0 and theta = 30 to class 1.
AXES = [[1.0, 0.0], [0.0, 1.0]]


def test_softmax_cross_entropy() -> None:
    loss = build_loss(loss_config("softmax"), num_classes=3, embedding_size=2)
    assert isinstance(loss, SoftmaxLoss)
    with torch.no_grad():
        loss.head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        loss.head.bias.copy_(torch.tensor([0.0, 0.5, 0.0]))
    x = torch.tensor([[1.0, 2.0], [0.0, -1.0]])
    y = torch.tensor([1, 2])
    # logits: [1, 2.5, -3] and [0, -0.5, 1]
    expected = (ce([1.0, 2.5, -3.0], 1) + ce([0.0, -0.5, 1.0], 2)) / 2
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_center_loss_on_unit_embeddings() -> None:
    loss = CenterLoss(num_classes=2, embedding_size=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]])  # unit: (0.6, 0.8) and (0, -1)
    y = torch.tensor([0, 1])
    # ||(0.6, 0.8) - (1, 0)||^2 = 0.16 + 0.64 = 0.8;  ||(0, -1) - (0, 1)||^2 = 4
    assert loss(x, y).item() == pytest.approx(0.5 * (0.8 + 4.0) / 2, rel=1e-6)


def test_softmax_plus_center_loss() -> None:
    loss = build_loss(loss_config("center", center_weight=0.25), 2, 2)
    assert isinstance(loss, SoftmaxCenterLoss)
    with torch.no_grad():
        loss.softmax.head.weight.copy_(torch.eye(2))
        loss.softmax.head.bias.zero_()
        loss.center.centers.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.tensor([[3.0, 4.0]])
    y = torch.tensor([0])
    expected = ce([3.0, 4.0], 0) + 0.25 * 0.5 * 0.8
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-6)


def test_arcface_margin_is_in_radians() -> None:
    loss = build_loss(loss_config("arcface", margin=0.5, scale=10.0), 2, 2)
    set_class_weights(loss, AXES)
    x = torch.tensor([unit(60, norm=3.0)])
    expected = ce([10 * math.cos(math.radians(60) + 0.5), 10 * math.cos(math.radians(30))], 0)
    assert loss(x, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_cosface() -> None:
    loss = build_loss(loss_config("cosface", margin=0.35, scale=10.0), 2, 2)
    set_class_weights(loss, AXES)
    x = torch.tensor([unit(60, norm=0.5)])
    expected = ce([10 * (0.5 - 0.35), 10 * math.cos(math.radians(30))], 0)
    assert loss(x, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_sphereface_multiplicative_margin() -> None:
    loss = build_loss(loss_config("sphereface", margin=2, scale=1.0), 2, 2)
    set_class_weights(loss, AXES)
    # ||x|| = 2, theta = 60 < pi/m = 90: psi = cos(2 * 60) = -0.5
    x = torch.tensor([unit(60, norm=2.0)])
    expected = ce([2 * -0.5, 2 * math.cos(math.radians(30))], 0)
    assert loss(x, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)
    # theta = 120 lies in [pi/m, 2 pi/m): k = 1, psi = -cos(240) - 2 = -1.5
    x = torch.tensor([unit(120, norm=2.0)])
    expected = ce([2 * -1.5, 2 * math.cos(math.radians(30))], 0)
    assert loss(x, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_combined_margin() -> None:
    loss = build_loss(loss_config("combined", m1=1.0, m2=0.5, m3=0.2, scale=10.0), 2, 2)
    assert isinstance(loss, CombinedMarginLoss)
    set_class_weights(loss, AXES)
    x = torch.tensor([unit(60, norm=5.0)])
    target = 10 * (math.cos(math.radians(60) + 0.5) - 0.2)
    expected = ce([target, 10 * math.cos(math.radians(30))], 0)
    assert loss(x, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_combined_margin_stays_monotonic_past_pi() -> None:
    loss = CombinedMarginLoss(2, 2, m1=2.0, m2=0.0, m3=0.0, scale=1.0)
    set_class_weights(loss, AXES)
    # theta = 120, m1 theta = 240 > 180: k = 1, psi = -cos(240) - 2 = -1.5 (cos alone
    # would give -0.5 and start rewarding a larger angle)
    x = torch.tensor([unit(120)])
    expected = ce([-1.5, math.cos(math.radians(30))], 0)
    assert loss(x, torch.tensor([0])).item() == pytest.approx(expected, rel=1e-5)


def test_combined_margin_reduces_to_arcface_and_cosface() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    y = torch.randint(0, 5, (16,))
    w = torch.randn(8, 5)
    pairs = [
        (
            CombinedMarginLoss(5, 8, 1.0, 0.3, 0.0, 16.0),
            pml_losses.ArcFaceLoss(5, 8, math.degrees(0.3), 16.0),
        ),
        (
            CombinedMarginLoss(5, 8, 1.0, 0.0, 0.35, 16.0),
            pml_losses.CosFaceLoss(5, 8, margin=0.35, scale=16.0),
        ),
    ]
    for ours, theirs in pairs:
        with torch.no_grad():
            ours.W.copy_(w)
            theirs.W.copy_(w)
        assert ours(x, y).item() == pytest.approx(theirs(x, y).item(), rel=1e-4)


def test_contrastive_margins() -> None:
    loss = build_loss(loss_config("contrastive", pos_margin=0.0, neg_margin=1.0), 2, 2)
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # positive pair (0, 1): distance sqrt(0.8) - 0; negatives: (0, 2) sqrt(2) -> 0,
    # (1, 2) sqrt(0.4) -> 1 - sqrt(0.4). Each part is averaged over its non-zero terms.
    expected = math.sqrt(0.8) + (1.0 - math.sqrt(0.4))
    assert loss(x, y).item() == pytest.approx(expected, rel=1e-5)


def test_triplet_batch_hard() -> None:
    loss = build_loss(loss_config("triplet", margin=0.7, mining="batch_hard"), 2, 2)
    angles = [0, 40, 90, 100]
    x = torch.tensor([unit(a) for a in angles])
    y = torch.tensor([0, 0, 1, 1])

    def d(a: float, b: float) -> float:  # chord between unit vectors
        return 2 * math.sin(math.radians(abs(a - b)) / 2)

    # anchor: hardest positive, hardest (closest) negative
    per_anchor = [
        d(0, 40) - d(0, 90) + 0.7,  # -0.03 -> 0
        d(40, 0) - d(40, 90) + 0.7,
        d(90, 100) - d(90, 40) + 0.7,
        d(100, 90) - d(100, 40) + 0.7,  # < 0 -> 0
    ]
    nonzero = [v for v in per_anchor if v > 0]
    assert len(nonzero) == 2
    assert loss(x, y).item() == pytest.approx(sum(nonzero) / len(nonzero), rel=1e-5)


def test_siamese_head() -> None:
    loss = build_loss(loss_config("siamese", balance=True), 2, 2)
    assert isinstance(loss, SiameseLoss)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([-1.0, -2.0]))
        loss.bias.fill_(3.0)
    x = torch.tensor([[3.0, 4.0], [0.0, 5.0], [4.0, -3.0]])  # unit: (.6,.8) (0,1) (.8,-.6)
    y = torch.tensor([0, 0, 1])
    # pair (0,1) same:  |d| = (.6, .2) -> logit -0.6 - 0.4 + 3 = 2
    # pair (0,2) diff:  |d| = (.2, 1.4) -> -0.2 - 2.8 + 3 = 0
    # pair (1,2) diff:  |d| = (.8, 1.6) -> -0.8 - 3.2 + 3 = -1
    pos = math.log(1 + math.exp(-2.0))  # -log sigmoid(2)
    neg = [math.log(2.0), math.log(1 + math.exp(-1.0))]  # -log(1 - sigmoid(l))
    assert loss(x, y).item() == pytest.approx(0.5 * pos + 0.5 * sum(neg) / 2, rel=1e-5)
    loss.balance = False
    assert loss(x, y).item() == pytest.approx((pos + sum(neg)) / 3, rel=1e-5)


def test_init_head_imprints_class_means() -> None:
    means = torch.tensor([[0.0, 0.5], [0.3, 0.4]])
    arc = build_loss(loss_config("arcface"), 2, 2)
    assert init_head(arc, means)
    assert torch.allclose(arc.W.t(), torch.tensor([[0.0, 1.0], [0.6, 0.8]]))
    center = build_loss(loss_config("center"), 2, 2)
    assert init_head(center, means)
    assert torch.allclose(center.center.centers, means)
    assert not init_head(build_loss(loss_config("triplet"), 2, 2), means)


def test_every_loss_has_a_gradient() -> None:
    torch.manual_seed(0)
    for name in (
        "softmax",
        "contrastive",
        "triplet",
        "center",
        "sphereface",
        "cosface",
        "arcface",
        "combined",
        "siamese",
    ):
        loss = build_loss(loss_config(name), num_classes=4, embedding_size=8)
        x = torch.randn(16, 8, requires_grad=True)
        y = torch.arange(4).repeat_interleave(4)
        value = loss(x, y)
        value.backward()
        assert torch.isfinite(value), name
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, name
