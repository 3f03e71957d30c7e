"""The gallery's REST app: FastAPI, its routers, the request gate and the error table.

``create_app(gallery, config)`` builds the app of one gallery; the routers are
module-level (``pipeline.serve.routes.*``, ``pipeline.serve.web.*``) and reach the
gallery through the shared context on ``app.state.ctx``.

Every write needs ``Authorization: Bearer <token>`` (``gallery.api_token``) or a signed-in
browser's cookie with its CSRF header; so do reads and searches unless
``gallery.auth_reads`` is turned off (they list people and name faces). ``/healthz`` is
open and says up or down only. The token is a ``SecretStr`` end to end: compared in
constant time, never formatted into a message or a log line.

Expected failures map to 4xx answers ``{"error": code, "detail": message}`` through one
table (``errors.py``); only bugs give a 500; a store that cannot be reached is a 503.
"""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from pipeline.config.gallery import GalleryConfig
from pipeline.errors import FacestreamError
from pipeline.gallery.review import Review
from pipeline.gallery.service import Gallery
from pipeline.serve import auth
from pipeline.serve.context import ApiContext, make_context
from pipeline.serve.errors import error_body, http_status
from pipeline.serve.gate import LOGIN_PATH, SMALL_BODY, Admission, Policy, RequestGate
from pipeline.serve.routes import identities, ops, recognition, review
from pipeline.serve.web import web_router

# Multipart framing and the form fields beside the images.
BODY_SLACK = 1024 * 1024
# The enrolment's metadata (a JSON object) is the largest non-file field.
MAX_FIELD_BYTES = 128 * 1024
# Searches and verifications are reads: open when gallery.auth_reads is off.
READ_POSTS = frozenset({"/search", "/verify"})
UI_UPLOADS = re.compile(r"^/ui/identities(/[^/]+/faces)?$")


def max_request_bytes(config: GalleryConfig, face_max_bytes: int) -> int:
    """``gallery.max_request_bytes``, or room for a full enrolment: every image at the
    face core's byte limit, plus the multipart framing."""
    if config.max_request_bytes is not None:
        return config.max_request_bytes
    return face_max_bytes * config.max_images_per_request + BODY_SLACK


def admission_policy(ctx: ApiContext) -> Policy:
    """Who may send which body, how large and for how long (see ``gate.py``)."""
    config = ctx.config
    uploads = max_request_bytes(config, ctx.gallery.face_config.limits.max_bytes)

    def admit(method: str, path: str, conn: HTTPConnection) -> Admission:
        if path == LOGIN_PATH:
            return Admission(SMALL_BODY, config.login_body_timeout_s, limit_name="a sign-in")
        if path.startswith("/ui/"):
            if ctx.sessions.current(conn) is None:
                return Admission(0, 0.0, refusal=(401, "sign in first: no valid session"))
            if UI_UPLOADS.match(path):
                return Admission(uploads, config.body_timeout_s)
            return Admission(SMALL_BODY, config.body_timeout_s, limit_name="a form without files")
        open_read = not config.auth_reads and path in READ_POSTS
        if not open_read and auth.principal(ctx.sessions, auth.bearer(conn), conn, method) is None:
            return Admission(0, 0.0, refusal=(401, "missing or invalid bearer token"))
        return Admission(uploads, config.body_timeout_s)

    return admit


def create_app(
    gallery: Gallery, config: GalleryConfig, review_service: Review | None = None
) -> FastAPI:
    """The FastAPI app of one gallery."""
    docs = config.api_docs
    app = FastAPI(
        title="facestream gallery",
        version="1",
        description="Enrol and remove people; identify faces 1:N (open set) and verify 1:1.",
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        # Parsing limits of every form (FastAPI's defaults allow 1000 files and fields).
        form_limits={
            "max_files": config.max_images_per_request + 1,
            "max_fields": 128,
            "max_part_size": MAX_FIELD_BYTES,
        },
    )
    ctx = make_context(gallery, config, review_service)
    app.state.ctx = ctx
    app.add_middleware(RequestGate, policy=admission_policy(ctx))

    @app.exception_handler(FacestreamError)
    async def _facestream_error(request: Request, exc: FacestreamError) -> JSONResponse:
        return JSONResponse(status_code=http_status(exc), content=error_body(exc))

    for router in (ops.router, identities.router, recognition.router, review.router):
        app.include_router(router)
    app.include_router(web_router())
    return app
