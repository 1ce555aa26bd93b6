"""Schema changes through Alembic, applied by the store in its own write transaction.

Revisions live in `gateway/storage/alembic/versions` and are numbered: revision "0007" is schema version 7, so
`sluice db upgrade`, `/admin` and the logs keep speaking of one integer. `apply_migrations` runs on the
connection the store opened (PostgreSQL serialises racing upgrades on an advisory lock, SQLite on its write lock),
so several replicas starting at once agree, and a failed step rolls back with everything before it.

A database made by release 0.1 (its hand-written runner's `schema_version` table at 6, no `alembic_version`) is
stamped at the baseline revision "0006", which creates exactly what that release had, and its old table is
dropped; older ones are refused with what to do.

A new revision: change `gateway/storage/schema.py`, then `python -m gateway.storage.migrations revision "what"`
writes the next numbered file from the difference between the models and a database at the head (review it: it
is frozen history from then on); `tests/test_migrations.py` checks that a migrated database equals the models.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import zlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)
logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines repeat what `log` says once

_ADVISORY_LOCK_KEY = zlib.crc32(b"sluice.store.upgrade")
SCRIPTS = Path(__file__).with_name("alembic")
BASELINE = "0006"
"""The revision that equals release 0.1's schema version 6."""
LEGACY_TABLE = "schema_version"


class SchemaError(RuntimeError):
    """The database's schema does not fit this code (newer than it knows, or too old to stamp)."""


def alembic_config(connection: Connection | None = None, extra_versions: Path | None = None) -> Config:
    """Alembic's settings, made here rather than read from an alembic.ini, so the installed package is enough.
    `extra_versions`: a second folder of revisions (tests add a failing one)."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    locations = [str(SCRIPTS / "versions"), *([str(extra_versions)] if extra_versions else [])]
    config.set_main_option("version_locations", " ".join(locations))
    config.set_main_option("path_separator", "space")
    config.attributes["connection"] = connection
    return config


def _number(revision: str | None) -> int:
    return int(revision) if revision else 0


def head_version(extra_versions: Path | None = None) -> int:
    """The schema version this code brings a database to."""
    return _number(ScriptDirectory.from_config(alembic_config(None, extra_versions)).get_current_head())


def current_version(conn: Connection) -> int:
    """The database's schema version; 0 when it has none (a release 0.1 database reads as its own number)."""
    revision = MigrationContext.configure(conn).get_current_revision()
    if revision is not None:
        return _number(revision)
    if inspect(conn).has_table(LEGACY_TABLE):
        return int(conn.execute(text(f"SELECT coalesce(max(version), 0) FROM {LEGACY_TABLE}")).scalar_one())
    return 0


def apply_migrations(conn: Connection, where: str, extra_versions: Path | None = None) -> int:
    """Bring the database on `conn` (the caller's write transaction) to the head revision; return its version.
    `where` names the database in logs and errors (its URL, password masked)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
    config = alembic_config(conn, extra_versions)
    scripts = ScriptDirectory.from_config(config)
    head = scripts.get_current_head()
    current = MigrationContext.configure(conn).get_current_revision()
    if current is None and inspect(conn).has_table(LEGACY_TABLE):
        legacy = current_version(conn)
        if legacy != int(BASELINE):
            raise SchemaError(
                f"database {where} is at release 0.1's schema version {legacy}; start release 0.1 on it once "
                f"(it brings it to {int(BASELINE)}), then this one"
            )
        log.info("store %s: release 0.1's schema version %d, stamped as revision %s", where, legacy, BASELINE)
        command.stamp(config, BASELINE)
        conn.execute(text(f"DROP TABLE {LEGACY_TABLE}"))
        current = BASELINE
    if current is not None and current != head:
        try:
            scripts.get_revision(current)
        except Exception:
            raise SchemaError(
                f"database {where} is at schema version {_number(current)}, newer than this code's {_number(head)}"
            ) from None
    if current != head:
        log.info("store %s: migrating from schema version %d to %d", where, _number(current), _number(head))
        command.upgrade(config, "head")
    return _number(head)


def write_revision(message: str) -> Path:
    """Autogenerate the next numbered revision: the models against a scratch SQLite database at the head."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        with engine.begin() as conn:
            apply_migrations(conn, "scratch")
            config = alembic_config(conn)
            number = f"{head_version() + 1:04d}"
            script = command.revision(config, message, autogenerate=True, rev_id=number)
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m gateway.storage.migrations revision "what the revision changes"')
    print(write_revision(sys.argv[2]))
