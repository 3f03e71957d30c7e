"""The Serve application of the facestream RayService (KubeRay 1.5, ray.io/v1).

Why a supervisor and not the pipeline itself: ``facestream run`` is a Ray *driver*. It
deploys the embedder, search and analyzer Serve applications imperatively (with typed
settings, not the ``args`` dict a serveConfigV2 ``import_path`` builder receives) and owns
the recognition and ingest actors, which live only as long as the driver does. A
RayService, on the other hand, only turns Ready (and only routes to a new cluster during
an upgrade) once every application of its ``serveConfigV2`` is RUNNING; an empty config
never does. So ``serveConfigV2`` names this one small application: one replica that runs
the driver as a child process, and whose ``check_health`` fails when the driver has
exited, so Serve replaces the replica (and with it the driver) and the RayService status
shows the pipeline's health. The driver's own applications have other names; Serve's
declarative ``apply_config`` only deletes applications that were deployed declaratively,
so a KubeRay config update never removes them.

The chart mounts this file from a ConfigMap on every Ray node and puts its folder on
PYTHONPATH; the import path is ``facestream_rayservice:app_builder``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

# A graceful stop: SIGINT is the CLI's Ctrl-C, after which ``facestream run`` stops the
# ingesters, lets the workers commit their Kafka offsets and deletes its Serve apps.
STOP_GRACE_S = 60.0

# The child starts through this Python stub, not straight from the replica: a Ray worker
# thread may have SIGINT blocked, and both the signal mask and ignored handlers survive
# exec, which would leave the driver deaf to the graceful stop above. A handler that is a
# Python function is reset to the default on exec, so the exec'd Python installs its
# KeyboardInterrupt handler again.
_EXEC_STUB = (
    "import os, signal, sys; "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM}); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class PipelineSupervisor:
    """Runs ``command`` (the pipeline driver) while this replica lives."""

    def __init__(self, command: list[str], ray_address: str | None = None) -> None:
        if ray_address is None:
            import ray

            # This replica's own cluster: the driver joins it instead of starting one.
            ray_address = ray.get_runtime_context().gcs_address
        self.command = list(command)
        env = {**os.environ, "RAY_ADDRESS": ray_address}
        self.proc = subprocess.Popen([sys.executable, "-c", _EXEC_STUB, *self.command], env=env)

    def check_health(self) -> None:
        """Serve calls this periodically; raising marks the replica unhealthy."""
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"the pipeline driver {self.command} exited with code {code}")

    def status(self) -> dict[str, Any]:
        code = self.proc.poll()
        return {"pid": self.proc.pid, "running": code is None, "exit_code": code}

    async def __call__(self, request: Any) -> dict[str, Any]:
        return self.status()

    def stop(self, grace_s: float = STOP_GRACE_S) -> int:
        """Stop the driver: SIGINT, then SIGKILL after ``grace_s``; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def __del__(self) -> None:
        # Serve calls __del__ when it stops a replica (scale-down, redeploy, shutdown).
        proc = getattr(self, "proc", None)
        if proc is not None:
            self.stop()


def command_from_args(args: dict[str, Any]) -> list[str]:
    """The driver command from the serveConfigV2 ``args`` (a non-empty list of strings)."""
    command = args.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(c, str) and c for c in command)
    ):
        raise ValueError(f"args.command must be a non-empty list of strings, got {command!r}")
    return command


def app_builder(args: dict[str, Any]) -> Any:
    """The serveConfigV2 ``import_path`` target: one supervisor replica."""
    from ray import serve

    deployment = serve.deployment(
        PipelineSupervisor,
        name="PipelineSupervisor",
        num_replicas=1,
        # The driver's own actors and replicas reserve the CPUs; this one only waits.
        ray_actor_options={"num_cpus": 0},
        health_check_period_s=10,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=STOP_GRACE_S + 10,
    )
    return deployment.bind(command_from_args(args))
