"""Alembic environment of the catalogue: run on the connection the Catalogue passes in
(``config.attributes["connection"]``), inside its transaction and its migration lock."""

from __future__ import annotations

from alembic import context

from pipeline.gallery.catalogue import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite alters tables by copying them; batch mode does that portably.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
