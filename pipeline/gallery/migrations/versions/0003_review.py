"""The review loop: faces the stream kept (event crops, unknown faces), unknown people
(clusters of unknown faces) and feedback on identification events.

- ``sightings``: one face the stream saw, keyed by its face id (``camera:seq:index``,
  the id of the identification event it decided); its aligned crop (JPEG) and its
  embedding (with the model version that made it). Removing an identity erases the
  sightings attributed to it (CASCADE).
- ``unknown_clusters``: an unknown person, per model version (embeddings of two
  versions are never clustered together).
- ``feedback``: "not this person" / "this is X" on an event, with a copy of the face's
  crop, so the training job can use it after the sighting itself has expired.
- ``feedback_vectors``: the feedback face's embedding per model version (a "not this
  person" exclusion is compared with probes of the same version only).

Revision ID: 0003
Revises: 0002
"""

# The schema is restated here, not imported from the code: a migration must keep
# building what it built the day it was written.
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unknown_clusters",
        sa.Column("cluster_id", sa.String(64), primary_key=True),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "sightings",
        sa.Column("face_id", sa.String(300), primary_key=True),
        # The face's row key in the unknowns' Milvus collection (Milvus keys are short).
        sa.Column("vector_key", sa.String(64), nullable=False, unique=True),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("camera_id", sa.Text, nullable=False),
        sa.Column("track_id", sa.String(300), nullable=False, index=True),
        sa.Column("capture_ts_ms", sa.BigInteger, nullable=False, index=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column(
            "identity_id",
            sa.String(64),
            sa.ForeignKey("identities.identity_id", ondelete="CASCADE"),
            index=True,
        ),
        sa.Column("similarity", sa.Float),
        sa.Column("quality", sa.Text, nullable=False, server_default="{}"),
        sa.Column(
            "cluster_id",
            sa.String(64),
            sa.ForeignKey("unknown_clusters.cluster_id", ondelete="CASCADE"),
            index=True,
        ),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("crop", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False, index=True),
    )
    op.create_table(
        "feedback",
        sa.Column("feedback_id", sa.String(64), primary_key=True),
        sa.Column("event_id", sa.String(300), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column(
            "identity_id",
            sa.String(64),
            sa.ForeignKey("identities.identity_id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("reported_identity_id", sa.String(64)),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("camera_id", sa.Text, nullable=False),
        sa.Column("capture_ts_ms", sa.BigInteger, nullable=False),
        sa.Column("similarity", sa.Float),
        sa.Column("crop", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "feedback_vectors",
        sa.Column(
            "feedback_id",
            sa.String(64),
            sa.ForeignKey("feedback.feedback_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model_version", sa.String(200), primary_key=True),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("feedback_vectors")
    op.drop_table("feedback")
    op.drop_table("sightings")
    op.drop_table("unknown_clusters")
