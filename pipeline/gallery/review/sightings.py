""""Has this face been here before?": the faces the stream kept (event crops, unknown
faces) that match a probe, across every camera, in time order.

The kept faces' vectors live in one Milvus collection per model version
(``sig_<prefix>_<version>``, written with their rows by the review's ``record`` and
erased with them: retention, purge, a person's removal). A search reads only the active
version's collection, and its probe is embedded by that version: a photo's largest face,
or the kept faces of an event or an unknown person (re-embedded from their crops when
another version made them). The threshold is the open-set one at the number of kept
faces searched, since a probe meets every one of them. Every search is written to the
audit record (who, when, with what) before its answer is returned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.gallery import audit
from pipeline.gallery.errors import GalleryError
from pipeline.gallery.review.records import SeenBefore, Sighting, SightingMatch
from pipeline.gallery.search import threshold_info
from pipeline.gallery.vectors import Snapshot

if TYPE_CHECKING:
    from pipeline.gallery.review.service import Review

MAX_RESULTS = 1000


def _embedding(review: Review, face: Sighting, version: str) -> np.ndarray:
    """A kept face's vector by ``version``: its own when that version made it, else its
    crop embedded again (vectors of two versions are never compared)."""
    if face.model_version == version:
        return review.embedding(face.face_id)
    gallery = review.gallery
    pipe = gallery.pipeline(version)
    return gallery.embed_largest(pipe, face.face_id, review.crop_jpeg(face.face_id), "tight")


def probe_vectors(
    review: Review,
    version: str,
    *,
    photo: bytes | None = None,
    event_id: str | None = None,
    cluster_id: str | None = None,
) -> tuple[str, np.ndarray]:
    """(what the probe is, its vectors by ``version``) from exactly one of a photo (its
    largest face), an event's kept face or an unknown person's kept faces."""
    if sum(x is not None for x in (photo, event_id, cluster_id)) != 1:
        raise GalleryError("search with exactly one of: a photo, an event id, a cluster id")
    if photo is not None:
        gallery = review.gallery
        vec = gallery.embed_largest(gallery.pipeline(version), "photo", photo, None)
        return "photo", vec[None, :]
    if event_id is not None:
        return f"event:{event_id}", _embedding(review, review.sighting(event_id), version)[None]
    assert cluster_id is not None
    faces = review.cluster(cluster_id).faces
    return f"cluster:{cluster_id}", np.stack([_embedding(review, f, version) for f in faces])


def seen_before(
    review: Review,
    *,
    actor: str,
    client: str | None = None,
    photo: bytes | None = None,
    event_id: str | None = None,
    cluster_id: str | None = None,
    since_ms: int | None = None,
    camera_id: str | None = None,
    limit: int = 200,
) -> SeenBefore:
    """Where and when the probe's face was kept, oldest first; audited as ``actor``."""
    if not 1 <= limit <= MAX_RESULTS:
        raise GalleryError(f"limit must be in 1..{MAX_RESULTS}, got {limit}")
    gallery = review.gallery
    version = gallery.serving_version()
    probe, vecs = probe_vectors(
        review, version, photo=photo, event_id=event_id, cluster_id=cluster_id
    )
    # Written first: a search that fails half-way was still made.
    audit.record(
        review.catalogue,
        actor=actor,
        client=client,
        action="sightings.search",
        subject=probe,
        since_ms=since_ms,
        camera_id=camera_id,
        model_version=version,
    )
    store = gallery.sighting_vectors
    collection = store.collection_name(version)
    searched = store.count(collection) if collection in store.collections() else 0
    # A probe meets every kept face: the open-set threshold at that many.
    threshold = threshold_info(
        gallery.threshold(version), None, gallery_faces=max(searched, 1), faces_are="kept faces"
    )
    best: dict[str, float] = {}
    if searched:
        for row in store.search(Snapshot(collection, version), vecs, version, limit=limit):
            for hit in row:
                if hit.similarity >= threshold.value:
                    best[hit.face_id] = max(best.get(hit.face_id, -1.0), hit.similarity)
    rows = [
        r
        for r in review.store.by_vector_keys(sorted(best))
        if r["model_version"] == version
        and (since_ms is None or r["capture_ts_ms"] >= since_ms)
        and (camera_id is None or r["camera_id"] == camera_id)
    ]
    found = [
        SightingMatch(**s.model_dump(), match=round(best[r["vector_key"]], 6))
        for r, s in zip(rows, review.as_sightings(rows), strict=True)
    ]
    found.sort(key=lambda m: (m.capture_ts_ms, m.face_id))
    return SeenBefore(
        probe=probe,
        model_version=version,
        threshold=threshold,
        searched=searched,
        since_ms=since_ms,
        camera_id=camera_id,
        sightings=found,
    )

