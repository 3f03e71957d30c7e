"""Every SQL statement of the review loop: its tables (SQLAlchemy Core, in the catalogue
database; created by migration 0003), the two queries the gallery itself needs from them
(the "not this person" exclusions of every search, the erasure of a removed person), and
:class:`ReviewStore`, the reads and writes of the review service.

The service (``service.py``, ``feedback.py``) composes these calls and never builds SQL;
the store reaches the database only through the catalogue's public ``reader()``,
``transaction()`` and ``write_lock()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pipeline.gallery.review.records import FeedbackKind, FeedbackRef, RecordedFace

if TYPE_CHECKING:
    from pipeline.gallery.catalogue import Catalogue

# Foreign keys and cascades are declared by the migration; these definitions only query.
metadata = sa.MetaData()
unknown_clusters = sa.Table(
    "unknown_clusters",
    metadata,
    sa.Column("cluster_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
sightings = sa.Table(
    "sightings",
    metadata,
    sa.Column("face_id", sa.String(300), primary_key=True),
    sa.Column("vector_key", sa.String(64), nullable=False),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("camera_id", sa.Text, nullable=False),
    sa.Column("track_id", sa.String(300), nullable=False),
    sa.Column("capture_ts_ms", sa.BigInteger, nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("identity_id", sa.String(64)),
    sa.Column("similarity", sa.Float),
    sa.Column("quality", sa.Text, nullable=False),
    sa.Column("cluster_id", sa.String(64)),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("crop", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("feedback_id", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(300), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("identity_id", sa.String(64), nullable=False),
    sa.Column("reported_identity_id", sa.String(64)),
    sa.Column("model_version", sa.Text, nullable=False),
    sa.Column("camera_id", sa.Text, nullable=False),
    sa.Column("capture_ts_ms", sa.BigInteger, nullable=False),
    sa.Column("similarity", sa.Float),
    sa.Column("crop", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
feedback_vectors = sa.Table(
    "feedback_vectors",
    metadata,
    sa.Column("feedback_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(200), primary_key=True),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
)

s = sightings.c
# A kept face without its two blobs: what every listing reads.
SIGHTING_COLUMNS = [c for c in s if c.name not in ("crop", "embedding")]
Where = sa.ColumnElement[bool]


def vector_key(face_id: str) -> str:
    """A sighting's key in Milvus: face ids (``camera:seq:index``) can outgrow Milvus's
    key length, a digest cannot."""
    return hashlib.sha256(face_id.encode()).hexdigest()[:40]


def pack(vector: np.ndarray | Sequence[float]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack(data: bytes) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype="<f4").copy()


# -- what the gallery needs (inside its own reads and transactions) ---------------------


def exclusion_vectors(
    con: Connection, identity_ids: list[str], model_version: str
) -> dict[str, np.ndarray]:
    """Identity -> (k, dim) embeddings of faces reported "not this person" for it, made
    by ``model_version`` (exclusions of other versions are never compared)."""
    if not identity_ids:
        return {}
    rows = con.execute(
        sa.select(feedback.c.identity_id, feedback_vectors.c.embedding)
        .join(feedback_vectors, feedback_vectors.c.feedback_id == feedback.c.feedback_id)
        .where(
            feedback.c.kind == "not_this_person",
            feedback.c.identity_id.in_(identity_ids),
            feedback_vectors.c.model_version == model_version,
        )
    ).all()
    out: dict[str, list[np.ndarray]] = {}
    for ident, emb in rows:
        out.setdefault(ident, []).append(unpack(emb))
    return {k: np.stack(v) for k, v in out.items()}


def delete_identity_rows(con: Connection, identity_id: str) -> None:
    """Erase what the review loop holds about an identity (its event faces, its
    feedback), in the caller's transaction: removing a person removes them everywhere."""
    ids = sa.select(feedback.c.feedback_id).where(feedback.c.identity_id == identity_id)
    con.execute(feedback_vectors.delete().where(feedback_vectors.c.feedback_id.in_(ids)))
    con.execute(feedback.delete().where(feedback.c.identity_id == identity_id))
    con.execute(sightings.delete().where(sightings.c.identity_id == identity_id))


# -- which kept faces an erasure takes --------------------------------------------------


def of_identity(identity_id: str) -> Where:
    """The kept faces of an identity's events (erased with the identity)."""
    return s.identity_id == identity_id


def unknowns_of_tracks(tracks: Sequence[str]) -> Where:
    """The kept unknown faces of these tracks (a track identified later)."""
    return sa.and_(s.decision == "unknown", s.track_id.in_(list(tracks)))


def of_cluster(cluster_id: str) -> Where:
    return s.cluster_id == cluster_id


def all_unknowns() -> Where:
    return s.decision == "unknown"


def kept_before(cutoff: float) -> Where:
    return s.created_at < cutoff


