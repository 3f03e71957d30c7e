"""REST endpoints of the review loop: identification events with their face crops and
feedback, and unknown people (list, show, label, merge, purge).

Every endpoint here needs the token, reads included, whatever ``gallery.auth_reads``
says: they serve faces of people who never agreed to be enrolled.
"""

# No `from __future__ import annotations`: FastAPI resolves the Annotated parameters.
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from pydantic import BaseModel, Field

from pipeline.gallery.review.records import (
    FeedbackKind,
    FeedbackResult,
    LabelResult,
    PurgeResult,
    SeenBefore,
    Sighting,
    UnknownCluster,
    UnknownClusterDetail,
)
from pipeline.serve.context import Ctx, authorised, client_address
from pipeline.serve.routes.identities import read_upload


class FeedbackBody(BaseModel):
    kind: FeedbackKind = Field(
        description="'not_this_person': the event named the wrong person; 'this_is': the "
        "face is identity_id (or the person called name; a new person when nobody is)."
    )
    identity_id: str | None = Field(None, max_length=64)
    name: str | None = Field(None, min_length=1, max_length=200)


class LabelBody(BaseModel):
    name: str | None = Field(None, min_length=1, max_length=200, description="A new person.")
    identity_id: str | None = Field(None, max_length=64, description="An enrolled person.")


class MergeBody(BaseModel):
    into: str = Field(max_length=64)
    others: list[str] = Field(min_length=1, max_length=100)


# Every route needs the token; the principal is asked for again where it is audited.
router = APIRouter(tags=["review"], dependencies=[Depends(authorised)])
Who = Annotated[str, Depends(authorised)]


@router.get("/events", response_model=list[Sighting])
def events(
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    camera: Annotated[str | None, Query(max_length=300)] = None,
) -> list[Sighting]:
    """The newest identification events that kept their face, newest first."""
    return ctx.review.recent_events(limit=limit, camera=camera)


@router.get("/events/{event_id}", response_model=Sighting)
def event(event_id: str, ctx: Ctx) -> Sighting:
    return ctx.review.sighting(event_id)


@router.post("/events/{event_id}/feedback", response_model=FeedbackResult)
def give_feedback(
    event_id: str, body: FeedbackBody, request: Request, ctx: Ctx, who: Who
) -> FeedbackResult:
    """Say an event was wrong ("not this person") or who the face is ("this is")."""
    result = ctx.run(
        lambda: ctx.review.feedback(
            event_id, body.kind, identity_id=body.identity_id, name=body.name
        )
    )
    ctx.audit(request, who, "feedback", event_id, kind=body.kind, identity_id=body.identity_id)
    return result


SinceMs = Annotated[
    int | None, Query(ge=0, description="Only sightings captured at or after (ms since epoch).")
]
CameraQ = Annotated[str | None, Query(max_length=300, description="Only this camera id.")]
LimitQ = Annotated[int, Query(ge=1, le=1000)]


def _seen_before(ctx: Ctx, request: Request, who: str, **probe: Any) -> Callable[[], SeenBefore]:
    """The search as the request's principal (the audit record names them)."""
    from pipeline.gallery.review.sightings import seen_before

    return lambda: seen_before(ctx.review, actor=who, client=client_address(request), **probe)


@router.get("/sightings/search", response_model=SeenBefore)
async def seen_before_of_kept_faces(
    request: Request,
    ctx: Ctx,
    who: Who,
    event_id: Annotated[str | None, Query(max_length=300)] = None,
    cluster_id: Annotated[str | None, Query(max_length=64)] = None,
    since_ms: SinceMs = None,
    camera: CameraQ = None,
    limit: LimitQ = 200,
) -> SeenBefore:
    """Has this face been here before? Where and when the stream kept faces matching an
    event's face (event_id) or an unknown person's (cluster_id), oldest first; audited."""
    search = _seen_before(
        ctx, request, who, event_id=event_id, cluster_id=cluster_id, since_ms=since_ms,
        camera_id=camera, limit=limit,
    )  # fmt: skip
    return await ctx.run_off_loop(search)


@router.post("/sightings/search", response_model=SeenBefore)
async def seen_before_of_photo(
    request: Request,
    ctx: Ctx,
    who: Who,
    image: Annotated[UploadFile, File(description="A photo of the person (largest face).")],
    since_ms: Annotated[int | None, Form(ge=0)] = None,
    camera: Annotated[str | None, Form(max_length=300)] = None,
    limit: Annotated[int, Form(ge=1, le=1000)] = 200,
) -> SeenBefore:
    """Has this face been here before? Where and when the stream kept faces matching the
    photo's largest face, oldest first; audited."""
    _, data = await read_upload(ctx, image, "image")
    search = _seen_before(
        ctx, request, who, photo=data, since_ms=since_ms, camera_id=camera, limit=limit
    )
    return await ctx.run_off_loop(search)


@router.get(
    "/sightings/{face_id}/crop",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def crop(face_id: str, ctx: Ctx) -> Response:
    """The aligned crop of a kept face (an event's ``crop_id``)."""
    return Response(
        ctx.review.crop_jpeg(face_id),
        media_type="image/jpeg",
        headers={"Cache-Control": "private, max-age=3600"},
    )


@router.get("/unknowns", response_model=list[UnknownCluster])
def unknowns(
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> list[UnknownCluster]:
    """Unknown people (clusters of kept unknown faces), the most recently seen first."""
    return ctx.review.clusters(limit=limit, offset=offset)


@router.get("/unknowns/{cluster_id}", response_model=UnknownClusterDetail)
def unknown(cluster_id: str, ctx: Ctx) -> UnknownClusterDetail:
    return ctx.review.cluster(cluster_id)


@router.post("/unknowns/{cluster_id}/label", response_model=LabelResult)
def label(cluster_id: str, body: LabelBody, request: Request, ctx: Ctx, who: Who) -> LabelResult:
    """Enrol the cluster's best crops as a new person (name) or into one (identity_id)."""
    result: LabelResult = ctx.run(
        lambda: ctx.review.label(cluster_id, name=body.name, identity_id=body.identity_id)
    )
    ctx.audit(request, who, "label", cluster_id, identity_id=result.identity.identity_id)
    return result


@router.post("/unknowns/merge", response_model=UnknownCluster)
def merge(body: MergeBody, request: Request, ctx: Ctx, who: Who) -> UnknownCluster:
    merged = ctx.review.merge(body.into, body.others)
    ctx.audit(request, who, "merge", body.into, others=body.others)
    return merged


@router.delete("/unknowns/{cluster_id}", response_model=PurgeResult)
def purge(cluster_id: str, request: Request, ctx: Ctx, who: Who) -> PurgeResult:
    """Erase an unknown person's faces, crops and vectors."""
    result = ctx.review.purge(cluster_id)
    ctx.audit(request, who, "purge", cluster_id)
    return result


@router.delete("/unknowns", response_model=PurgeResult)
def purge_all(request: Request, ctx: Ctx, who: Who, expired_only: bool = False) -> PurgeResult:
    """Erase every unknown face (or, with expired_only, what passed its retention)."""
    result = ctx.review.expire() if expired_only else ctx.review.purge(None)
    ctx.audit(request, who, "purge_expired" if expired_only else "purge_all", None)
    return result
