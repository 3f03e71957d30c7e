"""Settings of the review loop: unknown faces kept for review, event crops, feedback
(the ``[gallery.review]`` section; environment ``FACESTREAM_GALLERY__REVIEW__<FIELD>``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, PositiveInt


class ReviewConfig(BaseModel):
    """What the stream keeps of the faces it sees, and for how long."""

    keep_unknowns: bool = Field(
        False,
        description="Opt-in: keep the embeddings and aligned crops of faces that pass the "
        "quality gate but match nobody, grouped by track and clustered into unknown people "
        "(`facestream unknowns`). Off: unknown faces are not stored.",
    )
    event_crops: bool = Field(
        True,
        description="Keep the aligned crop (and embedding) of the face that decided each "
        "identification event, so the event's crop_id can be fetched and the event can "
        "take feedback.",
    )
    retention_hours: float = Field(
        168.0,
        gt=0,
        description="Kept faces (unknown faces and event crops) older than this are erased "
        "everywhere: catalogue rows, crops and their vectors.",
    )
    faces_per_track: PositiveInt = Field(
        3, le=50, description="Unknown faces kept per track (the first ones that pass the gate)."
    )
    cluster_similarity: float | None = Field(
        None,
        ge=-1.0,
        le=1.0,
        description="Cosine at or above which an unknown track joins an unknown person. "
        "None: the model's per-comparison threshold (the manifest's threshold.value).",
    )
    label_faces: PositiveInt = Field(
        3, le=20, description="Best crops of a cluster enrolled when it is labelled."
    )
