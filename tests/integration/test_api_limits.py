"""The REST API's gate, on a real uvicorn server over a real gallery (Milvus server,
SQLite catalogue, the bootstrapped model store): reads need the token by default, a
body that needs the token or is too large is refused before it is read, and the face
core never blocks the event loop."""

from __future__ import annotations

import io
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr
from starlette.formparsers import MultiPartParser

from pipeline.config.face import FaceConfig
from pipeline.config.gallery import GalleryConfig
from pipeline.config.models import ModelsConfig
from pipeline.gallery.service import Gallery
from pipeline.models.store import ModelStore
from pipeline.serve.api import BODY_SLACK, create_app, max_request_bytes
from tests.support.servers import serve_app

pytestmark = [pytest.mark.integration]

LIMIT = 2 * 1024 * 1024
CHUNK = b"\0" * (256 * 1024)
STREAM_TOTAL = 512 * 1024 * 1024  # what a client would send if nothing stopped it
# Loopback socket buffers hold a few MB: a body refused early is consumed far below this.
CONSUMED_BOUND = 48 * 1024 * 1024


@dataclass
class Server:
    url: str
    token: str
    gallery: Gallery
    app: Any

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    model_store: ModelStore,
    milvus_space_module: dict[str, str],
) -> Iterator[Server]:
    token = f"tok-{uuid.uuid4().hex}"
    cfg = GalleryConfig(
        data_dir=tmp_path_factory.mktemp("limits-gallery"),
        api_token=SecretStr(token),
        max_request_bytes=LIMIT,
        **milvus_space_module,  # type: ignore[arg-type]
    )
    assert cfg.auth_reads  # the default under test
    gallery = Gallery.from_settings(
        cfg, FaceConfig(), ModelsConfig(store=model_store.root), store=model_store
    )
    app = create_app(gallery, cfg)
    try:
        with serve_app(app, "api-limits-server") as url:
            yield Server(url, token, gallery, app)
    finally:
        gallery.close()


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the multipart bodies the server starts to parse (Starlette's real parser)."""
    calls: list[int] = []
    real = MultiPartParser.parse

    async def counted(self: MultiPartParser) -> Any:
        calls.append(1)
        return await real(self)

    monkeypatch.setattr(MultiPartParser, "parse", counted)
    return calls


class Body:
    """A streamed (chunked, no Content-Length) multipart body that counts what it gave."""

    def __init__(self, total: int = STREAM_TOTAL) -> None:
        self.total = total
        self.sent = 0
        self.boundary = "fsboundary"

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": f"multipart/form-data; boundary={self.boundary}"}

    def __iter__(self) -> Iterator[bytes]:
        head = (
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="images"; '
            'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        self.sent += len(head)
        yield head
        while self.sent < self.total:
            self.sent += len(CHUNK)
            yield CHUNK


def _post_streamed(url: str, body: Body, headers: dict[str, str]) -> httpx.Response | None:
    """POST the stream; None when the server closed the connection before httpx could
    read its answer (the body was refused either way)."""
    try:
        return httpx.post(url, content=iter(body), headers={**body.headers, **headers}, timeout=60)
    except httpx.TransportError:
        return None


def _raw_headers_only(server: Server, path: str, length: int, extra: str = "") -> bytes:
    """Send only the request head, announcing ``length`` body bytes, and read the answer:
    it can only come before the body, since none is sent."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{extra}"
                "Content-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {length}\r\n\r\n"
            ).encode()
        )
        return s.recv(65536)


def test_the_default_limit_fits_a_full_enrolment() -> None:
    cfg = GalleryConfig()
    assert max_request_bytes(cfg, 1000) == 1000 * cfg.max_images_per_request + BODY_SLACK
    assert max_request_bytes(GalleryConfig(max_request_bytes=5), 1000) == 5


def test_reads_need_the_token_by_default_and_healthz_names_nobody(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for path in ("/identities", "/identities/x", "/gallery"):
            r = c.get(path)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        r = c.post("/search", files={"image": ("a.jpg", b"123", "image/jpeg")})
        assert r.status_code == 401
        r = c.post("/verify", files={"image": ("a.jpg", b"123")}, data={"identity_id": "x"})
        assert r.status_code == 401
        health = c.get("/healthz")
        assert health.status_code == 200
        assert set(health.json()) == {"status", "model_version", "active_collection", "identities"}
        assert c.get("/identities", headers=server.auth).status_code == 200


def test_an_anonymous_upload_is_refused_before_its_body_is_read(
    server: Server, parses: list[int]
) -> None:
    raw = _raw_headers_only(server, "/identities", 50 * 1024**3)
    assert raw.startswith(b"HTTP/1.1 401"), raw[:200]
    body = Body()
    r = _post_streamed(f"{server.url}/identities", body, {})
    assert r is None or r.status_code == 401
    assert body.sent < CONSUMED_BOUND, f"the client sent {body.sent} bytes"
    # The search of an anonymous client is refused the same way (reads need the token).
    body = Body()
    r = _post_streamed(f"{server.url}/search", body, {})
    assert r is None or r.status_code == 401
    assert body.sent < CONSUMED_BOUND
    assert parses == []  # no multipart body was ever parsed


def test_a_body_over_the_limit_gets_413_before_or_while_it_streams(
    server: Server, parses: list[int]
) -> None:
    auth = f"Authorization: Bearer {server.token}\r\n"
    raw = _raw_headers_only(server, "/identities", LIMIT + 1, extra=auth)
    assert raw.startswith(b"HTTP/1.1 413"), raw[:200]
    assert b"max_request_bytes" in raw
    assert parses == []
    # Without a Content-Length the body is counted as it arrives and cut at the limit.
    before = server.gallery.catalogue.counts()
    body = Body()
    r = _post_streamed(f"{server.url}/identities", body, server.auth)
    assert r is None or r.status_code == 413, r.text if r is not None else None
    assert body.sent < CONSUMED_BOUND, f"the client sent {body.sent} bytes"
    assert server.gallery.catalogue.counts() == before
    # A body under the limit still gets through to the app (and its own checks).
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post(
            "/identities",
            files=[("images", ("junk.jpg", b"junk", "image/jpeg"))],
            data={"name": "x"},
            headers=server.auth,
        )
    assert r.status_code == 422 and "enrollment_rejected" in r.text


def test_healthz_answers_while_a_search_computes(server: Server) -> None:
    """The search's face core blocks (on events, not a timing window) while /healthz is
    asked; with the face core on the event loop, /healthz could not answer."""
    entered, release = threading.Event(), threading.Event()
    real = server.gallery.search_image

    def slow_search(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(120), "the test never released the search"
        return real(*args, **kwargs)

    buf = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buf, "PNG")
    searched: list[httpx.Response] = []

    def search() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            searched.append(
                c.post(
                    "/search",
                    files={"image": ("grey.png", buf.getvalue(), "image/png")},
                    headers=server.auth,
                )
            )

    server.gallery.search_image = slow_search  # type: ignore[method-assign]
    t = threading.Thread(target=search)
    try:
        t.start()
        assert entered.wait(60), "the search never reached the face core"
        health: list[int] = []
        h = threading.Thread(
            target=lambda: health.append(httpx.get(f"{server.url}/healthz", timeout=60).status_code)
        )
        h.start()
        h.join(30)  # a guard against a hung test; the check is that it answered at all
        assert health == [200], "/healthz did not answer while a search computed"
    finally:
        release.set()
        t.join(120)
        del server.gallery.search_image
    assert searched and searched[0].status_code < 500, searched[0].text if searched else None
