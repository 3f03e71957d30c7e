"""The identity catalogue: identities and their enrolled faces, in SQLite.

Why SQLite beside the blob dir rather than Milvus:

- The catalogue is independent of the model version. Milvus holds one collection per
  version and a re-embed builds a new one; names, external ids, metadata and the
  face -> crop records must outlive every collection, and they are the input of a
  re-embed.
- Enrolment is all-or-nothing. SQLite gives a real transaction and a UNIQUE
  constraint on external ids; Milvus has neither across rows.
- Milvus collections need a vector field; identities have none.

The catalogue is the source of truth for who is enrolled. A vector row whose identity
is not (yet) committed here is never reported by a search.
Readers open their own connection per call, so with WAL they never see a
write that is still in its transaction.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.gallery.errors import DuplicateExternalId, IdentityNotFound
from pipeline.gallery.records import FaceRecord, Identity, IdentityDetail

SCHEMA = """
CREATE TABLE IF NOT EXISTS identities (
    identity_id TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    external_id TEXT UNIQUE,
    metadata    TEXT NOT NULL DEFAULT '{}',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS faces (
    face_id          TEXT PRIMARY KEY,
    identity_id      TEXT NOT NULL REFERENCES identities(identity_id) ON DELETE CASCADE,
    crop             TEXT NOT NULL,
    crop_sha256      TEXT NOT NULL,
    template         TEXT NOT NULL,
    source           TEXT NOT NULL,
    crop_mode        TEXT NOT NULL,
    quality          TEXT NOT NULL,
    enrolled_version TEXT NOT NULL,
    created_at       REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS faces_by_identity ON faces(identity_id);
"""


class Catalogue:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._reader() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys=ON")
        return con

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back on any error."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    # -- writes (inside a transaction) -------------------------------------------------

    @staticmethod
    def add_identity(
        con: sqlite3.Connection,
        identity_id: str,
        name: str,
        external_id: str | None,
        metadata: dict[str, Any],
    ) -> None:
        now = time.time()
        try:
            con.execute(
                "INSERT INTO identities VALUES (?, ?, ?, ?, ?, ?)",
                (identity_id, name, external_id, json.dumps(metadata), now, now),
            )
        except sqlite3.IntegrityError as exc:
            if "external_id" in str(exc):
                raise DuplicateExternalId(
                    f"external id {external_id!r} is already enrolled"
                ) from None
            raise

    @staticmethod
    def add_face(con: sqlite3.Connection, face: FaceRecord) -> None:
        con.execute(
            "INSERT INTO faces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                face.face_id,
                face.identity_id,
                face.crop,
                face.crop_sha256,
                face.template,
                face.source,
                face.crop_mode,
                json.dumps(face.quality),
                face.enrolled_version,
                face.created_at,
            ),
        )
        con.execute(
            "UPDATE identities SET updated_at = ? WHERE identity_id = ?",
            (time.time(), face.identity_id),
        )

    def rename(self, identity_id: str, name: str) -> Identity:
        with self.transaction() as con:
            cur = con.execute(
                "UPDATE identities SET name = ?, updated_at = ? WHERE identity_id = ?",
                (name, time.time(), identity_id),
            )
            if cur.rowcount == 0:
                raise IdentityNotFound(f"no identity {identity_id!r}")
        return self.get(identity_id)

    @staticmethod
    def delete_identity(con: sqlite3.Connection, identity_id: str) -> None:
        con.execute("DELETE FROM faces WHERE identity_id = ?", (identity_id,))
        con.execute("DELETE FROM identities WHERE identity_id = ?", (identity_id,))

    # -- reads --------------------------------------------------------------------------

    @staticmethod
    def _identity(row: sqlite3.Row) -> Identity:
        return Identity(
            identity_id=row["identity_id"],
            name=row["name"],
            external_id=row["external_id"],
            metadata=json.loads(row["metadata"]),
            n_faces=row["n_faces"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    @staticmethod
    def _face(row: sqlite3.Row) -> FaceRecord:
        return FaceRecord(**{**dict(row), "quality": json.loads(row["quality"])})

    _SELECT = (
        "SELECT i.*, (SELECT COUNT(*) FROM faces f WHERE f.identity_id = i.identity_id) "
        "AS n_faces FROM identities i"
    )

    def get(self, identity_id: str) -> Identity:
        with self._reader() as con:
            row = con.execute(f"{self._SELECT} WHERE identity_id = ?", (identity_id,)).fetchone()
        if row is None:
            raise IdentityNotFound(f"no identity {identity_id!r}")
        return self._identity(row)

    def find(self, identity_ids: list[str]) -> dict[str, Identity]:
        """The committed identities among ``identity_ids`` (others are simply absent)."""
        if not identity_ids:
            return {}
        marks = ",".join("?" * len(identity_ids))
        with self._reader() as con:
            rows = con.execute(
                f"{self._SELECT} WHERE identity_id IN ({marks})", identity_ids
            ).fetchall()
        return {r["identity_id"]: self._identity(r) for r in rows}

    def detail(self, identity_id: str) -> IdentityDetail:
        ident = self.get(identity_id)
        return IdentityDetail(**ident.model_dump(), faces=self.faces(identity_id))

    def faces(self, identity_id: str | None = None) -> list[FaceRecord]:
        with self._reader() as con:
            if identity_id is None:
                rows = con.execute("SELECT * FROM faces ORDER BY created_at, face_id").fetchall()
            else:
                rows = con.execute(
                    "SELECT * FROM faces WHERE identity_id = ? ORDER BY created_at, face_id",
                    (identity_id,),
                ).fetchall()
        return [self._face(r) for r in rows]

    def list(
        self, limit: int = 100, offset: int = 0, name_contains: str | None = None
    ) -> list[Identity]:
        where, args = "", []
        if name_contains:
            where = " WHERE i.name LIKE ? ESCAPE '\\'"
            esc = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            args.append(f"%{esc}%")
        with self._reader() as con:
            rows = con.execute(
                f"{self._SELECT}{where} ORDER BY i.created_at, i.identity_id LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [self._identity(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        with self._reader() as con:
            n_id = con.execute("SELECT COUNT(*) FROM identities").fetchone()[0]
            n_faces = con.execute("SELECT COUNT(*) FROM faces").fetchone()[0]
        return int(n_id), int(n_faces)
