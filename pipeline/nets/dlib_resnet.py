"""PyTorch port of dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1).

The C++ network (dlib tools/python/src/face_recognition.cpp) is::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

    alevel4 = 3 x ares<32>;  alevel3 = ares_down<64> + 3 x ares<64>
    alevel2 = ares_down<128> + 2 x ares<128>;  alevel1 = ares_down<256> + 2 x ares<256>
    alevel0 = ares_down<256>
    ares<N>      = relu(x + affine(con3x3(relu(affine(con3x3(x))))))
    ares_down<N> = relu(avg_pool2x2s2(x) (+) affine(con3x3(relu(affine(con3x3s2(x))))))

dlib semantics reproduced here (dlib/dnn/layers.h, dlib/cuda/cpu_dlib.cpp):

* con/pool padding defaults to 0 when stride != 1 else k//2 (the file stores it; we
  check it). Output size is 1 + (n + 2p - k) // s for both conv and pooling.
* ``add_prev`` of tensors of different shape zero-pads both to the element-wise max
  shape, aligned at channel 0 / row 0 / column 0. This happens twice in this net:
  the 64->128 and 128->256 ``ares_down`` (channel padding of the shortcut) and, with a
  150x150 input, spatially at alevel1 (8x8 -> conv path 3x3, shortcut 4x4) and alevel0
  (4x4 -> conv path 1x1, shortcut 2x2). Pad amounts are static for the fixed input.
* avg pooling averages only in-bounds elements (subm_clipped), i.e. count_include_pad
  = False; max pooling ignores out-of-bounds elements.
* the input is (pixel - mean) / 256 per RGB channel, means stored in the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.nets.dlib_format import (
    AddPrev,
    Affine,
    Con,
    DlibLayer,
    DlibNet,
    Fc,
    InputRGBImage,
    Pool,
    Relu,
    TagOrSkip,
    read_dlib_net,
)

__all__ = [
    "DLIB_INPUT_SIZE",
    "DLIB_RGB_MEAN",
    "DLIB_RGB_SCALE",
    "DLIB_RGB_STD",
    "DlibResNet",
    "DlibStructureError",
    "build_dlib_resnet",
    "load_dlib_resnet",
    "normalize_chips",
]

# input_rgb_image_sized<150>'s defaults (dlib/dnn/input.h), identical to the values stored
# in dlib_face_recognition_resnet_model_v1.dat; load_dlib_resnet checks the file agrees.
DLIB_RGB_MEAN: tuple[float, float, float] = (122.782, 117.001, 104.298)
# dlib computes (pixel - mean) / 256.0. SCALE is the MULTIPLIER (1/256); STD is the DIVISOR
# (256) for "(x - mean) / std" manifests. Dividing by SCALE instead ruins the embeddings
# (measured cosine 0.16-0.5 against the correct ones).
DLIB_RGB_SCALE: float = 1.0 / 256.0
DLIB_RGB_STD: float = 256.0
DLIB_INPUT_SIZE: int = 150
EMBEDDING_DIM: int = 128

# (channels, downsample) per residual block, input side first, as in the C++ alevel4..0.
_EXPECTED_PLAN: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),)
    + ((64, False),) * 3
    + ((128, True),)
    + ((128, False),) * 2
    + ((256, True),)
    + ((256, False),) * 2
    + ((256, True),)
)


class DlibStructureError(ValueError):
    """The parsed dlib layers do not have the face-recognition ResNet's structure."""


def normalize_chips(chips: np.ndarray) -> np.ndarray:
    """uint8 RGB chips (N,150,150,3) or (150,150,3) -> float32 N x 3 x 150 x 150 dlib input.

    Computed in float32 exactly like dlib's ``(pixel - avg) / 256.0``.
    """
    a = np.asarray(chips)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[3] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N,H,W,3) RGB chips, got {a.dtype} {a.shape}")
    mean = np.asarray(DLIB_RGB_MEAN, dtype=np.float32)
    x = (a.astype(np.float32) - mean) * np.float32(DLIB_RGB_SCALE)  # exact: power of two
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return 1 + (n + 2 * p - k) // s


