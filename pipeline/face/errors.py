"""Typed errors of the face core.

Every error carries a one-line, user-facing message; the CLI prints it without a
traceback and exits non-zero, and the stream code turns it into a dead-letter reason.
"""

from __future__ import annotations

from pipeline.errors import FacestreamError


class FaceError(FacestreamError):
    """Base class of every expected failure in the face core."""

    code: str = "face_error"


class ImageError(FaceError):
    """The input could not be turned into an image."""

    code = "bad_image"


class ImageNotFoundError(ImageError):
    code = "not_found"


class ImageDecodeError(ImageError):
    code = "undecodable"


class ImageFormatError(ImageDecodeError):
    """An image of a format that is not accepted (refused before it is decoded)."""

    code = "unsupported_format"


class ImageTooLargeError(ImageError):
    code = "too_large"


class NoFaceError(FaceError):
    code = "no_face"


class MultipleFacesError(FaceError):
    code = "multiple_faces"


class ModelError(FaceError):
    """A model file or manifest is missing, corrupt or inconsistent."""

    code = "model_error"


class LandmarkSchemeError(FaceError):
    """Landmarks of one scheme were given to a template of another."""

    code = "landmark_scheme"
