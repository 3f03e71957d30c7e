"""The decode budget: an image is refused by the memory its decoding takes, read from the
header, before a single pixel is decoded, however small its encoded bytes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.face.errors import ImageTooLargeError
from pipeline.face.image_io import DEFAULT_MAX_DECODED_BYTES, decode_image, decoded_bytes

SIDE = 7000  # 49 megapixels: under the default 50-megapixel limit


@pytest.fixture(scope="module")
def flat_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few-KB PNG of 7000x7000 flat RGB pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE)).save(buf, "PNG", compress_level=9)
    path = tmp_path_factory.mktemp("bomb") / "flat.png"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < 300_000
    return path


def test_a_small_png_of_49_megapixels_is_refused_before_decoding(
    flat_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decode(self: Image.Image) -> None:
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    monkeypatch.setattr(Image.Image, "load", no_decode)
    with pytest.raises(ImageTooLargeError, match=r"7000x7000 RGB would take \d+ MiB to decode"):
        decode_image(flat_png.read_bytes(), name="flat.png")


def test_refusal_costs_no_memory(flat_png: Path) -> None:
    # A fresh interpreter, so the peak RSS (ru_maxrss) is the decode attempt's own.
    code = f"""
import json, resource
from pathlib import Path
from pipeline.face.image_io import decode_image
data = Path({str(flat_png)!r}).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(data, name="flat.png")
    error = None
except Exception as exc:
    error = type(exc).__name__
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"error": error, "kib": after - before}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["error"] == "ImageTooLargeError"
    assert res["kib"] < 20 * 1024, f"peak RSS grew by {res['kib']} KiB"


def test_the_budget_counts_the_decoded_pixels_not_the_encoded_bytes() -> None:
    assert decoded_bytes(SIDE, SIDE, "RGB") > DEFAULT_MAX_DECODED_BYTES
    assert decoded_bytes(6000, 4000, "RGB") < DEFAULT_MAX_DECODED_BYTES  # a 24 MP photo
    # a conversion (grey, palette) costs an RGB copy on top of the source
    assert decoded_bytes(100, 100, "L") > decoded_bytes(100, 100, "RGB") - 100 * 100 * 3


def test_images_within_the_budget_decode_and_the_budget_is_a_parameter() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((300, 400, 3), 7, np.uint8)).save(buf, "PNG")
    arr = decode_image(buf.getvalue())
    assert arr.shape == (300, 400, 3) and arr.flags.writeable and int(arr[0, 0, 0]) == 7
    with pytest.raises(ImageTooLargeError, match="over the limit of"):
        decode_image(buf.getvalue(), max_decoded_bytes=300 * 400 * 3)
