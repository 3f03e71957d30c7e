"""Export an image-embedding torch module to ONNX with a dynamic batch axis."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "export_onnx"]

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


def _fold_constants(model: onnx.ModelProto) -> None:
    """Evaluate nodes whose inputs are all constants and store their outputs as initializers.

    The classic exporter leaves F.pad's pads computation (ConstantOfShape/Concat/Slice with
    step -1/Transpose/Cast) unfolded; folding it gives Pad nodes with constant pads, which
    TensorRT and graph viewers handle best. Only integer shape arithmetic is affected here.
    """
    g = model.graph
    const: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    kept: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    for node in g.node:  # ONNX node lists are topologically sorted
        ins = [n for n in node.input if n]
        if node.domain in ("", "ai.onnx") and all(n in const for n in ins) and node.output:
            feeds = {n: const[n] for n in ins}
            values = ReferenceEvaluator(node).run(None, feeds)
            for name, value in zip(node.output, values, strict=True):
                const[name] = np.asarray(value)
                folded.append(numpy_helper.from_array(const[name], name))
        else:
            kept.append(node)
    used = {n for node in kept for n in node.input} | {o.name for o in g.output}
    inits = [i for i in list(g.initializer) + folded if i.name in used]
    del g.node[:]
    g.node.extend(kept)
    del g.initializer[:]
    g.initializer.extend(inits)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    opset: int = 17,
    *,
    input_shape: Sequence[int] | None = None,
) -> Path:
    """Write ``model`` to ``path`` as ONNX (input ``input`` N x C x H x W, output ``embedding``).

    ``input_shape`` (C, H, W) defaults to ``model.input_shape``. The batch axis is dynamic.
    Uses the classic TorchScript-based exporter (``dynamo=False``): it is deterministic
    (same bytes on a re-run; tested) and, after constant folding, yields a plain
    Conv/Mul/Add/Relu/Pad/pool graph that ONNX Runtime and TensorRT both take. The file
    is written atomically and checked with onnx.checker.
    """
    shape = tuple(input_shape if input_shape is not None else getattr(model, "input_shape", ()))
    if len(shape) != 3:
        raise ValueError("input_shape (C, H, W) is required for models without .input_shape")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)

    was_training = model.training
    model.eval()
    # Batch 2, not 1: a traced batch of 1 can get specialised into the graph.
    dummy = torch.zeros((2, *shape), dtype=torch.float32)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The classic exporter is deprecated in torch>=2.9 and warns about it.
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            # F.pad's step -1 Slice is not folded by torch; _fold_constants does it below.
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                dynamo=False,
                export_params=True,
                opset_version=opset,
                do_constant_folding=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        proto = onnx.load(str(tmp))
        _fold_constants(proto)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    return out
