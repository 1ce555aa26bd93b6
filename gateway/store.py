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
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable, Iterator, Mapping
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
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator, TypeEngine

from gateway.errors import Conflict, InvalidInput
from gateway.rollout_model import RolloutState
from gateway.traffic import TrafficPolicy

log = logging.getLogger(__name__)

UTC = timezone.utc
DESIRED_STATES = ("loaded", "unloaded")
_ADVISORY_LOCK_KEY = zlib.crc32(b"sluice.store.upgrade")
"""pg_advisory_xact_lock key that serialises `upgrade()` across processes sharing a database."""


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


MIGRATIONS: list[Migration] = [
    Migration(1, "traffic policies, rollouts, versions, audit log", _migration_1),
]
"""Ordered, append-only. A new step: `Migration(2, "...", fn)`, where fn uses e.g. `add_column`."""


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


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take BEGIN away from the sqlite3 driver (it would skip it for SELECT and DDL); see _sqlite_on_begin.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
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
