"""A Ray cluster of several nodes on this machine: a head (``ray start --head``) and
more nodes joined to it (``ray start --address``), each with its own resources and a
custom resource naming it (``node_1``, ``node_2``, ...), on loopback, with token
authentication (``procs.require_token_auth``). ``bench scale`` streams over it, and the
two-node test runs ``facestream run`` on it.

Its processes are found by the temp folder they all name on their command lines and
stopped by signal: ``ray stop`` would stop every other Ray of the machine too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import StartupFailed
from pipeline.procs import free_ports, require_token_auth

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 300.0


def node_resource(i: int) -> str:
    """The custom resource that names node ``i`` (1 is the head)."""
    return f"node_{i}"


def cluster_processes(temp_dir: str) -> list[int]:
    """Pids of the cluster's processes: every Ray process names its temp folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if temp_dir.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
    return pids


def stop_cluster(temp_dir: str) -> None:
    """SIGTERM every process of the cluster, then SIGKILL what is left."""
    for sig, grace in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid in cluster_processes(temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while cluster_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)


def ray_start(temp_dir: str, cpus: int, *args: str) -> None:
    """``ray start`` one node on loopback, its ports free ones; raises with Ray's output
    when it fails."""
    agent, grpc, metrics, env_agent = free_ports(4)
    cmd = [
        RAY, "start", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
        "--disable-usage-stats", f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={grpc}",
        f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={env_agent}",
        "--object-store-memory=200000000", *args,
    ]  # fmt: skip
    env = dict(os.environ)  # token authentication on: this process's RAY_AUTH_* settings
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S, env=env)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StartupFailed("Ray", f"`ray start` failed: {detail[0]}")


@dataclass(frozen=True)
class LocalCluster:
    address: str  # the head's GCS, for RAY_ADDRESS
    temp_dir: str  # named by every process of the cluster


@contextlib.contextmanager
def local_cluster(nodes: int, cpus_per_node: int = 2) -> Iterator[LocalCluster]:
    """A head node and ``nodes - 1`` nodes joined to it; every process is stopped
    afterwards."""
    require_token_auth()
    temp_dir = tempfile.mkdtemp(prefix="fs-rc-", dir="/tmp")  # short: Ray's unix sockets
    port, client = free_ports(2)
    try:
        ray_start(
            temp_dir, cpus_per_node, "--head", f"--port={port}",
            f"--ray-client-server-port={client}", "--include-dashboard=false",
            f'--resources={{"{node_resource(1)}": 1}}',
        )  # fmt: skip
        for i in range(2, nodes + 1):
            ray_start(
                temp_dir, cpus_per_node, f"--address=127.0.0.1:{port}",
                f'--resources={{"{node_resource(i)}": 1}}',
            )  # fmt: skip
        yield LocalCluster(f"127.0.0.1:{port}", temp_dir)
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
