"""Both state engines for tests: SQLite in a temporary directory and the real PostgreSQL.

PostgreSQL: 127.0.0.1:5432, database `test`, trust auth, as `postgres` or the current user
(override with SLUICE_TEST_PG_URL). Each test gets its own fresh schema, dropped afterwards.
Unreachable: skipped locally, a failure when CI=true.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gateway.storage.store import Store


def pg_candidates() -> list[str]:
    if os.environ.get("SLUICE_TEST_PG_URL"):
        return [os.environ["SLUICE_TEST_PG_URL"]]
    users = dict.fromkeys(["postgres", getpass.getuser(), "root"])
    return [f"postgresql+psycopg://{user}@127.0.0.1:5432/test" for user in users]


def find_pg_url() -> tuple[str | None, list[str]]:
    """The first PostgreSQL URL that answers, and the errors of those that did not."""
    errors = []
    for url in pg_candidates():
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            return url, errors
        except sa.exc.OperationalError as exc:
            errors.append(f"{engine.url.render_as_string(hide_password=True)}: {exc.orig}")
        finally:
            engine.dispose()
    return None, errors


@dataclass
class Backend:
    """One engine's database for one test; `open()` makes Store instances on it (a restart = a new one)."""

    name: str
    url: str
    connect_args: dict[str, Any] = field(default_factory=dict)
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        s = Store(self.url, connect_args=self.connect_args)
        self.opened.append(s)
        return s

    def url_with_search_path(self) -> str:
        """The same database as a bare DSN (what `sluice db upgrade --dsn` or SLUICE_DATABASE_URL gets)."""
        if "options" not in self.connect_args:
            return self.url
        return (
            sa.make_url(self.url)
            .update_query_dict({"options": self.connect_args["options"]})
            .render_as_string(hide_password=False)
        )


@contextlib.contextmanager
def pg_schema(pg_url: str, prefix: str) -> Iterator[str]:
    """A schema of its own on the real PostgreSQL, for a gateway process (given as a URL whose search_path is that
    schema), dropped afterwards with all it holds."""
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
