"""One table from errors to HTTP statuses for the REST API and the web UI (issue 18):
the same failure gets the same status through either door."""

from __future__ import annotations

from pathlib import Path

from pipeline.face.errors import ImageDecodeError, ImageTooLargeError, NoFaceError
from pipeline.gallery.errors import EnrollmentRejected, GalleryUnavailable, IdentityNotFound
from pipeline.serve.errors import http_status

SERVE = Path(__file__).resolve().parents[2] / "pipeline" / "serve"


def test_the_table() -> None:
    assert http_status(ImageTooLargeError("x")) == 413
    assert http_status(NoFaceError("x")) == 422
    assert http_status(ImageDecodeError("x")) == 400
    assert http_status(IdentityNotFound("x")) == 404
    assert http_status(EnrollmentRejected([])) == 422
    assert http_status(GalleryUnavailable("x")) == 503


def test_no_second_mapping_in_the_http_code() -> None:
    """The API and the UI each had their own mapping (the UI answered 400 where the API
    answered 413 or 422); now only errors.py reads an error's status."""
    copies = [
        str(p.relative_to(SERVE))
        for p in SERVE.rglob("*.py")
        if p.name != "errors.py" and '"http_status"' in p.read_text()
    ]
    assert copies == []
