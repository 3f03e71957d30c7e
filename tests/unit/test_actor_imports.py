"""Every stream actor is a fresh Python process, so what its module imports is paid once
per worker and replica started: the stream's worker and the analyzer and embedder
replicas stay off the gallery's stores (SQLAlchemy, the catalogue, pymilvus) and
scipy's optimizers, which only the search and recorder replicas and the tracker use."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("sqlalchemy", "pymilvus", "pipeline.gallery.service", "scipy.optimize")


@pytest.mark.parametrize(
    "module",
    ["pipeline.stream.worker", "pipeline.serve.analyzer", "pipeline.serve.embedder_deployment"],
)
def test_actor_module_imports_stay_light(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
