"""The web UI's review loop: unknown people (label, merge, purge), identification events
with their crops, and feedback on them."""

# No `from __future__ import annotations`: FastAPI resolves the Annotated parameters.
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from pipeline.errors import FacestreamError
from pipeline.gallery.review.records import feedback_kind
from pipeline.serve.context import ApiContext, Ctx, client_address
from pipeline.serve.errors import http_status
from pipeline.serve.web.pages import (
    PAGE_SIZE,
    SignedIn,
    failure,
    page,
    refused,
    see_other,
    segment,
    session_of,
)

# Every form here holds a CSRF token, a few ids and at most a name: no file.
router = APIRouter(include_in_schema=False, form_limits={"max_files": 0, "max_fields": 128})
EVENTS_SHOWN = 100
MAX_PAGE = 100_000
Short = Annotated[str, Form(max_length=300)]


def identity_choices(ctx: ApiContext) -> list[Any]:
    # For the "add to an existing person" selects; a few hundred names at most.
    return ctx.gallery.list(limit=500)


def unknowns_page(
    request: Request,
    ctx: ApiContext,
    *,
    page_no: int = 1,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    rows = ctx.review.clusters(limit=PAGE_SIZE + 1, offset=(page_no - 1) * PAGE_SIZE)
    return page(
        request,
        ctx,
        "unknowns.html",
        status,
        section="unknowns",
        clusters=rows[:PAGE_SIZE],
        identities=identity_choices(ctx),
        error=error,
        prev_page=page_no - 1 if page_no > 1 else None,
        next_page=page_no + 1 if len(rows) > PAGE_SIZE else None,
    )


def unknown_page(
    request: Request,
    ctx: ApiContext,
    cluster_id: str,
    *,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    try:
        detail = ctx.review.cluster(cluster_id)
    except FacestreamError as exc:
        return failure(request, ctx, exc, section="unknowns")
    return page(
        request,
        ctx,
        "unknown.html",
        status,
        section="unknowns",
        cluster=detail,
        identities=identity_choices(ctx),
        error=error,
    )


def events_page(
    request: Request,
    ctx: ApiContext,
    *,
    camera: str | None = None,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    return page(
        request,
        ctx,
        "events.html",
        status,
        section="events",
        events=ctx.review.recent_events(limit=EVENTS_SHOWN, camera=camera),
        camera=camera or "",
        identities=identity_choices(ctx),
        error=error,
    )


@router.get("/ui/crops/sighting/{face_id:path}")
def sighting_crop(face_id: str, request: Request, ctx: Ctx) -> Response:
    if ctx.sessions.current(request) is None:
        raise HTTPException(401, "sign in first")
    try:
        jpeg = ctx.review.crop_jpeg(face_id)
    except FacestreamError:
        raise HTTPException(404, f"no kept face {face_id}") from None
    # Kept faces expire and can be purged: never served from a stale cache.
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/ui/sightings")
async def sightings(
    request: Request,
    ctx: Ctx,
    sess: SignedIn,
    event_id: Annotated[str | None, Query(max_length=300)] = None,
    cluster_id: Annotated[str | None, Query(max_length=64)] = None,
) -> HTMLResponse:
    """"Seen before": every kept face matching an event's face or an unknown person,
    as a timeline (audited as the signed-in principal)."""
    from pipeline.gallery.review.sightings import seen_before

    section = "unknowns" if cluster_id else "events"
    try:
        result = await ctx.run_off_loop(
            lambda: seen_before(
                ctx.review,
                actor=sess.principal,
                client=client_address(request),
                event_id=event_id,
                cluster_id=cluster_id,
            )
        )
    except FacestreamError as exc:
        return failure(request, ctx, exc, section=section)
    return page(
        request,
        ctx,
        "sightings.html",
        section=section,
        result=result,
        event_id=event_id,
        cluster_id=cluster_id,
    )


@router.get("/ui/unknowns")
def unknowns(
    request: Request,
    ctx: Ctx,
    _: SignedIn,
    page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
) -> HTMLResponse:
    return unknowns_page(request, ctx, page_no=page_no)


@router.get("/ui/unknowns/{cluster_id}")
def unknown(cluster_id: str, request: Request, ctx: Ctx, _: SignedIn) -> HTMLResponse:
    return unknown_page(request, ctx, cluster_id)


@router.post("/ui/unknowns/{cluster_id}/label")
async def label(
    cluster_id: str,
    request: Request,
    ctx: Ctx,
    name: Annotated[str, Form(max_length=200)] = "",
    identity_id: Short = "",
    back: Short = "list",
    csrf: Short = "",
) -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad

    def redo(status: int, error: str) -> HTMLResponse:
        if back == "detail":
            return unknown_page(request, ctx, cluster_id, status=status, error=error)
        return unknowns_page(request, ctx, status=status, error=error)

    if bool(name.strip()) == bool(identity_id):
        return redo(422, "Type a new name or choose an existing person (one of them).")
    try:
        result = await ctx.run_off_loop(
            lambda: ctx.review.label(
                cluster_id, name=name.strip() or None, identity_id=identity_id or None
            )
        )
    except FacestreamError as exc:
        return redo(http_status(exc), str(exc))
    ident = result.identity.identity_id
    ctx.audit(request, session_of(request, ctx).principal, "label", cluster_id, identity_id=ident)
    return see_other(f"/ui/identities/{segment(ident)}?done=labelled")


@router.post("/ui/unknowns/merge")
async def merge(
    request: Request,
    ctx: Ctx,
    into: Short = "",
    others: Annotated[list[str] | None, Form()] = None,
    csrf: Short = "",
) -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad
    rest = [c for c in others or [] if c != into]
    if not into or not rest:
        return unknowns_page(
            request,
            ctx,
            status=422,
            error="Tick the clusters to merge and choose the one "
            "they go into (at least one other than it).",
        )
    try:
        merged = await ctx.run_off_loop(lambda: ctx.review.merge(into, rest))
    except FacestreamError as exc:
        return unknowns_page(request, ctx, status=http_status(exc), error=str(exc))
    ctx.audit(request, session_of(request, ctx).principal, "merge", into, others=rest)
    return see_other(f"/ui/unknowns/{segment(merged.cluster_id)}?done=merged")


@router.post("/ui/unknowns/{cluster_id}/purge")
async def purge(cluster_id: str, request: Request, ctx: Ctx, csrf: Short = "") -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad
    try:
        await ctx.run_off_loop(lambda: ctx.review.purge(cluster_id))
    except FacestreamError as exc:
        return failure(request, ctx, exc, section="unknowns")
    ctx.audit(request, session_of(request, ctx).principal, "purge", cluster_id)
    return see_other("/ui/unknowns?done=purged")


@router.get("/ui/events")
def events(
    request: Request,
    ctx: Ctx,
    _: SignedIn,
    camera: Annotated[str | None, Query(max_length=200)] = None,
) -> HTMLResponse:
    return events_page(request, ctx, camera=camera or None)


@router.post("/ui/events/{event_id:path}/feedback")
async def give_feedback(
    event_id: str,
    request: Request,
    ctx: Ctx,
    kind: Short = "",
    identity_id: Short = "",
    name: Annotated[str, Form(max_length=200)] = "",
    camera: Short = "",
    csrf: Short = "",
) -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad
    if kind == "this_is" and bool(identity_id) == bool(name.strip()):
        return events_page(
            request,
            ctx,
            camera=camera or None,
            status=422,
            error="“This is…”: choose a person or type a name (one of them).",
        )
    # Only "this is" names a person; a stray field of the other button is ignored.
    to_id = (identity_id or None) if kind == "this_is" else None
    to_name = (name.strip() or None) if kind == "this_is" else None
    try:
        await ctx.run_off_loop(
            lambda: ctx.review.feedback(
                event_id, feedback_kind(kind), identity_id=to_id, name=to_name
            )
        )
    except FacestreamError as exc:
        return events_page(
            request, ctx, camera=camera or None, status=http_status(exc), error=str(exc)
        )
    who = session_of(request, ctx).principal
    ctx.audit(request, who, "feedback", event_id, kind=kind, identity_id=to_id)
    query = urlencode({"camera": camera, "done": "feedback"} if camera else {"done": "feedback"})
    return see_other(f"/ui/events?{query}#event-{segment(event_id)}")
