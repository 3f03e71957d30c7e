"""The web UI's routes: server-rendered pages under ``/ui`` and the enrolled-face crop.

Every page needs a signed-in browser (``auth.py``): the pages show face crops, which are
biometric data, so they are never public, whatever ``gallery.auth_reads`` says. Every
form that changes state carries the session's CSRF token and is checked here before
anything runs. Failures a person can fix (a rejected photo, an unknown name) are shown on
the page they came from; the JSON error handler of the API is for API clients.
"""

# No `from __future__ import annotations`: FastAPI resolves the routes' Annotated
# parameters at import, from this module's globals.
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeline.config.gallery import GalleryConfig
from pipeline.errors import FacestreamError
from pipeline.gallery.errors import EnrollmentRejected, IdentityNotFound
from pipeline.gallery.service import Gallery
from pipeline.serve.web import auth

T = TypeVar("T")
Runner = Callable[[Callable[[], Any]], Any]
ReviewGetter = Callable[[], Any]

HERE = Path(__file__).parent
STATIC = HERE / "static"
PAGE_SIZE = 60
EVENTS_SHOWN = 100
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
_bearer = HTTPBearer(auto_error=False)


class TooLarge(Exception):
    """An uploaded photo over ``face.limits.max_bytes`` (shown on the form's page)."""


def _direct(fn: Callable[[], T]) -> T:
    return fn()


def _no_review() -> None:
    return None


