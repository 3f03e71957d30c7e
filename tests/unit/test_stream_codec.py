"""The frame message format on facestream.frames: encode, parse, reject."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.face.image_io import decode_image
from pipeline.stream.codec import (
    H_BYTES,
    H_SEQ,
    FrameMessage,
    FrameRejected,
    encode_bgr_jpeg,
    encode_jpeg,
    frame_headers,
    identify_record,
    parse_record,
    to_record,
)


def _frame(seq: int = 7) -> FrameMessage:
    rgb = np.zeros((36, 64, 3), dtype=np.uint8)
    rgb[:, :32] = (200, 30, 30)
    return FrameMessage("lobby", seq, 1_700_000_000_123, encode_jpeg(rgb, 90), 64, 36, 233.333)


def test_round_trip_keeps_every_field_and_the_image() -> None:
    msg = _frame()
    key, value, headers = to_record(msg)
    assert key == b"lobby"
    assert all(isinstance(v, bytes) and v.decode().isascii() for _, v in headers)
    back = parse_record(key, value, headers)
    assert back == FrameMessage("lobby", 7, 1_700_000_000_123, value, 64, 36, 233.333)
    assert back.event_id == "lobby:7"
    image = decode_image(back.data)
    assert image.shape == (36, 64, 3)
    assert image[18, 10, 0] > 150 and image[18, 50, 0] < 60  # colours survive, RGB order


def test_a_frame_as_opencv_reads_it_keeps_its_colours() -> None:
    """The ingester encodes OpenCV's BGR frames as they are; the analyzer decodes RGB."""
    bgr = np.zeros((36, 64, 3), dtype=np.uint8)
    bgr[:, :32] = (30, 30, 200)  # red, in OpenCV's order
    image = decode_image(encode_bgr_jpeg(bgr, 90))
    assert image[18, 10, 0] > 150 and image[18, 10, 2] < 60  # red, in RGB order
    assert np.abs(image.astype(int) - decode_image(encode_jpeg(bgr[..., ::-1], 90))).max() <= 2


@pytest.mark.parametrize(
    ("key", "drop", "code"),
    [
        (None, None, "missing_key"),
        (b"", None, "missing_key"),
        (b"a:b", None, "bad_key"),
        (b"\xff\xfe", None, "bad_key"),
        (b"lobby", H_SEQ, "missing_headers"),
        (b"lobby", H_BYTES, "missing_headers"),
    ],
)
def test_rejects_records_it_cannot_trust(key: bytes | None, drop: str | None, code: str) -> None:
    msg = _frame()
    headers = [(k, v) for k, v in frame_headers(msg) if k != drop]
    with pytest.raises(FrameRejected) as info:
        parse_record(key, msg.data, headers)
    assert info.value.code == code


def test_no_headers_at_all_is_missing_headers() -> None:
    with pytest.raises(FrameRejected) as info:
        parse_record(b"lobby", b"\xff\xd8", None)
    assert info.value.code == "missing_headers"
    assert "fs.seq" in str(info.value)


def test_truncated_value_is_a_size_mismatch() -> None:
    msg = _frame()
    key, value, headers = to_record(msg)
    with pytest.raises(FrameRejected) as info:
        parse_record(key, value[: len(value) // 2], headers)
    assert info.value.code == "size_mismatch"


@pytest.mark.parametrize("bad", [b"seven", b"-3", b""])
def test_non_numeric_seq_is_a_bad_header(bad: bytes) -> None:
    msg = _frame()
    headers = [(k, bad if k == H_SEQ else v) for k, v in frame_headers(msg)]
    with pytest.raises(FrameRejected) as info:
        parse_record(b"lobby", msg.data, headers)
    assert info.value.code == "bad_header"


def test_identify_record_recovers_what_it_can_for_the_dlq() -> None:
    assert identify_record(b"gate", [(H_SEQ, b"12")]) == ("gate", 12)
    assert identify_record(b"gate", [(H_SEQ, b"x")]) == ("gate", None)
    assert identify_record(None, None) == (None, None)
    assert identify_record(b"a:b", [(H_SEQ, b"1")]) == (None, 1)
