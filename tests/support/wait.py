"""One way to wait for something in a test: poll until it holds, or fail saying what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    what: str,
    cond: Callable[[], T],
    timeout_s: float,
    *,
    every_s: float = 0.5,
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``cond`` every ``every_s`` until it returns something true, and return that;
    after ``timeout_s``, fail the test naming ``what`` (with ``context()``, a log tail,
    when given). ``cond`` may itself fail the test early (a process that exited)."""
    deadline = time.monotonic() + timeout_s
    while not (found := cond()):
        if time.monotonic() > deadline:
            detail = f":\n{context()}" if context is not None else ""
            pytest.fail(f"not within {timeout_s:.0f} s: {what}{detail}")
        time.sleep(every_s)
    return found
