"""The control plane's persistence: traffic policies, rollouts, versions' desired state, the audit log.

One storage layer, two engines, one code path (SQLAlchemy 2.x Core):

- SQLite, the default: a file in the state directory (`Store.for_state_dir`), WAL journal, nothing
  to install.
- PostgreSQL by DSN (`postgresql+psycopg://user@host/db`), when several gateway replicas share
  state. Extra libpq settings go in the DSN's query (`?options=-csearch_path%3Dsluice`) or in
  `connect_args`.

The only engine-specific code is what SQLAlchemy asks for: SQLite's pragmas and its BEGIN (the
sqlite3 driver's own transaction handling is not transactional for DDL, so we emit BEGIN ourselves,
IMMEDIATE for writes), and PostgreSQL's advisory lock around `upgrade()`.

The API is synchronous: the caller runs it in a thread; it is never on the request hot path.

Schema changes are migrations: `MIGRATIONS` is an ordered list, each step a function of a
connection; `upgrade()` applies the missing ones in order in one transaction and records each in
`schema_version`. A step's DDL is frozen history: migration 1 keeps its own copy of the v1 tables,
so a later step that adds a column to the live tables below (with `add_column`) does not also
change what migration 1 creates.

The store is also the prediction log's sink (`monitors.records.PredictionSink`): predictions and
their labels (migration 2). Tensors are stored as bytes (`monitors.prediction_log.tensors_to_bytes`,
migration 3; rows from before keep their JSON text, and the readers decode both), and handed back
as numpy arrays (`prediction_records`) or in the JSON form (`predictions`, `labeled_predictions`).
Predictions are written by the log's writer (process or thread) in batches through the driver directly
(multi-row `INSERT ... ON CONFLICT DO NOTHING` on SQLite, one array per column unnested on
PostgreSQL): SQLAlchemy's per-row bind processing would cost more GIL time than the rest of the log
together. The table has one index besides its key, (model, version, at): each index costs every
logged request, so pruning goes through that one too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    CompoundSelect,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator, TypeEngine

from gateway.control.rollout_model import RolloutState
from gateway.errors import Conflict, InvalidInput
from gateway.serving.traffic import TrafficPolicy
from monitors.prediction_log import (
    MAX_ID_LENGTH,
    prediction_rows,
    stored_tensors_to_json,
    tensors_from_bytes,
)
from monitors.records import Label, LabeledPrediction, LabelResult, PredictionRecord, PredictionRow
from monitors.triggers import RuleState

log = logging.getLogger(__name__)

UTC = timezone.utc
DESIRED_STATES = ("loaded", "unloaded")
_ADVISORY_LOCK_KEY = zlib.crc32(b"sluice.store.upgrade")
"""pg_advisory_xact_lock key that serialises `upgrade()` across processes sharing a database."""
_PRUNE_CHUNK = 10_000
"""Predictions deleted per transaction when pruning."""
_IN_CHUNK = 500
"""Ids per IN (...) list: far below every engine's limit on bound parameters."""
_MERGE_VERSIONS = 200
"""Model versions up to which pruning by row count merges their index ranges (a UNION ALL arm each)."""
_INSERT_ROWS = 500
"""Predictions per INSERT statement: 4,500 parameters, below SQLite's 32,766 and PostgreSQL's 65,535."""


