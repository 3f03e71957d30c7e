"""Clients that announce a body and trickle it, more of them than the API replica works
on at once, on the real server (Ray Serve's proxy, the API and health applications):
`/healthz` answers at once from its own application, an authorised request answers
once the gate has cut the trickling bodies at their deadline, and every trickler gets a
408 instead of holding its slot forever (issue 17)."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from pydantic import SecretStr

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.models.store import ModelStore
from pipeline.procs import free_ports

pytestmark = [pytest.mark.integration]

SLOTS = 2  # gallery.max_ongoing_requests of this server
TRICKLERS = SLOTS + 3
# Each trickler holds a slot until this deadline cuts it: the tricklers take
# ceil(TRICKLERS / SLOTS) deadlines to clear, so the test lasts about three of them.
BODY_TIMEOUT_S = 6.0


@dataclass
class Served:
    url: str
    token: str


@pytest.fixture(scope="module")
def served(
    ray_local: None,
    tmp_path_factory: pytest.TempPathFactory,
    model_store: ModelStore,
    milvus_space_module: dict[str, str],
) -> Iterator[Served]:
    from ray import serve

    from pipeline.serve.api import deploy

    token = f"tok-{uuid.uuid4().hex}"
    cfg = GalleryConfig(
        data_dir=tmp_path_factory.mktemp("slow-gallery"),
        api_token=SecretStr(token),
        host="127.0.0.1",
        port=free_ports(1)[0],
        max_ongoing_requests=SLOTS,
        login_body_timeout_s=BODY_TIMEOUT_S,
        **milvus_space_module,  # type: ignore[arg-type]  # the str settings pydantic parses
    )
    serve.shutdown()  # Serve's HTTP options apply only when it starts
    url = deploy(cfg, FaceConfig(), ModelsConfig(store=model_store.root))
    try:
        yield Served(url, token)
    finally:
        serve.shutdown()


class Trickler:
    """A sign-in that announces 2,000 bytes and sends 9: it waits for the server."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=300)
        self.answer = b""
        self.done = threading.Event()

    def start(self) -> None:
        self.sock.sendall(
            b"POST /ui/login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 2000\r\n\r\n"
            b"token=abc"
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            self.answer = self.sock.recv(65536)
        finally:
            self.sock.close()
            self.done.set()


def test_trickled_bodies_beyond_the_slots_leave_health_and_work_answering(
    served: Served,
) -> None:
    with httpx.Client(base_url=served.url, timeout=300) as c:
        assert c.get("/healthz").status_code == 200  # both applications are up
        tricklers = [Trickler(served.url) for _ in range(TRICKLERS)]
        for t in tricklers:
            t.start()
        # The probe goes to its own application: it answers while the tricklers still
        # hold (or queue for) every slot of the API replica.
        health = c.get("/healthz")
        waiting = sum(not t.done.is_set() for t in tricklers)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert waiting > 0, "every trickler was already answered: the check proved nothing"
        # Authorised work queues behind them only until the gate cuts them.
        r = c.get("/identities", headers={"Authorization": f"Bearer {served.token}"})
        assert r.status_code == 200, r.text
    for t in tricklers:
        assert t.done.wait(600), "a trickler was never answered"
        assert t.answer.startswith(b"HTTP/1.1 408"), t.answer[:300]
