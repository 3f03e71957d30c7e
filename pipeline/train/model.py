"""The network being fine-tuned: warm start from a registered version, freezing, and the
module that Ray Train wraps (network + loss, so DDP also averages the loss's weights).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.face.embed import to_tensor
from pipeline.face.errors import ModelError
from pipeline.face.manifest import ModelManifest, Preprocessing, verify_files
from pipeline.models.store import ModelStore
from pipeline.nets.dlib_resnet import DlibResNet

# Units from the input side that ``freeze`` counts: the stem, then the 15 residual blocks;
# the final projection (fc) always trains.
N_FREEZABLE = 16


def load_torch_model(store: ModelStore, version: str) -> tuple[DlibResNet, ModelManifest]:
    """The torch weights of a registered version (the default's port or a fine-tune)."""
    manifest = store.manifest(version)
    folder = store.folder(version)
    if "torch" not in manifest.files:
        raise ModelError(
            f"model {version} has no torch weights (files: {sorted(manifest.files)}); only "
            "versions with a 'torch' file (the dlib ResNet port and its fine-tunes) can be "
            "fine-tuned"
        )
    verify_files(manifest, folder)
    state = torch.load(manifest.file_path(folder, "torch"), map_location="cpu", weights_only=True)
    net = DlibResNet()
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(
            f"model {version}: the torch weights do not fit the dlib ResNet architecture: {exc}"
        ) from None
    if net.fc.out_features != manifest.embedding_dim:
        raise ModelError(f"model {version}: embedding dim {manifest.embedding_dim} != weights")
    return net.eval(), manifest


def state_dict_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors' names, shapes, dtypes and bytes in key order.

    Used as the weights digest of a fine-tuned version: it depends on the numbers only,
    not on how torch happens to serialise them.
    """
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _units(net: DlibResNet) -> list[nn.Module]:
    return [nn.ModuleList([net.stem_conv, net.stem_aff]), *net.blocks]


def apply_freeze(net: DlibResNet, freeze: int) -> None:
    """Freeze the lowest ``freeze`` units (stem, then residual blocks)."""
    if not 0 <= freeze <= N_FREEZABLE:
        raise ValueError(f"freeze must be in 0..{N_FREEZABLE}, got {freeze}")
    for i, unit in enumerate(_units(net)):
        for p in unit.parameters():
            p.requires_grad_(i >= freeze)


class EmbeddingNet(nn.Module):
    """DlibResNet forward split at the freeze point: the frozen lower part runs under
    ``no_grad`` (no activations kept, no backward through it), the rest trains."""

    def __init__(self, net: DlibResNet, freeze: int = 0) -> None:
        super().__init__()
        self.net = net
        self.freeze = freeze
        apply_freeze(net, freeze)

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        return n.stem_pool(F.relu(n.stem_aff(n.stem_conv(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        n_blocks_frozen = max(self.freeze - 1, 0)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.freeze == 0):
            x = self._stem(x)
        with torch.no_grad():
            for block in n.blocks[:n_blocks_frozen]:
                x = block(x)
        for block in n.blocks[n_blocks_frozen:]:
            x = block(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return n.fc(x)


class TrainModule(nn.Module):
    """Network + loss in one module: one DDP wrapper covers both parameter sets.

    ``forward(x, labels, teacher)``: the first ``len(labels)`` rows of ``x`` are the
    training batch; any further rows are replay faces, whose L2-normalised embeddings
    are compared with ``teacher`` (the base model's). One forward pass for both, so DDP
    sees each parameter used once per step.
    """

    def __init__(self, net: EmbeddingNet, loss: nn.Module) -> None:
        super().__init__()
        self.embed = net
        self.loss = loss

    def forward(
        self, x: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(task loss, distillation loss: mean 1 - cosine to the teacher, 0 without one)."""
        emb = self.embed(x)
        n = len(labels)
        task = self.loss(emb[:n], labels)
        if teacher is None:
            return task, task.new_zeros(())
        student = F.normalize(emb[n:], dim=1)
        return task, (1.0 - (student * teacher).sum(dim=1)).mean()


def chips_to_input(chips: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """Production's preprocessing (``pipeline.face.embed.to_tensor``) as a torch tensor."""
    return torch.from_numpy(to_tensor(chips, pre))


@torch.no_grad()
def embed_chips(
    net: nn.Module, chips: np.ndarray, pre: Preprocessing, batch_size: int = 32
) -> np.ndarray:
    """L2-normalised embeddings of chips (no test-time augmentation), on whatever device
    the network lives (a GPU worker's), returned as numpy."""
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(chips), batch_size):
        x = chips_to_input(chips[i : i + batch_size], pre).to(device)
        out.append(F.normalize(net(x), dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def class_means(
    net: nn.Module, chips: np.ndarray, labels: np.ndarray, n_classes: int, pre: Preprocessing
) -> torch.Tensor:
    """Mean of each class's L2-normalised embeddings, (classes, d)."""
    emb = torch.from_numpy(embed_chips(net, chips, pre))
    lab = torch.from_numpy(labels)
    means = torch.zeros(n_classes, emb.shape[1])
    means.index_add_(0, lab, emb)
    counts = torch.bincount(lab, minlength=n_classes).clamp(min=1).unsqueeze(1)
    return means / counts