class SchemaError(RuntimeError):
    """The database's schema does not fit this code (newer than it knows, or a broken migration list)."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both engines.

    PostgreSQL stores timestamptz and returns aware values (in the session's zone: we convert);
    SQLite stores text without a zone: we store UTC and attach UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: the store takes timezone-aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# An integer primary key that autoincrements on both: BIGINT on PostgreSQL; SQLite needs exactly
# INTEGER for its rowid alias.
_Id = BigInteger().with_variant(Integer(), "sqlite")


# --- live tables: what the queries below use (the schema at the newest migration) -------------

metadata = MetaData()

schema_version_table = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", String(200), nullable=False),
    Column("applied_at", UTCDateTime, nullable=False),
)

policies_table = Table(
    "traffic_policies",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("policy", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

rollouts_table = Table(
    "rollouts",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("stable", String(255), nullable=False),
    Column("canary", String(255), nullable=False),
    Column("phase", String(32), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("state", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

versions_table = Table(
    "versions",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("version", String(255), primary_key=True),
    Column("artifact", String(4096), nullable=True),
    Column("runtime", String(64), nullable=False),
    Column("batching", JSON, nullable=False),
    Column("desired", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

audit_table = Table(
    "audit_events",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(255), nullable=False),
    Column("model", String(255), nullable=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
)


predictions_table = Table(
    "predictions",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("id", String(MAX_ID_LENGTH), primary_key=True),
    Column("version", String(255), primary_key=True),
    Column("route", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("latency_s", Float, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("inputs", LargeBinary, nullable=False),
    Column("outputs", LargeBinary, nullable=False),
)
"""Tensors are stored in `monitors.prediction_log`'s binary form (`tensors_to_bytes`); rows from before
migration 3 hold their JSON text, which the readers below tell apart and read too."""

labels_table = Table(
    "labels",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("prediction_id", String(MAX_ID_LENGTH), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
)

monitor_runs_table = Table(
    "monitor_runs",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
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

trigger_states_table = Table(
    "trigger_states",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("version", String(255), primary_key=True),
    Column("rule", String(255), primary_key=True),
    Column("streak", Integer, nullable=False),
    Column("last_fired_clock", Float, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)
"""Each trigger rule's state per model version (`monitors.triggers.RuleState`), so that a restart
neither forgets a streak nor restarts a cooldown. `last_fired_clock` is the control plane's clock
(epoch seconds unless a test injects another); when it fired is also in the audit log."""


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
        Column("id", _Id, primary_key=True, autoincrement=True),
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
        Column("id", _Id, primary_key=True, autoincrement=True),
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
        Column("id", _Id, primary_key=True, autoincrement=True),
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


MIGRATIONS: list[Migration] = [
    Migration(1, "traffic policies, rollouts, versions, audit log", _migration_1),
    Migration(2, "prediction log and labels", _migration_2),
    Migration(3, "prediction tensors as bytes; no index on the time alone", _migration_3),
    Migration(4, "drift and accuracy runs", _migration_4),
    Migration(5, "trigger rules' state", _migration_5),
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


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: datetime
    """Timezone-aware, UTC."""
    actor: str
    action: str
    model: str | None
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "model": self.model,
            "before": self.before,
            "after": self.after,
        }


_POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(TrafficPolicy))


def policy_to_json(policy: TrafficPolicy) -> dict[str, Any]:
    doc = dataclasses.asdict(policy)
    doc["shadows"] = list(policy.shadows)
    return doc


def policy_from_json(doc: Mapping[str, Any]) -> TrafficPolicy:
    """Fields the document lacks take their defaults; fields this code does not know are dropped."""
    values = {name: doc[name] for name in _POLICY_FIELDS if name in doc}
    if "shadows" in values:
        values["shadows"] = tuple(values["shadows"])
    return TrafficPolicy(**values)


def _now() -> datetime:
    return datetime.now(UTC)


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


def _make_engine(url: str, connect_args: Mapping[str, Any] | None) -> Engine:
    parsed = make_url(url)
    args: dict[str, Any] = dict(connect_args or {})
    if parsed.get_backend_name() == "sqlite":
        args.setdefault("check_same_thread", False)
        args.setdefault("timeout", 30.0)  # seconds a writer waits for the lock
        engine = create_engine(parsed, pool_pre_ping=True, connect_args=args)
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(parsed, pool_pre_ping=True, connect_args=args)


# --- the store ----------------------------------------------------------------------------------


class Store:
    """Synchronous and thread-safe (one pooled engine); every method is one short transaction."""

    def __init__(self, url: str, *, connect_args: Mapping[str, Any] | None = None) -> None:
        """`url`: "sqlite:///path/sluice.db" or "postgresql+psycopg://user:pw@host:5432/db"."""
        self._engine = _make_engine(url, connect_args)
        self._connect_args = dict(connect_args or {})

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> Store:
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
        return f"Store({self.display_url!r})"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(**{_WRITE_OPTION: True})
            with conn.begin():
                yield conn

    # --- schema ---------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The version the database is at; 0 when it has no schema yet."""
        with self._read() as conn:
            return _current_version(conn)

    def upgrade(self) -> int:
        """Apply the pending migrations in order, in one transaction; return the schema version.

        Idempotent, and safe when several processes race: PostgreSQL serialises on an advisory
        lock, SQLite on its write lock (BEGIN IMMEDIATE).
        """
        migrations = _checked(MIGRATIONS)
        latest = migrations[-1].version if migrations else 0
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_ADVISORY_LOCK_KEY)))
            metadata.create_all(conn, tables=[schema_version_table], checkfirst=True)
            current = _current_version(conn)
            if current > latest:
                raise SchemaError(
                    f"database {self.display_url} is at schema version {current}, newer than this code's {latest}"
                )
            for step in migrations:
                if step.version <= current:
                    continue
                log.info("store %s: applying migration %d (%s)", self.display_url, step.version, step.description)
                step.apply(conn)
                conn.execute(
                    insert(schema_version_table).values(
                        version=step.version, description=step.description, applied_at=_now()
                    )
                )
                current = step.version
        return current

    # --- traffic policies -----------------------------------------------------------------------

    def get_policy(self, model: str) -> TrafficPolicy | None:
        t = policies_table
        with self._read() as conn:
            doc = conn.execute(select(t.c.policy).where(t.c.model == model)).scalar_one_or_none()
        return None if doc is None else policy_from_json(doc)

    def put_policy(self, model: str, policy: TrafficPolicy) -> None:
        t = policies_table
        with self._write() as conn:
            _upsert(conn, t, {"model": model}, {"policy": policy_to_json(policy), "updated_at": _now()})

    def all_policies(self) -> dict[str, TrafficPolicy]:
        t = policies_table
        with self._read() as conn:
            rows = conn.execute(select(t.c.model, t.c.policy).order_by(t.c.model)).all()
        return {row.model: policy_from_json(row.policy) for row in rows}

    # --- rollouts -------------------------------------------------------------------------------

    def save_rollout(self, state: RolloutState) -> None:
        """Upsert the model's current rollout.

        The model's active row is updated in place (it becomes history when `state` is finished).
        With no active row, an unfinished state starts a new row; a finished one updates the latest
        row when it is the same rollout (same stable and canary), else is recorded as a new row.
        A state for a different canary or stable while another rollout is active: Conflict.
        """
        t = rollouts_table
        now = _now()
        values = {
            "stable": state.stable,
            "canary": state.spec.canary,
            "phase": state.phase.value,
            "active": not state.phase.finished,
            "state": state.to_json(),
            "updated_at": now,
        }
        try:
            with self._write() as conn:
                latest = conn.execute(
                    select(t.c.id, t.c.active, t.c.stable, t.c.canary)
                    .where(t.c.model == state.model)
                    .order_by(t.c.id.desc())
                    .limit(1)
                ).first()
                same = latest is not None and (latest.stable, latest.canary) == (state.stable, state.spec.canary)
                if latest is not None and latest.active and not same:
                    raise Conflict(
                        f"model {state.model} already has an active rollout "
                        f"(canary {latest.canary} against stable {latest.stable})"
                    )
                if latest is not None and (latest.active or (same and state.phase.finished)):
                    conn.execute(update(t).where(t.c.id == latest.id).values(**values))
                else:
                    conn.execute(insert(t).values(model=state.model, created_at=now, **values))
        except IntegrityError as exc:  # another writer started a rollout on this model meanwhile
            raise Conflict(f"model {state.model} already has an active rollout") from exc

    def active_rollouts(self) -> list[RolloutState]:
        t = rollouts_table
        with self._read() as conn:
            docs = conn.execute(select(t.c.state).where(t.c.active == true()).order_by(t.c.model)).scalars().all()
        return [RolloutState.from_json(doc) for doc in docs]

    def rollout(self, model: str) -> RolloutState | None:
        """The model's latest rollout, active or finished."""
        t = rollouts_table
        with self._read() as conn:
            doc = conn.execute(
                select(t.c.state).where(t.c.model == model).order_by(t.c.id.desc()).limit(1)
            ).scalar_one_or_none()
        return None if doc is None else RolloutState.from_json(doc)

    def rollout_history(self, model: str, limit: int = 100) -> list[RolloutState]:
        """The model's rollouts, newest first."""
        t = rollouts_table
        with self._read() as conn:
            docs = (
                conn.execute(select(t.c.state).where(t.c.model == model).order_by(t.c.id.desc()).limit(limit))
                .scalars()
                .all()
            )
        return [RolloutState.from_json(doc) for doc in docs]

    # --- versions -------------------------------------------------------------------------------

    def put_version(
        self,
        model: str,
        version: str,
        *,
        artifact: str | None,
        runtime: str,
        batching: dict[str, Any],
        desired: str,
    ) -> None:
        """Record a version and its desired state ("loaded" or "unloaded"); a restart restores it."""
        if desired not in DESIRED_STATES:
            raise InvalidInput(f"desired state must be one of {', '.join(DESIRED_STATES)}, got {desired!r}")
        t = versions_table
        now = _now()
        with self._write() as conn:
            _upsert(
                conn,
                t,
                {"model": model, "version": version},
                {"artifact": artifact, "runtime": runtime, "batching": batching, "desired": desired, "updated_at": now},
                insert_only={"created_at": now},
            )

    def versions(self, model: str | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (model, version, artifact, runtime, batching, desired, created_at, updated_at),
        ordered by model then version."""
        t = versions_table
        query = select(t).order_by(t.c.model, t.c.version)
        if model is not None:
            query = query.where(t.c.model == model)
        with self._read() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    # --- audit log ------------------------------------------------------------------------------

    def audit(
        self,
        actor: str,
        action: str,
        model: str | None,
        before: Any,
        after: Any,
        at: datetime | None = None,
    ) -> int:
        """Record one event (before/after: JSON-serialisable); return its id. `at`: aware, default now."""
        if at is not None and (at.tzinfo is None or at.utcoffset() is None):
            raise ValueError(f"naive datetime {at!r}: the store takes timezone-aware datetimes only")
        with self._write() as conn:
            event_id = conn.execute(
                insert(audit_table)
                .values(
                    at=at if at is not None else _now(),
                    actor=actor,
                    action=action,
                    model=model,
                    before=before,
                    after=after,
                )
                .returning(audit_table.c.id)
            ).scalar_one()
            return int(event_id)

    def audit_events(
        self, *, model: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEvent]:
        """Newest first. Next page: `before_id=` the last event's id."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        t = audit_table
        query = select(t).order_by(t.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(t.c.model == model)
        if before_id is not None:
            query = query.where(t.c.id < before_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            AuditEvent(
                id=int(row.id),
                at=row.at,
                actor=row.actor,
                action=row.action,
                model=row.model,
                before=row.before,
                after=row.after,
            )
            for row in rows
        ]

    # --- prediction log (monitors.records.PredictionSink) ----------------------------------------

    def write_predictions(self, records: Sequence[PredictionRecord]) -> None:
        """Insert a batch in one transaction (see `write_prediction_rows`)."""
        self.write_prediction_rows(prediction_rows(records))

    def write_prediction_rows(self, rows: Sequence[PredictionRow]) -> None:
        """Insert a batch of encoded records (`monitors.prediction_log.prediction_rows`) in one transaction;
        a row whose (model, id, version) is already stored is ignored (a caller that reuses an id keeps
        its first prediction), not an error.

        Encoded rows are what the log's writer process receives: the serving process encodes (cheap,
        and it has the arrays), this side does the rest. The insert goes to the driver directly, as
        multi-row INSERTs: executemany would step the statement once per row, and the sqlite3 driver
        gives the GIL up and takes it back around every step.
        """
        if not rows:
            return
        values = self._prediction_params(rows)
        width = len(predictions_table.columns)
        with self._write() as conn:
            if conn.dialect.name == "postgresql":
                # One array per column, unnested by the server: psycopg parses a query's placeholders in
                # Python and caches only short queries, so a 4,500-placeholder VALUES list would cost
                # ~40 µs a row in the parsing alone.
                conn.exec_driver_sql(_INSERT_PREDICTIONS_PG, tuple(values[i::width] for i in range(width)))
                return
            for start in range(0, len(rows), _INSERT_ROWS):
                count = min(_INSERT_ROWS, len(rows) - start)
                conn.exec_driver_sql(
                    _insert_predictions_sql(conn.dialect, count),
                    tuple(values[start * width : (start + count) * width]),
                )

    def _prediction_params(self, rows: Sequence[PredictionRow]) -> list[Any]:
        """The INSERT's parameters for `rows`, row after row, flat: the rows as they are but for the
        time, epoch seconds in the row. SQLite stores it as SQLAlchemy's DateTime does (naive UTC text
        with microseconds), so the queries below read and compare it like any other."""
        values: list[Any] = []
        if self._engine.dialect.name == "sqlite":
            # The text up to the second is made once per second (rows come in time order).
            second = -1
            prefix = ""
            for model, id_, version, route, at, latency_s, outcome, inputs, outputs in rows:
                whole = int(at)
                micros = round((at - whole) * 1_000_000)
                if micros >= 1_000_000:
                    whole, micros = whole + 1, micros - 1_000_000
                if whole != second:
                    second = whole
                    prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(whole))
                when = "%s.%06d" % (prefix, micros)  # noqa: UP031 - the fastest form here
                values += (model, id_, version, route, when, latency_s, outcome, inputs, outputs)
        else:
            stamp = datetime.fromtimestamp
            for model, id_, version, route, at, latency_s, outcome, inputs, outputs in rows:
                values += (model, id_, version, route, stamp(at, UTC), latency_s, outcome, inputs, outputs)
        return values

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        """Delete predictions older than `older_than`, then all but the newest `keep_rows` (across every
        model: the row count bounds the database, not a model's share); labels whose prediction is gone
        go with them. Deletes run in chunks of their own transactions, so a large prune never holds the
        write lock long. Returns the number of predictions deleted.

        There is no index on the time alone (each one costs every logged request): the work goes
        through the (model, version, at) index, one model version at a time.
        """
        if older_than is not None and (older_than.tzinfo is None or older_than.utcoffset() is None):
            raise ValueError(f"naive datetime {older_than!r}: the store takes timezone-aware datetimes only")
        if keep_rows is not None and keep_rows < 0:
            raise InvalidInput(f"keep_rows must be at least 0, got {keep_rows}")
        t = predictions_table
        deleted = 0
        keys = self._prediction_versions()
        if older_than is not None:
            for model, version in keys:
                deleted += self._delete_predictions(
                    (t.c.model == model) & (t.c.version == version) & (t.c.at < older_than)
                )
        if keep_rows is not None:
            cutoff = self._nth_newest_time(keys, keep_rows)
            if cutoff is not None:
                # At most keep_rows stay: rows that tie with the cutoff time go too.
                for model, version in keys:
                    deleted += self._delete_predictions(
                        (t.c.model == model) & (t.c.version == version) & (t.c.at <= cutoff)
                    )
        if deleted:
            lt = labels_table
            orphan = ~exists().where(t.c.model == lt.c.model, t.c.id == lt.c.prediction_id)
            with self._write() as conn:
                conn.execute(delete(lt).where(orphan))
        return deleted

    def _prediction_versions(self) -> list[tuple[str, str]]:
        """Every (model, version) in the log, by a skip scan of the (model, version, at) index: one seek
        per pair, whatever the number of rows."""
        t = predictions_table
        first = select(t.c.model, t.c.version).order_by(t.c.model, t.c.version).limit(1)
        keys: list[tuple[str, str]] = []
        with self._read() as conn:
            row = conn.execute(first).first()
            while row is not None:
                keys.append((row.model, row.version))
                after = tuple_(t.c.model, t.c.version) > tuple_(literal(row.model), literal(row.version))
                row = conn.execute(first.where(after)).first()
        return keys

    def _nth_newest_time(self, keys: list[tuple[str, str]], n: int) -> datetime | None:
        """The time of the (n+1)-th newest prediction across `keys`; None when there are at most n.

        Up to _MERGE_VERSIONS pairs, the newest rows of each are merged from the index (SQLite and
        PostgreSQL both walk the arms of an ordered UNION ALL in step); with more, one ordered scan
        of the table (slower, but pruning runs every few minutes, not per request)."""
        t = predictions_table
        if not keys:
            return None
        query: Select[Any] | CompoundSelect[Any]
        if len(keys) <= _MERGE_VERSIONS:
            arms = [select(t.c.at).where(t.c.model == model, t.c.version == version) for model, version in keys]
            if len(arms) == 1:
                query = arms[0].order_by(t.c.at.desc()).offset(n).limit(1)
            else:
                query = union_all(*arms).order_by(literal_column("at").desc()).offset(n).limit(1)
        else:
            query = select(t.c.at).order_by(t.c.at.desc()).offset(n).limit(1)
        with self._read() as conn:
            at: datetime | None = conn.execute(query).scalar_one_or_none()
        return at

    def _delete_predictions(self, condition: Any, chunk: int = _PRUNE_CHUNK) -> int:
        t = predictions_table
        key = tuple_(t.c.model, t.c.id, t.c.version)
        total = 0
        while True:
            with self._write() as conn:
                victims = select(t.c.model, t.c.id, t.c.version).where(condition).limit(chunk)
                n = conn.execute(delete(t).where(key.in_(victims))).rowcount
            total += n
            if n < chunk:
                return total

    def write_labels(self, model: str, labels: Sequence[Label]) -> LabelResult:
        """Store ground truth for the model's predictions, all or nothing.

        When any id is not a prediction of `model`, nothing is stored and the result lists the unknown
        ids (the HTTP layer answers 404 naming them). A label equal to the stored one (the same JSON)
        is left alone and counted unchanged, so a repeated post is idempotent; a different value
        replaces it. An id given twice in one call: the last one wins.
        """
        latest: dict[str, Label] = {}
        for label in labels:
            latest[label.prediction_id] = label
        encoded = {pid: _canonical_json(label.value, pid) for pid, label in latest.items()}
        for attempt in range(2):
            try:
                return self._write_labels(model, latest, encoded)
            except IntegrityError:  # PostgreSQL: a concurrent post inserted the same new label first
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _write_labels(self, model: str, latest: dict[str, Label], encoded: dict[str, str]) -> LabelResult:
        t, lt = predictions_table, labels_table
        ids = list(latest)
        now = _now()
        with self._write() as conn:
            known: set[str] = set()
            stored: dict[str, str] = {}
            for chunk in _chunks(ids, _IN_CHUNK):
                known.update(
                    conn.execute(select(t.c.id).where(t.c.model == model, t.c.id.in_(chunk)).distinct()).scalars()
                )
                for row in conn.execute(
                    select(lt.c.prediction_id, lt.c.value).where(lt.c.model == model, lt.c.prediction_id.in_(chunk))
                ):
                    stored[row.prediction_id] = _canonical_json(row.value, row.prediction_id)
            unknown = tuple(pid for pid in ids if pid not in known)
            if unknown:
                return LabelResult(stored=0, unchanged=0, unknown=unknown)
            new = []
            changed = 0
            unchanged = 0
            for pid, label in latest.items():
                values = {"value": json.loads(encoded[pid]), "at": label.at or now, "received_at": now}
                if pid not in stored:
                    new.append({"model": model, "prediction_id": pid, **values})
                elif stored[pid] == encoded[pid]:
                    unchanged += 1
                else:
                    conn.execute(update(lt).where(lt.c.model == model, lt.c.prediction_id == pid).values(**values))
                    changed += 1
            if new:
                conn.execute(insert(lt), new)
        return LabelResult(stored=len(new) + changed, unchanged=unchanged)

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[LabeledPrediction]:
        """The version's answered predictions (outcome ok) that have a label, oldest first, from `since`.

        `outputs` are in the JSON form: {"name": {"shape": [...], "datatype": ..., "data": [...]}}.
        """
        t, lt = predictions_table, labels_table
        query = (
            select(t.c.id, t.c.at, t.c.version, t.c.outputs, lt.c.value, lt.c.at.label("labeled_at"))
            .join(lt, (lt.c.model == t.c.model) & (lt.c.prediction_id == t.c.id))
            .where(t.c.model == model, t.c.version == version, t.c.outcome == "ok")
            .order_by(t.c.at, t.c.id)
            .limit(limit)
        )
        if since is not None:
            query = query.where(t.c.at >= since)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            LabeledPrediction(
                id=row.id,
                at=row.at,
                version=row.version,
                outputs=stored_tensors_to_json(row.outputs),
                label=row.value,
                labeled_at=row.labeled_at,
            )
            for row in rows
        ]

    def predictions(
        self,
        model: str,
        *,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        ids: Sequence[str] | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:
        """Stored predictions as dicts (the table's columns; inputs and outputs in the JSON form
        {"name": {"shape": [...], "datatype": ..., "data": [...]}}, NaN and infinities as null), oldest
        first: the window a monitor reads, or the records of some ids."""
        t = predictions_table
        query = select(t).where(t.c.model == model).order_by(t.c.at, t.c.id, t.c.version).limit(limit)
        if version is not None:
            query = query.where(t.c.version == version)
        if since is not None:
            query = query.where(t.c.at >= since)
        if until is not None:
            query = query.where(t.c.at < until)
        if ids is not None:
            query = query.where(t.c.id.in_(list(ids)))
        with self._read() as conn:
            rows = [dict(row) for row in conn.execute(query).mappings()]
        for row in rows:
            row["inputs"] = stored_tensors_to_json(row["inputs"])
            row["outputs"] = stored_tensors_to_json(row["outputs"])
        return rows

    def prediction_records(
        self,
        model: str,
        version: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 10_000,
        newest: bool = False,
        outcome: str | None = "ok",
    ) -> list[PredictionRecord]:
        """One version's stored predictions as records with numpy tensors, oldest first: the window a
        drift job reads. `newest`: the last `limit` rows of the range instead of the first."""
        t = predictions_table
        order = (t.c.at.desc(), t.c.id.desc()) if newest else (t.c.at, t.c.id)
        query = select(t).where(t.c.model == model, t.c.version == version).order_by(*order).limit(limit)
        if outcome is not None:
            query = query.where(t.c.outcome == outcome)
        if since is not None:
            query = query.where(t.c.at >= since)
        if until is not None:
            query = query.where(t.c.at < until)
        with self._read() as conn:
            rows = list(conn.execute(query).all())
        if newest:
            rows.reverse()
        return [
            PredictionRecord(
                id=row.id,
                at=row.at,
                model=row.model,
                version=row.version,
                route=row.route,
                inputs=tensors_from_bytes(row.inputs),
                outputs=tensors_from_bytes(row.outputs),
                latency_s=row.latency_s,
                outcome=row.outcome,
            )
            for row in rows
        ]

    def count_predictions(
        self, model: str, version: str, *, since: datetime | None = None, until: datetime | None = None
    ) -> int:
        """Answered predictions (outcome ok) of one version in [since, until): a window's coverage denominator."""
        t = predictions_table
        query = select(func.count()).where(t.c.model == model, t.c.version == version, t.c.outcome == "ok")
        if since is not None:
            query = query.where(t.c.at >= since)
        if until is not None:
            query = query.where(t.c.at < until)
        with self._read() as conn:
            return int(conn.execute(query).scalar_one())

    # --- monitor runs (drift, accuracy) -------------------------------------------------------------

    def save_monitor_run(self, run: Mapping[str, Any]) -> int:
        """Store one drift or accuracy run (the keys of `monitor_runs`, less `id`); returns its id."""
        values = {c.name: run[c.name] for c in monitor_runs_table.columns if c.name != "id" and c.name in run}
        values.setdefault("at", _now())
        with self._write() as conn:
            key = conn.execute(insert(monitor_runs_table).values(**values)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def monitor_runs(
        self, model: str, *, kind: str | None = None, version: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The model's runs, newest first."""
        t = monitor_runs_table
        query = select(t).where(t.c.model == model).order_by(t.c.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(t.c.kind == kind)
        if version is not None:
            query = query.where(t.c.version == version)
        with self._read() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def monitor_run(self, model: str, run_id: int) -> dict[str, Any] | None:
        t = monitor_runs_table
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.model == model, t.c.id == run_id)).mappings().first()
        return dict(row) if row is not None else None

    def trigger_states(self) -> dict[tuple[str, str, str], RuleState]:
        """Every stored rule state, by (model, version, rule): a small table, read once at start-up."""
        t = trigger_states_table
        with self._read() as conn:
            return {
                (row.model, row.version, row.rule): RuleState(row.streak, row.last_fired_clock)
                for row in conn.execute(select(t.c.model, t.c.version, t.c.rule, t.c.streak, t.c.last_fired_clock))
            }

    def save_trigger_state(self, model: str, version: str, rule: str, state: RuleState) -> None:
        values = {"streak": state.streak, "last_fired_clock": state.last_fired_at, "updated_at": _now()}
        with self._write() as conn:
            _upsert(conn, trigger_states_table, {"model": model, "version": version, "rule": rule}, values)

    def labels(self, model: str, ids: Sequence[str] | None = None) -> dict[str, Any]:
        """The model's labels by prediction id (all of them, or those of `ids`)."""
        lt = labels_table
        query = select(lt.c.prediction_id, lt.c.value).where(lt.c.model == model)
        if ids is not None:
            query = query.where(lt.c.prediction_id.in_(list(ids)))
        with self._read() as conn:
            return {row.prediction_id: row.value for row in conn.execute(query)}


def upgrade_database(url: str, *, connect_args: Mapping[str, Any] | None = None) -> int:
    """Bring the database at `url` to the newest schema; return its version (`sluice db upgrade`)."""
    store = Store(url, connect_args=connect_args)
    try:
        return store.upgrade()
    finally:
        store.close()


# --- helpers ----------------------------------------------------------------------------------


def _current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version_table.name):
        return 0
    t = schema_version_table
    return int(conn.execute(select(func.coalesce(func.max(t.c.version), 0))).scalar_one())


_INSERT_PREDICTIONS_PG = (
    "INSERT INTO predictions (model, id, version, route, at, latency_s, outcome, inputs, outputs) "
    "SELECT * FROM unnest(%b::varchar[], %b::varchar[], %b::varchar[], %b::varchar[], %b::timestamptz[], "
    "%b::float8[], %b::varchar[], %b::bytea[], %b::bytea[]) ON CONFLICT DO NOTHING"
)
"""A batch of predictions on PostgreSQL: one array of values per column (in `predictions_table`'s order),
sent in psycopg's binary format (%b): no quoting of text, no hex for bytes."""


@functools.lru_cache(maxsize=64)
def _insert_predictions_sql(dialect: Dialect, rows: int) -> str:
    """INSERT of `rows` predictions in one statement; a key already stored is skipped (ON CONFLICT DO NOTHING)."""
    quote = dialect.identifier_preparer.quote
    columns = [c.name for c in predictions_table.columns]
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    row = f"({', '.join([mark] * len(columns))})"
    return (
        f"INSERT INTO {quote(predictions_table.name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES {', '.join([row] * rows)} ON CONFLICT DO NOTHING"
    )


def _canonical_json(value: Any, prediction_id: str) -> str:
    """One text per JSON value (keys sorted), to tell a repeated label from a changed one."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"label for prediction '{prediction_id}' is not a JSON value: {exc}") from None


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _checked(migrations: list[Migration]) -> list[Migration]:
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise SchemaError(f"migrations must be numbered 1, 2, 3, ... in order; got {versions}")
    return list(migrations)


def _upsert(
    conn: Connection,
    table: Table,
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    *,
    insert_only: Mapping[str, Any] | None = None,
) -> None:
    """Update the row with this key, or insert it. Portable: UPDATE, then INSERT in a savepoint;
    when a concurrent writer inserted the same key first, its row is updated instead."""
    where = [table.c[name] == value for name, value in key.items()]
    if conn.execute(update(table).where(*where).values(**values)).rowcount:
        return
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(**key, **values, **(insert_only or {})))
    except IntegrityError:
        conn.execute(update(table).where(*where).values(**values))
