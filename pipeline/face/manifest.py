"""The model manifest: everything needed to reproduce an embedding of a model version.

Two embeddings are comparable only when made by the same weights with the same
preprocessing, so the version id is a digest over both (see ``version_digest``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from pipeline.face.align import AlignmentTemplate
from pipeline.face.errors import ModelError
from pipeline.files import write_private

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


class OpenSetCurve(BaseModel):
    """Threshold as a function of the gallery's size, for a target stranger false-accept rate.

    A stranger is compared with every enrolled face and is falsely accepted when the best
    of those N similarities reaches the threshold, so one per-comparison threshold lets
    more strangers in as the gallery grows. Each point holds the threshold that keeps the
    stranger FAR at or below ``target_far`` for a gallery of ``gallery_faces`` faces.
    """

    points: list[tuple[int, float]] = Field(
        min_length=1,
        description="(gallery_faces, threshold), gallery_faces ascending; a gallery between "
        "two points takes the threshold of the next larger one.",
    )
    target_far: float = Field(gt=0.0, lt=1.0, description="Stranger false-accept rate.")
    confidence: float = Field(
        gt=0.0, lt=1.0, description="Confidence of the upper bound on the FAR (e.g. 0.95)."
    )
    measured_up_to: int = Field(
        gt=0,
        description="Largest gallery the calibration data can measure (its number of faces); "
        "larger galleries hold the last threshold, flagged as extrapolated.",
    )
    method: str
    provenance: str

    @model_validator(mode="after")
    def _ascending(self) -> OpenSetCurve:
        sizes = [n for n, _ in self.points]
        if sizes != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError("open_set points need distinct gallery sizes >= 1, ascending")
        if any(not -1.0 <= t <= 1.0 for _, t in self.points):
            raise ValueError("open_set thresholds must be cosines in [-1, 1]")
        if sizes[-1] != self.measured_up_to:
            raise ValueError("the last open_set point must be at measured_up_to")
        return self

    def at(self, gallery_faces: int) -> tuple[float, bool]:
        """(threshold, extrapolated) for a gallery of ``gallery_faces`` faces.

        Between two points the larger gallery's threshold applies: the stranger FAR only
        grows with the gallery, so that one still meets the target (interpolating would
        not guarantee it)."""
        n = max(1, gallery_faces)
        for size, t in self.points:
            if size >= n:
                return t, False
        return self.points[-1][1], True


class Threshold(BaseModel):
    """Cosine-similarity threshold of the open-set decision, with where it came from.

    ``value`` is per comparison (1:1 verification, and 1:N search when there is no
    ``open_set`` curve); ``open_set`` derives the 1:N threshold from the gallery's size.
    """

    value: float = Field(ge=-1.0, le=1.0)
    metric: Literal["cosine"] = "cosine"
    target_far: float | None = None
    provenance: str
    open_set: OpenSetCurve | None = None


class ModelManifest(BaseModel):
    name: str
    version: str
    kind: Literal["embedder"] = "embedder"
    format: Literal["onnx", "dlib"] = Field(
        description="'onnx': run by ONNX Runtime or TensorRT; 'dlib': dlib's own runtime."
    )
    precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="Numbers of the network: 'int8' is a static quantisation of its parent "
        "(a version of its own: its vectors are never compared with the parent's).",
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


def write_manifest(folder: Path, manifest: ModelManifest) -> None:
    """Replace a version's manifest atomically (readers see the old or the new one)."""
    path = folder / MANIFEST_NAME
    tmp = path.with_name(f".{MANIFEST_NAME}.{os.getpid()}.tmp")
    write_private(tmp, manifest.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)


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
