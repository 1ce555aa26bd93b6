"""The control revision, known on the event loop itself without a worker thread: a replica's cheap check.

Every replica reads the revision five times a second (`serving.follower`). Through the store that read
is a pooled SQLAlchemy transaction in a worker thread: about 150 µs of Python there, and as much again
for the hop to the thread and back, each a turn at the GIL taken from the event loop while it serves.
Under one connection those turns showed in the latency tail (p99 about 0.2 ms lower with the control
plane's ticks slowed), and an idle gateway spent half its CPU on them. So:

- SQLite (a local file): read in a few microseconds on a connection of its own, where the follower runs.
- PostgreSQL: each control change sends a notification with its revision when it commits
  (`ControlState._next_revision`); the probe listens on a connection of its own and only takes what has
  arrived on its socket (libpq's non-blocking `consume_input`). Nothing is asked of the server between
  changes, however many replicas follow it. The channel is named after the schema in use, so gateways
  sharing a database in different schemas do not hear each other.

A probe never waits. Where it cannot answer at once (a SQLite file locked for recovery, gone or broken;
a PostgreSQL connection not yet made, being made, or lost) `read` answers None and the follower asks the
store in a worker thread, which waits and reports errors as it always did. A lost PostgreSQL connection is
made again in a worker thread, at most every `RECONNECT_S`; until it listens again nothing is missed,
because the store is asked instead, and the revision is read again once it does. And every `CONFIRM_S` it
steps aside once: a deaf listener (a transaction-pooling PgBouncer drops LISTEN) delays a change, never loses it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy.engine import Engine, make_url

from gateway.storage.engine import make_engine
from gateway.storage.schema import revision_table

log = logging.getLogger(__name__)

_QUERY = f"SELECT revision FROM {revision_table.name} WHERE id = 1"

REVISION_CHANNEL_SQL = "'sluice_control_' || left(md5(current_schema()), 16)"
"""The notification channel of the schema in use, as SQL (both the notifier and the listener compute it there)."""

_CONNECTION_OK = 0
"""libpq's CONNECTION_OK (psycopg's `pq.ConnStatus.OK`; not imported: SQLite's processes need not load psycopg)."""
RECONNECT_S = 2.0
"""The least time between two attempts to make a lost PostgreSQL listening connection again."""
CONFIRM_S = 5.0
"""How often the PostgreSQL probe steps aside anyway, so the store is read: a listener can go deaf without an
error (a transaction-pooling PgBouncer between, a peer gone silent until the keep-alives give up), and then a
change from another replica still arrives within this time, not never."""


class RevisionProbe(Protocol):
    async def read(self) -> int | None: ...

    def close(self) -> None: ...


def revision_probe(url: str, connect_args: Mapping[str, Any] | None = None) -> RevisionProbe | None:
    """The probe for the state store at `url` (with its extra driver arguments); None for an in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SqliteRevisionProbe.for_url(url)
    if parsed.get_backend_name() == "postgresql":
        return PostgresRevisionProbe(url, connect_args)
    return None


class SqliteRevisionProbe:
    """One look at the revision row, on a connection of its own (the follower holds its lock while it reads)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def for_url(cls, url: str) -> SqliteRevisionProbe | None:
        """A probe for a SQLite file database; None for another engine or an in-memory SQLite."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return None
        return cls(Path(parsed.database))

    async def read(self) -> int | None:
        return self.read_now()

    def read_now(self) -> int | None:
        """The revision as last committed, or None when it cannot be had at once (the caller asks the store)."""
        try:
            if self._conn is None:
                # mode=rw: a file that is not there is an error here, not a new empty database.
                uri = f"{self._path.resolve().as_uri()}?mode=rw"
                conn = sqlite3.connect(uri, uri=True, timeout=0, check_same_thread=False)
                conn.isolation_level = None  # autocommit: each read sees the latest commit
                self._conn = conn
            # Read to the end: a statement left open would hold its snapshot, and the WAL could not be checkpointed.
            rows = self._conn.execute(_QUERY).fetchall()
        except sqlite3.Error as exc:
            log.debug("control revision probe stepped aside: %s", exc)
            self.close()
            return None
        return int(rows[0][0]) if rows else None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class PostgresRevisionProbe:
    """The revision as the notifications of the schema's channel carry it, on a listening connection of its own."""

    def __init__(
        self, url: str, connect_args: Mapping[str, Any] | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._url = url
        self._connect_args = dict(connect_args or {})
        self._clock = clock
        self._engine: Engine | None = None
        self._raw: Any = None
        """The DB-API connection (SQLAlchemy's wrapper of a psycopg connection), None while not listening."""
        self._known = -1
        self._next_attempt = 0.0
        self._confirm_at = clock() + CONFIRM_S
        self._connecting: asyncio.Task[None] | None = None
        self._closed = False

    async def read(self) -> int | None:
        if self._raw is None:
            self._connect_soon()
            return None
        if self._clock() >= self._confirm_at:
            self._confirm_at = self._clock() + CONFIRM_S
            return None
        try:
            pgconn = self._raw.driver_connection.pgconn
            pgconn.consume_input()  # reads what the socket holds; never blocks
            if pgconn.status != _CONNECTION_OK:  # the server ended the session (its message was read)
                raise ConnectionError(pgconn.error_message.decode(errors="replace").strip())
            while (notice := pgconn.notifies()) is not None:
                self._known = max(self._known, int(notice.extra))
        except Exception as exc:
            log.info("control revision probe lost its connection (the store is asked until it is back): %s", exc)
            self._drop()
            return None
        return self._known

    def _connect_soon(self) -> None:
        """Listen again in a worker thread, unless that is under way or was tried less than `RECONNECT_S` ago: a
        connection can take seconds to fail, and the follower must not wait for it."""
        if self._closed or self._connecting is not None or self._clock() < self._next_attempt:
            return
        self._next_attempt = self._clock() + RECONNECT_S
        self._connecting = asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        try:
            raw, known = await asyncio.to_thread(self._listen)
        except Exception as exc:
            log.debug("control revision probe cannot listen now: %s", exc)
            return
        finally:
            self._connecting = None
        if self._closed:  # closed while it connected
            raw.invalidate()
            return
        self._raw, self._known = raw, known

    def _listen(self) -> tuple[Any, int]:
        """Connect, listen on the schema's channel, then read the revision: a change after the read is heard."""
        if self._engine is None:
            self._engine = make_engine(self._url, self._connect_args)
        raw = self._engine.raw_connection()
        try:
            conn: Any = raw.driver_connection  # psycopg's Connection
            conn.autocommit = True
            channel = conn.execute(f"SELECT {REVISION_CHANNEL_SQL}").fetchone()[0]
            conn.execute(f'LISTEN "{channel}"')  # an md5 prefix: nothing to quote
            revision = int(conn.execute(_QUERY).fetchone()[0])
        except BaseException:
            raw.invalidate()
            raise
        return raw, revision

    def _drop(self) -> None:
        raw, self._raw = self._raw, None
        if raw is not None:
            try:
                raw.invalidate()  # never back into a pool: it listens
            except Exception as exc:
                log.debug("closing the probe's connection: %s", exc)

    def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            # Its thread finishes on its own (a connect is bounded); a connection made then is closed when collected.
            self._connecting.cancel()
        self._drop()
        if self._engine is not None:
            self._engine.dispose()