def _safe_next(target: str | None) -> str:
    # Only our own pages: never an open redirect to another site.
    if target and target.startswith("/ui/") and "//" not in target and "\\" not in target:
        return target
    return "/ui/identities"


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def web_router(
    gallery: Gallery,
    config: GalleryConfig,
    review: ReviewGetter = _no_review,
    run: Runner = _direct,
) -> APIRouter:
    """The UI's routes over ``gallery``. ``review()`` gives the review service (unknown
    people, events, feedback) or None when that feature is off; ``run`` is the API's
    serialiser of face-core work, so enrolments from the UI and the API queue together."""
    router = APIRouter()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["ms"] = _format_ms
    env.filters["when"] = _format_s
    env.filters["seg"] = _segment
    max_bytes = gallery.face_config.limits.max_bytes
    token = config.api_token

    def page(request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        sess = auth.session(token, request)
        done = request.query_params.get("done")
        html = env.get_template(template).render(
            csrf=sess.csrf if sess else "",
            csrf_field=auth.CSRF_FIELD,
            signed_in=sess is not None,
            review_on=review() is not None,
            notice=NOTICES.get(done or ""),
            **ctx,
        )
        return HTMLResponse(html, status_code=status, headers=PAGE_HEADERS)

    def signed_in(request: Request) -> auth.Session:
        sess = auth.session(token, request)
        if sess is None:
            where = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(303, headers={"Location": f"/ui/login?next={quote(where)}"})
        return sess

    def refused(request: Request, csrf: str) -> HTMLResponse | None:
        """The answer to a state-changing form that must not run, else None."""
        sess = auth.session(token, request)
        if sess is None:
            return page(request, "login.html", 401, next=_safe_next(None), error=None)
        if not auth.csrf_ok(sess, csrf):
            return page(
                request,
                "message.html",
                403,
                title="Form expired",
                message="The form's security token is missing or belongs to another "
                "session. Reload the page and try again.",
                section="",
            )
        return None

    def failure(request: Request, exc: FacestreamError, **ctx: Any) -> HTMLResponse:
        return page(
            request,
            "message.html",
            int(getattr(exc, "http_status", 400)),
            title="Not done",
            message=str(exc),
            **{"section": "", **ctx},
        )

    async def uploads(files: list[UploadFile] | None) -> list[tuple[str, bytes]]:
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

    # -- session ------------------------------------------------------------------------

    @router.get("/ui", include_in_schema=False)
    @router.get("/ui/", include_in_schema=False)
    def home() -> RedirectResponse:
        return _see_other("/ui/identities")

    @router.get("/ui/login", include_in_schema=False)
    def login_form(request: Request, next: str | None = None) -> HTMLResponse:
        return page(request, "login.html", next=_safe_next(next), error=None)

    @router.post("/ui/login", include_in_schema=False)
    def login(
        request: Request,
        token_field: Annotated[str, Form(alias="token")] = "",
        next: Annotated[str, Form()] = "",
    ) -> Response:
        target = _safe_next(next)
        if token is None:
            error = "This server has no gallery.api_token, so nobody can sign in."
            return page(request, "login.html", 403, next=target, error=error)
        if not auth.token_matches(token, token_field):
            return page(request, "login.html", 401, next=target, error="Wrong token.")
        response = _see_other(target)
        auth.issue(token, request, response)
        return response

    @router.post("/ui/logout", include_in_schema=False)
    def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        response = _see_other("/ui/login?done=signed_out")
        auth.end(response)
        return response

    @router.get("/ui/static/{name}", include_in_schema=False)
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

    # -- identities -----------------------------------------------------------------------

    @router.get(
        "/identities/{identity_id}/faces/{face_id}/crop",
        tags=["identities"],
        summary="The stored aligned crop (PNG) of an enrolled face",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {"description": "Unknown face"}},
    )
    def face_crop(
        identity_id: str,
        face_id: str,
        request: Request,
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Response:
        # Always authorised (bearer or session), whatever gallery.auth_reads says: a crop
        # is a face image, not a name.
        if not auth.authorised(token, creds, request):
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        face = next((f for f in gallery.catalogue.faces(identity_id) if f.face_id == face_id), None)
        if face is None:
            raise HTTPException(404, f"no face {face_id} of identity {identity_id}")
        # Revalidated on every view, so a removed person's crops leave the browser's cache
        # at once; unchanged crops cost a 304.
        headers = {"Cache-Control": "private, no-cache", "ETag": f'"{face.crop_sha256}"'}
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        try:
            png = gallery.catalogue.crop_png(face_id)
        except FacestreamError:
            raise HTTPException(404, f"the crop of face {face_id} is not stored") from None
        return Response(png, media_type="image/png", headers=headers)

    @router.get("/ui/identities", include_in_schema=False)
    def identities(
        request: Request,
        _: Annotated[auth.Session, Depends(signed_in)],
        q: Annotated[str | None, Query(max_length=200)] = None,
        page_no: Annotated[int, Query(alias="page", ge=1)] = 1,
    ) -> HTMLResponse:
        return identities_page(request, q=q, page_no=page_no)

    def identities_page(
        request: Request,
        *,
        q: str | None = None,
        page_no: int = 1,
        status: int = 200,
        error: str | None = None,
        verdicts: list[Any] | None = None,
        name: str = "",
    ) -> HTMLResponse:
        rows = gallery.list(limit=PAGE_SIZE + 1, offset=(page_no - 1) * PAGE_SIZE, name_contains=q)
        people = []
        for ident in rows[:PAGE_SIZE]:
            faces = gallery.catalogue.faces(ident.identity_id)
            thumb = faces[0].face_id if faces else None
            people.append({"identity": ident, "thumb": thumb})
        n_id, n_faces = gallery.catalogue.counts()
        pages = {
            "prev": urlencode({"q": q or "", "page": page_no - 1}) if page_no > 1 else None,
            "next": urlencode({"q": q or "", "page": page_no + 1})
            if len(rows) > PAGE_SIZE
            else None,
        }
        return page(
            request,
            "identities.html",
            status,
            section="identities",
            people=people,
            q=q or "",
            pages=pages,
            n_identities=n_id,
            n_faces=n_faces,
            error=error,
            verdicts=verdicts,
            name=name,
            pick=config.enroll_pick,
        )

    @router.post("/ui/identities", include_in_schema=False)
    async def enrol(
        request: Request,
        name: Annotated[str, Form(max_length=200)] = "",
        pick: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
        photos: Annotated[list[UploadFile] | None, File()] = None,
    ) -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        try:
            files = await uploads(photos)
        except TooLarge as exc:
            return identities_page(request, status=413, error=str(exc), name=name)
        if not name.strip() or not files:
            return identities_page(
                request, status=422, error="Give a name and at least one photo.", name=name
            )
        try:
            result = await run_in_threadpool(
                run,
                lambda: gallery.enroll(files, name=name.strip(), pick=pick or None),
            )
        except EnrollmentRejected as exc:
            return identities_page(
                request, status=422, error=str(exc), verdicts=exc.verdicts, name=name
            )
        except FacestreamError as exc:
            return identities_page(request, status=exc_status(exc), error=str(exc), name=name)
        return _see_other(f"/ui/identities/{quote(result.identity.identity_id)}?done=enrolled")

    @router.get("/ui/identities/{identity_id}", include_in_schema=False)
    def identity(
        identity_id: str, request: Request, _: Annotated[auth.Session, Depends(signed_in)]
    ) -> HTMLResponse:
        return identity_page(request, identity_id)

    def identity_page(
        request: Request,
        identity_id: str,
        *,
        status: int = 200,
        error: str | None = None,
        verdicts: list[Any] | None = None,
    ) -> HTMLResponse:
        try:
            detail = gallery.show(identity_id)
        except IdentityNotFound as exc:
            return failure(request, exc, section="identities")
        return page(
            request,
            "identity.html",
            status,
            section="identities",
            person=detail,
            error=error,
            verdicts=verdicts,
            pick=config.enroll_pick,
        )

    @router.post("/ui/identities/{identity_id}/faces", include_in_schema=False)
    async def add_photos(
        identity_id: str,
        request: Request,
        pick: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
        photos: Annotated[list[UploadFile] | None, File()] = None,
    ) -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        try:
            files = await uploads(photos)
        except TooLarge as exc:
            return identity_page(request, identity_id, status=413, error=str(exc))
        if not files:
            return identity_page(request, identity_id, status=422, error="Choose a photo.")
        try:
            await run_in_threadpool(
                run,
                lambda: gallery.enroll(files, identity_id=identity_id, pick=pick or None),
            )
        except EnrollmentRejected as exc:
            return identity_page(
                request, identity_id, status=422, error=str(exc), verdicts=exc.verdicts
            )
        except FacestreamError as exc:
            return identity_page(request, identity_id, status=exc_status(exc), error=str(exc))
        return _see_other(f"/ui/identities/{quote(identity_id)}?done=added")

    @router.get("/ui/identities/{identity_id}/remove", include_in_schema=False)
    def confirm_remove(
        identity_id: str, request: Request, _: Annotated[auth.Session, Depends(signed_in)]
    ) -> HTMLResponse:
        try:
            person = gallery.catalogue.get(identity_id)
        except IdentityNotFound as exc:
            return failure(request, exc, section="identities")
        return page(request, "remove.html", section="identities", person=person)

    @router.post("/ui/identities/{identity_id}/remove", include_in_schema=False)
    async def remove(
        identity_id: str, request: Request, csrf: Annotated[str, Form()] = ""
    ) -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        try:
            await run_in_threadpool(run, lambda: gallery.remove(identity_id))
        except FacestreamError as exc:
            return failure(request, exc, section="identities")
        return _see_other("/ui/identities?done=removed")

    # -- the review loop: unknown people and identification events ------------------------

    def review_or_off(request: Request, section: str) -> tuple[Any, HTMLResponse | None]:
        svc = review()
        if svc is not None:
            return svc, None
        off = page(request, "review_off.html", section=section)
        return None, off

    def identity_choices() -> list[Any]:
        # For the "add to an existing person" selects; a few hundred names at most.
        return gallery.list(limit=500)

    @router.get("/ui/crops/sighting/{face_id:path}", include_in_schema=False)
    def sighting_crop(face_id: str, request: Request) -> Response:
        if auth.session(token, request) is None:
            raise HTTPException(401, "sign in first")
        svc = review()
        if svc is None:
            raise HTTPException(404, "the review loop is off")
        try:
            jpeg = svc.crop_jpeg(face_id)
        except FacestreamError:
            raise HTTPException(404, f"no kept face {face_id}") from None
        # Kept faces expire and can be purged: never served from a stale cache.
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @router.get("/ui/unknowns", include_in_schema=False)
    def unknowns(
        request: Request,
        _: Annotated[auth.Session, Depends(signed_in)],
        page_no: Annotated[int, Query(alias="page", ge=1)] = 1,
    ) -> HTMLResponse:
        return unknowns_page(request, page_no=page_no)

    def unknowns_page(
        request: Request, *, page_no: int = 1, status: int = 200, error: str | None = None
    ) -> HTMLResponse:
        svc, off = review_or_off(request, "unknowns")
        if off is not None:
            return off
        rows = svc.clusters(limit=PAGE_SIZE + 1, offset=(page_no - 1) * PAGE_SIZE)
        return page(
            request,
            "unknowns.html",
            status,
            section="unknowns",
            clusters=rows[:PAGE_SIZE],
            identities=identity_choices(),
            error=error,
            prev_page=page_no - 1 if page_no > 1 else None,
            next_page=page_no + 1 if len(rows) > PAGE_SIZE else None,
        )

    @router.get("/ui/unknowns/{cluster_id}", include_in_schema=False)
    def unknown(
        cluster_id: str, request: Request, _: Annotated[auth.Session, Depends(signed_in)]
    ) -> HTMLResponse:
        return unknown_page(request, cluster_id)

    def unknown_page(
        request: Request, cluster_id: str, *, status: int = 200, error: str | None = None
    ) -> HTMLResponse:
        svc, off = review_or_off(request, "unknowns")
        if off is not None:
            return off
        try:
            detail = svc.cluster(cluster_id)
        except FacestreamError as exc:
            return failure(request, exc, section="unknowns")
        return page(
            request,
            "unknown.html",
            status,
            section="unknowns",
            cluster=detail,
            identities=identity_choices(),
            error=error,
        )

    @router.post("/ui/unknowns/{cluster_id}/label", include_in_schema=False)
    async def label(
        cluster_id: str,
        request: Request,
        name: Annotated[str, Form(max_length=200)] = "",
        identity_id: Annotated[str, Form()] = "",
        back: Annotated[str, Form()] = "list",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        svc, off = review_or_off(request, "unknowns")
        if off is not None:
            return off

        def redo(status: int, error: str) -> HTMLResponse:
            if back == "detail":
                return unknown_page(request, cluster_id, status=status, error=error)
            return unknowns_page(request, status=status, error=error)

        if bool(name.strip()) == bool(identity_id):
            return redo(422, "Type a new name or choose an existing person (one of them).")
        try:
            result = await run_in_threadpool(
                run,
                lambda: svc.label(
                    cluster_id, name=name.strip() or None, identity_id=identity_id or None
                ),
            )
        except FacestreamError as exc:
            return redo(exc_status(exc), str(exc))
        ident = result.identity.identity_id
        return _see_other(f"/ui/identities/{_segment(ident)}?done=labelled")

    @router.post("/ui/unknowns/merge", include_in_schema=False)
    async def merge(
        request: Request,
        into: Annotated[str, Form()] = "",
        others: Annotated[list[str] | None, Form()] = None,
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        svc, off = review_or_off(request, "unknowns")
        if off is not None:
            return off
        rest = [c for c in others or [] if c != into]
        if not into or not rest:
            return unknowns_page(
                request,
                status=422,
                error="Tick the clusters to merge and choose the one "
                "they go into (at least one other than it).",
            )
        try:
            merged = await run_in_threadpool(run, lambda: svc.merge(into, rest))
        except FacestreamError as exc:
            return unknowns_page(request, status=exc_status(exc), error=str(exc))
        return _see_other(f"/ui/unknowns/{_segment(merged.cluster_id)}?done=merged")

    @router.post("/ui/unknowns/{cluster_id}/purge", include_in_schema=False)
    async def purge(
        cluster_id: str, request: Request, csrf: Annotated[str, Form()] = ""
    ) -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        svc, off = review_or_off(request, "unknowns")
        if off is not None:
            return off
        try:
            await run_in_threadpool(run, lambda: svc.purge(cluster_id))
        except FacestreamError as exc:
            return failure(request, exc, section="unknowns")
        return _see_other("/ui/unknowns?done=purged")

    @router.get("/ui/events", include_in_schema=False)
    def events(
        request: Request,
        _: Annotated[auth.Session, Depends(signed_in)],
        camera: Annotated[str | None, Query(max_length=200)] = None,
    ) -> HTMLResponse:
        return events_page(request, camera=camera or None)

    def events_page(
        request: Request,
        *,
        camera: str | None = None,
        status: int = 200,
        error: str | None = None,
    ) -> HTMLResponse:
        svc, off = review_or_off(request, "events")
        if off is not None:
            return off
        return page(
            request,
            "events.html",
            status,
            section="events",
            events=svc.recent_events(limit=EVENTS_SHOWN, camera=camera),
            camera=camera or "",
            identities=identity_choices(),
            error=error,
        )

    @router.post("/ui/events/{event_id:path}/feedback", include_in_schema=False)
    async def give_feedback(
        event_id: str,
        request: Request,
        kind: Annotated[str, Form()] = "",
        identity_id: Annotated[str, Form()] = "",
        name: Annotated[str, Form(max_length=200)] = "",
        camera: Annotated[str, Form()] = "",
        csrf: Annotated[str, Form()] = "",
    ) -> Response:
        if (bad := refused(request, csrf)) is not None:
            return bad
        svc, off = review_or_off(request, "events")
        if off is not None:
            return off
        if kind == "this_is" and bool(identity_id) == bool(name.strip()):
            return events_page(
                request,
                camera=camera or None,
                status=422,
                error="“This is…”: choose a person or type a name (one of them).",
            )
        # Only "this is" names a person; a stray field of the other button is ignored.
        to_id = (identity_id or None) if kind == "this_is" else None
        to_name = (name.strip() or None) if kind == "this_is" else None
        try:
            await run_in_threadpool(
                run, lambda: svc.feedback(event_id, kind, identity_id=to_id, name=to_name)
            )
        except FacestreamError as exc:
            return events_page(
                request, camera=camera or None, status=exc_status(exc), error=str(exc)
            )
        query = urlencode(
            {"camera": camera, "done": "feedback"} if camera else {"done": "feedback"}
        )
        return _see_other(f"/ui/events?{query}#event-{_segment(event_id)}")

    return router


def _segment(value: str) -> str:
    """``value`` as one URL path segment (face ids hold colons, camera ids may hold '/')."""
    return quote(value, safe="")


def exc_status(exc: FacestreamError) -> int:
    return int(getattr(exc, "http_status", 400))


def _format_s(ts: float | None) -> str:
    if ts is None:
        return "–"
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _format_ms(ts_ms: int | float | None) -> str:
    return "–" if ts_ms is None else _format_s(ts_ms / 1000)
