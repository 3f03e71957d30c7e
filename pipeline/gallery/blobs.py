"""Stored aligned face crops: the input of every re-embed when the model changes.

Crops are lossless PNG, so re-embedding with the same model reproduces the enrolled
vector exactly. Layout: ``<blob_dir>/<identity_id>/<face_id>.png``; removing an
identity removes its folder, which also catches a crop orphaned by a crash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from pipeline.gallery.errors import GalleryError


class CropStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def put(self, identity_id: str, face_id: str, chip: np.ndarray) -> tuple[str, str]:
        """Write ``chip`` (RGB uint8); return (relative path, sha256 of the PNG)."""
        ok, png = cv2.imencode(".png", cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
        if not ok:
            raise GalleryError(f"cannot encode the crop of face {face_id}")
        data = png.tobytes()
        rel = f"{identity_id}/{face_id}.png"
        final = self.path(rel)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)  # never a half-written crop under the final name
        return rel, hashlib.sha256(data).hexdigest()

    def get(self, rel: str, sha256: str | None = None) -> np.ndarray:
        path = self.path(rel)
        if not path.is_file():
            raise GalleryError(f"stored crop missing: {path}")
        data = path.read_bytes()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise GalleryError(f"stored crop corrupt (sha256 mismatch): {path}")
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise GalleryError(f"stored crop undecodable: {path}")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def delete(self, rel: str) -> bool:
        path = self.path(rel)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def delete_identity(self, identity_id: str) -> int:
        """Remove every crop of the identity; return how many files were removed."""
        folder = self.root / identity_id
        if not folder.is_dir():
            return 0
        n = sum(1 for p in folder.iterdir() if p.is_file())
        shutil.rmtree(folder)
        return n

    def files_of(self, identity_id: str) -> list[Path]:
        folder = self.root / identity_id
        return sorted(folder.iterdir()) if folder.is_dir() else []
