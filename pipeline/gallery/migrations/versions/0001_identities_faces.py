"""Identities and their faces.

Catalogues made before migrations existed (SQLite, same tables) are adopted as they are.

Revision ID: 0001
Revises:
"""

# The schema is restated here, not imported from catalogue.py: a migration must keep
# building what it built the day it was written, whatever the tables become later.
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "identities" not in existing:
        op.create_table(
            "identities",
            sa.Column("identity_id", sa.String(64), primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("external_id", sa.Text, unique=True),
            sa.Column("metadata", sa.Text, nullable=False, server_default="{}"),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
    if "faces" not in existing:
        op.create_table(
            "faces",
            sa.Column("face_id", sa.String(64), primary_key=True),
            sa.Column(
                "identity_id",
                sa.String(64),
                sa.ForeignKey("identities.identity_id", ondelete="CASCADE"),
                nullable=False,
            ),
            sa.Column("crop", sa.Text, nullable=False),
            sa.Column("crop_sha256", sa.Text, nullable=False),
            sa.Column("template", sa.Text, nullable=False),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("crop_mode", sa.Text, nullable=False),
            sa.Column("quality", sa.Text, nullable=False),
            sa.Column("enrolled_version", sa.Text, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
        )
        op.create_index("ix_faces_identity_id", "faces", ["identity_id"])


def downgrade() -> None:
    op.drop_table("faces")
    op.drop_table("identities")
