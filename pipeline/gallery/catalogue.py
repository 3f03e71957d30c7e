"""The identity catalogue: identities, their enrolled faces and the faces' aligned crops,
in one SQL database that every process and pod shares (SQLAlchemy Core: SQLite on one
machine, PostgreSQL for shared deployments; the schema is migrated by Alembic).

Why a database beside Milvus rather than Milvus alone:

- The catalogue is independent of the model version. Milvus holds one collection per
  version and a re-embed builds a new one; names, external ids, metadata and the
  faces' crops must outlive every collection, and they are the input of a re-embed.
- Enrolment is all-or-nothing: a transaction and a UNIQUE constraint on external ids;
  Milvus has neither across rows.
- Milvus collections need a vector field; identities have none.

Why the crops live in the database and not in files: every replica that re-embeds (a
live promote runs in the stream's search deployment, on any node or pod) already
reaches the database, so no volume has to be mounted read-write by every pod; a
crop is written in the same transaction as its face row (no orphan file after a crash)
and an erasure is one cascading DELETE. A crop is a lossless PNG of ~30 KB, so 100k
faces are ~3 GB of ``bytea``, which PostgreSQL stores out of line (TOAST).

The catalogue is the source of truth for who is enrolled: a vector row whose identity
is not committed here is never reported by a search.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
import unicodedata
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url

from pipeline.files import private_dir, private_file
from pipeline.gallery.errors import (
    DuplicateExternalId,
    GalleryError,
    GalleryUnavailable,
    IdentityNotFound,
)
from pipeline.gallery.records import FaceRecord, Identity, IdentityDetail

MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant: the key of PostgreSQL's advisory locks that serialise gallery writes
# and schema migrations across every process and pod.
WRITE_LOCK_KEY = 0x46535F47414C  # "FS_GAL"
MIGRATE_LOCK_KEY = WRITE_LOCK_KEY + 1
# Ids per IN (...) query: SQLite takes 32766 bind parameters, PostgreSQL 65535.
IN_CHUNK = 10_000


class FaceOwner(NamedTuple):
    """Whom a catalogued face belongs to (what a search candidate shows)."""

    identity_id: str
    name: str
    external_id: str | None

metadata = sa.MetaData()
identities = sa.Table(
    "identities",
    metadata,
    sa.Column("identity_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    # name_key(name), indexed: the exact-name lookup (migration 0004).
    sa.Column("name_key", sa.String(32), index=True),
    sa.Column("external_id", sa.Text, unique=True),
    sa.Column("metadata", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
faces = sa.Table(
    "faces",
    metadata,
    sa.Column("face_id", sa.String(64), primary_key=True),
    sa.Column(
        "identity_id",
        sa.String(64),
        sa.ForeignKey("identities.identity_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
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
crops = sa.Table(
    "crops",
    metadata,
    sa.Column(
        "face_id",
        sa.String(64),
        sa.ForeignKey("faces.face_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("png", sa.LargeBinary, nullable=False),
)

_N_FACES = (
    sa.select(sa.func.count())
    .select_from(faces)
    .where(faces.c.identity_id == identities.c.identity_id)
    .scalar_subquery()
    .label("n_faces")
)
_SELECT_IDENTITY = sa.select(identities, _N_FACES)


def fold_name(name: str) -> str:
    """A name as people compare names: whole, without case (Unicode case folding) or
    surrounding spaces."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).casefold()).strip()


def name_key(name: str) -> str:
    """The indexed key of :func:`fold_name` (a digest: small index entries whatever the
    name's length; migration 0004 restates it)."""
    return hashlib.sha256(fold_name(name).encode()).hexdigest()[:32]


def catalogue_url(url: str, password: str | None) -> URL:
    parsed = make_url(url)
    return parsed.set(password=password) if password else parsed


def _sqlite_pragmas(dbapi_con: Any, _record: Any) -> None:
    cur = dbapi_con.cursor()
    cur.execute("PRAGMA foreign_keys=ON")  # the cascades that make erasure complete
    cur.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
    cur.close()


