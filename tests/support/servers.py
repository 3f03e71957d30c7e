"""An ASGI app (the REST API, the web UI) served for real: uvicorn in a daemon thread on
a free loopback port, for the tests that talk HTTP to it."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from tests.support.wait import wait_until

START_S = 60.0


@contextlib.contextmanager
def serve_app(app: Any, name: str = "test-app") -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a port the OS picks) while the block runs; yields the
    base URL (``http://127.0.0.1:PORT``)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError(f"{name}: the server stopped while starting")
        return bool(server.started)

    try:
        wait_until(f"{name} starts", started, START_S, every_s=0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
