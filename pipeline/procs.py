"""Local process and port helpers shared by the launchers of local services (the Kafka
broker, the Milvus server, Ray) and the live-pipeline announcements."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import StartupFailed

log = logging.getLogger(__name__)
# Three, not two: one suite run beside a CPU-bound process saw two starts in a row miss
# Ray's 30 s node deadline (2026-12-04).
RAY_START_ATTEMPTS = 3
REACH_TIMEOUT_S = 5.0
# Ray reads these itself (Ray >= 2.52): token authentication, and where the token is.
RAY_AUTH_MODE = "RAY_AUTH_MODE"
RAY_AUTH_TOKEN = "RAY_AUTH_TOKEN"
RAY_AUTH_TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
# Ray binds its servers to the node's routable address on Linux; with this at 0 (the
# setting that keeps laptops' clusters off the network on macOS and Windows) the node's
# address is 127.0.0.1 and every Ray server of the node listens on loopback only.
RAY_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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


RAY_LOGGERS = ("ray", "ray.serve", "ray.train", "ray.data", "ray.tune")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT. SIGTERM is how Kubernetes and process managers
    stop a long-running command; SIGINT (Ctrl-C) is set explicitly because a shell starts
    background jobs with it ignored, and a child inherits that."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def ray_logs_to_file(path: Path) -> Path:
    """Send this process's Ray and Serve log records to ``path`` instead of the terminal,
    whose lines are the operator's (``facestream run`` prints its own summary).

    ``ray.serve`` puts a terminal handler on its logger when imported and ``ray.init``
    only re-formats the handlers the ``ray`` logger has, so both are replaced here, after
    that import and before ``ray.init``.
    """
    import ray.serve  # noqa: F401  (configures its logger on import)

    from pipeline.files import private_dir, private_file

    private_dir(path.parent)  # beside the gallery's faces, and naming its people: owner-only
    os.close(private_file(path, os.O_WRONLY | os.O_APPEND))
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
    return path


def init_ray(**kwargs: Any) -> None:
    """``ray.init(**kwargs)`` for every facestream process (run, serve, train), failing as
    one ``StartupFailed`` line naming Ray instead of a traceback.

    A local start is tried up to three times: on a loaded machine Ray's node can miss
    its own start-up deadline ("The current node timed out during startup") and succeed
    on a later try. A cluster address that refuses TCP fails at once (Ray itself retries it
    for minutes)."""
    import ray

    address = kwargs.get("address") or os.environ.get("RAY_ADDRESS")
    joining = bool(address) and address != "local"
    if joining:
        _check_reachable(str(address))
    # Started here, or a local facestream's cluster joined by `status` or `models
    # promote`: on loopback, with this user's token (the environment's, or
    # ~/.ray/auth_token).
    local = not joining or _on_loopback(str(address))
    if local:
        require_token_auth()
    attempts = 1 if joining else RAY_START_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            if not local:
                ray.init(**kwargs)
            else:
                with loopback_node(log_monitor=kwargs.get("log_to_driver", True)):
                    ray.init(**kwargs)
            return
        except Exception as exc:  # Ray raises plain Exceptions (RuntimeError, TimeoutError...)
            if ray.is_initialized():
                ray.shutdown()
            if attempt == attempts:
                where = address if joining else "a local Ray"
                raise StartupFailed("Ray", f"cannot start or join {where} ({exc})") from None
            log.warning("Ray did not start (%s); try %d of %d", exc, attempt + 1, attempts)


def _on_loopback(address: str) -> bool:
    """Whether ``address`` (host:port) names this machine's loopback. Ray rewrites such
    an address to the machine's own IP before connecting, where a local facestream
    node does not listen; :func:`loopback_node` keeps it on 127.0.0.1."""
    import ipaddress

    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def require_token_auth() -> None:
    """Token authentication for a Ray cluster this process starts: ``RAY_AUTH_MODE=token``
    and a token. Without it, Ray's dashboard agent runs a job (a shell command) for
    anyone who reaches it. ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` name the token;
    otherwise it is Ray's default file ``~/.ray/auth_token``, created here owner-only
    (Ray would create it readable by every user of the machine), so the ``facestream``
    commands that attach later (``models promote``, ``status``) find it.

    An explicit ``RAY_AUTH_MODE=disabled`` is the operator's choice: honoured, loudly."""
    mode = os.environ.get(RAY_AUTH_MODE)
    if mode is not None and mode.lower() != "token":
        log.warning(
            "%s=%s: the local Ray cluster runs WITHOUT token authentication; anyone who "
            "reaches its ports (loopback only) can run code as this user",
            RAY_AUTH_MODE,
            mode,
        )
        return
    os.environ[RAY_AUTH_MODE] = "token"
    if os.environ.get(RAY_AUTH_TOKEN) or os.environ.get(RAY_AUTH_TOKEN_PATH):
        _refresh_ray_config()
        return
    path = Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # a token other users can read is no token
    _refresh_ray_config()


def _refresh_ray_config() -> None:
    # Ray caches its config (the auth mode among it) when its extension is loaded; a
    # process that imported Ray before the mode was set re-reads it here.
    import sys

    if "ray._raylet" in sys.modules:
        sys.modules["ray._raylet"].Config.initialize("")


@contextlib.contextmanager
def loopback_node(*, log_monitor: bool = True) -> Iterator[None]:
    """While a local Ray node starts: its address is 127.0.0.1, so GCS, raylet, object
    manager, agents, workers and Serve replicas all listen on loopback only. The node's
    processes keep the setting (they inherit it at their start); this process and the
    programs it starts later get their environment back.

    Without ``log_monitor`` the node starts no log monitor: that process tails every
    worker's log files to forward their lines to drivers, and a driver started with
    ``log_to_driver=False`` (``facestream run``'s, the tests') reads none of them, while
    the tailing costs CPU that a small machine would rather spend on faces. The files
    are still written (``<temp dir>/session_*/logs``)."""
    import ray._private.parameter as ray_parameter
    import ray._private.ray_constants as ray_constants

    before_env = os.environ.get(RAY_CLUSTER_SWITCH)
    before_const = ray_constants.ENABLE_RAY_CLUSTER
    before_params = ray_parameter.RayParams
    agent_port = free_ports(1)[0]

    class AgentOnFreePort(ray_parameter.RayParams):
        """Ray's dashboard agent serves its HTTP API (jobs) on the fixed port 52365 unless
        told otherwise, and ``ray.init`` cannot tell it: a second local cluster on the
        machine (another facestream process, a test session's) would start without one.
        Each local node gets a free port instead."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", agent_port)
            kwargs.setdefault("include_log_monitor", log_monitor)
            super().__init__(*args, **kwargs)

    os.environ[RAY_CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by Ray's node-address lookup
    # Looked up by ray.init at call time; setattr because the name is a class to mypy.
    setattr(ray_parameter, "RayParams", AgentOnFreePort)  # noqa: B010
    try:
        yield
    finally:
        setattr(ray_parameter, "RayParams", before_params)  # noqa: B010
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(RAY_CLUSTER_SWITCH, None)
        else:
            os.environ[RAY_CLUSTER_SWITCH] = before_env
