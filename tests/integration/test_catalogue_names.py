"""Looking a person up by name in the catalogue, on SQLite and on a real PostgreSQL
(issue 18, bug 3: the lookup was a "name contains" listing of 100 rows, so with more than
100 names containing the name an enrolled person was reported as absent)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipeline.gallery.catalogue import MIGRATIONS, Catalogue
from tests.support.stores import postgres_database

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[str, str | None]:
    """(URL, password) of an empty catalogue database of either kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogue.sqlite3'}", None
    server = request.getfixturevalue("postgres_url")
    return postgres_database(server, f"names_{uuid.uuid4().hex[:8]}")


@pytest.fixture
def catalogue(database: tuple[str, str | None]) -> Iterator[Catalogue]:
    cat = Catalogue(*database)
    try:
        yield cat
    finally:
        cat.close()


def add(cat: Catalogue, *names: str) -> list[str]:
    ids = []
    with cat.transaction() as con:
        for name in names:
            ident = uuid.uuid4().hex
            cat.add_identity(con, ident, name, None, {})
            ids.append(ident)
    return ids


def test_a_name_is_found_among_more_than_a_hundred_that_contain_it(
    catalogue: Catalogue,
) -> None:
    add(catalogue, *(f"Ann {i:03d}" for i in range(101)))  # enrolled first, listed first
    (ann,) = add(catalogue, "Ann")
    assert len(catalogue.list(limit=1000, name_contains="Ann")) == 102
    assert [i.identity_id for i in catalogue.find_by_name("Ann")] == [ann]
    # The whole name, without regard to case or surrounding spaces; never a part of it.
    assert [i.identity_id for i in catalogue.find_by_name("  aNN ")] == [ann]
    assert catalogue.find_by_name("An") == []
    assert catalogue.find_by_name("Ann%") == catalogue.find_by_name("Ann_") == []
    # Unicode case folding, the same on both databases (SQLite's lower() is ASCII only).
    (gul,) = add(catalogue, "Abdullah GÜL")
    assert [i.identity_id for i in catalogue.find_by_name("abdullah gül")] == [gul]
    # A rename moves the name.
    catalogue.rename(ann, "Anna")
    assert catalogue.find_by_name("Ann") == []
    assert [i.name for i in catalogue.find_by_name("anna")] == ["Anna"]


def test_two_people_of_one_name_are_both_found(catalogue: Catalogue) -> None:
    first, second = add(catalogue, "Lee", "LEE")
    assert [i.identity_id for i in catalogue.find_by_name("lee")] == [first, second]


def test_the_name_lookup_is_indexed_and_migrated_catalogues_are_filled(
    database: tuple[str, str | None],
) -> None:
    """A catalogue made before the lookup existed (revision 0003) is migrated: its people
    are found by name, through an index."""
    from alembic import command
    from alembic.config import Config

    from pipeline.gallery.catalogue import catalogue_url

    engine = sa.create_engine(catalogue_url(*database))
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as con:
            cfg.attributes["connection"] = con
            command.upgrade(cfg, "0003")
            con.execute(
                sa.text(
                    "INSERT INTO identities (identity_id, name, metadata, created_at, "
                    "updated_at) VALUES ('old1', ' Zoë Old ', '{}', 1, 1)"
                )
            )
        cat = Catalogue(*database)
        try:
            assert [i.identity_id for i in cat.find_by_name("zoë old")] == ["old1"]
            indexes = sa.inspect(engine).get_indexes("identities")
            assert any(ix["column_names"] == ["name_key"] for ix in indexes), indexes
        finally:
            cat.close()
    finally:
        engine.dispose()