class Catalogue:
    def __init__(self, url: str, password: str | None = None) -> None:
        self.url = catalogue_url(url, password)
        self.address = self.url.render_as_string(hide_password=True)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._lock_path: Path | None = None
        if self.is_sqlite:
            db = Path(self.url.database or "")
            if not self.url.database or self.url.database == ":memory:":
                raise GalleryError("the catalogue needs a database file or a server")
            private_dir(db.parent)
            # Created owner-only before SQLite opens it: SQLite gives its -wal and -shm
            # files the database file's mode.
            os.close(private_file(db))
            self._lock_path = db.with_name(db.name + ".lock")
            self.engine: Engine = sa.create_engine(self.url, connect_args={"timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            # pre_ping: a pooled connection that died with a database restart is replaced
            # instead of failing the next request.
            self.engine = sa.create_engine(
                self.url, pool_pre_ping=True, pool_size=4, connect_args={"connect_timeout": 5}
            )
        self._thread_lock = threading.RLock()
        self.migrate()

    def close(self) -> None:
        self.engine.dispose()

    # -- availability ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _available(self) -> Iterator[None]:
        """Database outages become ``GalleryUnavailable`` naming the address (no password)."""
        try:
            yield
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            if self.is_sqlite and "locked" not in str(exc.orig):
                raise GalleryError(f"catalogue {self.address}: {exc.orig}") from None
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise GalleryUnavailable(
                f"the catalogue database at {self.address} is unavailable: {first}"
            ) from None

    @contextlib.contextmanager
    def reader(self) -> Iterator[Connection]:
        """A connection for reads (outages raise ``GalleryUnavailable``): the catalogue's
        own queries and those of the tables beside it (the review loop's store)."""
        with self._available(), self.engine.connect() as con:
            yield con

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back on any error."""
        with self._available(), self.engine.begin() as con:
            yield con

    @contextlib.contextmanager
    def _file_lock(self, suffix: str) -> Iterator[None]:
        assert self._lock_path is not None
        fd = private_file(str(self._lock_path) + suffix)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialise gallery writes across threads, processes and (PostgreSQL) pods, so a
        re-embed never misses a concurrent enrolment."""
        with self._thread_lock:
            if self.is_sqlite:
                with self._file_lock(""):
                    yield
                return
            with self._available(), self.engine.connect() as con:
                con.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": WRITE_LOCK_KEY})
                con.commit()
                try:
                    yield
                finally:
                    with contextlib.suppress(sa.exc.DBAPIError):
                        con.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": WRITE_LOCK_KEY})
                        con.commit()

    # -- schema ---------------------------------------------------------------------------

    def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent; concurrent starters of
        many replicas take turns)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._available():
            if self.is_sqlite:
                with self._file_lock(".migrate"), self.engine.begin() as con:
                    cfg.attributes["connection"] = con
                    command.upgrade(cfg, "head")
                return
            with self.engine.begin() as con:
                con.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATE_LOCK_KEY})
                cfg.attributes["connection"] = con
                command.upgrade(cfg, "head")

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.reader() as con:
            return MigrationContext.configure(con).get_current_revision()

    # -- writes (inside a transaction) -------------------------------------------------

    @staticmethod
    def add_identity(
        con: Connection,
        identity_id: str,
        name: str,
        external_id: str | None,
        meta: dict[str, Any],
    ) -> None:
        now = time.time()
        try:
            with con.begin_nested():  # a duplicate must not abort the outer transaction
                con.execute(
                    identities.insert().values(
                        identity_id=identity_id,
                        name=name,
                        name_key=name_key(name),
                        external_id=external_id,
                        metadata=json.dumps(meta),
                        created_at=now,
                        updated_at=now,
                    )
                )
        except sa.exc.IntegrityError as exc:
            if "external_id" in str(exc.orig):
                raise DuplicateExternalId(
                    f"external id {external_id!r} is already enrolled"
                ) from None
            raise

    @staticmethod
    def add_face(con: Connection, face: FaceRecord, png: bytes) -> None:
        """The face row and its crop, in the caller's transaction."""
        row = face.model_dump()
        row["quality"] = json.dumps(face.quality)
        con.execute(faces.insert().values(**row))
        con.execute(crops.insert().values(face_id=face.face_id, png=png))
        con.execute(
            identities.update()
            .where(identities.c.identity_id == face.identity_id)
            .values(updated_at=time.time())
        )

    def rename(self, identity_id: str, name: str) -> Identity:
        with self.transaction() as con:
            res = con.execute(
                identities.update()
                .where(identities.c.identity_id == identity_id)
                .values(name=name, name_key=name_key(name), updated_at=time.time())
            )
            if res.rowcount == 0:
                raise IdentityNotFound(f"no identity {identity_id!r}")
        return self.get(identity_id)

    @staticmethod
    def delete_identity(con: Connection, identity_id: str) -> None:
        # Explicit rather than relying on the cascade alone: SQLite enforces foreign
        # keys only on connections that turned them on.
        from pipeline.gallery.review.store import delete_identity_rows

        delete_identity_rows(con, identity_id)
        face_ids = sa.select(faces.c.face_id).where(faces.c.identity_id == identity_id)
        con.execute(crops.delete().where(crops.c.face_id.in_(face_ids)))
        con.execute(faces.delete().where(faces.c.identity_id == identity_id))
        con.execute(identities.delete().where(identities.c.identity_id == identity_id))

    # -- reads --------------------------------------------------------------------------

    @staticmethod
    def _identity(row: sa.Row[Any]) -> Identity:
        m = row._mapping
        return Identity(
            identity_id=m["identity_id"],
            name=m["name"],
            external_id=m["external_id"],
            metadata=json.loads(m["metadata"]),
            n_faces=m["n_faces"],
            created_at=m["created_at"],
            updated_at=m["updated_at"],
        )

    @staticmethod
    def _face(row: sa.Row[Any]) -> FaceRecord:
        m = dict(row._mapping)
        return FaceRecord(**{**m, "quality": json.loads(m["quality"])})

    def get(self, identity_id: str) -> Identity:
        with self.reader() as con:
            row = con.execute(
                _SELECT_IDENTITY.where(identities.c.identity_id == identity_id)
            ).first()
        if row is None:
            raise IdentityNotFound(f"no identity {identity_id!r}")
        return self._identity(row)

    def find(self, identity_ids: list[str]) -> dict[str, Identity]:
        """The committed identities among ``identity_ids`` (others are simply absent)."""
        if not identity_ids:
            return {}
        with self.reader() as con:
            rows = con.execute(
                _SELECT_IDENTITY.where(identities.c.identity_id.in_(identity_ids))
            ).all()
        return {r._mapping["identity_id"]: self._identity(r) for r in rows}

    def face_owners(self, face_ids: Collection[str]) -> dict[str, FaceOwner]:
        """Face id -> the identity the catalogue holds that face under, for the catalogued
        faces among ``face_ids`` (the others are absent). One query for a search batch
        (chunked only beyond what a database takes as bind parameters)."""
        ids = sorted(set(face_ids))
        out: dict[str, FaceOwner] = {}
        if not ids:
            return out
        query = sa.select(
            faces.c.face_id, identities.c.identity_id, identities.c.name, identities.c.external_id
        ).join_from(faces, identities, faces.c.identity_id == identities.c.identity_id)
        with self.reader() as con:
            for i in range(0, len(ids), IN_CHUNK):
                for row in con.execute(query.where(faces.c.face_id.in_(ids[i : i + IN_CHUNK]))):
                    m = row._mapping
                    out[m["face_id"]] = FaceOwner(m["identity_id"], m["name"], m["external_id"])
        return out

    def detail(self, identity_id: str) -> IdentityDetail:
        ident = self.get(identity_id)
        return IdentityDetail(**ident.model_dump(), faces=self.faces(identity_id))

    def faces(self, identity_id: str | None = None) -> list[FaceRecord]:
        query = sa.select(faces).order_by(faces.c.created_at, faces.c.face_id)
        if identity_id is not None:
            query = query.where(faces.c.identity_id == identity_id)
        with self.reader() as con:
            rows = con.execute(query).all()
        return [self._face(r) for r in rows]

    def first_faces(self, identity_ids: list[str]) -> dict[str, str]:
        """Each identity's first enrolled face id (its thumbnail), in one query for a
        whole page of identities."""
        if not identity_ids:
            return {}
        first = (
            sa.select(
                faces.c.identity_id,
                faces.c.face_id,
                sa.func.row_number()
                .over(
                    partition_by=faces.c.identity_id,
                    order_by=(faces.c.created_at, faces.c.face_id),
                )
                .label("rank"),
            )
            .where(faces.c.identity_id.in_(identity_ids))
            .subquery()
        )
        query = sa.select(first.c.identity_id, first.c.face_id).where(first.c.rank == 1)
        with self.reader() as con:
            return {row.identity_id: row.face_id for row in con.execute(query)}

    def crop_png(self, face_id: str) -> bytes:
        with self.reader() as con:
            png = con.execute(sa.select(crops.c.png).where(crops.c.face_id == face_id)).scalar()
        if png is None:
            raise GalleryError(f"stored crop of face {face_id} missing from {self.address}")
        return bytes(png)

    def crop_count(self, identity_id: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(crops)
        if identity_id is not None:
            query = query.join(faces, faces.c.face_id == crops.c.face_id).where(
                faces.c.identity_id == identity_id
            )
        with self.reader() as con:
            return int(con.execute(query).scalar() or 0)

    def find_by_name(self, name: str) -> list[Identity]:
        """Everyone called ``name`` (the whole name, compared by :func:`fold_name`), oldest
        first; an indexed lookup, however many other names contain this one."""
        query = _SELECT_IDENTITY.where(identities.c.name_key == name_key(name)).order_by(
            identities.c.created_at, identities.c.identity_id
        )
        with self.reader() as con:
            rows = con.execute(query).all()
        wanted = fold_name(name)
        return [i for i in map(self._identity, rows) if fold_name(i.name) == wanted]

    def list(
        self, limit: int = 100, offset: int = 0, name_contains: str | None = None
    ) -> list[Identity]:
        query = _SELECT_IDENTITY
        if name_contains:
            esc = name_contains.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(identities.c.name.ilike(f"%{esc}%", escape="\\"))
        query = query.order_by(identities.c.created_at, identities.c.identity_id)
        with self.reader() as con:
            rows = con.execute(query.limit(limit).offset(offset)).all()
        return [self._identity(r) for r in rows]

    def counts(self) -> tuple[int, int]:
        with self.reader() as con:
            n_id = con.execute(sa.select(sa.func.count()).select_from(identities)).scalar()
            n_faces = con.execute(sa.select(sa.func.count()).select_from(faces)).scalar()
        return int(n_id or 0), int(n_faces or 0)