class _Affine(nn.Module):
    """dlib affine_ in conv mode: per-channel y = gamma * x + beta (frozen batch-norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def _pad_to(x: torch.Tensor, c: int, h: int, w: int, have: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad x (N,C,H,W) at the end of C/H/W up to (c,h,w), like dlib's tt::add."""
    dc, dh, dw = c - have[0], h - have[1], w - have[2]
    if dc == dh == dw == 0:
        return x
    return F.pad(x, (0, dw, 0, dh, 0, dc))  # static ints -> one ONNX Pad


class _ResBlock(nn.Module):
    """dlib ares<N> (identity shortcut) or ares_down<N> (2x2/2 avg-pool shortcut)."""

    def __init__(self, in_ch: int, out_ch: int, down: bool, in_hw: int) -> None:
        super().__init__()
        stride = 2 if down else 1
        pad = 0 if down else 1  # dlib default padding rule for a 3x3 conv
        self.down = down
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, pad, bias=True)
        self.aff1 = _Affine(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=True)
        self.aff2 = _Affine(out_ch)
        self.pool = nn.AvgPool2d(2, 2, 0, count_include_pad=False) if down else nn.Identity()
        # Static shapes for the fixed input size, needed for the zero-padded add.
        main_hw = _conv_out(in_hw, 3, stride, pad)
        short_hw = _conv_out(in_hw, 2, 2, 0) if down else in_hw
        self.main_shape = (out_ch, main_hw, main_hw)
        self.short_shape = (in_ch, short_hw, short_hw)
        self.out_shape = tuple(
            max(a, b) for a, b in zip(self.main_shape, self.short_shape, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        s = self.pool(x)
        c, h, w = self.out_shape
        y = _pad_to(y, c, h, w, self.main_shape)
        s = _pad_to(s, c, h, w, self.short_shape)
        return F.relu(y + s)


class DlibResNet(nn.Module):
    """dlib's 29-conv face ResNet. forward: normalised N x 3 x 150 x 150 -> raw N x 128."""

    input_shape: tuple[int, int, int] = (3, DLIB_INPUT_SIZE, DLIB_INPUT_SIZE)

    def __init__(
        self,
        plan: Sequence[tuple[int, bool]] = _EXPECTED_PLAN,
        stem_channels: int = 32,
        embedding_dim: int = EMBEDDING_DIM,
    ) -> None:
        super().__init__()
        self.stem_conv = nn.Conv2d(3, stem_channels, 7, 2, 0, bias=True)
        self.stem_aff = _Affine(stem_channels)
        self.stem_pool = nn.MaxPool2d(3, 2, 0)
        hw = _conv_out(_conv_out(DLIB_INPUT_SIZE, 7, 2, 0), 3, 2, 0)
        ch = stem_channels
        blocks: list[_ResBlock] = []
        for out_ch, down in plan:
            b = _ResBlock(ch, out_ch, down, hw)
            blocks.append(b)
            ch, hw = b.out_shape[0], b.out_shape[1]
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(ch, embedding_dim, bias=False)
        self.final_shape = (ch, hw, hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Shape check only in eager mode: keeps the traced/exported graph free of it.
        if not torch.jit.is_tracing() and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected N x {self.input_shape} input, got {tuple(x.shape)}")
        x = self.stem_pool(F.relu(self.stem_aff(self.stem_conv(x))))
        x = self.blocks(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # avg_pool_everything -> GlobalAveragePool
        return self.fc(x)


# --------------------------------------------------------------------------------------
# Mapping parsed dlib layers onto the module


@dataclass
class _Cursor:
    layers: Sequence[DlibLayer]
    i: int = 0

    def take(self, cls: type, what: str) -> DlibLayer:
        if self.i >= len(self.layers):
            raise DlibStructureError(f"layer {self.i}: expected {what}, got end of network")
        layer = self.layers[self.i]
        if not isinstance(layer, cls):
            raise DlibStructureError(
                f"layer {self.i}: expected {what}, got {type(layer).__name__} ({layer.version})"
            )
        self.i += 1
        return layer

    def peek(self, offset: int = 0) -> DlibLayer | None:
        j = self.i + offset
        return self.layers[j] if j < len(self.layers) else None


def _conv(cur: _Cursor, what: str, k: int, stride: int) -> Con:
    c = cur.take(Con, what)
    assert isinstance(c, Con)
    pad = 0 if stride != 1 else k // 2
    got = (c.nr, c.nc, c.stride_y, c.stride_x, c.padding_y, c.padding_x)
    if got != (k, k, stride, stride, pad, pad):
        raise DlibStructureError(f"{what}: expected k={k} s={stride} p={pad}, got {got}")
    if c.use_relu or not c.use_bias:
        raise DlibStructureError(f"{what}: fused relu / bias-less conv not expected")
    return c


def _affine(cur: _Cursor, what: str) -> Affine:
    a = cur.take(Affine, what)
    assert isinstance(a, Affine)
    if a.mode != "conv" or a.disabled:
        raise DlibStructureError(f"{what}: expected an enabled conv-mode affine")
    return a


def _relu(cur: _Cursor, what: str) -> None:
    r = cur.take(Relu, what)
    assert isinstance(r, Relu)
    if r.disabled:
        raise DlibStructureError(f"{what}: disabled relu not expected")


def _load_conv(dst: nn.Conv2d, src: Con, what: str) -> None:
    if tuple(dst.weight.shape) != src.weight.shape:
        raise DlibStructureError(f"{what}: weight {src.weight.shape} != {tuple(dst.weight.shape)}")
    assert src.bias is not None and dst.bias is not None
    dst.weight.data.copy_(torch.from_numpy(src.weight))
    dst.bias.data.copy_(torch.from_numpy(src.bias))


def _load_affine(dst: _Affine, src: Affine, what: str) -> None:
    if tuple(dst.weight.shape) != src.gamma.shape:
        raise DlibStructureError(f"{what}: gamma {src.gamma.shape} != {tuple(dst.weight.shape)}")
    dst.weight.data.copy_(torch.from_numpy(src.gamma))
    dst.bias.data.copy_(torch.from_numpy(src.beta))


def _parse_block(cur: _Cursor, n: int) -> tuple[int, bool, list[DlibLayer]]:
    """Match one ares / ares_down in bottom-up order; returns (channels, down, params)."""
    w = f"block {n}"
    cur.take(TagOrSkip, f"{w}: tag1")
    first = cur.peek()
    down = isinstance(first, Con) and first.stride_y != 1
    c1 = _conv(cur, f"{w}.conv1", 3, 2 if down else 1)
    a1 = _affine(cur, f"{w}.affine1")
    _relu(cur, f"{w}.relu1")
    c2 = _conv(cur, f"{w}.conv2", 3, 1)
    a2 = _affine(cur, f"{w}.affine2")
    if down:
        cur.take(TagOrSkip, f"{w}: tag2")
        cur.take(TagOrSkip, f"{w}: skip1")
        p = cur.take(Pool, f"{w}: avg_pool<2,2,2,2>")
        assert isinstance(p, Pool)
        if (p.kind, p.nr, p.nc, p.stride_y, p.stride_x, p.padding_y, p.padding_x) != (
            "avg",
            2,
            2,
            2,
            2,
            0,
            0,
        ):
            raise DlibStructureError(f"{w}: shortcut is not avg_pool<2,2,2,2>: {p}")
    cur.take(AddPrev, f"{w}: add_prev")
    _relu(cur, f"{w}.relu_out")
    return c1.num_filters, down, [c1, a1, c2, a2]


def build_dlib_resnet(net: DlibNet) -> DlibResNet:
    """Check the parsed layers against the expected ResNet and copy the weights in."""
    cur = _Cursor(net.layers)
    inp = cur.take(InputRGBImage, "input_rgb_image_sized")
    assert isinstance(inp, InputRGBImage)
    if (inp.nr, inp.nc) != (DLIB_INPUT_SIZE, DLIB_INPUT_SIZE):
        raise DlibStructureError(f"input size {inp.nr}x{inp.nc}, expected 150x150")
    mean = np.asarray(inp.mean_rgb, dtype=np.float32)
    if not np.array_equal(mean, np.asarray(DLIB_RGB_MEAN, dtype=np.float32)):
        raise DlibStructureError(f"input means {inp.mean_rgb} differ from {DLIB_RGB_MEAN}")

    stem_c = _conv(cur, "stem conv", 7, 2)
    stem_a = _affine(cur, "stem affine")
    _relu(cur, "stem relu")
    mp = cur.take(Pool, "stem max_pool<3,3,2,2>")
    assert isinstance(mp, Pool)
    if (mp.kind, mp.nr, mp.nc, mp.stride_y, mp.stride_x, mp.padding_y, mp.padding_x) != (
        "max",
        3,
        3,
        2,
        2,
        0,
        0,
    ):
        raise DlibStructureError(f"stem pool is not max_pool<3,3,2,2>: {mp}")

    plan: list[tuple[int, bool]] = []
    block_params: list[list[DlibLayer]] = []
    while isinstance(cur.peek(), TagOrSkip):
        ch, down, params = _parse_block(cur, len(plan))
        plan.append((ch, down))
        block_params.append(params)
    if tuple(plan) != _EXPECTED_PLAN:
        raise DlibStructureError(f"residual plan {plan} != expected {list(_EXPECTED_PLAN)}")

    gp = cur.take(Pool, "avg_pool_everything")
    assert isinstance(gp, Pool)
    if (gp.kind, gp.nr, gp.nc, gp.padding_y, gp.padding_x) != ("avg", 0, 0, 0, 0):
        raise DlibStructureError(f"head pool is not avg_pool_everything: {gp}")
    fc = cur.take(Fc, "fc_no_bias<128>")
    assert isinstance(fc, Fc)
    if fc.has_bias or fc.num_outputs != EMBEDDING_DIM:
        raise DlibStructureError(f"head is not fc_no_bias<128>: outputs={fc.num_outputs}")
    if cur.i != len(net.layers):
        raise DlibStructureError(f"{len(net.layers) - cur.i} unexpected layer(s) after the fc")

    model = DlibResNet(plan, stem_channels=stem_c.num_filters)
    with torch.no_grad():
        _load_conv(model.stem_conv, stem_c, "stem conv")
        _load_affine(model.stem_aff, stem_a, "stem affine")
        for n, (block, (c1, a1, c2, a2)) in enumerate(zip(model.blocks, block_params, strict=True)):
            assert isinstance(block, _ResBlock)
            assert isinstance(c1, Con) and isinstance(c2, Con)
            assert isinstance(a1, Affine) and isinstance(a2, Affine)
            _load_conv(block.conv1, c1, f"block {n}.conv1")
            _load_affine(block.aff1, a1, f"block {n}.affine1")
            _load_conv(block.conv2, c2, f"block {n}.conv2")
            _load_affine(block.aff2, a2, f"block {n}.affine2")
        if fc.weight.shape != (model.fc.in_features, model.fc.out_features):
            raise DlibStructureError(f"fc weight {fc.weight.shape} does not fit {model.fc}")
        # dlib computes x @ W with W (inputs, outputs); torch Linear stores W^T.
        model.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(fc.weight.T)))
    return model.eval()


def load_dlib_resnet(dat_path: str | os.PathLike[str]) -> DlibResNet:
    """Read dlib_face_recognition_resnet_model_v1.dat into an eval-mode DlibResNet."""
    return build_dlib_resnet(read_dlib_net(dat_path))
