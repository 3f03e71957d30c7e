"""TensorRT backend (GPU): builds an FP16 engine from the version's ONNX file and runs it.

Written against the TensorRT 10 Python API. TensorRT cannot be installed on the CPU
development machines (its wheels come from NVIDIA's own index), so this module is
exercised by tests/gpu, which skip without CUDA and the ``tensorrt`` package.

Engines are specific to the GPU model and the TensorRT version, so the cached engine's
file name carries both; it is a build output beside the ONNX file, never committed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.face.embed import to_tensor
from pipeline.face.errors import ModelError
from pipeline.face.manifest import Preprocessing

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


def _import_tensorrt() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
        import torch
    except ImportError as exc:
        raise ModelError(
            "the TensorRT backend needs the 'tensorrt' package and a CUDA build of torch "
            f"({exc}); use the onnxruntime backend on machines without a GPU"
        ) from exc
    if not torch.cuda.is_available():
        raise ModelError("the TensorRT backend needs a CUDA GPU; none is visible")
    return trt, torch


def engine_path(onnx_path: Path, fp16: bool, max_batch: int) -> Path:
    trt, torch = _import_tensorrt()
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    precision = "fp16" if fp16 else "fp32"
    return onnx_path.with_name(
        f"{onnx_path.stem}.{gpu}.trt{trt.__version__}.{precision}.b{max_batch}.engine"
    )


def build_engine(
    onnx_path: Path, preprocessing: Preprocessing, *, fp16: bool, max_batch: int
) -> bytes:
    """Parse the ONNX file and build a serialized engine with a dynamic batch profile."""
    trt, _ = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    w, h = preprocessing.input_size
    chw = (3, h, w) if preprocessing.layout == "NCHW" else (h, w, 3)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *chw), (max(1, max_batch // 2), *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelError(f"TensorRT failed to build an engine from {onnx_path}")
    return bytes(serialized)


class TensorRTBackend:
    """Runs the embedder on the GPU in batches of at most ``max_batch`` chips."""

    def __init__(
        self,
        onnx_path: Path,
        preprocessing: Preprocessing,
        *,
        fp16: bool = True,
        max_batch: int = 64,
    ) -> None:
        trt, torch = _import_tensorrt()
        self._torch = torch
        self._pre = preprocessing
        self.max_batch = max_batch
        cached = engine_path(onnx_path, fp16, max_batch)
        if cached.is_file():
            blob = cached.read_bytes()
        else:
            blob = build_engine(onnx_path, preprocessing, fp16=fp16, max_batch=max_batch)
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(blob)
            tmp.replace(cached)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise ModelError(f"TensorRT could not load the engine {cached}; delete it to rebuild")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        outs = [
            self._run(chips[i : i + self.max_batch]) for i in range(0, len(chips), self.max_batch)
        ]
        return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)

    def _run(self, chips: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(to_tensor(chips, self._pre)).cuda(non_blocking=True)
        self._context.set_input_shape(INPUT_NAME, tuple(x.shape))
        out_shape = tuple(self._context.get_tensor_shape(OUTPUT_NAME))
        y = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self._context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self._context.set_tensor_address(OUTPUT_NAME, y.data_ptr())
        # the copy above ran on the default stream; the engine must see it finished
        self._stream.wait_stream(torch.cuda.current_stream())
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise ModelError("TensorRT execution failed")
        self._stream.synchronize()
        return y.cpu().numpy()
