"""Records of the review loop (pydantic): what the CLI prints, the REST API returns and
the web pages show."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipeline.gallery.errors import GalleryError
from pipeline.gallery.records import Identity, ThresholdInfo

Decision = Literal["identity", "unknown"]
FeedbackKind = Literal["not_this_person", "this_is"]
_FEEDBACK_KINDS: dict[str, FeedbackKind] = {
    "not_this_person": "not_this_person",
    "this_is": "this_is",
}


def feedback_kind(value: str) -> FeedbackKind:
    """``value`` as a feedback kind; ``GalleryError`` when it is neither."""
    kind = _FEEDBACK_KINDS.get(value)
    if kind is None:
        raise GalleryError(f"feedback kind must be not_this_person or this_is, got {value!r}")
    return kind


class FeedbackRef(BaseModel):
    feedback_id: str
    kind: FeedbackKind
    identity_id: str
    created_at: float


class Sighting(BaseModel):
    """A face the stream kept: the face of an identification event, or an unknown face."""

    face_id: str = Field(description="'camera:seq:index'; for an event, its event_id.")
    event_id: str = Field(description="The identification event's id (= face_id).")
    crop_id: str = Field(description="Fetch the aligned crop at GET /sightings/{crop_id}/crop.")
    model_version: str
    camera_id: str
    track_id: str
    capture_ts_ms: int
    decision: Decision
    identity_id: str | None = None
    name: str | None = Field(None, description="The identity's current name.")
    similarity: float | None = None
    cluster_id: str | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    feedback: list[FeedbackRef] = Field(default_factory=list)


class RecordedFace(BaseModel):
    """What the stream hands over for one face to keep."""

    face_id: str
    model_version: str
    camera_id: str
    track_id: str
    capture_ts_ms: int
    decision: Decision
    identity_id: str | None = None
    similarity: float | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    crop_jpeg: bytes
    embedding: list[float]


class RecordResult(BaseModel):
    stored: int = Field(description="Faces written now.")
    already: int = Field(description="Faces already kept (a replayed frame).")
    skipped: int = Field(0, description="Faces not kept (their identity was removed).")
    clusters: dict[str, str] = Field(
        default_factory=dict, description="Unknown face id -> its cluster."
    )


class UnknownCluster(BaseModel):
    cluster_id: str
    model_version: str
    n_faces: int
    n_tracks: int
    first_seen_ms: int
    last_seen_ms: int
    cameras: list[str]
    representatives: list[str] = Field(description="Face ids of its best crops.")


class UnknownClusterDetail(UnknownCluster):
    faces: list[Sighting]


class LabelResult(BaseModel):
    cluster_id: str
    identity: Identity
    enrolled_faces: list[str] = Field(description="Gallery face ids added.")
    used: list[str] = Field(description="The cluster's face ids that were enrolled.")
    rejected: dict[str, str] = Field(
        default_factory=dict, description="Face id -> why enrolment refused its crop."
    )


class PurgeResult(BaseModel):
    clusters: int
    faces: int
    vectors: int = Field(description="Vectors erased from the unknown faces' collections.")
    sighting_vectors: int = Field(
        0, description="Vectors erased from the sightings search's collections."
    )


class FeedbackResult(BaseModel):
    feedback_id: str
    event_id: str
    kind: FeedbackKind
    identity: Identity
    effect: str = Field(description="What changed, in words.")
    enrolled_faces: list[str] = Field(default_factory=list)


class SightingMatch(Sighting):
    """A kept face that matches the probe of a sightings search."""

    match: float = Field(description="Cosine similarity of this face to the probe (best probe).")


class SeenBefore(BaseModel):
    """'Has this face been here before?': where and when the stream kept faces that match
    the probe, in time order."""

    probe: str = Field(description="'photo', 'event:<event id>' or 'cluster:<cluster id>'.")
    model_version: str = Field(description="The active version: probe and kept faces alike.")
    threshold: ThresholdInfo = Field(
        description="The open-set threshold at the number of kept faces searched: a probe "
        "is compared with every one of them, so the per-comparison threshold would let "
        "strangers through as the number grows."
    )
    searched: int = Field(description="Kept faces of this model version searched.")
    since_ms: int | None = None
    camera_id: str | None = None
    sightings: list[SightingMatch]
