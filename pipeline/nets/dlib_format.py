"""Reader for dlib's binary serialization format (dlib/serialize.h, dlib/dnn/*.h).

Only what the DNN face models need is implemented, in pure Python + numpy.

Wire format (checked against the dlib 20.0.1 sources):

* integers: one control byte (bit 7 = negative, low 4 bits = byte count n >= 1) followed
  by n little-endian bytes of the absolute value. Zero is ``01 00``. Unsigned types use
  the same encoding; a set sign bit is an error for them.
* bool: the ASCII byte ``'1'`` or ``'0'``.
* float/double: a ``float_details`` = int64 mantissa, then int16 exponent, each as an
  integer above; value = mantissa * 2**exponent. (serialize.h's prose says "exponent
  then mantissa" but the code writes the mantissa first.) Exponents 32000/32001/32002
  mean +inf/-inf/NaN. A first byte with any of bits 0x70 set means the legacy ASCII
  float format, which is rejected here.
* std::string: length (unsigned integer) then raw bytes. Layer details start with such
  a version string, e.g. ``con_6``.
* resizable_tensor: int version 2, four int64 dims (n, k, nr, nc), then raw little-endian
  IEEE float32 data (NOT float_details). alias_tensor: int version 1 + four dims, no data.

Network layout: ``add_layer<DETAILS, SUBNET>`` writes its version int, then the
*subnetwork*, then its own details, so a file is a chain of version ints walking from
the output down to the input, followed by the layer details from the input back up.
``add_tag_layer`` and ``add_skip_layer`` write only a version int (1) and carry no tag
id, so tags and skips are indistinguishable in the file: they are reported as
``TagOrSkip`` markers and the network topology has to come from the known C++ type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np

__all__ = [
    "AddPrev",
    "Affine",
    "Con",
    "DlibFormatError",
    "DlibLayer",
    "DlibNet",
    "Fc",
    "InputRGBImage",
    "LossMetric",
    "Pool",
    "Relu",
    "TagOrSkip",
    "UnsupportedLayerError",
    "parse_dlib_net",
    "read_dlib_net",
]


class DlibFormatError(ValueError):
    """The byte stream is not a (supported) dlib serialized network."""


class UnsupportedLayerError(DlibFormatError):
    """A layer/version tag this reader does not implement."""


# float_details special exponents (dlib/float_details.h)
_EXP_INF: Final = 32000
_EXP_NINF: Final = 32001
_EXP_NAN: Final = 32002

# Guards against absurd sizes from corrupt files before we allocate anything.
_MAX_TENSOR_DIM: Final = 1 << 31
_MAX_CHAIN: Final = 100_000


# --------------------------------------------------------------------------------------
# Layer records (input -> output order in DlibNet.layers)


@dataclass(frozen=True, eq=False)
class DlibLayer:
    """Base class: ``version`` is the tag string dlib wrote (e.g. ``con_6``)."""

    version: str


@dataclass(frozen=True, eq=False)
class InputRGBImage(DlibLayer):
    """``input_rgb_image[_sized]``: value = (pixel - mean) / 256 per RGB channel."""

    mean_rgb: tuple[float, float, float]
    nr: int | None  # None for the unsized variant
    nc: int | None


@dataclass(frozen=True, eq=False)
class Con(DlibLayer):
    """``con_``: 2-D cross-correlation. weight is (num_filters, k, nr, nc)."""

    num_filters: int
    nr: int
    nc: int
    stride_y: int
    stride_x: int
    padding_y: int
    padding_x: int
    use_bias: bool
    use_relu: bool  # con_6 can fuse a ReLU into the convolution
    weight: np.ndarray
    bias: np.ndarray | None  # (num_filters,)


@dataclass(frozen=True, eq=False)
class Affine(DlibLayer):
    """``affine_``: y = gamma * x + beta, per channel (conv mode) or per element (fc mode)."""

    mode: str  # "conv" or "fc"
    disabled: bool
    gamma: np.ndarray  # conv mode: (k,), fc mode: (k, nr, nc)
    beta: np.ndarray


@dataclass(frozen=True, eq=False)
class Relu(DlibLayer):
    disabled: bool


@dataclass(frozen=True, eq=False)
class Pool(DlibLayer):
    """``max_pool_`` / ``avg_pool_``; nr == nc == 0 means "whole input" (global pool)."""

    kind: str  # "max" or "avg"
    nr: int
    nc: int
    stride_y: int
    stride_x: int
    padding_y: int
    padding_x: int


@dataclass(frozen=True, eq=False)
class Fc(DlibLayer):
    """``fc_``: y = x @ weight (+ bias). weight is (num_inputs, num_outputs) as in dlib."""

    num_outputs: int
    num_inputs: int
    has_bias: bool  # template bias_mode == FC_HAS_BIAS
    use_bias: bool
    weight: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True, eq=False)
class AddPrev(DlibLayer):
    """``add_prev_``: sum with a tagged layer's output; the tag id is NOT in the file."""


