"""Operations: ``/healthz`` (up or down, open), ``/gallery`` (the gallery's state) and
``/audit`` (who changed what)."""

# No `from __future__ import annotations`: FastAPI resolves the Annotated parameters.
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from pipeline.gallery import audit
from pipeline.gallery.records import GalleryStatus
from pipeline.serve.context import Authorised, Ctx, Reader
from pipeline.serve.health import ROUTE, health_response

router = APIRouter(tags=["ops"])


@router.get(ROUTE, summary="Up (200) or down (503); names nothing, open to anyone")
async def healthz(ctx: Ctx) -> JSONResponse:
    return await health_response(ctx.gallery)


@router.get("/gallery", response_model=GalleryStatus)
def status(ctx: Ctx, _: Reader) -> GalleryStatus:
    return ctx.gallery.status()


@router.get(
    "/audit",
    response_model=list[audit.AuditEntry],
    summary="Who enrolled, erased, labelled, merged or purged whom: newest first",
)
def audit_entries(
    ctx: Ctx,
    _: Authorised,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    action: Annotated[str | None, Query(max_length=64)] = None,
    subject: Annotated[str | None, Query(max_length=300)] = None,
) -> list[audit.AuditEntry]:
    return audit.entries(
        ctx.gallery.catalogue, limit=limit, offset=offset, action=action, subject=subject
    )
