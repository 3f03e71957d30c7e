"""Where the optional shared test data lives (benchmarks, demo and tests use it when present)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config.models import REPO_ROOT


def shared_dir() -> Path | None:
    """``$FACESTREAM_SHARED`` or ``../shared`` beside the checkout, if it exists."""
    env = os.environ.get("FACESTREAM_SHARED")
    path = Path(env) if env else REPO_ROOT.parent / "shared"
    return path if path.is_dir() else None