@dataclass(frozen=True, eq=False)
class TagOrSkip(DlibLayer):
    """Structural ``add_tag_layer`` / ``add_skip_layer`` node (indistinguishable on disk)."""


@dataclass(frozen=True, eq=False)
class LossMetric(DlibLayer):
    margin: float
    dist_thresh: float


@dataclass(frozen=True, eq=False)
class DlibNet:
    loss: LossMetric
    layers: tuple[DlibLayer, ...]  # input first, output last
    size_bytes: int


# --------------------------------------------------------------------------------------
# Primitive stream


class _Stream:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise DlibFormatError(
                f"truncated file: need {n} byte(s) for {what} at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left"
            )

    def byte(self, what: str) -> int:
        self._need(1, what)
        b = self.data[self.pos]
        self.pos += 1
        return b

    def raw(self, n: int, what: str) -> bytes:
        self._need(n, what)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int_(self, what: str, signed: bool = True) -> int:
        start = self.pos
        ctrl = self.byte(what)
        neg = bool(ctrl & 0x80)
        size = ctrl & 0x0F
        # Like dlib: reject a zero length, a length over 8 and (for unsigned) the sign bit;
        # the three reserved bits 0x70 are ignored.
        if size == 0 or size > 8 or (neg and not signed):
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} for {what} at {start}")
        val = int.from_bytes(self.raw(size, what), "little")
        return -val if neg else val

    def uint(self, what: str) -> int:
        return self.int_(what, signed=False)

    def bool_(self, what: str) -> bool:
        start = self.pos
        b = self.byte(what)
        if b == ord("1"):
            return True
        if b == ord("0"):
            return False
        raise DlibFormatError(f"bad bool byte 0x{b:02x} for {what} at {start}")

    def float_(self, what: str, single: bool) -> float:
        self._need(1, what)
        if self.data[self.pos] & 0x70:
            raise DlibFormatError(f"unsupported legacy ASCII float for {what} at {self.pos}")
        mantissa = self.int_(what + " (mantissa)")
        exponent = self.int_(what + " (exponent)")
        if exponent == _EXP_INF:
            return float("inf")
        if exponent == _EXP_NINF:
            return float("-inf")
        if exponent == _EXP_NAN:
            return float("nan")
        if single:
            # dlib does ldexp((float)mantissa, e): round the mantissa to float32 once.
            return float(np.ldexp(np.float32(mantissa), np.int32(exponent)))
        return float(np.ldexp(np.float64(mantissa), exponent))

    def string(self, what: str) -> str:
        n = self.uint(what + " (length)")
        try:
            return self.raw(n, what).decode("ascii")
        except UnicodeDecodeError as exc:
            raise DlibFormatError(f"non-ASCII {what} ending at offset {self.pos}") from exc

    def peek_starts_with_string(self, prefix: str) -> bool:
        """True if a string beginning with prefix comes next (position is restored)."""
        save = self.pos
        try:
            n = self.uint("peek")
            return n >= len(prefix) and self.raw(len(prefix), "peek") == prefix.encode()
        except DlibFormatError:
            return False
        finally:
            self.pos = save

    def _dims(self, what: str) -> tuple[int, int, int, int]:
        n, k, nr, nc = (self.int_(f"{what} dim") for _ in range(4))
        dims = (n, k, nr, nc)
        if any(d < 0 or d > _MAX_TENSOR_DIM for d in dims):
            raise DlibFormatError(f"bad tensor dims {dims} for {what}")
        return dims

    def tensor(self, what: str) -> np.ndarray:
        v = self.int_(what + " version")
        if v != 2:
            raise DlibFormatError(f"unexpected resizable_tensor version {v} for {what}")
        dims = self._dims(what)
        count = int(np.prod(dims, dtype=np.int64))
        buf = self.raw(4 * count, what + " data")
        # astype copies: own, writable, aligned memory (torch.from_numpy wants writable)
        return np.frombuffer(buf, dtype="<f4").astype(np.float32).reshape(dims)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        v = self.int_(what + " version")
        if v != 1:
            raise DlibFormatError(f"unexpected alias_tensor version {v} for {what}")
        return self._dims(what)


