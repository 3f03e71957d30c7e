"""The local Milvus server is reachable on loopback only (issue 17): the binary binds every
port on all interfaces, so it runs in a network namespace of its own, reached through
the supervisor's forwarders on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest

from pipeline.gallery.milvus_server import STATE_FILE, LocalMilvus
from pipeline.gallery.vectors import Snapshot, VectorStore
from pipeline.procs import free_ports

pytestmark = pytest.mark.integration


def _server_tree(server: LocalMilvus) -> list[psutil.Process]:
    state = json.loads((server.root / STATE_FILE).read_text())
    supervisor = psutil.Process(int(state["pid"]))
    return [supervisor, *supervisor.children(recursive=True)]


def _interfaces(pid: int) -> set[str]:
    # /proc/<pid>/net/dev lists the interfaces of that process's network namespace.
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return {line.split(":", 1)[0].strip() for line in lines}


def _routable_addresses() -> list[str]:
    out = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%", 1)[0])
            if not (ip.is_loopback or ip.is_link_local):
                out.append(str(ip))
    return out


def _live(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _answers(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def assert_loopback_only(server: LocalMilvus) -> list[psutil.Process]:
    """No process of the server listens beyond loopback, as seen from this machine."""
    procs = _server_tree(server)
    assert len(procs) >= 2, procs  # the supervisor and the binary
    own_ns = os.readlink("/proc/self/ns/net")
    exposed = []
    for p in procs:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and not ipaddress.ip_address(c.laddr.ip).is_loopback:
                exposed.append((p.pid, p.name(), c.laddr))
        if os.readlink(f"/proc/{p.pid}/ns/net") != own_ns:
            # psutil reads this namespace's socket tables; a process in another one must
            # be in a namespace that nothing outside can reach: loopback only.
            assert _interfaces(p.pid) == {"lo"}, (p.pid, p.name(), _interfaces(p.pid))
    assert not exposed, exposed
    state = json.loads((server.root / STATE_FILE).read_text())
    for host in _routable_addresses():
        for port in (server.port, int(state["metrics_port"])):
            assert not _answers(host, port), (host, port)
    return procs


def _store(uri: str) -> VectorStore:
    return VectorStore(uri, prefix="t_loopback", alias="t_loopback_active", index_type="HNSW")


def _write(uri: str) -> np.ndarray:
    store = _store(uri)
    try:
        name = store.create("loopback-v1", 8, replace=True)
        vecs = np.eye(8, dtype=np.float32)[:4]
        rows = [{"face_id": f"f{i}", "identity_id": f"p{i}", "crop": ""} for i in range(4)]
        store.insert(name, "loopback-v1", rows, vecs)
        return vecs
    finally:
        store.close()


def _finds_and_drops(uri: str, vecs: np.ndarray) -> None:
    store = _store(uri)
    try:
        name = store.collection_name("loopback-v1")
        hits = store.search(Snapshot(name, "loopback-v1"), vecs[2:3], "loopback-v1", limit=1)
        assert hits[0][0].face_id == "f2" and hits[0][0].similarity == pytest.approx(1.0)
        store.drop(name)
    finally:
        store.close()


def _search_works(uri: str) -> None:
    _finds_and_drops(uri, _write(uri))


def test_local_milvus_listens_on_loopback_only_and_serves(milvus_local: LocalMilvus) -> None:
    assert_loopback_only(milvus_local)
    _search_works(milvus_local.uri)


def test_restart_and_release_keep_loopback_and_leave_nothing_running() -> None:
    root = Path(tempfile.mkdtemp(prefix="fs-milvus-lo-", dir="/tmp"))
    server = LocalMilvus(root / "milvus", free_ports(1)[0])
    try:
        server.attach()
        first = assert_loopback_only(server)
        vecs = _write(server.uri)
        server.restart()  # its graceful stop is cut short (SETTINGS): the writes survive
        assert not _live(first), _live(first)
        second = assert_loopback_only(server)
        _finds_and_drops(server.uri, vecs)
        assert server.release() is True
        psutil.wait_procs(second, timeout=10)
        assert not _live(second), _live(second)
        assert not _answers("127.0.0.1", server.port)
    finally:
        server.release()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
