"""Stored aligned face crops: the input of every re-embed when the model changes.

Crops are lossless PNG, so re-embedding with the same model reproduces the enrolled
vector exactly. They are stored in the catalogue database (``catalogue.py`` says why);
this module only encodes and checks them.
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from pipeline.gallery.errors import GalleryError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def encode_crop(chip: np.ndarray, face_id: str) -> tuple[bytes, str]:
    """``chip`` (RGB uint8) as PNG bytes, and their sha256."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(chip, cv2.COLOR_RGB2BGR))
    if not ok:
        raise GalleryError(f"cannot encode the crop of face {face_id}")
    data = png.tobytes()
    return data, hashlib.sha256(data).hexdigest()


def decode_crop(data: bytes, sha256: str, face_id: str) -> np.ndarray:
    """The RGB chip of a stored crop, refused when it does not match its digest."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise GalleryError(f"stored crop of face {face_id} is corrupt (sha256 mismatch)")
    # Crops are only ever written as PNG; imdecode would run whichever of OpenCV's
    # decoders the bytes ask for (a row rewritten in the catalogue carries its own digest).
    if not data.startswith(PNG_SIGNATURE):
        raise GalleryError(f"stored crop of face {face_id} is not a PNG")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise GalleryError(f"stored crop of face {face_id} is undecodable")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