def _split(params: np.ndarray, shapes: list[tuple[int, ...]], what: str) -> list[np.ndarray]:
    """Cut a flat dlib params tensor into consecutive alias views."""
    flat = params.reshape(-1)
    sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
    if sum(sizes) != flat.size:
        raise DlibFormatError(
            f"{what}: params has {flat.size} values but aliases {shapes} need {sum(sizes)}"
        )
    out, off = [], 0
    for s, n in zip(shapes, sizes, strict=True):
        out.append(flat[off : off + n].reshape(s).copy())
        off += n
    return out


# --------------------------------------------------------------------------------------
# Layer details


def _read_input(s: _Stream) -> InputRGBImage:
    tag = s.string("input layer version")
    if tag not in ("input_rgb_image", "input_rgb_image_sized"):
        raise UnsupportedLayerError(f"unsupported input layer {tag!r}")
    r, g, b = (s.float_(f"{tag} mean", single=True) for _ in range(3))
    nr: int | None = None
    nc: int | None = None
    if tag == "input_rgb_image_sized":
        nr, nc = s.uint("input nr"), s.uint("input nc")
    return InputRGBImage(tag, (r, g, b), nr, nc)


def _read_con(s: _Stream, tag: str) -> Con:
    params = s.tensor("con params")
    num_filters = s.int_("con num_filters")
    nr, nc = s.int_("con nr"), s.int_("con nc")
    stride_y, stride_x = s.int_("con stride_y"), s.int_("con stride_x")
    padding_y, padding_x = s.int_("con padding_y"), s.int_("con padding_x")
    filt = s.alias("con filters")
    bias_alias = s.alias("con biases")
    for name in ("lr mult", "wd mult", "bias lr mult", "bias wd mult"):
        s.float_(f"con {name}", single=False)
    # con_4 predates the use_bias flag and always had biases.
    use_bias = s.bool_("con use_bias") if tag in ("con_5", "con_6") else True
    use_relu = s.bool_("con use_relu") if tag == "con_6" else False
    if filt != (num_filters, filt[1], nr, nc):
        raise DlibFormatError(f"con filters alias {filt} inconsistent with {num_filters}x{nr}x{nc}")
    if use_bias:
        weight, bias = _split(params, [filt, (num_filters,)], "con")
        if bias_alias[1] != num_filters:
            raise DlibFormatError(f"con bias alias {bias_alias} != {num_filters} filters")
    else:
        (weight,), bias = _split(params, [filt], "con"), None
    return Con(
        tag,
        num_filters,
        nr,
        nc,
        stride_y,
        stride_x,
        padding_y,
        padding_x,
        use_bias,
        use_relu,
        weight,
        bias,
    )


def _read_affine(s: _Stream, tag: str) -> Affine:
    params = s.tensor("affine params")
    g = s.alias("affine gamma")
    b = s.alias("affine beta")
    mode_i = s.int_("affine mode")
    disabled = s.bool_("affine disabled") if tag == "affine_2" else False
    if mode_i not in (0, 1):
        raise DlibFormatError(f"affine mode {mode_i} is neither CONV_MODE(0) nor FC_MODE(1)")
    if g != b:
        raise DlibFormatError(f"affine gamma {g} and beta {b} differ in shape")
    # conv mode: gamma is (1, k, 1, 1); fc mode: (1, k, nr, nc)
    shape = (g[1],) if mode_i == 0 else g[1:]
    gamma, beta = _split(params, [shape, shape], "affine")
    return Affine(tag, "conv" if mode_i == 0 else "fc", disabled, gamma, beta)


def _read_relu(s: _Stream, tag: str) -> Relu:
    return Relu(tag, s.bool_("relu disabled") if tag == "relu_2" else False)


def _read_pool(s: _Stream, tag: str) -> Pool:
    vals = [s.int_(f"{tag} {n}") for n in ("nr", "nc", "stride_y", "stride_x", "pad_y", "pad_x")]
    return Pool(tag, "max" if tag.startswith("max") else "avg", *vals)


