"""Stored crops are PNG, and only PNG reaches OpenCV's decoders: a crop row rewritten in
the catalogue (its digest beside it) cannot feed another of OpenCV's image parsers."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from pipeline.gallery.blobs import decode_crop, encode_crop
from pipeline.gallery.errors import GalleryError


def test_png_crops_round_trip() -> None:
    chip = np.random.default_rng(0).integers(0, 255, (150, 150, 3), dtype=np.uint8)
    png, sha = encode_crop(chip, "f1")
    assert np.array_equal(decode_crop(png, sha, "f1"), chip)


@pytest.mark.parametrize("ext", [".bmp", ".jpg", ".tiff", ".ppm"])
def test_a_crop_of_another_format_is_refused(ext: str) -> None:
    ok, buf = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = buf.tobytes()
    assert cv2.imdecode(buf, cv2.IMREAD_COLOR) is not None  # OpenCV would decode it
    with pytest.raises(GalleryError, match="not a PNG"):
        decode_crop(data, hashlib.sha256(data).hexdigest(), "f1")
