"""Local process and port helpers shared by the launchers of local services (the Kafka
broker, the Milvus server) and the live-pipeline announcements."""

from __future__ import annotations

import contextlib
import os
import socket


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
