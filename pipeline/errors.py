"""The root of every expected, user-facing failure in facestream.

The CLI prints these as one line and exits 2; services map them to 4xx answers or
dead-letter records. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FacestreamError(Exception):
    """An expected failure with a message fit for the user."""

    code: str = "error"
