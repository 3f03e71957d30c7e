"""Typed, user-facing failures of the gallery (all ``FacestreamError``: one CLI line, a 4xx)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import FacestreamError


class GalleryError(FacestreamError):
    code = "gallery_error"
    http_status = 400


class IdentityNotFound(GalleryError):
    code = "identity_not_found"
    http_status = 404


class DuplicateExternalId(GalleryError):
    code = "duplicate_external_id"
    http_status = 409


@dataclass(frozen=True)
class ImageVerdict:
    """What enrolment made of one input image."""

    image: str
    accepted: bool
    reasons: tuple[str, ...] = ()
    quality: dict[str, float] | None = None


class EnrollmentRejected(GalleryError):
    """At least one image was unusable; nothing was written (all-or-nothing)."""

    code = "enrollment_rejected"
    http_status = 422

    def __init__(self, verdicts: list[ImageVerdict]) -> None:
        self.verdicts = verdicts
        bad = [v for v in verdicts if not v.accepted]
        detail = "; ".join(f"{v.image}: {', '.join(v.reasons)}" for v in bad)
        super().__init__(
            f"enrolment rejected, nothing stored: {len(bad)} of {len(verdicts)} images "
            f"unusable ({detail})"
        )


class ModelVersionMismatch(GalleryError):
    """An embedding of one model version was about to be compared with another's."""

    code = "model_version_mismatch"
    http_status = 409


class NoActiveCollection(GalleryError):
    code = "gallery_empty"
    http_status = 409


class GalleryBusy(GalleryError):
    code = "gallery_busy"
    http_status = 503


class GalleryUnavailable(GalleryError):
    """A store the gallery needs (Milvus, the catalogue database) cannot be reached. Not
    the request's fault: retry later (the stream holds its frames back and retries)."""

    code = "gallery_unavailable"
    http_status = 503


class ReembedError(GalleryError):
    code = "reembed_failed"
    http_status = 409


class CalibrationError(GalleryError):
    code = "calibration_failed"
