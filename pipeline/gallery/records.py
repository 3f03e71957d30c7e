"""The gallery's value types; pydantic models so the CLI prints and the REST API documents
exactly the same shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FaceRecord(BaseModel):
    """One enrolled face of an identity (its vector lives in Milvus, one row per version)."""

    face_id: str
    identity_id: str
    crop: str = Field(description="Where the stored aligned crop is: the catalogue crops table.")
    crop_sha256: str
    template: str = Field(description="Digest of the alignment template the crop was cut with.")
    source: str = Field(description="Name of the image the face came from.")
    crop_mode: str = Field(description="'scene' or 'tight': how the face was found.")
    quality: dict[str, float]
    enrolled_version: str = Field(description="Model version active when it was enrolled.")
    created_at: float


class Identity(BaseModel):
    identity_id: str = Field(description="Stable id, assigned by the gallery.")
    name: str = Field(description="Display name (need not be unique).")
    external_id: str | None = Field(None, description="Caller's own id; unique when set.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    n_faces: int = 0
    created_at: float
    updated_at: float


class IdentityDetail(Identity):
    faces: list[FaceRecord] = Field(default_factory=list)


class ThresholdInfo(BaseModel):
    """The threshold a decision used, and why that value."""

    value: float = Field(description="Cosine similarity at or above which a match is accepted.")
    kind: Literal["open_set", "pair", "request"] = Field(
        "pair",
        description="'open_set': from the model's open-set curve at the gallery's size (the "
        "target is the stranger false-accept rate); 'pair': the per-comparison threshold "
        "(the target is the FAR of one comparison); 'request': set by the request.",
    )
    target_far: float | None = Field(description="False-accept rate it was calibrated for.")
    gallery_size: int | None = Field(
        None, description="Enrolled faces the open-set threshold was derived for."
    )
    extrapolated: bool = Field(
        False,
        description="True when the gallery is larger than the calibration data could "
        "measure: the curve's last threshold holds, its target is not guaranteed.",
    )
    provenance: str = Field(description="Where the value came from.")
    overridden: bool = Field(False, description="True when the request set the value.")

    def with_offset(self, offset: float, camera: str) -> ThresholdInfo:
        """The threshold applied to ``camera``'s faces: this one plus the camera's offset
        (``stream.cameras[].threshold_offset``), saying so in the provenance; the target
        FAR and gallery size stay those of the value the offset was added to."""
        if offset == 0:
            return self
        note = (
            f"{self.value:.4f} {offset:+.4f} for camera {camera!r} "
            f"(stream.cameras threshold_offset)"
        )
        return self.model_copy(
            update={"value": self.value + offset, "provenance": f"{self.provenance}; {note}"}
        )


class Candidate(BaseModel):
    identity_id: str
    name: str
    external_id: str | None = None
    face_id: str = Field(description="The enrolled face that matched best.")
    similarity: float
    decision: Literal["identity", "unknown"] = Field(
        description="'identity' when similarity >= threshold (and not excluded), else 'unknown'."
    )
    excluded: bool = Field(
        False,
        description="True when 'not this person' feedback on a face like this one "
        "turned the match into 'unknown'.",
    )


class FaceResult(BaseModel):
    """The open-set answer for one face of the probe image."""

    box: list[float]
    crop_mode: str
    quality: dict[str, Any]
    decision: Literal["identity", "unknown", "rejected"] = Field(
        description="'identity': the best candidate passed the threshold; 'unknown': nobody "
        "enrolled is similar enough; 'rejected': the face failed the quality gate."
    )
    identity: Candidate | None = None
    similarity: float | None = Field(None, description="Best similarity found.")
    candidates: list[Candidate] = Field(default_factory=list, description="Top-k identities.")


class SearchResult(BaseModel):
    model_version: str
    collection: str
    threshold: ThresholdInfo
    faces: list[FaceResult]


class VerifyResult(BaseModel):
    decision: Literal["same", "different"]
    similarity: float
    threshold: ThresholdInfo
    model_version: str
    identity_id: str | None = None


class ImageReport(BaseModel):
    image: str
    accepted: bool
    reasons: list[str] = Field(default_factory=list)
    quality: dict[str, float] | None = None
    crop_mode: str | None = None


class EnrollResult(BaseModel):
    identity: Identity
    added_faces: list[str]
    model_version: str
    collection: str
    images: list[ImageReport]


class RemoveResult(BaseModel):
    identity_id: str
    faces_removed: int
    rows_deleted: dict[str, int] = Field(description="Rows deleted per collection.")
    crops_deleted: int


class ReembedResult(BaseModel):
    from_version: str | None
    to_version: str
    collection: str
    faces: int
    identities: int
    seconds: float


class CollectionInfo(BaseModel):
    name: str
    model_version: str
    rows: int
    active: bool


class GalleryStatus(BaseModel):
    milvus_uri: str
    catalogue: str = Field(description="The catalogue database (its URL, without password).")
    alias: str
    active_collection: str | None
    active_version: str | None
    identities: int
    faces: int
    collections: list[CollectionInfo]
