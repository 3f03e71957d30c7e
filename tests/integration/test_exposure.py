"""What `facestream serve` and `facestream run` expose on their defaults (issue 17): every
socket that any process they start listens on is bound to loopback, and Ray's dashboard
agent refuses a job submission (a shell command) without the cluster's token.

Run as a user would: the real commands as subprocesses, with their own local Milvus
server, local Ray and (for `run`) local Kafka broker; the sockets are read from the OS
for the whole process tree."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from pipeline.models.store import ModelStore
from pipeline.procs import free_ports
from tests.support.wait import wait_until

pytestmark = pytest.mark.integration

FACESTREAM = str(Path(sys.executable).with_name("facestream"))
TOKEN = "exposure-test-token-0123456789"
START_S = 600.0  # a 2-core machine starting Milvus, Ray and Serve beside other tests
JOB_API = "/api/job_agent/jobs/"


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _tree(root: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return [root, *root.children(recursive=True)]
    return []


def _listening(procs: list[psutil.Process]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, command) of every listening TCP socket of ``procs``."""
    pids = {p.pid: p for p in procs}
    out = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            with contextlib.suppress(psutil.Error):
                cmd = " ".join(pids[conn.pid].cmdline())
                out.append((conn.laddr.ip, conn.laddr.port, conn.pid, cmd))
    return out


def _wait_until(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path
) -> None:
    def running_and_ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(
                f"{what}: the process exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
            )
        return ready()

    wait_until(what, running_and_ready, START_S, context=lambda: log.read_text()[-4000:])


def _agent_ports(procs: list[psutil.Process]) -> list[int]:
    agents = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if "DashboardAgent" in " ".join(p.cmdline()):
                agents.append(p)
    return [port for _, port, _, _ in _listening(agents)]


def _check_exposure(root: psutil.Process, marker: Path, *others: psutil.Process) -> None:
    procs = _tree(root) + list(others)
    sockets = _listening(procs)
    # The parts are there (so the check below is not vacuous): Ray's GCS, raylet and
    # dashboard agent, and the local Milvus server.
    commands = " ".join(cmd for *_, cmd in sockets)
    for part in ("gcs_server", "raylet", "DashboardAgent", "ServeReplica", "milvus"):
        assert part in commands, f"no listening socket of {part}: {sockets}"
    exposed = [s for s in sockets if not _loopback(s[0])]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(map(str, exposed))

    # Ray's job API: a shell command submitted without the token is refused and never
    # runs; the same agent answers a request that carries the token.
    ports = _agent_ports(procs)
    job_api = []  # the agent's ports that route the job API (the others: metrics, gRPC)
    for port in ports:
        with contextlib.suppress(httpx.HTTPError):
            r = httpx.post(
                f"http://127.0.0.1:{port}{JOB_API}",
                json={"entrypoint": f"touch {marker}", "submission_id": "exposure-probe"},
                timeout=30,
            )
            assert r.status_code >= 400, f"job accepted without the token on {port}: {r.text}"
            if r.status_code in (401, 403):
                job_api.append(port)
    assert job_api, f"no dashboard agent port refused the job for want of a token: {ports}"
    for port in job_api:
        r = httpx.get(
            f"http://127.0.0.1:{port}{JOB_API}no-such-job",
            headers={"Authorization": f"Bearer {os.environ['RAY_AUTH_TOKEN']}"},
            timeout=30,
        )
        assert r.status_code not in (401, 403), (port, r.status_code, r.text[:300])
    assert not marker.exists(), "an unauthenticated job ran"


