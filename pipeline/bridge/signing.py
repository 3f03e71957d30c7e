"""The webhook signature: HMAC-SHA256 of ``"<timestamp>.<body>"`` with the hook's secret.

Headers of every POST::

    X-Facestream-Event-Id:   the event id (also Idempotency-Key): drop repeats
    X-Facestream-Timestamp:  Unix seconds when this try was signed
    X-Facestream-Signature:  v1=<hex digest>

A receiver recomputes the digest over the raw body and refuses a timestamp older than
a few minutes (a replayed request); :func:`verify` does both.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

EVENT_ID = "X-Facestream-Event-Id"
TIMESTAMP = "X-Facestream-Timestamp"
SIGNATURE = "X-Facestream-Signature"
VERSION = "v1"


def signature(key: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{VERSION}={digest}"


def signed_headers(key: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        EVENT_ID: event_id,
        "Idempotency-Key": event_id,
        TIMESTAMP: str(timestamp),
        SIGNATURE: signature(key, timestamp, body),
    }


def verify(
    key: bytes, headers: Mapping[str, str], body: bytes, now_s: float, tolerance_s: float = 300
) -> bool:
    """Whether ``body`` was signed with ``key`` no more than ``tolerance_s`` ago.
    ``headers``: a case-insensitive mapping (what HTTP servers hand over)."""
    try:
        ts = int(headers[TIMESTAMP])
        given = headers[SIGNATURE]
    except (KeyError, ValueError):
        return False
    if abs(now_s - ts) > tolerance_s:
        return False
    return hmac.compare_digest(given, signature(key, ts, body))
