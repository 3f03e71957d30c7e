"""The processes of a running pipeline on this machine, by a stable name: this driver,
every Ray actor (recognition workers, ingesters, Serve replicas and controller), Ray's
own daemons, the Kafka broker and the Milvus server when they run here. ``bench soak``
samples their memory and ``bench stream --budget`` their CPU time."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import ray

# psutil is the copy Ray ships in ray/thirdparty_files, put on sys.path by `import ray`;
# it is not (yet) a dependency of its own.
import psutil  # isort: skip

from pipeline.stream.runner import StreamRunner

__all__ = ["ProcessFinder", "psutil"]


def live_actors() -> dict[str, dict[str, Any]]:
    """actor id -> GCS record of every live actor of the Ray cluster that has a process.

    Read from the GCS actor table rather than ``ray.util.state.list_actors``: the state
    API is served by Ray's dashboard, which facestream does not start."""
    from ray._private.state import actors

    return {
        actor_id: info
        for actor_id, info in actors().items()
        if info.get("State") == "ALIVE" and info.get("Pid")
    }


def _actor_pids() -> dict[str, tuple[str, int]]:
    """actor id -> (label, pid) of every live actor of the Ray cluster."""
    out: dict[str, tuple[str, int]] = {}
    for actor_id, info in live_actors().items():
        cls = str(info.get("ActorClassName") or "actor")
        name = str(info.get("Name") or "")
        label = name.removeprefix("SERVE_REPLICA::") if name else f"{cls} {actor_id[:8]}"
        if name.startswith("SERVE_REPLICA::"):
            label = f"replica {label}"
        elif not name:
            label = f"{cls.rsplit('.', 1)[-1]} {actor_id[:8]}"
        out[actor_id] = (label, int(info["Pid"]))
    return out


def _ray_daemons() -> dict[str, int]:
    """Ray's own daemons (GCS, raylet) when this process started the local Ray."""
    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return {}
    out = {}
    for kind in ("gcs_server", "raylet"):
        for info in getattr(node, "all_processes", {}).get(kind, []):
            proc = getattr(info, "process", None)
            if proc is not None and proc.pid:
                out[f"ray {kind}"] = int(proc.pid)
    return out


def _listener_pid(host: str | None, port: int | None) -> int | None:
    """The local process that listens on ``port`` (None for a remote host, or when the
    process belongs to a user whose sockets this one cannot see)."""
    if port is None or host not in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        return None
    try:
        conns = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


def _kafka_pid(runner: StreamRunner) -> int | None:
    broker = runner.broker
    if broker is not None and broker.data_dir is not None:
        pid_file = broker.data_dir / "broker.pid"  # written by scripts/kafka.sh
        if pid_file.is_file() and pid_file.read_text().strip().isdigit():
            return int(pid_file.read_text().strip())
    first = (runner.cfg.kafka.bootstrap_servers or "").split(",")[0]
    host, _, port = first.rpartition(":")
    return _listener_pid(host, int(port)) if port.isdigit() else None


def _milvus_pid(runner: StreamRunner) -> int | None:
    uri = runner.settings.gallery.milvus_uri or ""
    parsed = urlparse(uri)
    # The binary listens on the proxy port; the supervisor (when local) only waits on it.
    return _listener_pid(parsed.hostname, parsed.port) if parsed.scheme.startswith("http") else None


class ProcessFinder:
    """``finder()``: name -> (kind, pid) of every process of ``runner``'s pipeline now;
    kind is driver, actor, ray, kafka or milvus. An actor keeps its first name (its
    role: ``worker w0``, ``ingest cam``) for as long as it lives."""

    def __init__(self, runner: StreamRunner) -> None:
        self.runner = runner
        self._actor_names: dict[str, str] = {}

    def __call__(self) -> dict[str, tuple[str, int]]:
        found: dict[str, tuple[str, int]] = {"driver": ("driver", psutil.Process().pid)}
        # The pipeline's own actors by what they are (worker w0, ingest camera); the
        # rest (Serve replicas and controller) by their Ray names.
        for i, w in enumerate(self.runner.workers):
            self._actor_names.setdefault(w._actor_id.hex(), f"worker w{i}")
        for cam, a in self.runner.ingesters.items():
            self._actor_names.setdefault(a._actor_id.hex(), f"ingest {cam}")
        for actor_id, (label, pid) in _actor_pids().items():
            name = self._actor_names.setdefault(actor_id, label)
            found[name] = ("actor", pid)
        for name, pid in _ray_daemons().items():
            found[name] = ("ray", pid)
        kafka = _kafka_pid(self.runner)
        if kafka is not None:
            found["kafka broker"] = ("kafka", kafka)
        milvus = _milvus_pid(self.runner)
        if milvus is not None:
            found["milvus server"] = ("milvus", milvus)
        return found
