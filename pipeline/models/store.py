"""The model store on disk: one folder per model version, and the active version.

```
models/
  ACTIVE                    the active embedder version (one line)
  <version>/manifest.json   see pipeline.face.manifest.ModelManifest
  <version>/model.onnx ...  build outputs (never committed)
```
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pipeline.face.embed import Backend, Embedder
from pipeline.face.errors import ModelError
from pipeline.face.manifest import MANIFEST_NAME, ModelManifest, read_manifest, verify_files
from pipeline.files import private_dir, write_private

ACTIVE_FILE = "ACTIVE"
BackendName = Literal["auto", "onnxruntime", "dlib", "tensorrt"]
# A version id is one plain folder name: what the store makes (``<name>-<8 hex digits>``,
# names like ``dlib-resnet-v1-ft``) and short hand-made ones. No separator, no leading dot
# (the store's scratch folders start with one), 128 characters at most (the width of the
# model_version column of a face collection).
VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_version_id(version: str) -> str:
    """``version`` when it is a valid model version id, else ``ModelError``.

    Versions come from places others may write (a Milvus collection's properties, the
    ACTIVE file, requests) and each becomes a folder of the store: an id like
    ``../elsewhere`` or ``/tmp/x`` would load a model from outside it."""
    if not isinstance(version, str) or not VERSION_ID.fullmatch(version) or ".." in version:
        raise ModelError(
            f"invalid model version id {version!r}: expected a plain name of letters, digits, "
            "'.', '_' and '-' (no '..', no path), starting with a letter or digit, at most "
            "128 characters"
        )
    return version


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, version: str) -> Path:
        # Every path of a version goes through here.
        return self.root / check_version_id(version)

    @contextlib.contextmanager
    def building(self, label: str) -> Iterator[Path]:
        """A scratch folder in the store for a version being built; :meth:`publish`
        turns it into the version, else it is removed. A crash never leaves a
        half-written version that looks valid."""
        private_dir(self.root)
        scratch = Path(tempfile.mkdtemp(prefix=f".{label}.", dir=self.root))
        try:
            yield scratch
        finally:
            if scratch.exists():
                shutil.rmtree(scratch)

    def publish(self, scratch: Path, manifest: ModelManifest) -> None:
        """Write ``manifest`` into ``scratch`` (from :meth:`building`) and rename it to
        the version's folder, replacing an older build of the same version."""
        (scratch / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
        final = self.folder(manifest.version)
        if final.exists():
            shutil.rmtree(final)
        scratch.rename(final)

    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST_NAME).is_file())

    def manifest(self, version: str) -> ModelManifest:
        folder = self.folder(version)
        if not folder.is_dir():
            known = ", ".join(self.versions()) or "none; run `facestream models bootstrap`"
            raise ModelError(f"unknown model version {version!r} in {self.root} (known: {known})")
        return read_manifest(folder)

    def active_version(self) -> str:
        path = self.root / ACTIVE_FILE
        if not path.is_file():
            raise ModelError(
                f"no active model in {self.root}; run `facestream models bootstrap` first"
            )
        return path.read_text().strip()

    def set_active(self, version: str) -> None:
        self.manifest(version)  # refuse unknown versions
        private_dir(self.root)
        tmp = self.root / f".{ACTIVE_FILE}.tmp"
        write_private(tmp, version + "\n")
        os.replace(tmp, self.root / ACTIVE_FILE)  # atomic flip

    def resolve(self, version: str | None) -> ModelManifest:
        return self.manifest(version or self.active_version())

    def load_embedder(
        self,
        version: str | None = None,
        *,
        backend: BackendName = "auto",
        batch_size: int = 32,
        intra_op_threads: int = 0,
        verify: bool = True,
    ) -> Embedder:
        manifest = self.resolve(version)
        folder = self.folder(manifest.version)
        if verify:
            verify_files(manifest, folder)
        return Embedder(
            manifest, self._backend(manifest, folder, backend, intra_op_threads), batch_size
        )

    @staticmethod
    def _backend(
        manifest: ModelManifest, folder: Path, backend: BackendName, intra_op_threads: int
    ) -> Backend:
        if backend == "auto":
            backend = "onnxruntime" if "onnx" in manifest.files else "dlib"
        if backend == "onnxruntime":
            from pipeline.runtime.onnx_backend import OrtBackend

            return OrtBackend(
                manifest.file_path(folder, "onnx"),
                manifest.preprocessing,
                intra_op_threads=intra_op_threads,
            )
        if backend == "dlib":
            from pipeline.runtime.dlib_backend import DlibBackend

            return DlibBackend(manifest.file_path(folder, "dlib"))
        if backend == "tensorrt":
            from pipeline.runtime.tensorrt_backend import TensorRTBackend

            return TensorRTBackend(manifest.file_path(folder, "onnx"), manifest.preprocessing)
        raise ModelError(f"unknown backend {backend!r}")
