"""Reading images safely: size limits from the header, then a full, strict decode.

Pillow reads the dimensions without decoding the pixels, so a 20000x20000 bomb is
refused before it costs memory, and its strict decoder raises on truncated data
where OpenCV's ``imdecode`` silently returns a half-grey image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.face.errors import ImageDecodeError, ImageNotFoundError, ImageTooLargeError

# Our own limit (checked from the header below) replaces Pillow's global bomb guard, which
# would otherwise refuse large images with its own threshold and wording.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


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
) -> np.ndarray:
    """Decode encoded image bytes into an RGB uint8 array (h, w, 3).

    Raises ImageDecodeError for empty, non-image or truncated data and
    ImageTooLargeError when the header announces more than ``max_pixels`` pixels.
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty input (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                f"{max_pixels} (face.limits.max_pixels)"
            )
        img.load()
    except ImageTooLargeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"{name}: not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(
    path: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Load an image file as RGB uint8 with all the checks of ``decode_image``."""
    data = read_image_bytes(path, max_bytes=max_bytes)
    return decode_image(data, max_pixels=max_pixels, max_bytes=max_bytes, name=str(path))
