"""Live-swap announcements on a model store that several hosts share (a Kubernetes
volume mounted by many pods): a process id is checked only on the host that wrote it.

Before, an announcement another pod left behind counted as a running pipeline whenever
its pid happened to be alive here, so `models promote` attached to the wrong (or a dead)
cluster, or refused with "several running pipelines"."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from pipeline.serve.live import LIVE_DIR, elsewhere, live_pipelines


def _announce(store: Path, name: str, **data: object) -> None:
    folder = store / LIVE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"ray_address": "10.0.0.9:6379", **data}))


def _dead_pid() -> int:
    pid = 4_000_000  # above Linux's pid_max (4194304 at most), probed to be sure
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def test_only_this_hosts_announcements_are_checked_for_a_live_process(tmp_path: Path) -> None:
    here, me = socket.gethostname(), os.getpid()
    # A pod that died: its pid is alive here, by coincidence (this test's own).
    _announce(tmp_path, "other", pid=me, host=f"{here}-gone-pod")
    assert live_pipelines(tmp_path) == []
    assert [d["host"] for d in elsewhere(tmp_path)] == [f"{here}-gone-pod"]

    _announce(tmp_path, "mine", pid=me, host=here)
    _announce(tmp_path, "stale", pid=_dead_pid(), host=here)
    _announce(tmp_path, "old-format", pid=_dead_pid())  # written before hosts were kept
    assert [(d["pid"], d["host"]) for d in live_pipelines(tmp_path)] == [(me, here)]
    assert len(elsewhere(tmp_path)) == 1


def test_a_store_without_announcements_has_none(tmp_path: Path) -> None:
    assert live_pipelines(tmp_path) == [] and elsewhere(tmp_path) == []
    (tmp_path / LIVE_DIR).mkdir()
    (tmp_path / LIVE_DIR / "torn.json").write_text("{not json")
    assert live_pipelines(tmp_path) == [] and elsewhere(tmp_path) == []
