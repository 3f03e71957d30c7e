"""Local process and port helpers shared by the launchers of local services (the Kafka
broker, the Milvus server, Ray) and the live-pipeline announcements."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any

from pipeline.errors import StartupFailed

log = logging.getLogger(__name__)
RAY_START_ATTEMPTS = 2
REACH_TIMEOUT_S = 5.0


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports on 127.0.0.1 that are free right now (not reserved)."""
    # All sockets stay bound until every port is read, so the ports differ.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (and is not a zombie of ours)."""
    # A finished child of this process stays a zombie until reaped, and a zombie answers
    # signal 0: reap it here (a detached service's starter never waits on it).
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def init_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` for every facestream process (run, serve, train), failing as
    one ``StartupFailed`` line naming Ray instead of a traceback.

    A local start is tried twice: on a loaded machine Ray's node can miss its own
    start-up deadline ("The current node timed out during startup") and succeed on the
    next try. A cluster address that refuses TCP fails at once (Ray itself retries it
    for minutes)."""
    import ray

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
