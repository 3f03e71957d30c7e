"""The request gate: ASGI middleware in front of the REST app and the web UI that decides
what a request may send before the app reads a byte of its body.

For every request with a body:

1. **Who**: a request that needs the token (the API's writes, and its reads unless
   ``gallery.auth_reads`` is off) must carry the bearer token or a signed-in browser's
   cookie with its CSRF header; every ``/ui`` POST but the sign-in itself must carry a
   valid session cookie (its CSRF field, in the body, is checked by the page). Else 401.
2. **How much**: uploads may send ``gallery.max_request_bytes``; the sign-in and the
   UI's other forms (a name, a few ids) a few KiB. A larger Content-Length is refused at
   once; a body without one (chunked) is counted as it arrives and cut past the limit.
   Else 413.
3. **How long**: the body must be in within ``gallery.body_timeout_s`` (the anonymous
   sign-in: ``login_body_timeout_s``). A client that trickles its body holds a request
   slot of the replica only that long. Else 408.

The app gets an exception when a body is cut, and whatever it answers is replaced by the
gate's answer. Answers are ``{"error": code, "detail": message}`` and close the
connection, so the rest of a refused body is never read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The sign-in form (token, next page) and the UI's small forms (CSRF, a name, ids).
SMALL_BODY = 16 * 1024
LOGIN_PATH = "/ui/login"
CODES = {
    400: "bad_request",
    401: "unauthorized",
    408: "request_timeout",
    413: "request_too_large",
}


@dataclass(frozen=True)
class Admission:
    """What one request may send: ``limit`` bytes within ``timeout_s``; ``refusal`` is
    a (status, message) to answer instead, before any body is read."""

    limit: int
    timeout_s: float
    refusal: tuple[int, str] | None = None
    limit_name: str = "gallery.max_request_bytes"  # named in the 413, to say what to raise


Policy = Callable[[str, str, HTTPConnection], Admission | None]


class _Cut(Exception):
    """The body passed its limit or its deadline: the gate answers instead of the app."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestGate:
    """``policy(method, path, connection)`` gives the request's admission (None: no
    body expected, nothing to gate)."""

    def __init__(self, app: ASGIApp, *, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)  # headers and cookies only: the body is not touched
        # In a worker thread: checking a browser session reads the revocation list.
        admission = await run_in_threadpool(self.policy, scope["method"], scope["path"], conn)
        if admission is None:
            await self.app(scope, receive, send)
            return
        if admission.refusal is not None:
            status, detail = admission.refusal
            extra = {"www-authenticate": "Bearer"} if status == 401 else None
            await answer(send, status, detail, extra)
            return
        declared = conn.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await answer(send, 400, "invalid Content-Length")
                return
            if int(declared) > admission.limit:
                await answer(send, 413, _too_large(admission))
                return
        await self._admitted(scope, receive, send, admission)

    async def _admitted(
        self, scope: Scope, receive: Receive, send: Send, admission: Admission
    ) -> None:
        deadline = time.monotonic() + admission.timeout_s
        seen = 0
        cut: _Cut | None = None
        started = False
        body_done = False

        async def counted() -> Message:
            nonlocal seen, cut, body_done
            if cut is not None:
                raise cut
            if body_done:
                return await receive()  # after the body: only a disconnect can come
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                cut = _Cut(408, f"the request body did not arrive within "
                                f"{admission.timeout_s:g} s")  # fmt: skip
                raise cut from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > admission.limit:
                    cut = _Cut(413, _too_large(admission))
                    raise cut
                body_done = not message.get("more_body", False)
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if cut is not None:
                return  # the app's answer to a body it could not read: ours replaces it
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if cut is None:
                raise
        if cut is not None and not started:
            await answer(send, cut.status, cut.detail)


def _too_large(admission: Admission) -> str:
    return f"request body larger than {admission.limit} bytes ({admission.limit_name})"


async def answer(
    send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    body = json.dumps({"error": CODES[status], "detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    # The client may still be sending: close the connection rather than read the rest.
    raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
