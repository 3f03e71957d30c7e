"""Bad images get typed errors before they cost memory; good ones decode exactly."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.face.errors import ImageDecodeError, ImageNotFoundError, ImageTooLargeError
from pipeline.face.image_io import decode_image, load_image


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def huge_header_jpeg(width: int, height: int) -> bytes:
    """A small valid JPEG whose SOF header claims ``width`` x ``height`` pixels."""
    data = bytearray(_jpeg())
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def test_decodes_rgb(tmp_path: Path) -> None:
    arr = np.zeros((10, 20, 3), dtype=np.uint8)
    arr[..., 0] = 200
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_greyscale_becomes_rgb(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8)).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").shape == (8, 8, 3)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_zero_bytes(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        load_image(tmp_path / "empty.jpg")


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_text("this is not an image\n" * 10)
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg() -> None:
    data = _jpeg(256, 256)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_huge_image_refused_from_header() -> None:
    # 20000 x 20000 = 4e8 pixels: refused from the header, never decoded (it would be 1.2 GB)
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        decode_image(huge_header_jpeg(20000, 20000))


def test_pixel_limit_is_configurable() -> None:
    data = _jpeg(64, 48)
    assert decode_image(data, max_pixels=64 * 48).shape == (48, 64, 3)
    with pytest.raises(ImageTooLargeError, match="limit of 3000"):
        decode_image(data, max_pixels=3000)


def test_byte_limit() -> None:
    with pytest.raises(ImageTooLargeError, match="bytes exceeds"):
        decode_image(_jpeg(), max_bytes=100)
