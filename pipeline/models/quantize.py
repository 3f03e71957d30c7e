"""``facestream models quantize``: an INT8 version of an ONNX embedder.

ONNX Runtime's static quantisation (QDQ format, per-channel INT8 weights, activations
calibrated on real aligned faces) turns an FP32 version into a new version of its own:
other weights give other vectors, so the version id is a digest over the INT8 file and
the manifest says ``precision: int8``. Its vectors are never compared with its parent's
(the gallery re-embeds on promotion, as for any version).

Whether the INT8 version may replace its parent is the promotion gate's call, with
``pipeline.models.promotion.QUANTIZED_POLICY`` (no worse than the parent, within
tolerances) instead of the fine-tuning policy (strictly better):
``pipeline.evaluation.precision`` measures both on the same pairs and
:func:`record_evaluation` stores the numbers where the gate reads them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.face.embed import to_tensor
from pipeline.face.errors import ModelError
from pipeline.face.manifest import (
    ModelManifest,
    Preprocessing,
    file_entry,
    version_digest,
    write_manifest,
)
from pipeline.files import private_umask
from pipeline.models.store import ModelStore

INT8_FILE = "model.int8.onnx"


class ChipBatches:
    """ONNX Runtime's ``CalibrationDataReader`` over aligned chips: each batch becomes the
    network's input exactly as the embedder feeds it (``to_tensor``), so the ranges the
    calibrator sees are the ones inference will see. Flip TTA runs the mirrored chip too,
    so the mirror images are calibrated on as well."""

    def __init__(
        self, chips: np.ndarray, pre: Preprocessing, input_name: str, batch: int = 16
    ) -> None:
        if pre.tta == "flip":
            chips = np.concatenate([chips, chips[:, :, ::-1]])
        self._batches: Iterator[np.ndarray] = (
            to_tensor(np.ascontiguousarray(chips[i : i + batch]), pre)
            for i in range(0, len(chips), batch)
        )
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input: batch}


@dataclass(frozen=True)
class Recipe:
    """How the activations' ranges are calibrated, and which layers stay FP32."""

    calibrate: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = 99.99  # of "percentile" only
    keep_fp32: tuple[str, ...] = ()  # op types left unquantised, e.g. ("MatMul",)

    def describe(self) -> dict[str, Any]:
        return {
            "activations": "uint8, "
            + (
                f"percentile {self.percentile:g}"
                if self.calibrate == "percentile"
                else self.calibrate
            ),
            "fp32_ops": list(self.keep_fp32),
        }


# Chosen by fidelity to the FP32 vectors (cosine per face) on 800 LFW-dev faces outside
# pairs.tsv and outside the calibration set, never on the pairs the gate reports: MinMax
# ranges kept the worst faces closest (1st percentile 0.9995; Percentile 99.99: 0.991),
# and the final 256x128 projection left in FP32 closer still (0.9997) for one small
# MatMul. `facestream models quantize --calibrate` offers the others.
DEFAULT_RECIPE = Recipe(calibrate="minmax", keep_fp32=("MatMul",))


def quantize_onnx(
    src: Path, dst: Path, chips: np.ndarray, pre: Preprocessing, recipe: Recipe = DEFAULT_RECIPE
) -> None:
    """Write the static INT8 quantisation of ``src`` to ``dst``, calibrated on ``chips``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(ChipBatches, CalibrationDataReader):  # ORT checks the base class
        pass

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and folding first, as ORT recommends: the quantiser then sees
        # one Conv per layer with known shapes (per-channel scales need them).
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared), load_external_data=False).graph
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }
        quantize_static(
            str(prepared),
            str(dst),
            Reader(chips, pre, graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[recipe.calibrate],
            nodes_to_exclude=[n.name for n in graph.node if n.op_type in recipe.keep_fp32],
            extra_options={"CalibPercentile": recipe.percentile},
        )


@private_umask()
def build_int8_version(
    store: ModelStore,
    chips: np.ndarray,
    *,
    source: str | None = None,
    calibration: dict[str, Any] | None = None,
    recipe: Recipe = DEFAULT_RECIPE,
) -> ModelManifest:
    """Register the INT8 quantisation of ``source`` (default: the active version),
    calibrated on ``chips`` ((n, h, w, 3) uint8 aligned faces), as a new inactive version.
    ``calibration`` (where the chips came from) goes into the lineage."""
    parent = store.resolve(source)
    if "onnx" not in parent.files or parent.precision != "fp32":
        raise ModelError(
            f"model {parent.version} is not an FP32 ONNX version (format {parent.format}, "
            f"precision {parent.precision}): nothing to quantise"
        )
    if len(chips) == 0:
        raise ModelError("no calibration faces: the INT8 scales need real aligned faces")
    with store.building(f"{parent.version}-int8") as scratch:
        src = parent.file_path(store.folder(parent.version), "onnx")
        quantize_onnx(src, scratch / INT8_FILE, chips, parent.preprocessing, recipe)
        entry = file_entry(scratch / INT8_FILE)
        name = f"{parent.name}-int8"
        version = f"{name}-{version_digest(entry.sha256, parent.preprocessing, parent.alignment)}"
        threshold = parent.threshold.model_copy(
            update={
                "provenance": f"inherited from the FP32 parent {parent.version} "
                f"({parent.threshold.provenance}); the INT8 gate bounds the change, "
                "`facestream calibrate` measures it for this version"
            }
        )
        manifest = ModelManifest(
            name=name,
            version=version,
            format="onnx",
            precision="int8",
            files={"onnx": entry},
            source=parent.source,
            preprocessing=parent.preprocessing,
            alignment=parent.alignment,
            embedding_dim=parent.embedding_dim,
            threshold=threshold,
            parent=parent.version,
            lineage={
                "quantization": {
                    "tool": "onnxruntime.quantization.quantize_static",
                    "format": "QDQ",
                    "weights": "int8, per channel",
                    **recipe.describe(),
                    "calibration_faces": len(chips),
                    **(calibration or {}),
                }
            },
            created_by="facestream models quantize",
        )
        store.publish(scratch, manifest)
    return manifest


def record_evaluation(
    store: ModelStore, version: str, digest: str, metrics: dict[str, dict[str, float]]
) -> ModelManifest:
    """Store ``metrics`` (version -> metric -> value, measured on the data ``digest``
    names) in ``version``'s lineage, where the promotion gate reads them."""
    manifest = store.manifest(version)
    lineage = {
        **manifest.lineage,
        "evaluation": {"heldout_digest": digest, "models": metrics},
    }
    updated = manifest.model_copy(update={"lineage": lineage})
    write_manifest(store.folder(version), updated)
    return updated


def quantized_of(store: ModelStore, parent: str) -> list[str]:
    """The INT8 versions in ``store`` made from ``parent``."""
    return [
        v
        for v in store.versions()
        if (m := store.manifest(v)).precision == "int8" and m.parent == parent
    ]


def spread(items: Sequence[Path], n: int) -> list[Path]:
    """``n`` items spread evenly over ``items`` (all of them when there are fewer)."""
    if n >= len(items):
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]
