"""REST endpoints of the review loop: identification events with their face crops and
feedback, and unknown people (list, show, label, merge, purge).

Every endpoint here needs the token, reads included, whatever ``gallery.auth_reads``
says: they serve faces of people who never agreed to be enrolled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field

from pipeline.gallery.review import Review
from pipeline.gallery.review.records import (
    FeedbackKind,
    FeedbackResult,
    LabelResult,
    PurgeResult,
    Sighting,
    UnknownCluster,
    UnknownClusterDetail,
)


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


def review_router(
    review: Review, authorised: Callable[..., None], run: Callable[[Callable[[], Any]], Any]
) -> APIRouter:
    """``authorised`` is the API's token dependency; ``run`` its face-core lock (labelling
    and "this is" enrol crops through the face core)."""
    router = APIRouter(dependencies=[Depends(authorised)])

    @router.get("/events", response_model=list[Sighting], tags=["review"])
    def events(
        limit: int = Query(50, ge=1, le=1000), camera: str | None = None
    ) -> list[Sighting]:
        """The newest identification events that kept their face, newest first."""
        return review.recent_events(limit=limit, camera=camera)

    @router.get("/events/{event_id}", response_model=Sighting, tags=["review"])
    def event(event_id: str) -> Sighting:
        return review.sighting(event_id)

    @router.post(
        "/events/{event_id}/feedback", response_model=FeedbackResult, tags=["review"]
    )
    def give_feedback(event_id: str, body: FeedbackBody) -> FeedbackResult:
        """Say an event was wrong ("not this person") or who the face is ("this is")."""
        return run(
            lambda: review.feedback(
                event_id, body.kind, identity_id=body.identity_id, name=body.name
            )
        )

    @router.get(
        "/sightings/{face_id}/crop",
        response_class=Response,
        tags=["review"],
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def crop(face_id: str) -> Response:
        """The aligned crop of a kept face (an event's ``crop_id``)."""
        return Response(
            review.crop_jpeg(face_id),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=3600"},
        )

    @router.get("/unknowns", response_model=list[UnknownCluster], tags=["review"])
    def unknowns(
        limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0)
    ) -> list[UnknownCluster]:
        """Unknown people (clusters of kept unknown faces), the most recently seen first."""
        return review.clusters(limit=limit, offset=offset)

    @router.get("/unknowns/{cluster_id}", response_model=UnknownClusterDetail, tags=["review"])
    def unknown(cluster_id: str) -> UnknownClusterDetail:
        return review.cluster(cluster_id)

    @router.post("/unknowns/{cluster_id}/label", response_model=LabelResult, tags=["review"])
    def label(cluster_id: str, body: LabelBody) -> LabelResult:
        """Enrol the cluster's best crops as a new person (name) or into one (identity_id)."""
        return run(lambda: review.label(cluster_id, name=body.name, identity_id=body.identity_id))

    @router.post("/unknowns/merge", response_model=UnknownCluster, tags=["review"])
    def merge(body: MergeBody) -> UnknownCluster:
        return review.merge(body.into, body.others)

    @router.delete("/unknowns/{cluster_id}", response_model=PurgeResult, tags=["review"])
    def purge(cluster_id: str) -> PurgeResult:
        """Erase an unknown person's faces, crops and vectors."""
        return review.purge(cluster_id)

    @router.delete("/unknowns", response_model=PurgeResult, tags=["review"])
    def purge_all(expired_only: bool = False) -> PurgeResult:
        """Erase every unknown face (or, with expired_only, what passed its retention)."""
        return review.expire() if expired_only else review.purge(None)

    return router
