"""Aligned crops move into the catalogue (table ``crops``), so every replica that
re-embeds reads them from the database it already shares.

A SQLite catalogue of the file-based layout (``<data_dir>/crops/<identity>/<face>.png``
beside the database) has its crop files copied in, checked against their sha256; the
files are left in place for the user to delete.

Revision ID: 0002
Revises: 0001
"""

# The schema is restated here, not imported from catalogue.py: a migration must keep
# building what it built the day it was written, whatever the tables become later.
from __future__ import annotations

import hashlib
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crops",
        sa.Column(
            "face_id",
            sa.String(64),
            sa.ForeignKey("faces.face_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("png", sa.LargeBinary, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name != "sqlite" or not bind.engine.url.database:
        return
    legacy = Path(bind.engine.url.database).parent / "crops"
    rows = bind.execute(sa.text("SELECT face_id, crop, crop_sha256 FROM faces")).all()
    for face_id, rel, sha in rows:
        path = legacy / rel
        if not path.is_file():
            raise RuntimeError(f"catalogue migration: crop of face {face_id} missing: {path}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise RuntimeError(f"catalogue migration: crop {path} does not match its sha256")
        bind.execute(
            sa.text("INSERT INTO crops (face_id, png) VALUES (:f, :p)"), {"f": face_id, "p": data}
        )


def downgrade() -> None:
    op.drop_table("crops")
