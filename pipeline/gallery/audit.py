"""The audit trail of the gallery and the web UI's revoked sessions, in the catalogue
database (migration 0005), shared by every replica, pod and CLI process.

An entry says who changed the gallery: the principal (``api-token``, ``ui-session:<id>``
or ``cli:<user>@<host>``), the client address when there is one, the action
(``enrol``, ``add_faces``, ``rename``, ``remove``, ``label``, ``merge``, ``purge``,
``feedback``...), its subject (an identity or cluster id) and a small JSON detail. It
holds ids and names, never faces, so it outlives an erasure by design: it is the record
that the erasure happened.
"""

from __future__ import annotations

import getpass
import json
import socket
import time
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from pipeline.gallery.catalogue import Catalogue

metadata = sa.MetaData()
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("entry_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("client", sa.Text),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.Text),
    sa.Column("detail", sa.Text, nullable=False),
)
revoked_sessions = sa.Table(
    "revoked_sessions",
    metadata,
    sa.Column("nonce", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
)
MAX_DETAIL_CHARS = 4000


class AuditEntry(BaseModel):
    entry_id: int
    at: float
    actor: str
    client: str | None
    action: str
    subject: str | None
    detail: dict[str, Any]


def cli_actor() -> str:
    """The principal of a command run on this machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def record(
    catalogue: Catalogue,
    *,
    actor: str,
    action: str,
    subject: str | None = None,
    client: str | None = None,
    **detail: Any,
) -> None:
    """Append one entry (its own transaction: written after the change it records
    committed, so an entry never claims a change that was rolled back)."""
    text = json.dumps(detail, default=str)
    if len(text) > MAX_DETAIL_CHARS:
        text = json.dumps({"truncated": text[:MAX_DETAIL_CHARS]})
    with catalogue.transaction() as con:
        con.execute(
            audit_log.insert().values(
                at=time.time(),
                actor=actor,
                client=client,
                action=action,
                subject=subject,
                detail=text,
            )
        )


def entries(
    catalogue: Catalogue,
    *,
    limit: int = 100,
    offset: int = 0,
    action: str | None = None,
    subject: str | None = None,
) -> list[AuditEntry]:
    """The newest entries first."""
    query = sa.select(audit_log).order_by(audit_log.c.entry_id.desc())
    if action is not None:
        query = query.where(audit_log.c.action == action)
    if subject is not None:
        query = query.where(audit_log.c.subject == subject)
    with catalogue.transaction() as con:
        rows = con.execute(query.limit(limit).offset(offset)).all()
    return [
        AuditEntry(**{**row._mapping, "detail": json.loads(row._mapping["detail"])}) for row in rows
    ]


def revoke_session(catalogue: Catalogue, nonce: str, expires_at: float) -> None:
    """End a browser session for every replica; expired revocations are dropped."""
    now = time.time()
    with catalogue.transaction() as con:
        con.execute(revoked_sessions.delete().where(revoked_sessions.c.expires_at < now))
        exists = con.execute(
            sa.select(revoked_sessions.c.nonce).where(revoked_sessions.c.nonce == nonce)
        ).first()
        if exists is None:
            con.execute(revoked_sessions.insert().values(nonce=nonce, expires_at=expires_at))


def session_revoked(catalogue: Catalogue, nonce: str) -> bool:
    with catalogue.transaction() as con:
        row = con.execute(
            sa.select(revoked_sessions.c.nonce).where(revoked_sessions.c.nonce == nonce)
        ).first()
    return row is not None
