"""One table from expected errors to HTTP statuses, for the REST API and the web UI
alike: the same failure gets the same status whichever door it came through."""

from __future__ import annotations

from typing import Any

from pipeline.errors import FacestreamError
from pipeline.face.errors import ImageError, ImageTooLargeError, NoFaceError

# Checked in order (subclasses first); other errors carry their own ``http_status``
# (the gallery's and the review loop's), else 400.
STATUSES: tuple[tuple[type[FacestreamError], int], ...] = (
    (ImageTooLargeError, 413),
    (NoFaceError, 422),
    (ImageError, 400),
)


def http_status(exc: FacestreamError) -> int:
    for kind, status in STATUSES:
        if isinstance(exc, kind):
            return status
    return int(getattr(exc, "http_status", 400))


def error_body(exc: FacestreamError) -> dict[str, Any]:
    """The API's JSON answer: code, message and, for a refused enrolment, each photo's
    verdict."""
    body: dict[str, Any] = {"error": exc.code, "detail": str(exc)}
    verdicts = getattr(exc, "verdicts", None)
    if verdicts is not None:
        body["images"] = [
            {"image": v.image, "accepted": v.accepted, "reasons": list(v.reasons)} for v in verdicts
        ]
    return body
