"""Signing in and out, the UI's entry redirect and its static files."""

# No `from __future__ import annotations`: FastAPI resolves the Annotated parameters.
import mimetypes
from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from pipeline.serve import auth
from pipeline.serve.context import Ctx, client_address
from pipeline.serve.web.pages import STATIC, page, refused, safe_next, see_other, session_of

# Form limits: the sign-in and sign-out forms hold a few short fields and no file.
router = APIRouter(include_in_schema=False, form_limits={"max_files": 0, "max_fields": 4})
static_router = APIRouter(include_in_schema=False)


@static_router.get("/ui")
@static_router.get("/ui/")
def home() -> RedirectResponse:
    return see_other("/ui/identities")


@static_router.get("/ui/login")
def login_form(request: Request, ctx: Ctx, next: str | None = None) -> HTMLResponse:
    return page(request, ctx, "login.html", next=safe_next(next), error=None)


@router.post("/ui/login")
def login(
    request: Request,
    ctx: Ctx,
    token_field: Annotated[str, Form(alias="token", max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    target = safe_next(next)
    if ctx.config.api_token is None:
        error = "This server has no gallery.api_token, so nobody can sign in."
        return page(request, ctx, "login.html", 403, next=target, error=error)
    client = client_address(request) or "unknown"
    wait = ctx.throttle.retry_after(client)
    if wait is not None:
        error = f"Too many wrong tokens from {client}: try again in {wait:.0f} s."
        response = page(request, ctx, "login.html", 429, next=target, error=error)
        response.headers["Retry-After"] = str(int(wait))
        return response
    if not auth.token_matches(ctx.config.api_token, token_field):
        ctx.throttle.failed(client)
        return page(request, ctx, "login.html", 401, next=target, error="Wrong token.")
    response = see_other(target)
    sess = ctx.sessions.issue(response)
    ctx.audit(request, sess.principal, "sign_in", None)
    return response


@router.post("/ui/logout")
def logout(request: Request, ctx: Ctx, csrf: Annotated[str, Form(max_length=200)] = "") -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad
    sess = session_of(request, ctx)
    response = see_other("/ui/login?done=signed_out")
    ctx.sessions.end(sess, response)
    ctx.audit(request, sess.principal, "sign_out", None)
    return response


@static_router.get("/ui/static/{name}")
def static(name: str) -> Response:
    # A flat folder of a few files: look the name up, never join a path from the URL.
    files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
    if name not in files:
        raise HTTPException(404, "no such file")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Response(
        files[name].read_bytes(),
        media_type=kind,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )
