"""Versioned face-vector collections in Milvus, behind an alias that names the active one.

One collection per model version (``<prefix>_<version>``), each tagged with its
version twice: in the collection's properties and in every row. The alias
(``faces_active`` by default) is the active pointer; moving it is Milvus's atomic
alias switch.

A search resolves the alias once, to a concrete collection, and runs against that
name, so a flip in the middle of a request cannot make it read two collections.
Before it runs, the embedding's version is checked against the collection's, and
every hit's row version is checked again after: any difference raises
``ModelVersionMismatch`` rather than comparing vectors of two models.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import urlparse

import numpy as np

from pipeline.face.errors import ModelError
from pipeline.files import private_dir, private_umask
from pipeline.gallery.errors import (
    GalleryBusy,
    GalleryError,
    GalleryUnavailable,
    ModelVersionMismatch,
)
from pipeline.gallery.index import VECTOR_FIELD, index_params, search_params
from pipeline.models.store import check_version_id

if TYPE_CHECKING:
    from pymilvus import MilvusClient

VERSION_PROPERTY = "facestream.model_version"
DIM_PROPERTY = "facestream.dim"
ID_MAX = 64

OUTPUT_FIELDS = ["face_id", "identity_id", "model_version"]
LOAD_ATTEMPTS = 6
# Faces fetched per person asked for (see VectorStore.search), and Milvus's top-k cap.
FACES_PER_PERSON_FETCHED = 8
MAX_TOPK = 16384


@dataclass(frozen=True)
class Snapshot:
    """A concrete collection and the model version of its vectors."""

    collection: str
    version: str


@dataclass(frozen=True)
class Hit:
    face_id: str
    identity_id: str
    similarity: float


P = ParamSpec("P")
R = TypeVar("R")


def _reachable(uri: str) -> bool:
    url = urlparse(uri)
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 19530), 2):
            return True
    except OSError:
        return False


def _milvus_call(fn: Callable[P, R]) -> Callable[P, R]:
    """A Milvus server that cannot be reached becomes ``GalleryUnavailable`` naming its
    address (the stream then holds its frames back and retries); other errors pass."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        from pymilvus.exceptions import MilvusException

        store = args[0]
        assert isinstance(store, VectorStore)
        try:
            return fn(*args, **kwargs)
        except (MilvusException, ConnectionError) as exc:
            if store.is_lite:
                raise
            text = str(exc).lower()
            if "not loaded" in text:
                store._loaded.clear()  # a restarted server: load again on the next call
            if "not loaded" in text or not _reachable(store.uri) or "unavailable" in text:
                raise GalleryUnavailable(
                    f"the Milvus server at {store.uri} is unavailable: {str(exc)[:200]}"
                ) from None
            raise

    return call


def lite_lock_holder_busy(db_path: str) -> bool:
    """True when another process holds the Milvus Lite data dir's lock."""
    lock = Path(db_path) / "LOCK"
    if not lock.exists():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class VectorStore:
    def __init__(
        self,
        uri: str,
        *,
        prefix: str,
        alias: str,
        index_type: str,
        token: str | None = None,
    ) -> None:
        self.uri = uri
        self.prefix = prefix
        self.alias = alias
        self.index_type = index_type
        self._token = token
        self._client: MilvusClient | None = None
        self._versions: dict[str, str] = {}  # collection -> version (immutable once made)
        self._loaded: set[str] = set()
        self._lock = threading.Lock()

    @property
    def is_lite(self) -> bool:
        return self.uri.endswith(".db")

    @property
    def client(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                self._client = self._open()
            return self._client

    @_milvus_call
    def _open(self) -> MilvusClient:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if self.is_lite:
            private_dir(Path(self.uri).parent)
        # Milvus Lite logs a traceback when its file is locked by another process; the
        # GalleryBusy below says it in one line.
        quiet = logging.getLogger("milvus_lite.server_manager")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            # Milvus Lite starts its server process here: it inherits the umask, so the
            # database it writes is owner-only.
            with private_umask():
                return MilvusClient(self.uri, token=self._token or "")
        except MilvusException as exc:
            if self.is_lite and lite_lock_holder_busy(self.uri):
                raise GalleryBusy(
                    f"the Milvus Lite database {self.uri} is open in another process (is "
                    "`facestream serve` running? Milvus Lite serves one process: use the "
                    "REST API, or point gallery.milvus_uri at a Milvus server)"
                ) from None
            if not self.is_lite:
                raise GalleryUnavailable(
                    f"cannot reach the Milvus server at {self.uri}: {exc.message}"
                ) from None
            raise GalleryError(f"cannot open Milvus at {self.uri}: {exc}") from None
        finally:
            quiet.setLevel(level)

    def _ensure_loaded(self, collection: str) -> None:
        # A collection reopened by a new process starts released; searches, queries and
        # deletes by filter need it loaded. load_collection is idempotent.
        if collection in self._loaded:
            return
        from pymilvus.exceptions import MilvusException

        for attempt in range(LOAD_ATTEMPTS):
            try:
                self.client.load_collection(collection)
                break
            except MilvusException as exc:
                # Milvus Lite 3.2.2 writes a segment's index file in place from a
                # background flush; a load that reads it mid-write fails with "file seems
                # not fully written" and succeeds once the write is done.
                if "not fully written" not in str(exc) or attempt == LOAD_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        self._loaded.add(collection)

    def close(self) -> None:
        with self._lock:
            self._loaded.clear()
            if self._client is not None:
                self._client.close()
                self._client = None
        if self.is_lite:
            # Milvus Lite runs an in-process server per file until released.
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self.uri)

    # -- collections ----------------------------------------------------------------------

    def collection_name(self, version: str) -> str:
        return f"{self.prefix}_{re.sub(r'[^0-9A-Za-z_]', '_', version)}"

    @_milvus_call
    def version_of(self, collection: str) -> str:
        """The model version a collection was created for (from its properties)."""
        if collection in self._versions:
            return self._versions[collection]
        desc = self.client.describe_collection(collection)
        version = (desc.get("properties") or {}).get(VERSION_PROPERTY)
        if not version:
            raise ModelVersionMismatch(
                f"collection {collection} carries no {VERSION_PROPERTY} property; refusing to "
                "search vectors of an unknown model version"
            )
        try:
            check_version_id(version)  # it names a folder of the model store
        except ModelError as exc:
            raise ModelVersionMismatch(
                f"collection {collection}: its {VERSION_PROPERTY} property is not a model "
                f"version ({exc})"
            ) from None
        self._versions[desc["collection_name"]] = version
        return version

    @_milvus_call
    def collections(self) -> dict[str, str]:
        """Every facestream collection -> its model version."""
        out = {}
        for name in self.client.list_collections():
            if name.startswith(f"{self.prefix}_"):
                try:
                    out[name] = self.version_of(name)
                except ModelVersionMismatch:
                    continue  # not one of ours
        return out

    @_milvus_call
    def active(self) -> Snapshot | None:
        """The collection the alias points at, or None before the first enrolment."""
        # list_aliases first: describe_alias logs an RPC error when the alias is absent.
        if self.alias not in self.client.list_aliases().get("aliases", []):
            return None
        coll = self.client.describe_alias(self.alias)["collection_name"]
        return Snapshot(coll, self.version_of(coll))

    @_milvus_call
    def create(self, version: str, dim: int, *, replace: bool = False) -> str:
        from pymilvus import DataType, MilvusClient

        name = self.collection_name(version)
        if self.client.has_collection(name):
            if not replace:
                return name
            self.drop(name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("face_id", DataType.VARCHAR, is_primary=True, max_length=ID_MAX)
        schema.add_field("identity_id", DataType.VARCHAR, max_length=ID_MAX)
        schema.add_field("model_version", DataType.VARCHAR, max_length=128)
        schema.add_field("quality", DataType.VARCHAR, max_length=1024)
        schema.add_field("crop", DataType.VARCHAR, max_length=512)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
        self.client.create_collection(
            name,
            schema=schema,
            index_params=index_params(self.client, self.index_type),
            # Session: a process reads its own writes (an enrolment, then a search in the
            # same API replica), and other processes see them within the server's time
            # tick. Strong would make every server search wait for that tick (~200 ms;
            # INDEX.md). Counts that check a write ask for Strong themselves.
            consistency_level="Session",
            properties={VERSION_PROPERTY: version, DIM_PROPERTY: str(dim)},
        )
        self._versions[name] = version
        return name

    @_milvus_call
    def drop(self, collection: str) -> None:
        self.client.drop_collection(collection)
        self._versions.pop(collection, None)
        self._loaded.discard(collection)

    @_milvus_call
    def flip(self, collection: str) -> None:
        """Point the alias at ``collection`` in one atomic step."""
        if self.active() is None:
            self.client.create_alias(collection, self.alias)
        else:
            self.client.alter_alias(collection, self.alias)

    @_milvus_call
    def count(self, collection: str, identity_id: str | None = None) -> int:
        expr = f'identity_id == "{identity_id}"' if identity_id else 'face_id != ""'
        self._ensure_loaded(collection)
        res = self.client.query(
            collection, filter=expr, output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(res[0]["count(*)"]) if res else 0

    # -- rows ---------------------------------------------------------------------------

    @_milvus_call
    def insert(
        self,
        collection: str,
        version: str,
        rows: list[dict[str, Any]],
        vectors: np.ndarray,
        *,
        replace: bool = False,
    ) -> None:
        """Insert face rows with their vectors (``replace``: upsert, so writing a row again
        never doubles it); refuses vectors of another version."""
        coll_version = self.version_of(collection)
        if coll_version != version:
            raise ModelVersionMismatch(
                f"refusing to insert embeddings of model {version} into collection "
                f"{collection} of model {coll_version}"
            )
        data = []
        for row, vec in zip(rows, vectors.tolist(), strict=True):
            data.append(
                {
                    "face_id": row["face_id"],
                    "identity_id": row["identity_id"],
                    "model_version": version,
                    "quality": json.dumps(row.get("quality", {}))[:1024],
                    "crop": row["crop"],
                    VECTOR_FIELD: vec,
                }
            )
        if data:
            (self.client.upsert if replace else self.client.insert)(collection, data)

    @_milvus_call
    def delete_faces(self, collection: str, face_ids: list[str]) -> None:
        if face_ids:
            self._ensure_loaded(collection)
            self.client.delete(collection, ids=face_ids)

    def delete_keys(self, by_version: Mapping[str, list[str]]) -> int:
        """Delete rows by key, per model version (from the catalogue's rows: what an
        erasure takes); versions without a collection here hold none. Rows deleted."""
        have = self.collections() if by_version else {}
        n = 0
        for version, keys in by_version.items():
            collection = self.collection_name(version)
            if collection in have:
                self.delete_faces(collection, keys)
                n += len(keys)
        return n

    @_milvus_call
    def delete_identity(self, identity_id: str) -> dict[str, int]:
        """Delete the identity's rows from every version's collection; rows deleted each."""
        _check_id(identity_id)
        deleted = {}
        for coll in self.collections():
            before = self.count(coll, identity_id)  # also loads the collection
            self.client.delete(coll, filter=f'identity_id == "{identity_id}"')
            deleted[coll] = before
        return deleted

    @_milvus_call
    def identity_vectors(self, snap: Snapshot, identity_id: str) -> np.ndarray:
        _check_id(identity_id)
        self._ensure_loaded(snap.collection)
        rows = self.client.query(
            snap.collection,
            filter=f'identity_id == "{identity_id}"',
            output_fields=[VECTOR_FIELD, "model_version"],
            consistency_level="Strong",  # verify against every enrolled face
        )
        for r in rows:
            if r["model_version"] != snap.version:
                raise ModelVersionMismatch(
                    f"row of model {r['model_version']} in collection {snap.collection} of "
                    f"model {snap.version}"
                )
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.asarray([r[VECTOR_FIELD] for r in rows], dtype=np.float32)

    @_milvus_call
    def search(
        self,
        snap: Snapshot,
        vectors: np.ndarray,
        model_version: str,
        limit: int,
        *,
        catalogued: Callable[[list[str]], Mapping[str, str]] | None = None,
    ) -> list[list[Hit]]:
        """Top ``limit`` identities (best face each) per vector, within ``snap`` only.

        ``catalogued`` maps face ids to the identity the catalogue holds each under; it
        is called once with the face ids of every row found, and a row whose
        (face id, identity id) is not such a pair is skipped before each person's best
        face is picked. Anyone who can write to Milvus can add rows; only the catalogue
        says who is enrolled with which face.
        """
        if model_version != snap.version:
            raise ModelVersionMismatch(
                f"embedding of model {model_version} cannot be searched in collection "
                f"{snap.collection} of model {snap.version}; re-embed the probe with "
                f"{snap.version} or search that version's collection"
            )
        stored = self.version_of(snap.collection)
        if stored != model_version:
            raise ModelVersionMismatch(
                f"collection {snap.collection} holds model {stored}, not {model_version}"
            )
        if len(vectors) == 0:
            return []
        self._ensure_loaded(snap.collection)
        # Top-k people, not k faces of one person. Grouped search (group_by_field) came
        # with Milvus 2.4; the server the PyPI package ships (2.3) silently ignores it,
        # so fetch several faces per wanted person and keep each person's best face here.
        fetch = min(limit * FACES_PER_PERSON_FETCHED, MAX_TOPK)
        res = self.client.search(
            snap.collection,
            data=np.asarray(vectors, dtype=np.float32).tolist(),
            limit=fetch,
            anns_field=VECTOR_FIELD,
            search_params=search_params(self.index_type, limit=fetch),
            output_fields=OUTPUT_FIELDS,
        )
        owners = None
        if catalogued is not None:
            owners = catalogued(sorted({h["entity"]["face_id"] for hits in res for h in hits}))
        out = []
        for hits in res:
            row_hits: list[Hit] = []
            seen: set[str] = set()
            for h in hits:  # best first
                if len(row_hits) == limit:
                    break
                ent = h["entity"]
                if ent["model_version"] != model_version:
                    raise ModelVersionMismatch(
                        f"row {ent.get('face_id')} of collection {snap.collection} was made by "
                        f"model {ent['model_version']}, the probe by {model_version}"
                    )
                if owners is not None and owners.get(ent["face_id"]) != ent["identity_id"]:
                    continue  # not a catalogued face of that identity (or not committed yet)
                if ent["identity_id"] in seen:
                    continue
                seen.add(ent["identity_id"])
                row_hits.append(
                    Hit(
                        face_id=str(ent["face_id"]),
                        identity_id=ent["identity_id"],
                        similarity=float(h["distance"]),
                    )
                )
            out.append(row_hits)
        return out


_ID_RE = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


def _check_id(identity_id: str) -> None:
    # Ids go into Milvus filter expressions: only plain characters may pass.
    if not _ID_RE.match(identity_id):
        raise GalleryError(f"invalid identity id {identity_id!r}")
