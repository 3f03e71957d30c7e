"""`facestream run` when a part it needs is not there: one line naming the part, exit code
2, no traceback. Run as a user would (a subprocess), against real parts that are up and a
closed port for the one that is down."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import procs
from pipeline.models.store import ModelStore
from pipeline.procs import free_ports
from pipeline.stream import cluster
from tests.support.stores import facestream_env

pytestmark = pytest.mark.integration


def _run(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    if "RAY_ADDRESS" not in env:
        full.pop("RAY_ADDRESS", None)
    return subprocess.run(
        [str(Path(sys.executable).with_name("facestream")), "run", "--duration", "5", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _one_error_line(res: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout[-2000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def base_env(
    tmp_path: Path, milvus_space: dict[str, str], model_store: ModelStore
) -> dict[str, str]:
    return facestream_env(model_store, milvus_space, tmp_path / "gallery")


def test_kafka_down(base_env: dict[str, str], tmp_path: Path) -> None:
    (port,) = free_ports(1)
    res = _run(base_env, "--kafka", f"127.0.0.1:{port}", cwd=tmp_path)
    _one_error_line(res, "Kafka", f"127.0.0.1:{port}")


def test_milvus_down(base_env: dict[str, str], kafka_bootstrap: str, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    env = {**base_env, "FACESTREAM_GALLERY__MILVUS_URI": f"http://127.0.0.1:{port}"}
    res = _run(env, "--kafka", kafka_bootstrap, cwd=tmp_path)
    _one_error_line(res, "Milvus", f"127.0.0.1:{port}")


def test_catalogue_database_down(
    base_env: dict[str, str], kafka_bootstrap: str, tmp_path: Path
) -> None:
    (port,) = free_ports(1)
    env = {
        **base_env,
        "FACESTREAM_GALLERY__CATALOGUE_URL": f"postgresql+psycopg://fs@127.0.0.1:{port}/fs",
    }
    res = _run(env, "--kafka", kafka_bootstrap, cwd=tmp_path)
    _one_error_line(res, "catalogue database", f"127.0.0.1:{port}")


def test_ray_cluster_down(base_env: dict[str, str], kafka_bootstrap: str, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    env = {**base_env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    res = _run(env, "--kafka", kafka_bootstrap, cwd=tmp_path)
    _one_error_line(res, "Ray", f"RAY_ADDRESS=127.0.0.1:{port}")


def test_local_ray_start_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A local start that times out (a loaded machine) is tried again, up to three times
    in all; three times, it is one StartupFailed line. The failure is forced at the call
    into Ray: whether Ray times out cannot be arranged on demand."""
    from pipeline.config.stream import StreamConfig
    from pipeline.errors import StartupFailed

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    calls: list[int] = []

    def flaky(**kwargs: object) -> None:
        calls.append(1)
        if len(calls) < procs.RAY_START_ATTEMPTS:
            raise RuntimeError("The current node timed out during startup")

    import ray

    monkeypatch.setattr(ray, "init", flaky)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    assert cluster.start_ray(StreamConfig()) is True
    assert len(calls) == procs.RAY_START_ATTEMPTS == 3

    def broken(**kwargs: object) -> None:
        raise RuntimeError("The current node timed out during startup\n  at ...")

    monkeypatch.setattr(ray, "init", broken)
    with pytest.raises(StartupFailed, match=r"^Ray: cannot start or join a local Ray"):
        cluster.start_ray(StreamConfig())
    with pytest.raises(StartupFailed, match=r"^Ray: cannot start or join a local Ray"):
        procs.init_ray(include_dashboard=False)  # `facestream serve` and `train`
