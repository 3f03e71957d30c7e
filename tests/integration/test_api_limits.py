"""The REST API's gate, on a real uvicorn server over a real gallery (Milvus server,
SQLite catalogue, the bootstrapped model store): reads need the token by default, a
body that needs the token or is too large is refused before it is read, and the face
core never blocks the event loop."""

from __future__ import annotations

import io
import json
import re
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
from pipeline.serve.app import BODY_SLACK, create_app, max_request_bytes
from tests.support.servers import serve_app

pytestmark = [pytest.mark.integration]

LIMIT = 2 * 1024 * 1024
LOGIN_TIMEOUT_S = 3.0
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
        login_body_timeout_s=LOGIN_TIMEOUT_S,
        ui={"secure_cookie": False, "login_failures": 3},  # plain http to 127.0.0.1 here
        **milvus_space_module,  # type: ignore[arg-type]  # the str settings pydantic parses
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
        # Up or down, nothing else: no model, collection, count or address (issue 17).
        assert health.json() == {"status": "ok"}
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

    server.gallery.search_image = slow_search  # type: ignore[method-assign]  # a slow search on purpose
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


def _raw(server: Server, head: str, body: bytes = b"") -> bytes:
    """One request on a fresh connection, as written; the answer's first bytes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head.encode("utf-8") + b"\r\n" + body)
        return s.recv(65536)


def test_an_anonymous_ui_form_is_refused_before_its_body_is_read(
    server: Server, parses: list[int]
) -> None:
    """Only the sign-in may post without a session: any other /ui form is refused on its
    headers (issue 17: the gate used to skip /ui entirely)."""
    for path in ("/ui/identities", "/ui/identities/x/faces", "/ui/identities/x/remove",
                 "/ui/unknowns/merge", "/ui/logout"):  # fmt: skip
        raw = _raw_headers_only(server, path, 100 * 1024**2)
        assert raw.startswith(b"HTTP/1.1 401"), (path, raw[:200])
    body = Body()
    r = _post_streamed(f"{server.url}/ui/identities", body, {})
    assert r is None or r.status_code == 401
    assert body.sent < CONSUMED_BOUND, f"the client sent {body.sent} bytes"
    assert parses == []


def test_an_anonymous_100_mb_sign_in_is_refused_before_it_is_read(
    server: Server, parses: list[int]
) -> None:
    raw = _raw_headers_only(server, "/ui/login", 100 * 1024**2)
    assert raw.startswith(b"HTTP/1.1 413"), raw[:200]
    assert parses == []
    # Chunked: the parser may see the first few KiB before the count cuts the body.
    body = Body(total=100 * 1024**2)
    r = _post_streamed(f"{server.url}/ui/login", body, {})
    assert r is None or r.status_code == 413
    assert body.sent < CONSUMED_BOUND, f"the client sent {body.sent} bytes"


def test_a_trickled_sign_in_is_cut_at_its_deadline(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as s:
        s.sendall(
            b"POST /ui/login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 2000\r\n\r\n"
            b"token=abc"
        )
        answer = s.recv(65536)  # waits for the server: it must answer by itself
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert f"within {LOGIN_TIMEOUT_S:g} s".encode() in answer


def test_deeply_nested_metadata_and_huge_offsets_are_422(server: Server) -> None:
    deep = "[" * 5000 + "]" * 5000
    nested = json.dumps({"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}})
    with httpx.Client(base_url=server.url, timeout=60, headers=server.auth) as c:
        for meta in ('{"x": ' + deep + "}", nested):
            r = c.post(
                "/identities",
                files=[("images", ("a.jpg", b"junk", "image/jpeg"))],
                data={"name": "x", "metadata": meta},
            )
            assert r.status_code == 422 and "metadata" in r.text, r.text[:300]
        for path in ("/identities?offset=100000000000", "/unknowns?offset=100000000000",
                     "/audit?offset=100000000000", "/identities?limit=100000"):  # fmt: skip
            r = c.get(path)
            assert r.status_code == 422, (path, r.status_code, r.text[:200])


def test_api_docs_are_off_and_the_schema_stays(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/docs").status_code == 404
        assert c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200


def _sign_in(c: httpx.Client, token: str) -> str:
    r = c.post("/ui/login", data={"token": token, "next": "/ui/identities"})
    assert r.status_code == 303, r.text[:300]
    return r.cookies["facestream_session"]


def test_a_copied_cookie_dies_with_the_sign_out(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        cookie = _sign_in(c, server.token)
        page = c.get("/ui/identities")
        assert page.status_code == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        assert c.post("/ui/logout", data={"csrf": csrf.group(1)}).status_code == 303
    with httpx.Client(base_url=server.url, timeout=60) as thief:
        thief.cookies.set("facestream_session", cookie)
        r = thief.get("/ui/identities")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        r = thief.get("/identities")  # the API does not take it either
        assert r.status_code == 401


def test_a_non_ascii_cookie_is_no_session_not_a_500(server: Server) -> None:
    cookie = "facestream_session=\u00e9.1.\u00e9"
    raw = _raw(server, f"GET /ui/identities HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n")
    assert raw.startswith(b"HTTP/1.1 303"), raw[:200]
    raw = _raw(server, f"GET /identities HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n")
    assert raw.startswith(b"HTTP/1.1 401"), raw[:200]


def test_every_change_is_audited_with_its_principal(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=120, headers=server.auth) as c:
        # A rename and a removal of a person enrolled through the library (no face
        # core needed here): both recorded, newest first, by the token's principal.
        enrolled = _enrol_without_faces(server)
        assert c.patch(f"/identities/{enrolled}", json={"name": "Renamed"}).status_code == 200
        assert c.delete(f"/identities/{enrolled}").status_code == 200
        entries = c.get("/audit", params={"subject": enrolled}).json()
        assert [e["action"] for e in entries] == ["remove", "rename"]
        assert {e["actor"] for e in entries} == {"api-token"}
        assert entries[1]["detail"] == {"name": "Renamed"}
        assert all(e["client"] == "127.0.0.1" for e in entries)
    assert httpx.get(f"{server.url}/audit", timeout=60).status_code == 401


def _enrol_without_faces(server: Server) -> str:
    identity_id = uuid.uuid4().hex
    with server.gallery.catalogue.transaction() as con:
        server.gallery.catalogue.add_identity(con, identity_id, "Audited", None, {})
    return identity_id


def test_the_identities_page_costs_the_same_queries_for_any_number_of_rows(
    server: Server,
) -> None:
    """Issue 18: the page made one catalogue query per row for its thumbnails."""
    import sqlalchemy as sa

    engine = server.gallery.catalogue.engine
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    def page_queries(c: httpx.Client) -> int:
        statements.clear()
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            assert c.get("/ui/identities").status_code == 200
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        return len(statements)

    with httpx.Client(base_url=server.url, timeout=60) as c:
        _sign_in(c, server.token)
        _enrol_without_faces(server)
        few = page_queries(c)
        for _ in range(12):
            _enrol_without_faces(server)
        many = page_queries(c)
    assert many == few, f"{few} queries for a short page, {many} for a longer one"


# Last: it leaves 127.0.0.1 throttled for this server's sign-in.
def test_wrong_tokens_are_throttled_per_client(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for _ in range(3):  # gallery.ui.login_failures in this server
            assert c.post("/ui/login", data={"token": "wrong-token-0123456"}).status_code == 401
        r = c.post("/ui/login", data={"token": server.token})
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "Too many wrong tokens" in r.text
