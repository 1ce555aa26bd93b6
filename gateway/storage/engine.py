"""Engines for both databases, and the connection discipline every part of the store shares.

The only engine-specific code is what SQLAlchemy asks for: SQLite's pragmas and its BEGIN (the
sqlite3 driver's own transaction handling is not transactional for DDL, so we emit BEGIN ourselves,
IMMEDIATE for writes), and PostgreSQL's advisory lock around `upgrade()`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    create_engine,
    event,
    literal,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, make_url

from gateway.errors import NotLeader, StoreUnavailable
from gateway.storage.migrations import apply_migrations, current_version
from gateway.storage.schema import leases_table

log = logging.getLogger(__name__)

# --- engines ----------------------------------------------------------------------------------

_WRITE_OPTION = "sluice_write"


def _set_wal(cursor: Any, attempts: int = 100) -> None:
    """Switch to WAL, retrying briefly: the switch can report "database is locked" at once (not after
    the busy timeout) while another connection is opening or switching the same file. WAL persists
    in the file, so only the first connections ever race."""
    for attempt in range(attempts):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.02)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take BEGIN away from the sqlite3 driver (it would skip it for SELECT and DDL); see _sqlite_on_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock up front: a deferred transaction that reads and then writes can
    # fail at once with SQLITE_BUSY under WAL instead of waiting for the busy timeout.
    immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, connect_args: Mapping[str, Any] | None) -> Engine:
    """An engine with this store's discipline (SQLite's pragmas and BEGIN, PostgreSQL's bounded timeouts)."""
    parsed = make_url(url)
    args: dict[str, Any] = dict(connect_args or {})
    if parsed.get_backend_name() == "sqlite":
        args.setdefault("check_same_thread", False)
        args.setdefault("timeout", 30.0)  # seconds a writer waits for the lock
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=args)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    # A database cut off must fail a call within seconds, not hang a thread: bounded connects, and a
    # connection whose peer stops answering is dropped (unacknowledged data, or silent keep-alives).
    for key, value in _PG_TIMEOUTS.items():
        args.setdefault(key, value)
    return create_engine(parsed, pool_pre_ping=True, connect_args=args)


_PG_TIMEOUTS = {
    "connect_timeout": 5,
    "tcp_user_timeout": 10_000,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}
"""libpq connection parameters (each can be overridden through the store's connect_args)."""

_UNAVAILABLE = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError, sa_exc.TimeoutError)
"""What a database that is down, cut off, locked or out of space raises through SQLAlchemy (psycopg's
connection refused and server gone, SQLite's "disk I/O error", "database or disk is full", "locked")."""
_SQLITE_UNAVAILABLE = frozenset((5, 6, 7, 10, 13, 14))
"""SQLite's primary result codes for a database that may work again: BUSY, LOCKED, NOMEM, IOERR, FULL,
CANTOPEN. Its other OperationalErrors ("no such table", a syntax error) are the statement's fault."""


def _is_unavailable(exc: BaseException) -> bool:
    if not isinstance(exc, _UNAVAILABLE):
        return False
    orig = getattr(exc, "orig", None)
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is None or (code & 0xFF) in _SQLITE_UNAVAILABLE
    return True


def _first_line(exc: BaseException) -> str:
    """The driver's message, first line only: later lines can hold the statement and its parameters."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0] if text else ''}".rstrip(": ")


D = TypeVar("D", bound="Database")


@dataclass(frozen=True)
class Fence:
    """The leader lease a control-plane write must still hold: checked inside the write's transaction."""

    name: str
    holder: str
    epoch: int


_CHANGE: ContextVar[tuple[Database, Connection] | None] = ContextVar("sluice_store_change", default=None)


