"""Reading images safely: size limits from the header, then a full, strict decode.

Pillow reads the dimensions and the pixel mode without decoding the pixels, so a
20000x20000 bomb is refused before it costs memory, and its strict decoder raises on
truncated data where OpenCV's ``imdecode`` silently returns a half-grey image.

Only the formats a camera or a photo uses are opened at all (``ACCEPTED_FORMATS``):
Pillow carries some forty format parsers, most of them for formats no face photo
comes in (PSD, EPS through Ghostscript, ICO, PCX, FLI...), and each is code an upload
could reach. Any other format is refused before its parser runs.

A complete RGB JPEG (every stream frame, most photos) is then decoded by OpenCV straight
into an array (:func:`_decode_jpeg`): the same libjpeg-turbo decode and the same pixels,
without Pillow's hand-over to numpy, which cost up to twice the decode itself. Anything else,
and any JPEG without its end marker, takes Pillow's strict decode.

Two budgets are checked from the header: ``max_pixels`` (width x height) and
``max_decoded_bytes``, the memory the decode will take. The second one matters because
the encoded size says nothing about it: a 6 KB PNG of 7000x7000 flat pixels is under
the 50-megapixel limit yet needed 516 MB to decode.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from pipeline.face.errors import (
    ImageDecodeError,
    ImageFormatError,
    ImageNotFoundError,
    ImageTooLargeError,
)

# Our own limit (checked from the header below) replaces Pillow's global bomb guard, which
# would otherwise refuse large images with its own threshold and wording.
Image.MAX_IMAGE_PIXELS = None

# Pillow's format ids. "PPM" is Netpbm (PGM, PPM, PBM: a header and raw pixels), the format
# of research face sets such as AT&T's, which training and evaluation read.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM")
ACCEPTED_TEXT = "JPEG, PNG, WebP, BMP, TIFF or PGM/PPM"

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# A 24-megapixel RGB photo (160 MiB by decoded_bytes) passes; a 7000x7000 one (327 MiB)
# does not. Every request of the API and every stream frame decodes within this.
DEFAULT_MAX_DECODED_BYTES = 256 * 1024 * 1024


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """Peak bytes of :func:`decode_image` for a ``width`` x ``height`` image in Pillow
    ``mode``: the decoded image as Pillow stores it (multi-band modes take 4 bytes a
    pixel, RGB included), the RGB copy a conversion makes, and the returned array."""
    try:
        m = ImageMode.getmode(mode)
        stored = 4 if len(m.bands) > 1 else np.dtype(m.typestr).itemsize
    except (KeyError, TypeError):
        stored = 4  # an exotic mode: count it like the widest common one
    converted = 0 if mode == "RGB" else 4
    return width * height * (stored + converted + 3)


# Unambiguous signatures of formats people send and we refuse, to name them in the error
# (Pillow's own signature checks are looser: an uncompressed TGA passes for a CUR).
REFUSED_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"8BPS", "PSD"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00\x01\x00", "CUR"),
    (0, b"%PDF", "PDF"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"\x01\xda", "SGI"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
)


JPEG_END = b"\xff\xd9"  # EOI: a JPEG's last marker; without it the data was cut short


def _decode_jpeg(data: bytes, img: Image.Image) -> np.ndarray | None:
    """The pixels of a complete RGB JPEG through OpenCV, or None for Pillow to decode.

    Why not Pillow for these too: it decodes a 640x360 stream frame in ~0.5 ms, then its
    raw encoder hands the pixels to numpy chunk by chunk in 0.1-1.2 ms more (measured;
    it varies from process to process); OpenCV decodes into the array in ~0.57 ms with
    the colour swap, in every process, with the same libjpeg-turbo decode and the same
    pixels (tested). Only data ending in the EOI marker comes here: on truncated
    data OpenCV returns a half-grey image where Pillow raises. The EXIF orientation is
    ignored, as Pillow's decode ignores it."""
    if img.format != "JPEG" or img.mode != "RGB" or not data.endswith(JPEG_END):
        return None
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error:
        return None
    if bgr is None or bgr.shape != (img.height, img.width, 3):
        return None  # Pillow decodes it, or says what is wrong with it
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _format_name(data: bytes) -> str | None:
    """The refused format ``data`` is, when its signature says so unambiguously."""
    for offset, magic, fmt in REFUSED_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return fmt
    return None


def read_image_bytes(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """Read a file's bytes with clear errors for missing, unreadable or oversized files."""
    p = Path(path)
    if not p.exists():
        raise ImageNotFoundError(f"{p}: no such file")
    if not p.is_file():
        raise ImageNotFoundError(f"{p}: not a regular file")
    size = p.stat().st_size
    if size == 0:
        raise ImageDecodeError(f"{p}: empty file (0 bytes)")
    if size > max_bytes:
        raise ImageTooLargeError(f"{p}: {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ImageNotFoundError(f"{p}: cannot read ({exc.strerror})") from exc


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str = "image",
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Decode encoded image bytes into an RGB uint8 array (h, w, 3).

    Raises ImageDecodeError for empty, non-image or truncated data and
    ImageTooLargeError when the header announces more than ``max_pixels`` pixels or an
    image whose decoding would take more than ``max_decoded_bytes`` of memory.
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty input (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{max_pixels} (face.limits.max_pixels)"
            )
        need = decoded_bytes(width, height, img.mode)
        if need > max_decoded_bytes:
            raise ImageTooLargeError(
                f"{name}: {width}x{height} {img.mode} would take {need / 2**20:.0f} MiB to "
                f"decode, over the limit of {max_decoded_bytes / 2**20:.0f} MiB (whatever its "
                f"{len(data)}-byte encoded size); send a smaller image"
            )
        fast = _decode_jpeg(data, img)
        if fast is not None:
            img.close()
            return fast
        img.load()
    except ImageTooLargeError:
        raise
    except UnidentifiedImageError as exc:
        fmt = _format_name(data)
        if fmt is not None:
            raise ImageFormatError(
                f"{name}: {fmt} images are not accepted; send {ACCEPTED_TEXT}"
            ) from exc
        raise ImageDecodeError(
            f"{name}: not a recognised image format (accepted: {ACCEPTED_TEXT})"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc
    if img.mode != "RGB":
        rgb = img.convert("RGB")
        img.close()  # the source's pixels are not needed once converted
        img = rgb
    # tobytes, then free Pillow's copy before numpy makes the writable one: the peak is
    # two copies of the pixels, not three.
    h, w = img.height, img.width
    raw = img.tobytes()
    img.close()
    return np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3).copy()


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Load an image file as RGB uint8 with all the checks of ``decode_image``."""
    data = read_image_bytes(path, max_bytes=max_bytes)
    return decode_image(
        data,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
        name=str(path),
        max_decoded_bytes=max_decoded_bytes,
    )
