"""Schema changes as an ordered, append-only list of migrations, and the upgrade that applies them.

`upgrade()` applies the missing steps in order in one transaction and records each in
`schema_version`. A step's DDL is frozen history: migration 1 keeps its own copy of the v1 tables,
so a later step that adds a column to the live tables (with `add_column`) does not also change what
migration 1 creates.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    insert,
    inspect,
    select,
    text,
    true,
)
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeEngine

from gateway.storage.schema import Id, UTCDateTime, metadata, schema_version_table, utc_now

log = logging.getLogger(__name__)

_ADVISORY_LOCK_KEY = zlib.crc32(b"sluice.store.upgrade")


class SchemaError(RuntimeError):
    """The database's schema does not fit this code (newer than it knows, or a broken migration list)."""


# --- migrations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _migration_1(conn: Connection) -> None:
    """Create the v1 tables. A frozen copy: later migrations change the live tables, not this."""
    md = MetaData()
    Table(
        "traffic_policies",
        md,
        Column("model", String(255), primary_key=True),
        Column("policy", JSON, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    rollouts = Table(
        "rollouts",
        md,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("model", String(255), nullable=False),
        Column("stable", String(255), nullable=False),
        Column("canary", String(255), nullable=False),
        Column("phase", String(32), nullable=False),
        Column("active", Boolean, nullable=False),
        Column("state", JSON, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    Index("ix_rollouts_model_id", rollouts.c.model, rollouts.c.id)
    # At most one active rollout per model, enforced by the database (a partial unique index).
    Index(
        "uq_rollouts_active_model",
        rollouts.c.model,
        unique=True,
        sqlite_where=rollouts.c.active == true(),
        postgresql_where=rollouts.c.active == true(),
    )
    Table(
        "versions",
        md,
        Column("model", String(255), primary_key=True),
        Column("version", String(255), primary_key=True),
        Column("artifact", String(4096), nullable=True),
        Column("runtime", String(64), nullable=False),
        Column("batching", JSON, nullable=False),
        Column("desired", String(16), nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    audit = Table(
        "audit_events",
        md,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("at", UTCDateTime, nullable=False),
        Column("actor", String(255), nullable=False),
        Column("action", String(255), nullable=False),
        Column("model", String(255), nullable=True),
        Column("before", JSON, nullable=True),
        Column("after", JSON, nullable=True),
    )
    Index("ix_audit_events_model_id", audit.c.model, audit.c.id)
    md.create_all(conn, checkfirst=False)


def _migration_2(conn: Connection) -> None:
    """The prediction log and its labels (a frozen copy, as migration 1's).

    A prediction's key is (model, id, version): a shadow answer shares its request's id (the V2
    response id) but not its version, and ids are the callers' own, unique only within a model.
    A label belongs to (model, prediction id): it is the truth about the request, whichever
    versions answered it, so the stable's and a shadow's accuracy are read from the same labels.
    """
    md = MetaData()
    predictions = Table(
        "predictions",
        md,
        Column("model", String(255), primary_key=True),
        Column("id", String(256), primary_key=True),
        Column("version", String(255), primary_key=True),
        Column("route", String(16), nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("latency_s", Float, nullable=False),
        Column("outcome", String(32), nullable=False),
        Column("inputs", JSON, nullable=False),
        Column("outputs", JSON, nullable=False),
    )
    # Windows of one version (monitors) and retention by age / by row count (pruning).
    Index("ix_predictions_model_version_at", predictions.c.model, predictions.c.version, predictions.c.at)
    Index("ix_predictions_at", predictions.c.at)
    Table(
        "labels",
        md,
        Column("model", String(255), primary_key=True),
        Column("prediction_id", String(256), primary_key=True),
        Column("value", JSON, nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("received_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn, checkfirst=False)


def _migration_3(conn: Connection) -> None:
    """Predictions keep their tensors as bytes (the binary form), and lose the index on `at` alone.

    The JSON text of the rows already stored is kept, as bytes (`tensors_from_bytes` and
    `stored_tensors_to_json` read it): the step is SQL only, however large the table. Pruning by
    age or by row count uses the (model, version, at) index, per model and version.

    PostgreSQL changes the column types in place. SQLite cannot, so the table is rebuilt: a copy
    in one statement, then the old table dropped and the copy renamed (all in `upgrade()`'s
    transaction, so a failure leaves the old table as it was).
    """
    quote = conn.dialect.identifier_preparer.quote
    conn.execute(text(f"DROP INDEX {quote('ix_predictions_at')}"))
    if conn.dialect.name == "postgresql":
        for column in ("inputs", "outputs"):
            conn.execute(
                text(
                    f"ALTER TABLE predictions ALTER COLUMN {column} TYPE bytea USING convert_to({column}::text, 'UTF8')"
                )
            )
        return
    md = MetaData()
    Table(
        "predictions_v3",
        md,
        Column("model", String(255), primary_key=True),
        Column("id", String(256), primary_key=True),
        Column("version", String(255), primary_key=True),
        Column("route", String(16), nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("latency_s", Float, nullable=False),
        Column("outcome", String(32), nullable=False),
        Column("inputs", LargeBinary, nullable=False),
        Column("outputs", LargeBinary, nullable=False),
    )
    md.create_all(conn, checkfirst=False)
    conn.execute(
        text(
            "INSERT INTO predictions_v3 (model, id, version, route, at, latency_s, outcome, inputs, outputs) "
            "SELECT model, id, version, route, at, latency_s, outcome, CAST(inputs AS BLOB), CAST(outputs AS BLOB) "
            "FROM predictions"
        )
    )
    conn.execute(text("DROP TABLE predictions"))
    conn.execute(text("ALTER TABLE predictions_v3 RENAME TO predictions"))
    conn.execute(text("CREATE INDEX ix_predictions_model_version_at ON predictions (model, version, at)"))


def _migration_4(conn: Connection) -> None:
    """Drift and accuracy runs: their figures (what gauges, triggers and rollout checks read), the
    whole result, and the file name of the Evidently HTML report (a frozen copy, as the others)."""
    md = MetaData()
    runs = Table(
        "monitor_runs",
        md,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("model", String(255), nullable=False),
        Column("version", String(255), nullable=False),
        Column("kind", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("actor", String(255), nullable=False),
        Column("rows", Integer, nullable=False),
        Column("figures", JSON, nullable=False),
        Column("detail", JSON, nullable=False),
        Column("report", String(255), nullable=True),
    )
    Index("ix_monitor_runs_model_kind_id", runs.c.model, runs.c.kind, runs.c.id)
    md.create_all(conn, checkfirst=False)


def _migration_5(conn: Connection) -> None:
    """Trigger rules' state (a frozen copy, as the others)."""
    md = MetaData()
    Table(
        "trigger_states",
        md,
        Column("model", String(255), primary_key=True),
        Column("version", String(255), primary_key=True),
        Column("rule", String(255), primary_key=True),
        Column("streak", Integer, nullable=False),
        Column("last_fired_clock", Float, nullable=True),
        Column("updated_at", UTCDateTime, nullable=False),
    )
    md.create_all(conn, checkfirst=False)


def _migration_6(conn: Connection) -> None:
    """Replicas and one control plane: the leader lease, the revision counter replicas follow, policy
    revisions, and the window summaries replicas publish (a frozen copy, as the others)."""
    md = MetaData()
    Table(
        "control_revision",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("revision", BigInteger, nullable=False),
    )
    Table(
        "leases",
        md,
        Column("name", String(64), primary_key=True),
        Column("holder", String(255), nullable=False),
        Column("epoch", BigInteger, nullable=False),
        Column("expires_at", Float, nullable=False),
        Column("address", String(1024), nullable=True),
        Column("acquired_at", UTCDateTime, nullable=False),
    )
    windows = Table(
        "window_summaries",
        md,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("replica", String(255), nullable=False),
        Column("model", String(255), nullable=False),
        Column("version", String(255), nullable=False),
        Column("revision", BigInteger, nullable=False),
        Column("at", UTCDateTime, nullable=False),
        Column("requests", Integer, nullable=False),
        Column("errors", Integer, nullable=False),
        Column("latency", JSON, nullable=False),
        Column("min_s", Float, nullable=True),
        Column("max_s", Float, nullable=True),
        Column("shadow_compared", Integer, nullable=False),
        Column("shadow_agreed", Integer, nullable=False),
        Column("batches", Integer, nullable=False),
        Column("batch_rows", Integer, nullable=False),
        Column("taken", Boolean, nullable=False),
    )
    Index("ix_window_summaries_model_version_revision", windows.c.model, windows.c.version, windows.c.revision)
    Index("ix_window_summaries_model_at", windows.c.model, windows.c.at)
    md.create_all(conn, checkfirst=False)
    conn.execute(text("INSERT INTO control_revision (id, revision) VALUES (1, 0)"))
    add_column(conn, "traffic_policies", "revision", BigInteger(), nullable=False, server_default="0")


def _migration_7(conn: Connection) -> None:
    """Console sessions ended before their expiry (a logout), so every replica refuses them (a frozen copy)."""
    md = MetaData()
    revoked = Table(
        "console_revocations",
        md,
        Column("sid", String(64), primary_key=True),
        Column("expires_at", Float, nullable=False),
        Column("revoked_at", UTCDateTime, nullable=False),
    )
    Index("ix_console_revocations_expires_at", revoked.c.expires_at)
    md.create_all(conn, checkfirst=False)


MIGRATIONS: list[Migration] = [
    Migration(1, "traffic policies, rollouts, versions, audit log", _migration_1),
    Migration(2, "prediction log and labels", _migration_2),
    Migration(3, "prediction tensors as bytes; no index on the time alone", _migration_3),
    Migration(4, "drift and accuracy runs", _migration_4),
    Migration(5, "trigger rules' state", _migration_5),
    Migration(6, "leader lease, control revision, policy revisions, window summaries", _migration_6),
    Migration(7, "console sessions revoked before their expiry", _migration_7),
]
"""Ordered, append-only. A new step: `Migration(6, "...", fn)`, where fn uses e.g. `add_column`."""


def add_column(
    conn: Connection,
    table: str,
    name: str,
    type_: TypeEngine[Any],
    *,
    nullable: bool = True,
    server_default: str | None = None,
) -> None:
    """ALTER TABLE ... ADD COLUMN, rendered for the connection's dialect (for migrations).

    `server_default` is SQL text (e.g. "'x'" or "0"); a NOT NULL column on a table with rows needs one.
    """
    quote = conn.dialect.identifier_preparer.quote
    ddl = f"ALTER TABLE {quote(table)} ADD COLUMN {quote(name)} {type_.compile(dialect=conn.dialect)}"
    if server_default is not None:
        ddl += f" DEFAULT {server_default}"
    if not nullable:
        ddl += " NOT NULL"
    conn.execute(text(ddl))


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version_table.name):
        return 0
    t = schema_version_table
    return int(conn.execute(select(func.coalesce(func.max(t.c.version), 0))).scalar_one())


def _checked(migrations: list[Migration]) -> list[Migration]:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"migrations must be numbered 1, 2, 3, ... in order; got {versions}")
    return list(migrations)


def apply_migrations(conn: Connection, where: str, migrations: list[Migration] | None = None) -> int:
    """Apply the steps the database lacks, in order, on `conn` (the caller's write transaction); return
    the schema version. `where` names the database in logs and errors (its URL, password masked)."""
    steps = _checked(MIGRATIONS if migrations is None else migrations)
    latest = steps[-1].version if steps else 0
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
    metadata.create_all(conn, tables=[schema_version_table], checkfirst=True)
    current = current_version(conn)
    if current > latest:
        raise SchemaError(f"database {where} is at schema version {current}, newer than this code's {latest}")
    for step in steps:
        if step.version <= current:
            continue
        log.info("store %s: applying migration %d (%s)", where, step.version, step.description)
        step.apply(conn)
        conn.execute(
            insert(schema_version_table).values(
                version=step.version, description=step.description, applied_at=utc_now()
            )
        )
        current = step.version
    return current
