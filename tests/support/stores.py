"""Helpers over the real stores the fixtures start (tests/conftest.py): private corners
of the shared Milvus server, databases on the session's PostgreSQL, and the settings
that point a facestream process at them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.models.store import ModelStore


def milvus_space_settings(uri: str) -> dict[str, str]:
    """Gallery settings of a private corner of a shared Milvus server: its own collection
    prefix and alias, so tests sharing the server never see each other's collections."""
    tag = f"t{uuid.uuid4().hex[:10]}"
    return {"milvus_uri": uri, "collection_prefix": tag, "alias": f"{tag}_active"}


def drop_milvus_space(space: dict[str, str]) -> None:
    from pymilvus import MilvusClient

    client = MilvusClient(space["milvus_uri"])
    try:
        if space["alias"] in client.list_aliases().get("aliases", []):
            client.drop_alias(space["alias"])
        prefix = space["collection_prefix"]
        # The gallery's collections, and the review's (unknown faces, sightings).
        ours = tuple(f"{p}{prefix}_" for p in ("", "unk_", "sig_"))
        for name in client.list_collections():
            if name.startswith(ours):
                client.drop_collection(name)
    finally:
        client.close()


def gallery_env(space: dict[str, str]) -> dict[str, str]:
    """The same settings as FACESTREAM_GALLERY__* environment variables."""
    return {f"FACESTREAM_GALLERY__{k.upper()}": v for k, v in space.items()}


def facestream_env(
    store: ModelStore, space: dict[str, str], gallery_dir: Path, **gallery: str
) -> dict[str, str]:
    """The FACESTREAM_* variables of a test's own facestream: the model store, a corner
    ``space`` of the session's Milvus server, the gallery's folder (its SQLite
    catalogue), and further ``gallery`` settings (``review__keep_unknowns="true"``)."""
    return {
        "FACESTREAM_MODELS__STORE": str(store.root),
        **gallery_env({**space, "data_dir": str(gallery_dir), **gallery}),
    }


def postgres_database(server: tuple[str, str, Path], name: str) -> tuple[str, str]:
    """(URL, password) of a new empty database ``name`` on the session's PostgreSQL."""
    import sqlalchemy as sa

    url, password, _ = server
    admin = sa.create_engine(
        sa.engine.make_url(url).set(password=password), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as con:
            con.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            con.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.rsplit("/", 1)[0] + f"/{name}", password
