"""Embedded single-node Kafka broker, driven through ``scripts/kafka.sh``.

Used by the test suite and by ``facestream run`` when no external Kafka is configured::

    with LocalKafka(port=0) as bootstrap:
        producer = KafkaProducer(bootstrap_servers=bootstrap)
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

from pipeline.files import PRIVATE_UMASK, private_dir
from pipeline.procs import free_ports

log = logging.getLogger(__name__)

KAFKA_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "kafka.sh"

# Resolving ~45 jars from Maven Central the first time; instant once cached.
FETCH_TIMEOUT_S = 900.0
# kafka.sh may spend up to 30 s on a graceful shutdown before it escalates to SIGKILL.
STOP_TIMEOUT_S = 60.0


class KafkaError(RuntimeError):
    """The embedded broker could not be fetched, started or stopped."""


class LocalKafka:
    """A KRaft broker+controller on 127.0.0.1, started and stopped by ``scripts/kafka.sh``.

    Args:
        port: client port; 0 picks a free one.
        data_dir: broker state (data, logs, pid file). ``None`` uses a temporary directory
            that is removed by :meth:`stop`; an explicit directory is kept, and a broker
            restarted on it keeps its topics.
        controller_port: KRaft controller port; ``None`` picks a free one.
        version: Kafka version to run (the script's default when ``None``).
        cache_dir: where the jars are cached (``$FACESTREAM_CACHE`` or
            ``~/.cache/facestream`` when ``None``).
        start_timeout: seconds to wait for the broker to answer metadata.
        stop_with_caller: stop the broker if this Python process dies without calling
            :meth:`stop` (a watchdog in the script watches our pid).
        script: path to ``kafka.sh``; defaults to the one in the repository.
    """

    def __init__(
        self,
        port: int = 9092,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        controller_port: int | None = None,
        version: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        stop_with_caller: bool = True,
        script: str | os.PathLike[str] | None = None,
    ) -> None:
        if port < 0 or (controller_port is not None and controller_port <= 0):
            raise ValueError("ports must be positive (or port=0 for a free one)")
        self.script = Path(script) if script is not None else KAFKA_SCRIPT
        self._requested_port = port
        self._requested_controller_port = controller_port
        self._requested_data_dir = Path(data_dir) if data_dir is not None else None
        self.version = version
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.start_timeout = start_timeout
        self.stop_with_caller = stop_with_caller

        self.port = port
        self.controller_port = controller_port
        self.data_dir: Path | None = self._requested_data_dir
        self._owns_data_dir = False
        self._running = False

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._running

    def fetch(self) -> None:
        """Resolve the Kafka jars into the cache (a no-op when they are already there)."""
        self._run("fetch", timeout=FETCH_TIMEOUT_S)

    def start(self) -> str:
        """Start the broker and return its bootstrap servers once it answers metadata."""
        if self._running:
            return self.bootstrap_servers
        self._check_script()
        self.fetch()

        port, controller_port = self._requested_port, self._requested_controller_port
        free = [p for p in free_ports(3) if p not in (port, controller_port)]
        self.port = port or free.pop()
        self.controller_port = controller_port or free.pop()
        if self.port == self.controller_port:
            raise ValueError("controller_port must differ from port")
        if self._requested_data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="facestream-kafka-"))
            self._owns_data_dir = True
        else:
            self.data_dir = private_dir(self._requested_data_dir.resolve())

        try:
            # The script bounds its own wait; the margin covers its stop-on-timeout path.
            out = self._run("start", timeout=self.start_timeout + STOP_TIMEOUT_S)
        except BaseException:
            # Covers a timeout or Ctrl-C while the JVM may already be up.
            self._stop_quietly()
            self._cleanup_data_dir()
            raise
        self._running = True
        lines = out.strip().splitlines()
        if not lines or lines[-1] != self.bootstrap_servers:
            log.warning("kafka.sh start printed %r, expected %s", out, self.bootstrap_servers)
        log.info("Kafka broker up at %s (data %s)", self.bootstrap_servers, self.data_dir)
        return self.bootstrap_servers

    def stop(self) -> None:
        """Stop the broker (waiting for it to exit) and remove a temporary data dir."""
        if self.data_dir is None:
            return
        try:
            self._run("stop", timeout=STOP_TIMEOUT_S)
            self._running = False
        finally:
            self._cleanup_data_dir()

    def is_alive(self) -> bool:
        """Whether the broker process runs and answers metadata (``kafka.sh status``)."""
        if self.data_dir is None:
            return False
        try:
            self._run("status", timeout=15.0)
        except KafkaError:
            return False
        return True

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"LocalKafka({self.bootstrap_servers}, data_dir={self.data_dir}, {state})"

    def _check_script(self) -> None:
        if not self.script.is_file():
            raise KafkaError(
                f"Kafka launcher not found at {self.script}; LocalKafka needs the repository's "
                "scripts/kafka.sh (it is not part of an installed wheel)"
            )
        if shutil.which("bash") is None:
            raise KafkaError("bash is needed to run scripts/kafka.sh")

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KAFKA_PORT"] = str(self.port)
        if self.controller_port is not None:
            env["KAFKA_CONTROLLER_PORT"] = str(self.controller_port)
        if self.data_dir is not None:
            env["KAFKA_DATA_DIR"] = str(self.data_dir)
        if self.version is not None:
            env["KAFKA_VERSION"] = self.version
        if self.cache_dir is not None:
            env["FACESTREAM_CACHE"] = str(self.cache_dir)
        env["KAFKA_START_TIMEOUT"] = str(max(1, round(self.start_timeout)))
        if self.stop_with_caller:
            env["KAFKA_OWNER_PID"] = str(os.getpid())
        else:
            env.pop("KAFKA_OWNER_PID", None)
        return env

    def _run(self, command: str, *, timeout: float) -> str:
        self._check_script()
        try:
            proc = subprocess.run(
                ["bash", str(self.script), command],
                env=self._env(),
                # The broker's log segments are camera frames (faces): owner-only.
                umask=PRIVATE_UMASK,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise KafkaError(f"kafka.sh {command} did not finish within {timeout:.0f}s") from exc
        if proc.returncode != 0:
            detail = "\n".join(part for part in (proc.stdout.strip(), proc.stderr.strip()) if part)
            raise KafkaError(f"kafka.sh {command} failed (exit {proc.returncode}):\n{detail}")
        return proc.stdout

    def _stop_quietly(self) -> None:
        try:
            self._run("stop", timeout=STOP_TIMEOUT_S)
        except KafkaError as exc:
            log.warning("could not stop the Kafka broker: %s", exc)
        self._running = False

    def _cleanup_data_dir(self) -> None:
        if self._owns_data_dir and self.data_dir is not None and not self._running:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
            self._owns_data_dir = False
