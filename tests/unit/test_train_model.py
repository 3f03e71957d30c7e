"""The trainable network: the split forward equals the port's, freezing freezes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config.train import loss_config
from pipeline.nets.dlib_resnet import DlibResNet
from pipeline.train.losses import build_loss
from pipeline.train.model import N_FREEZABLE, EmbeddingNet, TrainModule, state_dict_digest


@pytest.fixture(scope="module")
def net() -> DlibResNet:
    torch.manual_seed(0)
    return DlibResNet().eval()


@pytest.mark.parametrize("freeze", [0, 1, 5, N_FREEZABLE])
def test_split_forward_matches_the_port(net: DlibResNet, freeze: int) -> None:
    x = torch.randn(2, 3, 150, 150)
    with torch.no_grad():
        want = net(x)
    got = EmbeddingNet(net, freeze)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for p in net.parameters():
        p.requires_grad_(True)


def test_frozen_units_do_not_change(net: DlibResNet) -> None:
    model = DlibResNet()
    model.load_state_dict(net.state_dict())
    emb = EmbeddingNet(model, freeze=3)  # stem + blocks 0 and 1
    mod = TrainModule(emb, build_loss(loss_config("triplet"), 2, 128))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in mod.parameters() if p.requires_grad], lr=0.1)
    loss, _ = mod(torch.randn(4, 3, 150, 150), torch.tensor([0, 0, 1, 1]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("stem_", "blocks.0.", "blocks.1."))]
    trained = [k for k in before if k.startswith(("blocks.2.", "blocks.14.", "fc."))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    with pytest.raises(ValueError, match="freeze"):
        EmbeddingNet(DlibResNet(), N_FREEZABLE + 1)


def test_weights_digest_depends_on_numbers_only(net: DlibResNet) -> None:
    sd = net.state_dict()
    assert state_dict_digest(sd) == state_dict_digest({k: v.clone() for k, v in sd.items()})
    changed = {k: v.clone() for k, v in sd.items()}
    changed["fc.weight"][0, 0] += np.float32(1e-6)
    assert state_dict_digest(changed) != state_dict_digest(sd)
