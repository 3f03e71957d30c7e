"""Turn trained weights into a model version, the way ``nets/bootstrap.py`` builds the
default one.

1. ``stage_version``: in a scratch folder inside the store (invisible to
   ``ModelStore.versions()``: no manifest yet), write ``model.pt`` and ``model.onnx``
   (dynamic batch), and check ONNX Runtime against torch on real chips.
2. The caller evaluates the staged ONNX model as production would run it
   (``StagedVersion.embedder()``) and calibrates its threshold.
3. ``StagedVersion.commit``: write the manifest (same preprocessing and alignment as the
   parent, lineage, threshold) and rename the folder into place. A crash at any point
   before the rename leaves no half-version behind.

The version id is ``version_digest`` over the weights' digest, the preprocessing and
the alignment, so it names the numbers: the same weights always get the same id.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import FacestreamError
from pipeline.face.embed import Embedder
from pipeline.face.manifest import (
    MANIFEST_NAME,
    ModelManifest,
    Threshold,
    file_entry,
    read_manifest,
    version_digest,
)
from pipeline.files import private_dir, private_umask
from pipeline.models.store import ModelStore
from pipeline.nets.dlib_resnet import DlibResNet
from pipeline.nets.onnx_export import export_onnx
from pipeline.train.model import chips_to_input, state_dict_digest

FINETUNE_SUFFIX = "-ft"
PARITY_MIN_COSINE = 0.9999


class ExportError(FacestreamError):
    code = "export_failed"


def finetune_name(parent: ModelManifest) -> str:
    return parent.name if parent.name.endswith(FINETUNE_SUFFIX) else parent.name + FINETUNE_SUFFIX


def onnx_parity(
    model: DlibResNet, onnx_path: Path, chips: np.ndarray, parent: ModelManifest
) -> dict[str, float]:
    """Raw outputs of ONNX Runtime vs torch on ``chips``: min cosine and max |diff|."""
    from pipeline.runtime.onnx_backend import OrtBackend

    ort = np.asarray(OrtBackend(onnx_path, parent.preprocessing)(chips), dtype=np.float64)
    model.eval()
    with torch.no_grad():
        ref = model(chips_to_input(chips, parent.preprocessing)).double().numpy()
    cos = (ort * ref).sum(1) / (np.linalg.norm(ort, axis=1) * np.linalg.norm(ref, axis=1))
    return {
        "n": len(chips),
        "min_cosine": float(cos.min()),
        "max_abs_diff": float(np.abs(ort - ref).max()),
    }


@dataclass
class StagedVersion:
    store: ModelStore
    parent: ModelManifest
    scratch: Path
    draft: ModelManifest  # files and id filled in; threshold and lineage provisional
    parity: dict[str, float]

    @property
    def version(self) -> str:
        return self.draft.version

    def embedder(self, batch_size: int = 32, intra_op_threads: int = 0) -> Embedder:
        """The staged model run as production runs it (ONNX Runtime, manifest TTA)."""
        from pipeline.runtime.onnx_backend import OrtBackend

        backend = OrtBackend(
            self.draft.file_path(self.scratch, "onnx"),
            self.draft.preprocessing,
            intra_op_threads=intra_op_threads,
        )
        return Embedder(self.draft, backend, batch_size)

    @private_umask()
    def commit(self, threshold: Threshold, lineage: dict[str, Any]) -> ModelManifest:
        """Write the manifest and move the version into the store."""
        manifest = self.draft.model_copy(update={"threshold": threshold, "lineage": lineage})
        (self.scratch / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        final = self.store.folder(manifest.version)
        if final.exists():
            # Same id = same weights and preprocessing: the version already exists (maybe
            # active and serving); never replace it under the readers' feet.
            self.discard()
            return read_manifest(final)
        self.scratch.rename(final)
        return manifest

    def discard(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


# Owner-only, like all local data (pipeline.files): a trained model is derived from the
# training faces; torch and ONNX write their files with the umask's mode.
@private_umask()
def stage_version(
    store: ModelStore,
    parent: ModelManifest,
    model: DlibResNet,
    parity_chips: np.ndarray,
    *,
    source_extra: dict[str, str] | None = None,
) -> StagedVersion:
    """Export ``model`` next to the store and check parity; see the module docstring."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    weights_sha = state_dict_digest(state)
    name = finetune_name(parent)
    version = f"{name}-{version_digest(weights_sha, parent.preprocessing, parent.alignment)}"
    private_dir(store.root)
    scratch = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=store.root))
    try:
        torch.save(state, scratch / "model.pt")
        export_onnx(model, scratch / "model.onnx")
        parity = onnx_parity(model, scratch / "model.onnx", parity_chips, parent)
        if parity["min_cosine"] < PARITY_MIN_COSINE:
            raise ExportError(
                f"ONNX export of {version} disagrees with torch: min cosine "
                f"{parity['min_cosine']:.6f} < {PARITY_MIN_COSINE} on {parity['n']} chips"
            )
        source = {
            "architecture": parent.source.get("architecture", "dlib ResNet"),
            "licence": f"derived from {parent.version} ({parent.source.get('licence', '?')}) "
            "by fine-tuning; the training data's terms also apply",
            "base": parent.version,
            "weights_digest": weights_sha,
            **(source_extra or {}),
        }
        draft = ModelManifest(
            name=name,
            version=version,
            format="onnx",
            files={
                "onnx": file_entry(scratch / "model.onnx"),
                "torch": file_entry(scratch / "model.pt"),
            },
            source=source,
            preprocessing=parent.preprocessing,
            alignment=parent.alignment,
            embedding_dim=parent.embedding_dim,
            threshold=parent.threshold,
            parent=parent.version,
            created_by="facestream train " + dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return StagedVersion(store, parent, scratch, draft, parity)
