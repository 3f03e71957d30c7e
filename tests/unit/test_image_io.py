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


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def test_a_complete_jpeg_decodes_to_pillows_pixels() -> None:
    """The OpenCV path of complete RGB JPEGs gives the pixels Pillow's decode gives."""
    rng = np.random.default_rng(1)
    smooth = np.linspace(0, 255, 97 * 131 * 3).reshape(97, 131, 3).astype(np.uint8)
    for arr in (smooth, rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)):
        for kwargs in ({}, {"progressive": True}, {"subsampling": 0}):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=85, **kwargs)
            data = buf.getvalue()
            out = decode_image(data)
            assert out.flags.writeable and out.dtype == np.uint8
            assert np.abs(out.astype(int) - _pillow_pixels(data)).max() <= 1, kwargs


def test_exif_orientation_is_ignored_as_pillow_ignores_it() -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(buf.getvalue())
    assert out.shape == (20, 40, 3)  # stored, not displayed, orientation
    assert out[10, 5].min() > 200 and out[10, 35].max() < 50


def test_a_jpeg_cut_after_its_end_marker_is_still_refused_when_cut_short() -> None:
    data = _jpeg(256, 256)
    assert data.endswith(b"\xff\xd9")
    # Trailing bytes after the end marker: Pillow's path, which decodes it.
    assert decode_image(data + b"\x00" * 16).shape == (256, 256, 3)
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image(data[:-200])


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


# -- formats: what a camera or a photo uses is decoded; any other Pillow format is refused
# before its decoder runs (issue 17: each format is its own parser, and most of them are
# never exercised by anything facestream needs).


def _encoded(fmt: str, mode: str = "RGB", **kw: object) -> bytes:
    buf = io.BytesIO()
    rgb = np.random.default_rng(1).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


def _psd() -> bytes:
    """A minimal 8-bit RGB Photoshop file (Pillow reads PSD but cannot write it)."""
    h, w = 4, 6
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, h, w, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(3 * h * w)


ACCEPTED = {
    "JPEG": lambda: _encoded("JPEG"),
    "PNG": lambda: _encoded("PNG"),
    "WEBP": lambda: _encoded("WEBP"),
    "BMP": lambda: _encoded("BMP"),
    "TIFF": lambda: _encoded("TIFF"),
    "PPM": lambda: _encoded("PPM", "L"),  # PGM: research face sets (AT&T) ship as PGM
}
REFUSED = {
    "GIF": lambda: _encoded("GIF", "P"),
    "ICO": lambda: _encoded("ICO"),
    "PSD": _psd,
    "EPS": lambda: _encoded("EPS"),
    "PCX": lambda: _encoded("PCX"),
    "TGA": lambda: _encoded("TGA"),
    "SGI": lambda: _encoded("SGI"),
    "DDS": lambda: _encoded("DDS"),
    "QOI": lambda: _encoded("QOI"),
}


@pytest.mark.parametrize("fmt", sorted(ACCEPTED))
def test_camera_and_photo_formats_decode(fmt: str) -> None:
    data = ACCEPTED[fmt]()
    out = decode_image(data, name=f"x.{fmt.lower()}")
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("fmt", sorted(REFUSED))
def test_other_formats_are_refused_before_decoding(fmt: str) -> None:
    from pipeline.face.errors import ImageError

    data = REFUSED[fmt]()
    with Image.open(io.BytesIO(data)) as img:  # Pillow itself would decode it
        assert img.format == fmt
    # Named when its signature is unambiguous (PCX and TGA have none to speak of).
    named = fmt not in ("PCX", "TGA")
    why = rf"{fmt} images are not accepted" if named else "not a recognised image format"
    with pytest.raises(ImageDecodeError, match=rf"x\.bin: {why}") as exc:
        decode_image(data, name="x.bin")
    assert isinstance(exc.value, ImageError)  # the API answers 400, the stream dead-letters
    assert "JPEG, PNG, WebP, BMP, TIFF" in str(exc.value)
