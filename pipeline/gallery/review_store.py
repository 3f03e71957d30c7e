"""The review loop's tables (SQLAlchemy Core, in the catalogue database; created by
migration 0003) and the few queries the gallery's search needs from them.

Kept apart from ``review.py`` so that ``Gallery`` (whose searches apply "not this
person" exclusions) does not depend on the review service built on top of it.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

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


def vector_key(face_id: str) -> str:
    """A sighting's key in Milvus: face ids (``camera:seq:index``) can outgrow Milvus's
    key length, a digest cannot."""
    return hashlib.sha256(face_id.encode()).hexdigest()[:40]


def pack(vector: np.ndarray | list[float]) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def unpack(data: bytes) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype="<f4").copy()


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


def row_dict(row: sa.Row[Any]) -> dict[str, Any]:
    return dict(row._mapping)
