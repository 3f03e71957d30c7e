"""The model manifest: everything needed to reproduce an embedding of a model version.

Two embeddings are comparable only when made by the same weights with the same
preprocessing, so the version id is a digest over both (see ``version_digest``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from pipeline.face.align import AlignmentTemplate
from pipeline.face.errors import ModelError

MANIFEST_NAME = "manifest.json"


class FileEntry(BaseModel):
    path: str = Field(description="File name, relative to the version's folder.")
    sha256: str
    bytes: int


class Preprocessing(BaseModel):
    """How an aligned uint8 chip becomes the network's input tensor."""

    input_size: tuple[int, int] = Field(description="(width, height) of the network input.")
    colour_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    mean: tuple[float, float, float] = Field(description="Subtracted per channel (0-255 scale).")
    std: tuple[float, float, float] = Field(description="Divides per channel after the mean.")
    tta: Literal["none", "flip"] = Field(
        "none",
        description="Test-time augmentation: 'flip' averages the embeddings of the chip and "
        "its mirror image before L2 normalisation.",
    )


class Threshold(BaseModel):
    """Cosine-similarity threshold of the open-set decision, with where it came from."""

    value: float = Field(ge=-1.0, le=1.0)
    metric: Literal["cosine"] = "cosine"
    target_far: float | None = None
    provenance: str


class ModelManifest(BaseModel):
    name: str
    version: str
    kind: Literal["embedder"] = "embedder"
    format: Literal["onnx", "dlib"] = Field(
        description="'onnx': run by ONNX Runtime or TensorRT; 'dlib': dlib's own runtime."
    )
    files: dict[str, FileEntry] = Field(description="Role -> file, e.g. 'onnx', 'torch', 'dlib'.")
    source: dict[str, str] = Field(default_factory=dict, description="Origin and licence.")
    preprocessing: Preprocessing
    alignment: AlignmentTemplate
    embedding_dim: int = Field(gt=0)
    threshold: Threshold
    parent: str | None = None
    lineage: dict[str, object] = Field(default_factory=dict)
    created_by: str = ""

    def file_path(self, folder: Path, role: str) -> Path:
        if role not in self.files:
            raise ModelError(
                f"model {self.version} has no {role!r} file (has {sorted(self.files)})"
            )
        return folder / self.files[role].path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(path=path.name, sha256=sha256_file(path), bytes=path.stat().st_size)


def version_digest(
    weights_sha256: str, preprocessing: Preprocessing, alignment: AlignmentTemplate
) -> str:
    """Short digest over the weights and the preprocessing that defines a version."""
    payload = json.dumps(
        {
            "weights": weights_sha256,
            "preprocessing": preprocessing.model_dump(mode="json"),
            "alignment": alignment.model_dump(mode="json", exclude={"source"}),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:8]


def read_manifest(folder: Path) -> ModelManifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ModelError(f"no model manifest at {path}")
    try:
        return ModelManifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise ModelError(f"invalid model manifest {path}: {exc}") from exc


def verify_files(manifest: ModelManifest, folder: Path) -> None:
    """Check every file of the manifest exists with its recorded sha256."""
    for role, entry in manifest.files.items():
        path = folder / entry.path
        if not path.is_file():
            raise ModelError(f"model {manifest.version}: {role} file missing: {path}")
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise ModelError(
                f"model {manifest.version}: {role} file {path} has sha256 {digest[:12]}..., "
                f"manifest says {entry.sha256[:12]}... (corrupt or replaced)"
            )
