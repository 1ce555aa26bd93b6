"""Alembic's environment for the state database: always run by `gateway.storage.migrations` on a connection
it opened (the store's write transaction, under its lock), never against a URL of its own, so an upgrade is
one transaction on SQLite and PostgreSQL alike and a failed step leaves the database as it was."""

from __future__ import annotations

from alembic import context

from gateway.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run the state database's migrations through `sluice db upgrade` (gateway.storage.migrations), "
        "which passes its connection in; the alembic command line is for writing revisions"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    compare_type=True,
    compare_server_default=True,
    transactional_ddl=True,  # the store's transaction holds the DDL too (SQLite's BEGIN IMMEDIATE included)
)
with context.begin_transaction():
    context.run_migrations()
