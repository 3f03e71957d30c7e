"""The ``facestream`` command line: argument parsing and printing only.

Each module holds the commands of one subsystem; the logic they call lives in that
subsystem. ``app`` is the entry point (``pyproject.toml``: ``pipeline.cli:app``).
"""

from pipeline.cli.main import app

__all__ = ["app"]
