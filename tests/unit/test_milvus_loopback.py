"""The forwarder that carries clients from 127.0.0.1 of the host into the local Milvus
server's own network namespace: bytes arrive intact both ways, half-closes pass through,
and a finished connection leaves no thread or socket behind."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.gallery.loopback import Forwarder, bind_loopback


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """Echoes everything until the client half-closes, then closes."""
    server = bind_loopback(0)

    def run() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def forwarded() -> Iterator[int]:
    server, _ = _echo_server()
    fwd = Forwarder()
    listener = bind_loopback(0)
    fwd.add(listener, server.getsockname()[1])
    try:
        yield listener.getsockname()[1]
    finally:
        fwd.close()
        server.shutdown(socket.SHUT_RDWR)
        server.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settle(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not check():
        time.sleep(0.02)


def test_bytes_pass_both_ways_and_nothing_leaks(forwarded: int) -> None:
    payload = os.urandom(3 * 1024 * 1024)  # bigger than one relay chunk
    threads, fds = threading.active_count(), _open_fds()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", forwarded)) as client:
            received = bytearray()

            def read(sock: socket.socket = client, into: bytearray = received) -> None:
                while data := sock.recv(65536):
                    into.extend(data)

            reader = threading.Thread(target=read)
            reader.start()
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)  # the half-close reaches the echo server
            reader.join(timeout=10)
            assert not reader.is_alive()
            assert bytes(received) == payload
    _settle(lambda: threading.active_count() <= threads and _open_fds() <= fds)
    assert threading.active_count() <= threads
    assert _open_fds() <= fds


def test_a_closed_target_port_closes_the_client() -> None:
    fwd = Forwarder()
    listener = bind_loopback(0)
    closed = bind_loopback(0)
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    fwd.add(listener, port)
    try:
        with socket.create_connection(("127.0.0.1", listener.getsockname()[1])) as client:
            client.settimeout(5)
            assert client.recv(1) == b""
    finally:
        fwd.close()


def test_without_namespaces_the_supervisor_goes_on_exposed_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Where unshare is refused, the host-side ports are given back (the binary binds
    them itself) and both the supervisor and the process that started it warn."""
    from pipeline.gallery import milvus_server
    from pipeline.gallery.loopback import IsolationUnavailable
    from pipeline.procs import free_ports

    def refused() -> None:
        raise IsolationUnavailable("network namespace: Operation not permitted")

    monkeypatch.setattr(milvus_server, "isolate_network", refused)
    port, metrics = free_ports(2)
    with caplog.at_level(logging.WARNING):
        assert milvus_server._isolate(port, metrics) is None
    assert "listens on ALL interfaces" in caplog.text
    for p in (port, metrics):
        bind_loopback(p).close()  # free again

    server = milvus_server.LocalMilvus(tmp_path, port)
    state = {"pid": os.getpid(), "port": port, "metrics_port": metrics, "loopback_only": False}
    (tmp_path / milvus_server.STATE_FILE).write_text(json.dumps(state))
    told: list[str] = []
    server._warn_if_exposed(told.append)
    assert told and "ALL interfaces" in told[0]
    state["loopback_only"] = True
    (tmp_path / milvus_server.STATE_FILE).write_text(json.dumps(state))
    told.clear()
    server._warn_if_exposed(told.append)
    assert not told
