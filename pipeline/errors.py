"""The root of every expected, user-facing failure in facestream.

The CLI prints these as one line and exits 2; services map them to 4xx answers or
dead-letter records. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FacestreamError(Exception):
    """An expected failure with a message fit for the user."""

    code: str = "error"


class StartupFailed(FacestreamError):
    """A part the pipeline needs (Kafka, Milvus, the catalogue database, Ray) did not
    start or cannot be reached: one line naming it, then exit non-zero."""

    code = "startup_failed"

    def __init__(self, part: str, detail: str) -> None:
        first = next((ln.strip() for ln in detail.strip().splitlines() if ln.strip()), detail)
        super().__init__(f"{part}: {first}")
        self.part = part
