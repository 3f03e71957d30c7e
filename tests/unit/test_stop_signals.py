"""Long-running commands (`run`, `serve`, `gallery milvus`) stop on SIGTERM and SIGINT,
also when started with SIGINT ignored, as a shell starts background jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pipeline.procs import stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_each_signal_sets_the_stop_event(sig: signal.Signals) -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = stop_on_signals()
        assert not stop.is_set()
        os.kill(os.getpid(), sig)
        assert stop.wait(10), f"{sig.name} did not set the stop event"
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_sigint_stops_a_process_that_inherited_it_ignored() -> None:
    code = textwrap.dedent(
        """
        import os, signal, sys
        from pipeline.procs import stop_on_signals
        stop = stop_on_signals()
        print("ready", flush=True)
        sys.exit(0 if stop.wait(60) else 1)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        # What `cmd &` in a non-interactive shell does to the child.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
