"""The control revision read on the event loop itself, where the database is a local SQLite file.

Every replica reads the revision five times a second (`serving.follower`). Through the store that read
is a pooled SQLAlchemy transaction in a worker thread: about 150 µs of Python there, and as much again
for the hop to the thread and back, each a turn at the GIL taken from the event loop while it serves.
Under one connection those turns showed in the latency tail (p99 about 0.2 ms lower with the control
plane's ticks slowed). A SQLite file can be read in a few microseconds on a connection of its own, so
it is read where the follower runs, with no thread.

The probe never waits: its connection has no busy timeout, so a database that is locked (WAL
recovery), gone or broken makes `read` answer None, and the follower falls back to the store's own
read in a worker thread, which waits and reports errors as it always did. PostgreSQL's read is a
network round trip and stays in the thread (`for_url` gives no probe for it).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from sqlalchemy.engine import make_url

from gateway.storage.schema import revision_table

log = logging.getLogger(__name__)

_QUERY = f"SELECT revision FROM {revision_table.name} WHERE id = 1"


class SqliteRevisionProbe:
    """One look at the revision row, on a connection of its own (the follower holds its lock while it reads)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def for_url(cls, url: str) -> SqliteRevisionProbe | None:
        """A probe for a SQLite file database; None for PostgreSQL or an in-memory SQLite."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return None
        return cls(Path(parsed.database))

    def read(self) -> int | None:
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
