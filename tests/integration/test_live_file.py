"""The live-swap announcement (<store>/.live/<pid>.json) is owner-only, also when it or
its temporary file already existed with wider permissions."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pipeline.config.models import ModelsConfig
from pipeline.config.serve import EmbedderServeConfig, SearchServeConfig
from pipeline.serve.apps import ServeApps
from pipeline.serve.live import LIVE_DIR, announce

pytestmark = [pytest.mark.integration]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_live_file_is_owner_only_when_written_and_replaced(
    ray_local: None, tmp_path: Path
) -> None:
    apps = ServeApps(EmbedderServeConfig(), SearchServeConfig(), ModelsConfig(store=tmp_path))
    folder = tmp_path.resolve() / LIVE_DIR
    folder.mkdir()
    final = folder / f"{os.getpid()}.json"
    # A crash left both files behind, world-readable (umask 022 or a copy).
    stale_tmp = final.with_suffix(".tmp")
    for p in (stale_tmp, final):
        p.write_text("{}")
        p.chmod(0o644)
    path = announce(apps)
    assert path == final
    assert _mode(final) == 0o600
    assert json.loads(final.read_text())["pid"] == os.getpid()
    assert not stale_tmp.exists()
    # Written again (a second announce replaces it atomically): still owner-only.
    assert announce(apps) == final and _mode(final) == 0o600