def _read_fc(s: _Stream, tag: str) -> Fc:
    num_outputs = s.uint("fc num_outputs")
    num_inputs = s.uint("fc num_inputs")
    params = s.tensor("fc params")
    w = s.alias("fc weights")
    s.alias("fc biases")
    bias_mode = s.int_("fc bias_mode")
    for name in ("lr mult", "wd mult", "bias lr mult", "bias wd mult"):
        s.float_(f"fc {name}", single=False)
    use_bias = s.bool_("fc use_bias") if tag == "fc_3" else True
    if bias_mode not in (0, 1):
        raise DlibFormatError(f"fc bias_mode {bias_mode} is neither FC_HAS_BIAS nor FC_NO_BIAS")
    has_bias = bias_mode == 0
    if w[:2] != (num_inputs, num_outputs):
        raise DlibFormatError(f"fc weights alias {w} != ({num_inputs}, {num_outputs})")
    if has_bias:
        weight, bias = _split(params, [w[:2], (num_outputs,)], "fc")
    else:
        (weight,), bias = _split(params, [w[:2]], "fc"), None
    return Fc(tag, num_outputs, num_inputs, has_bias, has_bias and use_bias, weight, bias)


def _read_details(s: _Stream) -> DlibLayer:
    start = s.pos
    tag = s.string("layer version")
    if tag in ("con_4", "con_5", "con_6"):
        return _read_con(s, tag)
    if tag in ("affine_", "affine_2"):
        return _read_affine(s, tag)
    if tag in ("relu_", "relu_2"):
        return _read_relu(s, tag)
    if tag in ("max_pool_2", "avg_pool_2"):
        return _read_pool(s, tag)
    if tag in ("fc_2", "fc_3"):
        return _read_fc(s, tag)
    if tag == "add_prev_":
        return AddPrev(tag)
    raise UnsupportedLayerError(f"unsupported layer version tag {tag!r} at offset {start}")


def _read_loss(s: _Stream) -> LossMetric:
    tag = s.string("loss version")
    if tag == "loss_metric_":
        return LossMetric(tag, 0.1, 0.75)  # hard-coded in that old version
    if tag == "loss_metric_2":
        return LossMetric(tag, s.float_("margin", True), s.float_("dist_thresh", True))
    raise UnsupportedLayerError(f"unsupported loss layer {tag!r}")


def _skip_add_layer_state(s: _Stream, version: int, over_input: bool) -> None:
    """Training state an add_layer stores after its details; irrelevant for inference."""
    for name in ("setup_called", "grad_stale", "grad_disabled"):
        s.bool_(f"add_layer {name}")
    s.tensor("add_layer x_grad")
    s.tensor("add_layer cached_output")
    if over_input:
        s.tensor("add_layer grad_final")
        if version >= 3:
            s.uint("add_layer sample_expansion_factor")
    elif version >= 2:
        s.tensor("add_layer params_grad")


# --------------------------------------------------------------------------------------
# Public API


def parse_dlib_net(data: bytes) -> DlibNet:
    """Parse a serialized ``add_loss_layer<...>`` network from bytes."""
    s = _Stream(bytes(data))
    v = s.int_("loss layer version")
    if v != 1:
        raise DlibFormatError(f"unexpected add_loss_layer version {v} (expected 1)")
    loss = _read_loss(s)

    # Walk down the version chain: 2 = add_layer, 1 = tag/skip; the add_layer sitting on
    # the input layer (version 2 or 3) is recognised by the "input..." string after it.
    # (A dlib < 19.2 add_layer of version 1 would be misread as a tag; those files are
    # not supported.)
    chain: list[int] = []
    while True:
        v = s.int_("layer version")
        if v in (2, 3) and s.peek_starts_with_string("input"):
            input_version = v
            break
        if v not in (1, 2):
            raise DlibFormatError(f"unexpected layer version {v} at depth {len(chain)}")
        chain.append(v)
        if len(chain) > _MAX_CHAIN:
            raise DlibFormatError("layer chain too deep; not a dlib network file?")

    layers: list[DlibLayer] = [_read_input(s), _read_details(s)]
    _skip_add_layer_state(s, input_version, over_input=True)
    for v in reversed(chain):
        if v == 1:
            layers.append(TagOrSkip("tag_or_skip"))
        else:
            layers.append(_read_details(s))
            _skip_add_layer_state(s, v, over_input=False)

    if s.pos != len(s.data):
        raise DlibFormatError(f"{len(s.data) - s.pos} unexpected trailing byte(s) at {s.pos}")
    return DlibNet(loss, tuple(layers), len(s.data))


def read_dlib_net(path: str | os.PathLike[str]) -> DlibNet:
    """Read a dlib DNN ``.dat`` file (e.g. dlib_face_recognition_resnet_model_v1.dat)."""
    p = Path(path)
    try:
        return parse_dlib_net(p.read_bytes())
    except DlibFormatError as exc:
        raise type(exc)(f"{p}: {exc}") from None
