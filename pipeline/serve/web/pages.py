"""What every page of the web UI shares: the templates, the page response (with its
headers), the signed-in dependency, the check of a state-changing form, uploads.

Every page needs a signed-in browser (``auth.py``): the pages show face crops, which are
biometric data, so they are never public, whatever ``gallery.auth_reads`` says. Every
form that changes state carries the session's CSRF token and is checked here before
anything runs. Failures a person can fix (a rejected photo, an unknown name) are shown on
the page they came from; the JSON error handler is for API clients.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse

from pipeline.errors import FacestreamError
from pipeline.serve import auth
from pipeline.serve.context import ApiContext, Ctx
from pipeline.serve.errors import http_status

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 60
# Pages load nothing from elsewhere and run no inline script: a stored name that slipped
# past escaping still could not execute.
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
# Results a redirect names in ?done=, so a reload after a POST repeats nothing.
NOTICES = {
    "enrolled": "Enrolled.",
    "added": "Photos added.",
    "removed": "Identity removed: its faces, vectors of every model version and crops.",
    "labelled": "Cluster labelled: its best faces were enrolled.",
    "merged": "Clusters merged.",
    "purged": "Cluster purged: its faces and crops were deleted.",
    "feedback": "Feedback recorded.",
    "signed_out": "Signed out.",
}


def _format_s(ts: float | None) -> str:
    if ts is None:
        return "–"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_ms(ts_ms: float | None) -> str:
    return "–" if ts_ms is None else _format_s(ts_ms / 1000)


def segment(value: str) -> str:
    """``value`` as one URL path segment (face ids hold colons, camera ids may hold '/')."""
    return quote(value, safe="")


TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
TEMPLATES.filters["ms"] = _format_ms
TEMPLATES.filters["when"] = _format_s
TEMPLATES.filters["seg"] = segment


class TooLarge(Exception):
    """An uploaded photo over ``face.limits.max_bytes`` (shown on the form's page)."""


def page(
    request: Request, ctx: ApiContext, template: str, status: int = 200, **values: Any
) -> HTMLResponse:
    sess = ctx.sessions.current(request)
    done = request.query_params.get("done")
    html = TEMPLATES.get_template(template).render(
        csrf=sess.csrf if sess else "",
        csrf_field=auth.CSRF_FIELD,
        signed_in=sess is not None,
        notice=NOTICES.get(done or ""),
        **values,
    )
    return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def safe_next(target: str | None) -> str:
    # Only our own pages: never an open redirect to another site.
    if target and target.startswith("/ui/") and "//" not in target and "\\" not in target:
        return target
    return "/ui/identities"


def signed_in(request: Request, ctx: Ctx) -> auth.Session:
    """The browser's session; without one, a redirect to the sign-in page."""
    sess = ctx.sessions.current(request)
    if sess is None:
        where = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, headers={"Location": f"/ui/login?next={quote(where)}"})
    return sess


SignedIn = Annotated[auth.Session, Depends(signed_in)]


def refused(request: Request, ctx: ApiContext, csrf: str) -> HTMLResponse | None:
    """The answer to a state-changing form that must not run, else None."""
    sess = ctx.sessions.current(request)
    if sess is None:
        return page(request, ctx, "login.html", 401, next=safe_next(None), error=None)
    if not auth.csrf_ok(sess, csrf):
        return page(
            request,
            ctx,
            "message.html",
            403,
            title="Form expired",
            message="The form's security token is missing or belongs to another "
            "session. Reload the page and try again.",
            section="",
        )
    return None


def failure(request: Request, ctx: ApiContext, exc: FacestreamError, **values: Any) -> HTMLResponse:
    return page(
        request,
        ctx,
        "message.html",
        http_status(exc),
        title="Not done",
        message=str(exc),
        **{"section": "", **values},
    )


async def uploads(ctx: ApiContext, files: list[UploadFile] | None) -> list[tuple[str, bytes]]:
    max_bytes = ctx.gallery.face_config.limits.max_bytes
    out = []
    # A file input left empty still posts one part, with no name and no bytes.
    for i, f in enumerate(files or []):
        data = await f.read(max_bytes + 1)
        if not f.filename and not data:
            continue
        name = f.filename or f"photo {i + 1}"
        if len(data) > max_bytes:
            raise TooLarge(f"{name}: larger than {max_bytes} bytes, nothing stored")
        out.append((name, data))
    return out


def session_of(request: Request, ctx: ApiContext) -> auth.Session:
    """The session of a form that :func:`refused` let through."""
    sess = ctx.sessions.current(request)
    assert sess is not None
    return sess
