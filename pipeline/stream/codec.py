"""The frame message on ``facestream.frames``: key, value and headers.

- key: the camera id (UTF-8). Kafka's default partitioner hashes it, so one camera's
  frames stay in one partition, in order (the tracker relies on that).
- value: the frame as JPEG bytes.
- headers (ASCII decimal strings, so any client can read them):

  ============== =====================================================================
  ``fs.v``        message format version, ``1``
  ``fs.seq``      the camera's frame sequence number (0, 1, …; resumes across restarts)
  ``fs.ts``       capture time, milliseconds since the Unix epoch (wall clock at read)
  ``fs.pts``      position in the source stream, milliseconds (files: video time)
  ``fs.w``        frame width in pixels
  ``fs.h``        frame height in pixels
  ``fs.bytes``    size of the value in bytes (a truncated value is detected)
  ``fs.enc``      ``jpeg``
  ============== =====================================================================

``fs.v``, ``fs.seq``, ``fs.ts`` and ``fs.bytes`` are required; a record without them goes
to the dead-letter topic as ``missing_headers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import FacestreamError

FORMAT_VERSION = 1
H_VERSION = "fs.v"
H_SEQ = "fs.seq"
H_TS = "fs.ts"
H_PTS = "fs.pts"
H_WIDTH = "fs.w"
H_HEIGHT = "fs.h"
H_BYTES = "fs.bytes"
H_ENCODING = "fs.enc"
REQUIRED_HEADERS = (H_VERSION, H_SEQ, H_TS, H_BYTES)

Headers = Sequence[tuple[str, bytes]]


class FrameRejected(FacestreamError):
    """A frame record that cannot be processed; ``code`` becomes the DLQ reason."""

    code = "rejected"

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True)
class FrameMessage:
    camera_id: str
    seq: int
    capture_ts_ms: int
    data: bytes  # JPEG
    width: int | None = None
    height: int | None = None
    pts_ms: float | None = None

    @property
    def event_id(self) -> str:
        return frame_event_id(self.camera_id, self.seq)


def frame_event_id(camera_id: str, seq: int) -> str:
    """The deterministic id of a frame and of its detection event: ``camera:seq``."""
    return f"{camera_id}:{seq}"


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    return encode_bgr_jpeg(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), quality)


def encode_bgr_jpeg(bgr: np.ndarray, quality: int) -> bytes:
    """A frame as OpenCV reads it (BGR) to JPEG: the ingester's path, which would
    otherwise convert every frame to RGB and back (0.4 ms of its ~2.5 ms a frame)."""
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise FrameRejected("encode_failed", "OpenCV could not JPEG-encode the frame")
    return buf.tobytes()


def frame_headers(msg: FrameMessage) -> list[tuple[str, bytes]]:
    headers = [
        (H_VERSION, str(FORMAT_VERSION).encode()),
        (H_SEQ, str(msg.seq).encode()),
        (H_TS, str(msg.capture_ts_ms).encode()),
        (H_BYTES, str(len(msg.data)).encode()),
        (H_ENCODING, b"jpeg"),
    ]
    if msg.width is not None and msg.height is not None:
        headers += [(H_WIDTH, str(msg.width).encode()), (H_HEIGHT, str(msg.height).encode())]
    if msg.pts_ms is not None:
        headers.append((H_PTS, f"{msg.pts_ms:.3f}".encode()))
    return headers


def to_record(msg: FrameMessage) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) to hand to ``KafkaProducer.send``."""
    return msg.camera_id.encode(), msg.data, frame_headers(msg)


def headers_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Headers as text (undecodable bytes are shown escaped, for the DLQ)."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        out[name] = "" if value is None else value.decode("utf-8", "backslashreplace")
    return out


def _int_header(h: dict[str, str], name: str) -> int:
    raw = h[name]
    try:
        value = int(raw)
    except ValueError:
        raise FrameRejected("bad_header", f"header {name}={raw!r} is not an integer") from None
    if value < 0:
        raise FrameRejected("bad_header", f"header {name}={value} is negative")
    return value


def parse_record(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None
) -> FrameMessage:
    """Check a frames-topic record and turn it into a FrameMessage, or raise FrameRejected."""
    if not key:
        raise FrameRejected("missing_key", "record has no key (the camera id)")
    try:
        camera_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameRejected("bad_key", "record key is not UTF-8") from None
    if ":" in camera_id:
        raise FrameRejected("bad_key", f"camera id {camera_id[:100]!r} contains ':'")
    if len(camera_id) > MAX_CAMERA_ID:
        # It becomes every output's key and event id prefix, and a tracker entry.
        raise FrameRejected("bad_key", f"camera id longer than {MAX_CAMERA_ID} characters")
    h = headers_dict(headers)
    missing = [name for name in REQUIRED_HEADERS if name not in h]
    if missing:
        raise FrameRejected("missing_headers", f"missing headers: {', '.join(missing)}")
    version = _int_header(h, H_VERSION)
    if version != FORMAT_VERSION:
        raise FrameRejected("bad_header", f"unsupported frame format {H_VERSION}={version}")
    if h.get(H_ENCODING, "jpeg") != "jpeg":
        raise FrameRejected("bad_header", f"unsupported encoding {h[H_ENCODING]!r}")
    data = value or b""
    announced = _int_header(h, H_BYTES)
    if announced != len(data):
        raise FrameRejected(
            "size_mismatch", f"header {H_BYTES}={announced} but the value has {len(data)} bytes"
        )
    pts: float | None = None
    if H_PTS in h:
        try:
            pts = float(h[H_PTS])
        except ValueError:
            raise FrameRejected("bad_header", f"header {H_PTS}={h[H_PTS]!r}") from None
    return FrameMessage(
        camera_id=camera_id,
        seq=_int_header(h, H_SEQ),
        capture_ts_ms=_int_header(h, H_TS),
        data=data,
        width=_int_header(h, H_WIDTH) if H_WIDTH in h else None,
        height=_int_header(h, H_HEIGHT) if H_HEIGHT in h else None,
        pts_ms=pts,
    )


MAX_CAMERA_ID = 255  # characters; configured ids are at most 64


def camera_from_key(key: bytes | None) -> str | None:
    """The camera id a record's key names, None when no usable one (the DLQ and the
    audit then identify the record by topic:partition:offset)."""
    if not key:
        return None
    camera = key.decode("utf-8", "replace")
    if ":" in camera or len(camera) > MAX_CAMERA_ID:
        return None
    return camera


def identify_record(
    key: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None
) -> tuple[str | None, int | None]:
    """Best-effort (camera id, seq) of a record that failed to parse, for the DLQ."""
    camera = camera_from_key(key)
    seq: int | None = None
    raw = headers_dict(headers).get(H_SEQ)
    if raw is not None and raw.isdigit():
        seq = int(raw)
    return camera, seq
