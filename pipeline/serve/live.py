"""How ``facestream models promote|rollback`` finds a running ``facestream run``.

A running pipeline writes ``<store>/.live/<pid>.json`` (its host, its Ray address and
the settings of its Serve applications; nothing else, so no camera URL or credential is
written) and removes it when it stops. A process id means something only on its own host
(on Kubernetes: its pod), while the store may be a volume that many pods share: only the
announcements of this host are checked for a live process; the others are listed apart
(:func:`elsewhere`), since nothing here can tell whether they still run. :func:`attach`
connects another process to that Ray cluster and returns the applications, ready for a
:class:`pipeline.serve.swap.ServeSwap`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray

from pipeline.config.models import ModelsConfig
from pipeline.config.serve import EmbedderServeConfig, SearchServeConfig
from pipeline.procs import init_ray, pid_alive
from pipeline.serve.apps import ServeApps

log = logging.getLogger(__name__)
LIVE_DIR = ".live"  # <store>/.live/<pid>.json: one per running `facestream run`


def _live_path(store_root: Path, pid: int) -> Path:
    return Path(store_root).resolve() / LIVE_DIR / f"{pid}.json"


def announce(apps: ServeApps) -> Path | None:
    """Write ``<store>/.live/<pid>.json`` for the applications of this process."""
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception as exc:  # no address to give: promotion stays offline
        log.warning("live swap unavailable: %s", exc)
        return None
    path = _live_path(apps.models.store, os.getpid())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "ray_address": address,
        "embedder": apps.embedder.model_dump(mode="json"),
        "search": apps.search.model_dump(mode="json"),
        "models": apps.models.model_dump(mode="json"),
    }
    tmp = path.with_suffix(".tmp")
    # Owner-only: the file names the cluster that runs the gallery.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode only applies to a new file: a .tmp left by a crash keeps its own.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data))
    tmp.replace(path)
    return path


def _announcements(store_root: Path) -> list[dict[str, Any]]:
    folder = Path(store_root).resolve() / LIVE_DIR
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append(data)
    return out


def _here(data: dict[str, Any]) -> bool:
    # Announcements written before the host was recorded count as this host's.
    return data.get("host") in (None, socket.gethostname())


def live_pipelines(store_root: Path) -> list[dict[str, Any]]:
    """The running pipelines of this host announced for the store (stale files of dead
    ones skipped)."""
    return [d for d in _announcements(store_root) if _here(d) and pid_alive(int(d.get("pid", -1)))]


def elsewhere(store_root: Path) -> list[dict[str, Any]]:
    """Announcements for the store from other hosts (pods sharing its volume): running
    pipelines there, or files left by ones that died without removing them."""
    return [d for d in _announcements(store_root) if not _here(d)]


def attach(live: dict[str, Any]) -> ServeApps:
    """The Serve applications of an announced pipeline (connects this process to its
    Ray); never deployed or deleted from here, only swapped."""
    if not ray.is_initialized():
        init_ray(address=live["ray_address"], log_to_driver=False)  # loopback kept
    apps = ServeApps(
        EmbedderServeConfig.model_validate(live["embedder"]),
        SearchServeConfig.model_validate(live["search"]),
        ModelsConfig.model_validate(live["models"]),
    )
    apps.embedder_version = apps.serving_version()
    return apps
