"""The local Milvus server: the real Milvus standalone binary from the PyPI package
``milvus``, one per data folder, shared by every facestream process on this machine.

``facestream run``, ``facestream serve`` and the ``facestream gallery`` commands all
attach to it, so a person enrolled from one shell is searched by the stream running in
another (Milvus Lite serves one process per file and cannot do that).

Lifetime: "last one out turns off the lights". The first process to attach starts the
server as a detached supervisor (``python -m pipeline.gallery.milvus_server``); every
attached process holds a shared lock on ``<dir>/users.lock`` while it uses it; on
release a process that can take that lock exclusively is the last user and stops the
server. A crashed user's lock is dropped by the kernel, so a server is never kept up
for a dead process, and one whose last user crashed is reused by the next attach.

Only the proxy port is fixed (``gallery.local_milvus_port``, the one clients dial); the
server's internal ports (etcd, coordinators, metrics) are picked free by the package.

Loopback only: the binary binds every component port on all interfaces (its ``ip``
settings only change the address it advertises), and it runs without authorization, so
anyone on the network could read or plant faces. The supervisor therefore runs it in a
network namespace of its own that has nothing but loopback, and forwards the two ports
facestream dials (the proxy and the metrics/health web service) from 127.0.0.1 on the
host into it (:class:`_Forwarder`). Where namespaces are not allowed, it says so in a
warning and runs the binary in the host's namespace as before.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.files import PRIVATE_UMASK, private_dir, private_file
from pipeline.gallery.errors import GalleryUnavailable
from pipeline.gallery.loopback import (
    Forwarder,
    IsolationUnavailable,
    bind_loopback,
    isolate_network,
)
from pipeline.procs import free_ports, pid_alive

START_TIMEOUT_S = 180.0
START_ATTEMPTS = 3
# Milvus flushes its segments and closes etcd on SIGTERM; give it time before a SIGKILL.
# Its stop can hang on components retrying calls to ones already stopped; what it has
# acknowledged is in its write-ahead log by then, so a SIGKILL loses nothing (see SETTINGS).
STOP_GRACE_S = 10.0
STATE_FILE = "server.json"
log = logging.getLogger(__name__)


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _healthy(state: dict[str, int]) -> bool:
    url = f"http://127.0.0.1:{state['metrics_port']}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return b"OK" in resp.read()
    except OSError:
        return False


class LocalMilvus:
    """The local Milvus server of ``root`` (its data, logs and state), on ``port``."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root.expanduser().resolve()
        self.port = port
        self._users_fd: int | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _state(self) -> dict[str, int] | None:
        try:
            state = json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if state.get("port") != self.port or not pid_alive(int(state["pid"])):
            return None
        return state

    def running(self) -> bool:
        state = self._state()
        return state is not None and _healthy(state)

    # -- attach / release -----------------------------------------------------------------

    def attach(self, *, start: bool = True, log: Callable[[str], None] | None = None) -> str:
        """Use the server (starting it when none runs and ``start``); its URI."""
        if self._users_fd is not None:
            return self.uri
        private_dir(self.root)
        start_fd = private_file(self.root / "start.lock")
        try:
            fcntl.flock(start_fd, fcntl.LOCK_EX)  # one starter at a time
            users_fd = private_file(self.root / "users.lock")
            # Blocks while a last user is stopping the server: we then start a new one.
            fcntl.flock(users_fd, fcntl.LOCK_SH)
            try:
                if not self.running():
                    if not start:
                        raise GalleryUnavailable(
                            f"no local Milvus server at {self.uri} (data {self.root})"
                        )
                    if log is not None:
                        log(f"starting the local Milvus server ({self.uri}, data {self.root})")
                    self._start()
                    self._warn_if_exposed(log)
            except BaseException:
                os.close(users_fd)
                raise
            self._users_fd = users_fd
        finally:
            fcntl.flock(start_fd, fcntl.LOCK_UN)
            os.close(start_fd)
        return self.uri

    def _warn_if_exposed(self, notify: Callable[[str], None] | None) -> None:
        state = self._state() or {}
        if state.get("loopback_only", True):
            return
        text = (
            f"the local Milvus server ({self.root}) listens on ALL interfaces of this "
            "machine without authorization: this system does not allow the network "
            "namespace that keeps it on loopback (see its supervisor.log)"
        )
        log.warning(text)
        if notify is not None:
            notify(f"warning: {text}")

    def release(self) -> bool:
        """Stop using the server; stop it too when no other process uses it. True when
        this call stopped it."""
        fd, self._users_fd = self._users_fd, None
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # others still use it; the last of them stops it
            self.stop()
            return True
        finally:
            os.close(fd)

    def __enter__(self) -> str:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- start / stop ---------------------------------------------------------------------

    def _start(self) -> None:
        # The package picks its components' ports by probing for free ones; another
        # program (another Milvus starting beside this one) can take a probed port before
        # the binary binds it. The binary then exits at once: start again, new ports.
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                self._start_once()
                return
            except _PortTaken as exc:
                if attempt == START_ATTEMPTS:
                    raise GalleryUnavailable(str(exc)) from None
                log.warning("local Milvus server: %s; starting again", exc.args[0][:200])

    def _start_once(self) -> None:
        if _port_open(self.port):
            raise GalleryUnavailable(
                f"port {self.port} is taken by another program, so the local Milvus server "
                f"cannot listen there: set gallery.local_milvus_port, or point "
                f"gallery.milvus_uri at that server if it is a Milvus"
            )
        (self.root / STATE_FILE).unlink(missing_ok=True)
        log_path = self.root / "supervisor.log"
        argv = [sys.executable, "-m", __name__, "--data", str(self.root), "--port", str(self.port)]
        with os.fdopen(private_file(log_path, os.O_WRONLY | os.O_APPEND), "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives its starter; stopped by the last user
                # The server's data, logs and state hold face vectors: owner-only.
                umask=PRIVATE_UMASK,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise (_PortTaken if "address already in use" in tail else GalleryUnavailable)(
                    f"the local Milvus server exited at start-up (code {proc.returncode}); "
                    f"{log_path}:\n{tail}"
                )
            if self.running():
                return
            time.sleep(0.5)
        self._signal_group(proc.pid, signal.SIGKILL)
        logs = self.root / "logs" / "milvus-stdout.log"
        tail = logs.read_text(errors="replace")[-1500:] if logs.is_file() else ""
        raise GalleryUnavailable(
            f"the local Milvus server did not answer within {START_TIMEOUT_S:.0f} s "
            f"(logs: {self.root / 'logs'}):\n{tail}"
        )

    def restart(self) -> None:
        """Stop and start the server in place; attached processes stay attached (their
        clients reconnect). For operations and fault tests."""
        self.stop()
        self._start()

    @staticmethod
    def _signal_group(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def stop(self) -> None:
        """Stop the server (the supervisor and the binary: one process group)."""
        try:
            state = json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return
        pid = int(state["pid"])
        # The supervisor alone: it stops the binary; a second SIGTERM to the binary
        # mid-shutdown makes it hang for tens of seconds.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._signal_group(pid, signal.SIGKILL)
        (self.root / STATE_FILE).unlink(missing_ok=True)


class _PortTaken(Exception):
    """The server exited at start-up because a port it had probed was taken meanwhile."""


# Components whose advertised address defaults to the machine's first routable one; inside
# a namespace that has only loopback there is none, and outside it loopback is the one
# address their peers (all in this process tree) need.
COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")
# One server, nothing to hand its segments to: its graceful stop waits out its timeout
# every time (1800 s by default, so the supervisor's SIGKILL after STOP_GRACE_S ended it).
# Inserts are durable in its write-ahead log before they are acknowledged, and a restart
# replays it (tests/integration/test_milvus_server_loopback.py, test_faults.py). A stop
# cut short leaves the components' etcd sessions behind: the restarted server waits for
# them to expire before it loads a collection (24 s with the default 30 s lease, 4 s with
# 10 s; components renew it every third of the lease).
SETTINGS = {"common.gracefulStopTimeout": "3", "common.session.ttl": "10"}


def _isolate(port: int, metrics_port: int) -> list[socket.socket] | None:
    """Bind the host-side ends of the two forwarded ports, then move this process into a
    network namespace of its own (loopback only). The sockets, or None when namespaces
    are not allowed here (the process is then unchanged)."""
    listeners: list[socket.socket] = []
    for p in (port, metrics_port):
        try:
            listeners.append(bind_loopback(p))
        except OSError as exc:
            for sock in listeners:
                sock.close()
            # "address already in use" as the binary words it: the starter then tries
            # again with other free ports.
            why = (exc.strerror or str(exc)).lower()
            print(f"listen tcp 127.0.0.1:{p}: bind: {why}", flush=True)
            raise SystemExit(3) from None
    try:
        isolate_network()
    except IsolationUnavailable as exc:
        for sock in listeners:
            sock.close()
        log.warning(
            "network namespaces are not allowed here (%s): the local Milvus server listens "
            "on ALL interfaces of this machine, without authorization; firewall its ports "
            "or point gallery.milvus_uri at a Milvus server of yours",
            exc,
        )
        return None
    return listeners


def _milvus_server(
    root: Path, port: int, etcd_client: int, etcd_peer: int, metrics_port: int
) -> Any:
    """The package's ``MilvusServer`` (not started): every component on 127.0.0.1, the
    embedded etcd on the given free ports, the metrics on ``metrics_port``."""
    from milvus import MilvusServer, MilvusServerConfig

    etcd_conf = root / "configs" / "etcd-embed.yaml"
    etcd_conf.parent.mkdir(parents=True, exist_ok=True)
    peer = f"http://127.0.0.1:{etcd_peer}"
    client = f"http://127.0.0.1:{etcd_client}"
    etcd_conf.write_text(
        f"name: default\nlisten-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
        f"initial-cluster: default={peer}\nlisten-client-urls: {client}\n"
        f"advertise-client-urls: {client}\n"
    )
    os.environ["ETCD_CONFIG_PATH"] = str(etcd_conf)  # Milvus reads settings from env too

    class _Config(MilvusServerConfig):
        def try_bind_port(self, port: int) -> socket.socket | None:
            # The package probes ports without SO_REUSEADDR, so a server restarted on its
            # port fails for a minute (TIME_WAIT of the old connections); Milvus itself
            # binds with SO_REUSEADDR.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                return None
            return sock

    config = _Config(data_dir=str(root), proxy_port=port, etcd_port=etcd_client)
    for component in COMPONENTS:
        config.set(f"{component}.ip", "127.0.0.1")
    for key, value in SETTINGS.items():
        config.set(key, value)
    server = MilvusServer(config, wait_for_started=True)
    server.webservice_port = metrics_port  # its default 9091/9092 clash with Kafka's
    return server


def _supervise(root: Path, port: int) -> None:
    """Run the binary in the foreground of this process group until SIGTERM."""
    # The embedded etcd's peer port (2380) is not among the package's settings; a fixed
    # port would allow one server per machine, so give etcd a config file of free ports.
    etcd_client, etcd_peer, metrics_port = free_ports(3)
    # First, while this process is single-threaded (a user namespace requires it) and
    # before anything binds a port that must stay in the host's namespace.
    listeners = _isolate(port, metrics_port)

    server = _milvus_server(root, port, etcd_client, etcd_peer, metrics_port)
    stopping = False

    def _term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    server.start()
    # The package extracts the binary and its libraries mode 0755 into the data folder and
    # copies its glog.conf with the mode it has in site-packages (the umask does not
    # apply to either); nothing there needs to be anyone else's.
    for path in [*(root / "bin").iterdir(), *(root / "configs").iterdir()]:
        path.chmod(path.stat().st_mode & 0o700)
    forwarder = Forwarder()
    if listeners is not None:
        # Clients dial the host-side ports; the binary's own may differ inside.
        forwarder.add(listeners[0], port)
        forwarder.add(listeners[1], server.webservice_port)
    else:
        metrics_port = server.webservice_port
    (root / STATE_FILE).write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "port": port,
                "metrics_port": metrics_port,
                "loopback_only": listeners is not None,
            }
        )
    )
    proc = server.server_proc
    assert proc is not None
    while not stopping and proc.poll() is None:
        time.sleep(0.2)
    forwarder.close()  # no new connections to a server that is going away
    if proc.poll() is None:
        # The package's own stop() kills after 1 s; a clean shutdown takes longer.
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    server.server_proc = None
    server.stop()  # closes its log files


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the local Milvus server (supervisor).")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    _supervise(args.data.resolve(), args.port)


if __name__ == "__main__":
    main()