class Database:
    """One pooled engine, thread-safe and synchronous: every method of a subclass is one short transaction,
    run by its caller in a worker thread (never on the request hot path)."""

    def __init__(self, url: str, *, connect_args: Mapping[str, Any] | None = None) -> None:
        """`url`: "sqlite:///path/sluice.db" or "postgresql+psycopg://user:pw@host:5432/db"."""
        self._engine = make_engine(url, connect_args)
        self._connect_args = dict(connect_args or {})
        self.fence: Fence | None = None
        """Set while this process holds the control plane's leader lease: every control write checks,
        in its own transaction, that the lease still has this holder and epoch, so a stale leader (paused,
        cut off, its lease taken over) changes nothing. None: unfenced (tools, tests, a lone writer)."""

    @classmethod
    def for_state_dir(cls: type[D], state_dir: Path) -> D:
        """The default: SQLite in `state_dir/sluice.db` (the directory is created)."""
        state_dir = Path(state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{(state_dir / 'sluice.db').resolve()}")

    @property
    def display_url(self) -> str:
        """The URL with its password masked: the only form of it to log or show."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def connect_url(self) -> str:
        """The full URL, password included: for handing to a worker process that opens its own
        engine on the same database (the log writer, the monitor jobs). Never log it."""
        return self._engine.url.render_as_string(hide_password=False)

    @property
    def connect_args(self) -> dict[str, Any]:
        """The extra driver arguments this store was opened with (a worker opens its own with them)."""
        return dict(self._connect_args)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.display_url!r})"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self: D) -> D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _unavailable(self, doing: str) -> Iterator[None]:
        """Turn a database that cannot be reached or written into `StoreUnavailable` (503 at the edge; the
        prediction log keeps the batch and tries again). The transaction was rolled back: nothing changed."""
        try:
            yield
        except _UNAVAILABLE as exc:
            if not _is_unavailable(exc):
                raise
            raise StoreUnavailable(
                f"the state database ({self.display_url}) is unavailable, {doing}: {_first_line(exc)}; "
                "retry when it is back"
            ) from exc

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._unavailable("nothing could be read"), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._unavailable("nothing was changed"), self._engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    @contextmanager
    def change(self) -> Iterator[None]:
        """Make the control writes inside this block one transaction, fenced once: all of them or none.

        The block runs in one thread (the caller's worker thread); a nested `change` joins the outer one.
        """
        if (current := _CHANGE.get()) is not None and current[0] is self:
            yield
            return
        with self._write() as conn:
            self._check_fence(conn)
            token = _CHANGE.set((self, conn))
            try:
                yield
            finally:
                _CHANGE.reset(token)

    @contextmanager
    def _control_write(self) -> Iterator[Connection]:
        """A write transaction for control state: the open `change()` if any, else one of its own, fenced."""
        if (current := _CHANGE.get()) is not None and current[0] is self:
            yield current[1]
            return
        with self._write() as conn:
            self._check_fence(conn)
            yield conn

    def _check_fence(self, conn: Connection) -> None:
        fence = self.fence
        if fence is None:
            return
        t = leases_table
        query = select(t.c.holder, t.c.epoch).where(t.c.name == fence.name)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()  # the lease cannot change hands before this transaction commits
        row = conn.execute(query).first()
        if row is None or (row.holder, int(row.epoch)) != (fence.holder, fence.epoch):
            holder = "nobody" if row is None else f"{row.holder} (epoch {row.epoch})"
            raise NotLeader(
                f"this replica ({fence.holder}, epoch {fence.epoch}) no longer holds the control plane's "
                f"lease: {holder} does; the change was refused"
            )

    def ping(self) -> None:
        """One round trip (`SELECT 1`), writing nothing: `StoreUnavailable` while the database cannot be
        reached. What the prediction log probes with while the database is away, every fraction of a second."""
        with self._read() as conn:
            conn.execute(select(literal(1)))

    # --- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The version the database is at; 0 when it has no schema yet."""
        with self._read() as conn:
            return current_version(conn)

    def upgrade(self) -> int:
        """Apply the pending migrations in order, in one transaction; return the schema version.

        Idempotent, and safe when several processes race: PostgreSQL serialises on an advisory
        lock, SQLite on its write lock (BEGIN IMMEDIATE).
        """
        with self._write() as conn:
            return apply_migrations(conn, self.display_url)
