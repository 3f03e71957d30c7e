"""facestream: distributed streaming face recognition."""

__version__ = "0.1.0"