@pytest.fixture
def user_env(tmp_path: Path, model_store: ModelStore) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "FACESTREAM_GALLERY__DATA_DIR": str(tmp_path / "gallery"),
        "FACESTREAM_GALLERY__LOCAL_MILVUS_PORT": str(free_ports(1)[0]),
        "FACESTREAM_GALLERY__API_TOKEN": TOKEN,
        "FACESTREAM_MODELS__STORE": str(model_store.root),
    }
    for name in (
        "RAY_ADDRESS",
        "FACESTREAM_GALLERY__MILVUS_URI",
        "FACESTREAM_GALLERY__CATALOGUE_URL",
    ):
        env.pop(name, None)
    yield env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_listens_on_loopback_only_and_ray_needs_its_token(
    user_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_ports(1)[0]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [FACESTREAM, "serve", "--port", str(port)],
            env=user_env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def up() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
            return False

        _wait_until("the REST API answers", up, proc, log)
        _check_exposure(psutil.Process(proc.pid), tmp_path / "pwned-serve")
    finally:
        _stop(proc)
    # Stopped on its own Ray: no serve.shutdown() killing the controller mid-task.
    output = log.read_text(errors="replace")
    assert "graceful_shutdown failed" not in output, output[-3000:]
    assert proc.returncode == 0, output[-3000:]


def test_run_listens_on_loopback_only_and_ray_needs_its_token(
    user_env: dict[str, str], tmp_path: Path, shared_dir: Path
) -> None:
    clip = shared_dir / "data" / "video" / "short_hamilton_clip.mp4"
    log = tmp_path / "run.log"
    env = {k: v for k, v in user_env.items() if not k.startswith("FACESTREAM_STREAM__KAFKA")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [FACESTREAM, "run", "--source", f"cam={clip}", "--loop", "--duration", "1200",
             "--kafka-data", str(tmp_path / "kafka")],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    live = Path(user_env["FACESTREAM_MODELS__STORE"]) / ".live" / f"{proc.pid}.json"
    try:
        # The pipeline announces itself once Serve's deployments and the workers are up.
        _wait_until("the pipeline announces itself", live.is_file, proc, log)
        # The local broker's JVM outlives the script that started it: found by its pid file.
        broker = psutil.Process(int((tmp_path / "kafka" / "broker.pid").read_text()))
        assert any(s[2] == broker.pid for s in _listening([broker])), "the broker listens nowhere"
        _check_exposure(psutil.Process(proc.pid), tmp_path / "pwned-run", broker)
        _check_status_of_live_run(env, tmp_path, proc, log)
    finally:
        _stop(proc)
    _check_quiet_terminal(log.read_text(errors="replace"), proc.returncode)


def _check_status_of_live_run(
    env: dict[str, str], tmp_path: Path, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """`facestream status` beside the live run, with no options but the broker when the
    run could not take the well-known port: every part up, Serve's row included, exit 0
    (issue 22: it said serve down, and it could not join a Ray on loopback)."""
    started = "local Kafka broker at "
    _wait_until("the run prints its broker", lambda: started in log.read_text(), proc, log)
    kafka = log.read_text().split(started, 1)[1].split()[0]
    opts = [] if kafka == "127.0.0.1:9092" else ["--kafka", kafka]
    res = subprocess.run(
        [FACESTREAM, "status", "--json", *opts], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    doc = json.loads(res.stdout)
    parts = {p["name"]: p for p in doc["parts"]}
    assert res.returncode == 0 and doc["ok"], (parts, res.stderr[-2000:])
    assert parts["serve"]["status"] == "ok", parts["serve"]
    assert {"kafka", "models", "gallery", "serve"} <= set(parts), parts


# A Ray or Serve log record as Ray prints it: "INFO 2026-12-04 02:20:10,123 serve ..." or
# "2026-12-04 02:20:10,123\tINFO worker.py:..." (its driver logger).
RAY_LOG_LINE = re.compile(
    r"^\s*(\(\w+(, pid=\d+)?\)\s)?((DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL))"
)


def _check_quiet_terminal(output: str, returncode: int | None) -> None:
    """What an operator sees of a normal `facestream run` and its stop: facestream's
    own lines only, no Ray log records, no lines of Ray's processes, no traceback
    (issue 22)."""
    noisy = [
        line
        for line in output.splitlines()
        if RAY_LOG_LINE.match(line)
        or "(raylet)" in line
        or "(ServeController" in line
        or "Traceback" in line
    ]
    assert not noisy, "\n".join(noisy[:20])
    assert "Ray's log: " in output  # where those lines went instead
    assert returncode in (0, 130), output[-3000:]  # 130: stopped with Ctrl-C (SIGINT)
