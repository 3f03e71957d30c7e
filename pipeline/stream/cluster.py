"""Ray for the pipeline: a cluster named by ``RAY_ADDRESS``, else a local one sized for
the actors and replicas the stream config asks for."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import numpy as np
import ray

from pipeline.config.stream import StreamConfig
from pipeline.errors import StartupFailed

log = logging.getLogger(__name__)
RAY_START_ATTEMPTS = 2
REACH_TIMEOUT_S = 5.0


def logical_cpus(c: StreamConfig) -> float:
    """Ray CPUs the pipeline reserves: workers, analyzer, embedder and search replicas,
    ingesters."""
    embedders = (
        c.embedder.autoscaling.max_replicas if c.embedder.autoscaling else c.embedder.replicas
    )
    return (
        c.workers.count * c.workers.num_cpus
        + c.embedder.num_cpus * embedders
        + c.search.num_cpus * c.search.replicas
        + c.ingest.num_cpus * max(len(c.cameras), 1)
    )


def start_ray(cfg: StreamConfig) -> bool:
    """Connect to (or start) Ray for the pipeline; True when this call started it (and
    must stop it)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        init_ray(address=os.environ["RAY_ADDRESS"], log_to_driver=False)  # a cluster
    else:
        # Logical CPUs for scheduling the fractional actors; the OS shares the real cores.
        init_ray(
            address="local",
            num_cpus=max(os.cpu_count() or 1, int(np.ceil(logical_cpus(cfg))) + 1),
            include_dashboard=False,
            log_to_driver=False,
        )
    return True


def init_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` for every facestream process (run, serve, train), failing as
    one ``StartupFailed`` line naming Ray instead of a traceback.

    A local start is tried twice: on a loaded machine Ray's node can miss its own
    start-up deadline ("The current node timed out during startup") and succeed on the
    next try. A cluster address that refuses TCP fails at once (Ray itself retries it
    for minutes)."""
    address = kwargs.get("address") or os.environ.get("RAY_ADDRESS")
    joining = bool(address) and address != "local"
    if joining:
        _check_reachable(str(address))
    attempts = 1 if joining else RAY_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises plain Exceptions (RuntimeError, TimeoutError...)
            if ray.is_initialized():
                ray.shutdown()
            if attempt == attempts:
                where = address if joining else "a local Ray"
                raise StartupFailed("Ray", f"cannot start or join {where} ({exc})") from None
            log.warning("Ray did not start (%s); trying once more", exc)


def _check_reachable(address: str) -> None:
    """Ray retries an unreachable cluster address for minutes before it gives up; a
    plain ``host:port`` (the GCS) that refuses a TCP connection fails at once instead."""
    if "://" in address or address in ("auto", "local") or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        raise StartupFailed(
            "Ray", f"no Ray cluster answers at RAY_ADDRESS={address} ({exc})"
        ) from None
