"""The audit trail (who enrolled, erased, labelled, purged whom) and the web UI's
signed-out sessions.

- ``audit_log``: one row per change of the gallery made through the REST API, the web UI
  or the CLI: when, who (the principal and the client address), the action, its
  subject and a small JSON detail. Never deleted by an erasure: it names ids, not faces.
- ``revoked_sessions``: a browser session ended by "sign out" (its nonce), kept until
  the cookie would have expired anyway, so a copied cookie dies with the sign-out.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False, index=True),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("client", sa.Text),
        sa.Column("action", sa.String(64), nullable=False, index=True),
        sa.Column("subject", sa.Text),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_table(
        "revoked_sessions",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("revoked_sessions")
    op.drop_table("audit_log")