def sighting_row(f: RecordedFace, now: float, cluster_id: str | None = None) -> dict[str, Any]:
    """The ``sightings`` row of a face the stream hands over."""
    return {
        "face_id": f.face_id,
        "vector_key": vector_key(f.face_id),
        "model_version": f.model_version,
        "camera_id": f.camera_id,
        "track_id": f.track_id,
        "capture_ts_ms": f.capture_ts_ms,
        "decision": f.decision,
        "identity_id": f.identity_id if f.decision == "identity" else None,
        "similarity": f.similarity,
        "quality": json.dumps(f.quality),
        "cluster_id": cluster_id,
        "embedding": pack(f.embedding),
        "crop": f.crop_jpeg,
        "created_at": now,
    }


class ReviewStore:
    """The review loop's reads and writes, over the catalogue's database."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue

    def _all(self, query: sa.Executable) -> list[sa.Row[Any]]:
        with self.catalogue.reader() as con:
            return list(con.execute(query).all())

    # -- kept faces ---------------------------------------------------------------------

    def kept(self, face_ids: Sequence[str]) -> set[str]:
        """Those of ``face_ids`` already kept (a replayed frame)."""
        return {r.face_id for r in self._all(sa.select(s.face_id).where(s.face_id.in_(face_ids)))}

    def add_sightings(self, rows: list[dict[str, Any]]) -> None:
        with self.catalogue.transaction() as con:
            con.execute(sightings.insert(), rows)

    def sighting(self, face_id: str) -> dict[str, Any] | None:
        rows = self._all(sa.select(*SIGHTING_COLUMNS).where(s.face_id == face_id))
        return dict(rows[0]._mapping) if rows else None

    def events(self, limit: int, camera: str | None = None) -> list[dict[str, Any]]:
        """The newest kept faces of identification events, newest first."""
        query = sa.select(*SIGHTING_COLUMNS).where(s.decision == "identity")
        if camera is not None:
            query = query.where(s.camera_id == camera)
        query = query.order_by(s.capture_ts_ms.desc()).limit(limit)
        return [dict(r._mapping) for r in self._all(query)]

    def blob(self, face_id: str, column: str) -> bytes | None:
        """A kept face's ``crop`` (JPEG) or ``embedding`` (packed float32)."""
        with self.catalogue.reader() as con:
            data = con.execute(sa.select(s[column]).where(s.face_id == face_id)).scalar()
        return None if data is None else bytes(data)

    # -- unknown people -----------------------------------------------------------------

    def track_clusters(self, track_id: str, model_version: str) -> list[str | None]:
        """The cluster of each unknown face kept of this track."""
        query = sa.select(s.cluster_id).where(
            s.track_id == track_id, s.model_version == model_version, s.decision == "unknown"
        )
        return [r.cluster_id for r in self._all(query)]

    def clusters_of(self, keys: Sequence[str], other_than_track: str) -> list[tuple[str, str]]:
        """(vector key, cluster) of the kept faces of ``keys`` that belong to a cluster,
        from tracks other than ``other_than_track``."""
        query = sa.select(s.vector_key, s.cluster_id).where(
            s.vector_key.in_(list(keys)), s.track_id != other_than_track, s.cluster_id.is_not(None)
        )
        return [(r.vector_key, r.cluster_id) for r in self._all(query)]

    def add_unknowns(
        self, cluster_id: str, new: bool, model_version: str, now: float, rows: list[dict[str, Any]]
    ) -> None:
        """Kept unknown faces and their cluster (started, or touched), in one transaction."""
        with self.catalogue.transaction() as con:
            if new:
                con.execute(
                    unknown_clusters.insert().values(
                        cluster_id=cluster_id, model_version=model_version,
                        created_at=now, updated_at=now,
                    )
                )
            else:
                con.execute(
                    unknown_clusters.update()
                    .where(unknown_clusters.c.cluster_id == cluster_id)
                    .values(updated_at=now)
                )
            con.execute(sightings.insert(), rows)

    def cluster_exists(self, cluster_id: str) -> bool:
        c = unknown_clusters.c
        return bool(self._all(sa.select(c.cluster_id).where(c.cluster_id == cluster_id)))

    def cluster_summaries(
        self, cluster_ids: list[str] | None, limit: int, offset: int
    ) -> list[sa.Row[Any]]:
        """Per cluster: model_version, n_faces, n_tracks, first_seen_ms, last_seen_ms;
        the most recently seen first."""
        query = (
            sa.select(
                s.cluster_id,
                sa.func.min(s.model_version).label("model_version"),
                sa.func.count().label("n_faces"),
                sa.func.count(sa.distinct(s.track_id)).label("n_tracks"),
                sa.func.min(s.capture_ts_ms).label("first_seen_ms"),
                sa.func.max(s.capture_ts_ms).label("last_seen_ms"),
            )
            .where(s.cluster_id.is_not(None))
            .group_by(s.cluster_id)
            .order_by(sa.desc("last_seen_ms"), s.cluster_id)
        )
        if cluster_ids is not None:
            query = query.where(s.cluster_id.in_(cluster_ids))
        return self._all(query.limit(limit).offset(offset))

    def cluster_faces(self, cluster_ids: list[str]) -> list[sa.Row[Any]]:
        """(face_id, cluster_id, camera_id, quality JSON) of every face of the clusters."""
        query = sa.select(s.face_id, s.cluster_id, s.camera_id, s.quality).where(
            s.cluster_id.in_(cluster_ids)
        )
        return self._all(query)

    def cluster_sightings(self, cluster_id: str) -> list[dict[str, Any]]:
        query = (
            sa.select(*SIGHTING_COLUMNS)
            .where(s.cluster_id == cluster_id)
            .order_by(s.capture_ts_ms)
        )
        return [dict(r._mapping) for r in self._all(query)]

    def merge(self, into: str, others: Sequence[str], now: float) -> None:
        c = unknown_clusters.c
        with self.catalogue.transaction() as con:
            con.execute(
                sightings.update().where(s.cluster_id.in_(others)).values(cluster_id=into)
            )
            con.execute(unknown_clusters.delete().where(c.cluster_id.in_(others)))
            con.execute(
                unknown_clusters.update().where(c.cluster_id == into).values(updated_at=now)
            )

    def vector_keys(self, where: Where, *, unknown_only: bool = False) -> dict[str, list[str]]:
        """Model version -> the Milvus keys of the kept faces ``where`` takes (the
        unknowns' collections hold unknown faces only; the sightings' collections all)."""
        if unknown_only:
            where = sa.and_(where, s.decision == "unknown")
        query = sa.select(s.vector_key, s.model_version).where(where)
        out: dict[str, list[str]] = {}
        for r in self._all(query):
            out.setdefault(r.model_version, []).append(r.vector_key)
        return out

    def kept_vectors(self, after: str, limit: int) -> list[sa.Row[Any]]:
        """(vector_key, face_id, model_version, embedding) of up to ``limit`` kept faces
        whose key sorts after ``after``: every kept face, a page at a time."""
        query = (
            sa.select(s.vector_key, s.face_id, s.model_version, s.embedding)
            .where(s.vector_key > after)
            .order_by(s.vector_key)
            .limit(limit)
        )
        return self._all(query)

    def by_vector_keys(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """The kept faces (without blobs) of these Milvus keys: what a search found and
        the catalogue still holds."""
        if not keys:
            return []
        rows = self._all(sa.select(*SIGHTING_COLUMNS).where(s.vector_key.in_(list(keys))))
        return [dict(r._mapping) for r in rows]

    def delete(self, where: Where) -> tuple[int, int]:
        """Delete the kept faces ``where`` takes, then the clusters left empty:
        (clusters, faces) deleted."""
        c = unknown_clusters.c
        with self.catalogue.transaction() as con:
            n_faces = con.execute(sightings.delete().where(where)).rowcount
            used = sa.select(s.cluster_id).where(s.cluster_id.is_not(None))
            n_clusters = con.execute(
                unknown_clusters.delete().where(c.cluster_id.not_in(used))
            ).rowcount
        return n_clusters, n_faces

    # -- feedback -----------------------------------------------------------------------

    def feedback_refs(self, event_ids: list[str]) -> dict[str, list[FeedbackRef]]:
        """Event id -> the feedback given on it."""
        if not event_ids:
            return {}
        out: dict[str, list[FeedbackRef]] = {}
        for f in self._all(sa.select(feedback).where(feedback.c.event_id.in_(event_ids))):
            m = f._mapping
            out.setdefault(m["event_id"], []).append(
                FeedbackRef(
                    feedback_id=m["feedback_id"],
                    kind=m["kind"],
                    identity_id=m["identity_id"],
                    created_at=m["created_at"],
                )
            )
        return out

    def add_feedback(
        self,
        feedback_id: str,
        event: Mapping[str, Any],
        kind: FeedbackKind,
        identity_id: str,
        crop: bytes,
        embedding: np.ndarray | None,
    ) -> None:
        """One feedback row (with a copy of the face's crop) and, for an exclusion, the
        face's embedding; ``event``: the kept face's fields (event_id, identity_id,
        model_version, camera_id, capture_ts_ms, similarity)."""
        with self.catalogue.transaction() as con:
            con.execute(
                feedback.insert().values(
                    feedback_id=feedback_id,
                    event_id=event["event_id"],
                    kind=kind,
                    identity_id=identity_id,
                    reported_identity_id=event["identity_id"],
                    model_version=event["model_version"],
                    camera_id=event["camera_id"],
                    capture_ts_ms=event["capture_ts_ms"],
                    similarity=event["similarity"],
                    crop=crop,
                    created_at=time.time(),
                )
            )
            if embedding is not None:
                con.execute(
                    feedback_vectors.insert().values(
                        feedback_id=feedback_id,
                        model_version=event["model_version"],
                        embedding=pack(embedding),
                    )
                )

    @contextlib.contextmanager
    def each_feedback(self) -> Iterator[Iterator[sa.RowMapping]]:
        """Every feedback row (crop included), oldest first, read as it is consumed."""
        with self.catalogue.reader() as con:
            rows = con.execute(sa.select(feedback).order_by(feedback.c.created_at))
            yield (r._mapping for r in rows)
