"""What every route of the REST app and the web UI shares, and the dependencies that give
it to them (the FastAPI full-stack template's ``deps``): the gallery, its settings, the
review service, the face-core lock, the sessions, the sign-in throttle and the audit.

One ``ApiContext`` lives on ``app.state.ctx``; routes are module-level functions that
ask for it (``Ctx``) and for a principal (``Writer``, ``Reader``): nothing closes over a
replica's gallery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from pipeline.config.gallery import GalleryConfig
from pipeline.gallery import audit
from pipeline.gallery.review import Review
from pipeline.gallery.service import Gallery
from pipeline.serve.auth import Sessions, principal

T = TypeVar("T")
log = logging.getLogger("facestream.api")
_bearer = HTTPBearer(auto_error=False, description="The gallery.api_token.")


class LoginThrottle:
    """Wrong sign-in tokens per client address in a sliding window (per replica: the
    token itself is long and random; this keeps a guessing client slow and visible)."""

    def __init__(self, failures: int, window_s: float) -> None:
        self.failures = failures
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._seen.setdefault(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        now = time.monotonic()
        with self._lock:
            times = self._recent(client, now)
            if len(times) < self.failures:
                return None
            return max(1.0, times[0] + self.window_s - now)

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._recent(client, now).append(now)
            if len(self._seen) > 10_000:  # bounded: forget the quietest addresses
                for key in [k for k, v in self._seen.items() if not v][:5000]:
                    del self._seen[key]


@dataclass
class ApiContext:
    gallery: Gallery
    config: GalleryConfig
    review: Review
    sessions: Sessions
    throttle: LoginThrottle
    # One face-core computation at a time per replica: the CPU embedder already uses
    # every core, and dlib's detectors are not documented as thread-safe.
    compute: threading.Lock = field(default_factory=threading.Lock)

    def run(self, fn: Callable[[], T]) -> T:
        with self.compute:
            return fn()

    async def run_off_loop(self, fn: Callable[[], T]) -> T:
        """The face core takes seconds: in a worker thread (waiting for the lock there
        too), the event loop keeps answering the other requests meanwhile."""
        return await run_in_threadpool(self.run, fn)

    def audit(
        self, request: Request, who: str, action: str, subject: str | None, **detail: Any
    ) -> None:
        audit.record(
            self.gallery.catalogue,
            actor=who,
            client=client_address(request),
            action=action,
            subject=subject,
            **detail,
        )


def make_context(
    gallery: Gallery, config: GalleryConfig, review: Review | None = None
) -> ApiContext:
    catalogue = gallery.catalogue
    sessions = Sessions(
        config.api_token,
        secure=config.ui.secure_cookie,
        hours=config.ui.session_hours,
        revoked=lambda nonce: audit.session_revoked(catalogue, nonce),
        revoke=lambda nonce, expires: audit.revoke_session(catalogue, nonce, expires),
    )
    return ApiContext(
        gallery=gallery,
        config=config,
        review=review if review is not None else Review(gallery),
        sessions=sessions,
        throttle=LoginThrottle(config.ui.login_failures, config.ui.login_window_s),
    )


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def get_context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


Ctx = Annotated[ApiContext, Depends(get_context)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def unauthorised(ctx: ApiContext) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail="missing or invalid bearer token"
        if ctx.config.api_token is not None
        else "writes are disabled: the server has no gallery.api_token",
        headers={"WWW-Authenticate": "Bearer"},
    )


def authorised(request: Request, ctx: Ctx, creds: Bearer) -> str:
    """The principal of a write, or of a read of faces (never open, whatever
    ``gallery.auth_reads`` says); else 401."""
    who = principal(ctx.sessions, creds, request, request.method)
    if who is None:
        raise unauthorised(ctx)
    return who


def reader(request: Request, ctx: Ctx, creds: Bearer) -> str | None:
    """The principal of a read; reads are open when ``gallery.auth_reads`` is off."""
    if not ctx.config.auth_reads:
        return principal(ctx.sessions, creds, request, request.method)
    return authorised(request, ctx, creds)


Authorised = Annotated[str, Depends(authorised)]
Reader = Annotated[str | None, Depends(reader)]
