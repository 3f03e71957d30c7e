"""The name lookup (``Catalogue.find_by_name``): ``identities.name_key``, a digest of the
name as people compare names (whole, without case or surrounding spaces), indexed, and
filled in for the identities already enrolled.

A digest rather than the folded name itself: an index entry stays small whatever the
length of a name (PostgreSQL refuses B-tree entries over ~2.7 kB), and both databases
compare the same bytes (SQLite's ``lower()`` folds ASCII only).

Revision ID: 0004
Revises: 0003
"""

# The key is restated here, not imported from catalogue.py: a migration must keep
# building what it built the day it was written. Catalogue.name_key computes the same.
from __future__ import annotations

import hashlib
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _name_key(name: str) -> str:
    folded = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold())
    return hashlib.sha256(folded.strip().encode()).hexdigest()[:32]


def upgrade() -> None:
    # Nullable: adding a NOT NULL column to a filled table would make SQLite copy the
    # table (batch mode), and with foreign keys on, dropping the old copy would cascade
    # into the faces. Every write path of the catalogue sets it.
    op.add_column("identities", sa.Column("name_key", sa.String(32), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT identity_id, name FROM identities")).all()
    if rows:
        bind.execute(
            sa.text("UPDATE identities SET name_key = :k WHERE identity_id = :i"),
            [{"k": _name_key(name), "i": ident} for ident, name in rows],
        )
    op.create_index("ix_identities_name_key", "identities", ["name_key"])


def downgrade() -> None:
    op.drop_index("ix_identities_name_key", table_name="identities")
    op.drop_column("identities", "name_key")
