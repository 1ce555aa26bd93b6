"""The live schema: every table and index as the newest migration leaves it, and what the queries share.

Queries use these tables. Migrations are Alembic revisions (`gateway/storage/alembic/versions`), frozen history
written from these models (`alembic revision --autogenerate`, see `gateway.storage.migrations`); a test checks
that a migrated database equals these models on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    insert,
    true,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator

from monitors.prediction_log import BATCH_TAG_LENGTH, MAX_ID_LENGTH

log = logging.getLogger(__name__)

UTC = timezone.utc


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
Id = BigInteger().with_variant(Integer(), "sqlite")


# --- live tables: what the queries below use (the schema at the newest migration) -------------

metadata = MetaData()

policies_table = Table(
    "traffic_policies",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("policy", JSON, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("revision", BigInteger, nullable=False, server_default="0"),
)
"""`revision`: the control revision (below) that wrote the policy. Replicas tag each request with the
revision of the policy that routed it, so a rollout's window holds only traffic routed by its step."""

rollouts_table = Table(
    "rollouts",
    metadata,
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

Index("ix_rollouts_model_id", rollouts_table.c.model, rollouts_table.c.id)
Index(  # at most one active rollout per model, enforced by the database (a partial unique index)
    "uq_rollouts_active_model",
    rollouts_table.c.model,
    unique=True,
    sqlite_where=rollouts_table.c.active == true(),
    postgresql_where=rollouts_table.c.active == true(),
)

deliveries_table = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("version", String(255), nullable=False),
    Column("phase", String(32), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("state", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
"""A version taken through its model's delivery policy (`gateway.control.delivery`): one row per delivery, the
finished ones kept as history; the active one is where a new leader picks the delivery up."""
Index("ix_deliveries_model_id", deliveries_table.c.model, deliveries_table.c.id)
Index(  # at most one delivery under way per model
    "uq_deliveries_active_model",
    deliveries_table.c.model,
    unique=True,
    sqlite_where=deliveries_table.c.active == true(),
    postgresql_where=deliveries_table.c.active == true(),
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
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(255), nullable=False),
    Column("model", String(255), nullable=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
)


Index("ix_audit_events_model_id", audit_table.c.model, audit_table.c.id)

prediction_batches_table = Table(
    "prediction_batches",
    metadata,
    Column("seq", Id, primary_key=True, autoincrement=True),
    Column("model", String(255), nullable=False),
    Column("version", String(255), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("ok", Integer, nullable=False),
    Column("whole", Boolean, nullable=False),
    Column("slots", LargeBinary, nullable=False),
    Column("inputs", LargeBinary, nullable=False),
    Column("outputs", LargeBinary, nullable=False),
    Column("tag", String(BATCH_TAG_LENGTH), nullable=True),
    Column("part", Integer, nullable=True),
)
Index(
    "ix_prediction_batches_model_version_at",
    prediction_batches_table.c.model,
    prediction_batches_table.c.version,
    prediction_batches_table.c.at,
)
Index(
    "ux_prediction_batches_model_tag_version_part",
    prediction_batches_table.c.model,
    prediction_batches_table.c.tag,
    prediction_batches_table.c.version,
    prediction_batches_table.c.part,
    unique=True,
)
"""The prediction log, one row per runtime batch (migration 9; `gateway.storage.prediction_batches` has the
layout): its requests' inputs and outputs as the batch's tensors, each request a slot. `rows` slots, `ok` of
them answered. A record logged alone (a failure) is a batch of one. `tag` (migration 10): the runtime batch's,
where the gateway made its requests' ids from it, which it then finds them by; `part`: the first slot's row,
which tells apart the rows of one runtime batch logged in two parts, and makes a batch sent again a repeat. The
version in the unique index lets the writer ask, from the index alone, whether a version's batch holds a tag."""

prediction_keys_table = Table(
    "prediction_keys",
    metadata,
    Column("model", String(255), primary_key=True),
    Column("id", String(MAX_ID_LENGTH), primary_key=True),
    Column("version", String(255), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)
"""Each logged request's key, and the batch that holds it: the one B-tree a request costs. Labels find their
predictions through it, and a repeated (model, id, version) keeps its first prediction."""

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

Index("ix_monitor_runs_model_kind_id", monitor_runs_table.c.model, monitor_runs_table.c.kind, monitor_runs_table.c.id)

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


revision_table = Table(
    "control_revision",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("revision", BigInteger, nullable=False),
)
"""One row: a counter the control plane raises in the same transaction as every change to a policy or
a version's desired state. Replicas poll it (one indexed read) and reload what they follow when it moves."""

leases_table = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(255), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("address", String(1024), nullable=True),
    Column("acquired_at", UTCDateTime, nullable=False),
)
"""The control plane's leader lease. `epoch` rises with each new holder and fences the control plane's
writes; `expires_at` is the database's clock (epoch seconds), so holders on other machines agree on it;
`address` is where the leader takes admin requests that other replicas forward."""

window_summaries_table = Table(
    "window_summaries",
    metadata,
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
"""Per-version request statistics each replica publishes every second or so (`serving.window_stats`):
mergeable (counts and sparse latency-histogram buckets), keyed by the policy revision that routed the
requests. Rollout analysis takes a version's untaken rows since its window's revision and marks them
taken; the console reads them over time. Old rows are pruned by age."""
Index(
    "ix_window_summaries_model_version_revision",
    window_summaries_table.c.model,
    window_summaries_table.c.version,
    window_summaries_table.c.revision,
)
Index("ix_window_summaries_model_at", window_summaries_table.c.model, window_summaries_table.c.at)


console_revocations_table = Table(
    "console_revocations",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=False),
)
"""Console sessions ended before their expiry (logged out): a session is a signed cookie every replica can
verify alone, so ending one early needs this shared list. `expires_at` (epoch seconds) is the session's
own expiry: after it the cookie is refused anyway and the row is pruned."""
Index("ix_console_revocations_expires_at", console_revocations_table.c.expires_at)


def utc_now() -> datetime:
    return datetime.now(UTC)


def upsert(
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
