"""The web UI's identities: the list (with a search and enrol form), a person's page
(photos, add photos) and removal."""

# No `from __future__ import annotations`: FastAPI resolves the Annotated parameters.
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from pipeline.errors import FacestreamError
from pipeline.gallery.errors import EnrollmentRejected, IdentityNotFound
from pipeline.serve.context import ApiContext, Ctx
from pipeline.serve.errors import http_status
from pipeline.serve.web.pages import (
    PAGE_SIZE,
    SignedIn,
    TooLarge,
    failure,
    page,
    refused,
    see_other,
    session_of,
    uploads,
)

router = APIRouter(include_in_schema=False)
MAX_PAGE = 100_000


def identities_page(
    request: Request,
    ctx: ApiContext,
    *,
    q: str | None = None,
    page_no: int = 1,
    status: int = 200,
    error: str | None = None,
    verdicts: list[Any] | None = None,
    name: str = "",
) -> HTMLResponse:
    gallery = ctx.gallery
    rows = gallery.list(limit=PAGE_SIZE + 1, offset=(page_no - 1) * PAGE_SIZE, name_contains=q)
    shown = rows[:PAGE_SIZE]
    thumbs = gallery.catalogue.first_faces([i.identity_id for i in shown])
    people = [{"identity": i, "thumb": thumbs.get(i.identity_id)} for i in shown]
    n_id, n_faces = gallery.catalogue.counts()
    pages = {
        "prev": urlencode({"q": q or "", "page": page_no - 1}) if page_no > 1 else None,
        "next": urlencode({"q": q or "", "page": page_no + 1}) if len(rows) > PAGE_SIZE else None,
    }
    return page(
        request,
        ctx,
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
        pick=ctx.config.enroll_pick,
    )


def identity_page(
    request: Request,
    ctx: ApiContext,
    identity_id: str,
    *,
    status: int = 200,
    error: str | None = None,
    verdicts: list[Any] | None = None,
) -> HTMLResponse:
    try:
        detail = ctx.gallery.show(identity_id)
    except IdentityNotFound as exc:
        return failure(request, ctx, exc, section="identities")
    return page(
        request,
        ctx,
        "identity.html",
        status,
        section="identities",
        person=detail,
        error=error,
        verdicts=verdicts,
        pick=ctx.config.enroll_pick,
    )


@router.get("/ui/identities")
def identities(
    request: Request,
    ctx: Ctx,
    _: SignedIn,
    q: Annotated[str | None, Query(max_length=200)] = None,
    page_no: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
) -> HTMLResponse:
    return identities_page(request, ctx, q=q, page_no=page_no)


async def _enrol_form(
    ctx: ApiContext,
    photos: list[UploadFile] | None,
    error_page: Callable[..., Response],
    missing: str,
    enrol_files: Callable[[list[Any]], Any],
    *,
    complete: bool = True,
) -> tuple[Any, int] | Response:
    """The upload -> enrol sequence of both enrolment forms: the enrolment's result and
    how many photos it took, or ``error_page`` with the status and message of what went
    wrong (too large, ``missing`` when there is no photo or the form is not
    ``complete``, a rejected photo, a store error)."""
    try:
        files = await uploads(ctx, photos)
    except TooLarge as exc:
        return error_page(status=413, error=str(exc))
    if not files or not complete:
        return error_page(status=422, error=missing)
    try:
        result = await ctx.run_off_loop(lambda: enrol_files(files))
    except EnrollmentRejected as exc:
        return error_page(status=422, error=str(exc), verdicts=exc.verdicts)
    except FacestreamError as exc:
        return error_page(status=http_status(exc), error=str(exc))
    return result, len(files)


@router.post("/ui/identities")
async def enrol(
    request: Request,
    ctx: Ctx,
    name: Annotated[str, Form(max_length=200)] = "",
    pick: Annotated[str, Form(max_length=20)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    photos: Annotated[list[UploadFile] | None, File()] = None,
) -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad
    done = await _enrol_form(
        ctx,
        photos,
        partial(identities_page, request, ctx, name=name),
        "Give a name and at least one photo.",
        lambda files: ctx.gallery.enroll(files, name=name.strip(), pick=pick or None),
        complete=bool(name.strip()),
    )
    if isinstance(done, Response):
        return done
    result, faces = done
    ident = result.identity
    who = session_of(request, ctx).principal
    ctx.audit(request, who, "enrol", ident.identity_id, name=ident.name, faces=faces)
    return see_other(f"/ui/identities/{quote(ident.identity_id)}?done=enrolled")


@router.get("/ui/identities/{identity_id}")
def identity(identity_id: str, request: Request, ctx: Ctx, _: SignedIn) -> HTMLResponse:
    return identity_page(request, ctx, identity_id)


@router.post("/ui/identities/{identity_id}/faces")
async def add_photos(
    identity_id: str,
    request: Request,
    ctx: Ctx,
    pick: Annotated[str, Form(max_length=20)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    photos: Annotated[list[UploadFile] | None, File()] = None,
) -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad
    done = await _enrol_form(
        ctx,
        photos,
        partial(identity_page, request, ctx, identity_id),
        "Choose a photo.",
        lambda files: ctx.gallery.enroll(files, identity_id=identity_id, pick=pick or None),
    )
    if isinstance(done, Response):
        return done
    who = session_of(request, ctx).principal
    ctx.audit(request, who, "add_faces", identity_id, faces=done[1])
    return see_other(f"/ui/identities/{quote(identity_id)}?done=added")


@router.get("/ui/identities/{identity_id}/remove")
def confirm_remove(identity_id: str, request: Request, ctx: Ctx, _: SignedIn) -> HTMLResponse:
    try:
        person = ctx.gallery.catalogue.get(identity_id)
    except IdentityNotFound as exc:
        return failure(request, ctx, exc, section="identities")
    return page(request, ctx, "remove.html", section="identities", person=person)


@router.post("/ui/identities/{identity_id}/remove")
async def remove(
    identity_id: str,
    request: Request,
    ctx: Ctx,
    csrf: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    if (bad := refused(request, ctx, csrf)) is not None:
        return bad
    try:
        await ctx.run_off_loop(lambda: ctx.gallery.remove(identity_id))
    except FacestreamError as exc:
        return failure(request, ctx, exc, section="identities")
    ctx.audit(request, session_of(request, ctx).principal, "remove", identity_id)
    return see_other("/ui/identities?done=removed")
