"""Build the default embedder version from the files that PyPI packages ship.

``facestream models bootstrap`` runs this: dlib's CC0 ResNet (``face_recognition_models``)
is read, ported to torch, exported to ONNX with a dynamic batch, and registered with a
manifest. The same inputs always give the same version id, so two machines that
bootstrap independently agree on which embeddings are comparable.
"""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from pipeline.face.align import dlib_chip_template
from pipeline.face.manifest import (
    ModelManifest,
    OpenSetCurve,
    Preprocessing,
    Threshold,
    file_entry,
    sha256_file,
    version_digest,
    write_manifest,
)
from pipeline.face.packaged_models import RESNET_V1, packaged_model
from pipeline.files import private_umask
from pipeline.models.store import ModelStore

log = logging.getLogger(__name__)

# The default version's open-set curve, measured on LFW-dev's calibration split (numbers
# and provenance only). Regenerate: see ``ShippedCurve.regenerate`` in the file.
DEFAULT_OPEN_SET = Path(__file__).with_name("default_open_set.json")
DEFAULT_NAME = "dlib-resnet-v1"
DEFAULT_TTA = "flip"
# dlib documents 0.6 Euclidean distance between its raw descriptors as "same person".
# Raw descriptors have a norm of about 1.43 (measured on LFW faces), so on unit vectors that
# is a distance of 0.6 / 1.43 and a cosine of 1 - (0.6 / 1.43)**2 / 2 = 0.912.
# `facestream calibrate` replaces this with a threshold measured at a target FAR. It is the
# per-comparison threshold (1:1 verification); 1:N searches use the shipped open-set curve.
DLIB_RAW_NORM = 1.43
DLIB_DOC_THRESHOLD = 1.0 - (0.6 / DLIB_RAW_NORM) ** 2 / 2.0


def default_preprocessing(tta: str = DEFAULT_TTA) -> Preprocessing:
    # Imported here: the port imports torch, which the gallery (that imports this module
    # for the shipped curve) must not pay for.
    from pipeline.nets.dlib_resnet import DLIB_RGB_MEAN, DLIB_RGB_STD

    return Preprocessing(
        input_size=(150, 150),
        colour_order="RGB",
        layout="NCHW",
        mean=DLIB_RGB_MEAN,
        std=(DLIB_RGB_STD, DLIB_RGB_STD, DLIB_RGB_STD),
        tta=tta,
    )


# Owner-only, like all local data (pipeline.files): what torch, ONNX and shutil write
# meanwhile gets the umask's mode.
@private_umask()
def bootstrap_default(
    store: ModelStore, *, tta: str = DEFAULT_TTA, activate: bool = True
) -> ModelManifest:
    """Build (or rebuild) the default dlib ResNet version in ``store``; return its manifest."""
    import torch

    from pipeline.nets.dlib_resnet import load_dlib_resnet
    from pipeline.nets.onnx_export import export_onnx

    dat = packaged_model(RESNET_V1)
    dat_sha = sha256_file(dat)
    pre = default_preprocessing(tta)
    template = dlib_chip_template(150, 0.25)
    version = f"{DEFAULT_NAME}-{version_digest(dat_sha, pre, template)}"

    with store.building(version) as scratch:
        shutil.copyfile(dat, scratch / RESNET_V1)
        model = load_dlib_resnet(dat)
        torch.save(model.state_dict(), scratch / "model.pt")
        export_onnx(model, scratch / "model.onnx")
        manifest = ModelManifest(
            name=DEFAULT_NAME,
            version=version,
            format="onnx",
            files={
                "onnx": file_entry(scratch / "model.onnx"),
                "torch": file_entry(scratch / "model.pt"),
                "dlib": file_entry(scratch / RESNET_V1),
            },
            source={
                "package": "face_recognition_models",
                "file": RESNET_V1,
                "sha256": dat_sha,
                "licence": "CC0 / public domain (Davis King, dlib)",
                "architecture": "dlib ResNet-29 metric network, 128-d (dnn_face_recognition_ex)",
            },
            preprocessing=pre,
            alignment=template,
            embedding_dim=128,
            threshold=Threshold(
                value=round(DLIB_DOC_THRESHOLD, 4),
                provenance="dlib's documented 0.6 Euclidean distance at raw norm 1.43, as cosine; "
                "not calibrated (run `facestream calibrate`)",
                open_set=shipped_open_set(version),
            ),
            created_by="facestream models bootstrap",
        )
        store.publish(scratch, manifest)
    if activate:
        store.set_active(version)
    return manifest


class ShippedCurve(BaseModel):
    """``default_open_set.json``: the open-set curve the default version ships with."""

    model_version: str = Field(description="The version whose embeddings it was measured on.")
    data_set: str
    regenerate: str = Field(description="The command that rewrites this file.")
    open_set: OpenSetCurve
    detail: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Per gallery size: threshold, point estimate and upper bound of the FAR.",
    )


def load_shipped_curve(path: Path = DEFAULT_OPEN_SET) -> ShippedCurve | None:
    if not path.is_file():
        return None
    return _parse_shipped(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _parse_shipped(path: Path, mtime_ns: int) -> ShippedCurve:
    # Cached: searches of a version without a curve ask for it every time.
    return ShippedCurve.model_validate_json(path.read_text())


def shipped_open_set(version: str, path: Path = DEFAULT_OPEN_SET) -> OpenSetCurve | None:
    """The shipped curve when it was measured on ``version`` (a curve holds only for the
    embeddings it was measured on: the plain-TTA build, or a trained one, has none)."""
    shipped = load_shipped_curve(path)
    return shipped.open_set if shipped is not None and shipped.model_version == version else None


def upgrade_default_threshold(
    store: ModelStore, version: str, threshold: Threshold, path: Path = DEFAULT_OPEN_SET
) -> Threshold:
    """``threshold`` with the shipped open-set curve added when the version is the one it
    was measured on and has none; written into the manifest in place (the version id
    stays: the threshold is a decision rule, not part of what makes embeddings comparable).
    A read-only store still gets the curve, in memory."""
    curve = shipped_open_set(version, path)
    if curve is None or threshold.open_set is not None:
        return threshold
    upgraded = threshold.model_copy(update={"open_set": curve})
    try:
        manifest = store.manifest(version)
        if manifest.threshold.open_set is None:
            new = manifest.model_copy(update={"threshold": upgraded})
            write_manifest(store.folder(version), new)
            log.info("model %s: added the shipped open-set curve to its manifest", version)
    except OSError as exc:
        log.warning("model %s: open-set curve not written into the manifest: %s", version, exc)
    return upgraded


def add_shipped_curves(store: ModelStore, path: Path = DEFAULT_OPEN_SET) -> dict[str, Threshold]:
    """Start-up, once per process that opens a gallery: a store bootstrapped before the
    default model shipped calibrated gets the shipped curve in its manifest, so that no
    search has to add it. Returns what could only be kept in memory (a read-only store):
    version -> its threshold with the curve."""
    shipped = load_shipped_curve(path)
    if shipped is None or shipped.model_version not in store.versions():
        return {}
    version = shipped.model_version
    threshold = store.manifest(version).threshold
    if threshold.open_set is not None:
        return {}
    upgraded = upgrade_default_threshold(store, version, threshold, path)
    if store.manifest(version).threshold.open_set is not None:
        return {}
    return {version: upgraded}
