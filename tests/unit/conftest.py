"""Fixtures shared by the unit tests of the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.models.store import ModelStore


@pytest.fixture()
def gallery_cli(
    model_store: ModelStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    """The CLI on a private Milvus Lite gallery in tmp_path (no server to start)."""
    uri = str(tmp_path / "milvus.db")
    monkeypatch.setenv("FACESTREAM_MODELS__STORE", str(model_store.root))
    monkeypatch.setenv("FACESTREAM_GALLERY__MILVUS_URI", uri)
    monkeypatch.setenv("FACESTREAM_GALLERY__DATA_DIR", str(tmp_path / "g"))
    yield CliRunner()
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(uri)
