"""The RayService's supervisor application (charts/facestream/files/facestream_rayservice.py):
it runs the driver, reports its death through the health check, and stops it gracefully
even when started from a thread that blocks SIGINT (as Ray's worker threads may)."""

from __future__ import annotations

import importlib.util
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest

from pipeline.config.models import REPO_ROOT
from tests.support.wait import wait_until

MODULE_FILE = REPO_ROOT / "charts/facestream/files/facestream_rayservice.py"


@pytest.fixture(scope="module")
def sup() -> ModuleType:
    spec = importlib.util.spec_from_file_location("facestream_rayservice", MODULE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wait_for(path: Path) -> None:
    wait_until(f"{path} appears", path.exists, 20.0, every_s=0.05)


def test_health_follows_the_driver(sup: ModuleType, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    # A stand-in driver that sees the cluster address it was given, then fails.
    code = (
        "import os, pathlib, time; "
        f"pathlib.Path({str(flag)!r}).write_text(os.environ['RAY_ADDRESS']); "
        "time.sleep(1.0); raise SystemExit(3)"
    )
    s = sup.PipelineSupervisor([sys.executable, "-c", code], ray_address="10.1.2.3:6379")
    _wait_for(flag)
    assert flag.read_text() == "10.1.2.3:6379"
    s.check_health()
    assert s.status()["running"] is True
    s.proc.wait(timeout=20)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        s.check_health()
    assert s.status() == {"pid": s.proc.pid, "running": False, "exit_code": 3}


def test_stop_is_a_sigint_even_from_a_thread_that_blocks_it(
    sup: ModuleType, tmp_path: Path
) -> None:
    flag, stopped = tmp_path / "started", tmp_path / "stopped"
    # Like `facestream run`: Ctrl-C (KeyboardInterrupt) is its graceful stop.
    code = (
        "import pathlib, time\n"
        f"pathlib.Path({str(flag)!r}).touch()\n"
        "try:\n    time.sleep(60)\n"
        "except KeyboardInterrupt:\n"
        f"    pathlib.Path({str(stopped)!r}).touch(); raise SystemExit(0)\n"
    )
    holder: list[object] = []

    def start() -> None:
        # The mask a thread sets is inherited by the processes it starts.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        holder.append(sup.PipelineSupervisor([sys.executable, "-c", code], ray_address="x:1"))

    t = threading.Thread(target=start)
    t.start()
    t.join()
    s = holder[0]
    _wait_for(flag)
    t0 = time.monotonic()
    assert s.stop(grace_s=20) == 0  # type: ignore[attr-defined]  # the server object the thread set
    assert stopped.exists() and time.monotonic() - t0 < 20


def test_stop_kills_a_driver_that_ignores_sigint(sup: ModuleType, tmp_path: Path) -> None:
    flag = tmp_path / "started"
    code = (
        "import pathlib, signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        f"pathlib.Path({str(flag)!r}).touch(); time.sleep(60)"
    )
    s = sup.PipelineSupervisor([sys.executable, "-c", code], ray_address="x:1")
    _wait_for(flag)
    assert s.stop(grace_s=0.5) == -signal.SIGKILL


def test_builder_args(sup: ModuleType) -> None:
    from ray import serve

    app = sup.app_builder({"command": ["facestream", "run", "--workers", "4"]})
    assert isinstance(app, serve.Application)
    for bad in ({}, {"command": []}, {"command": "facestream run"}, {"command": ["", "x"]}):
        with pytest.raises(ValueError, match=r"args\.command"):
            sup.app_builder(bad)
