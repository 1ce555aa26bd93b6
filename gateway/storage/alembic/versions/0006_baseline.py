"""The schema as release 0.1 left it (its hand-written migrations 1 to 6, squashed).

A database made by that release (its `schema_version` table at 6) is stamped at this revision without running
it (`gateway.storage.migrations`); a new database runs it. Frozen history: later revisions change the tables,
this one keeps creating what the release had.

Revision ID: 0006
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.schema import Id, UTCDateTime

revision = "0006"
down_revision = None
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(timezone=True), nullable=nullable)


def _name(name: str, nullable: bool = False, length: int = 255) -> sa.Column[object]:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "traffic_policies",
        _name("model"),
        sa.Column("policy", sa.JSON(), nullable=False),
        _at("updated_at"),
        sa.Column("revision", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        _name("model"),
        _name("stable"),
        _name("canary"),
        _name("phase", length=32),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rollouts_model_id", "rollouts", ["model", "id"])
    active = sa.column("active", sa.Boolean()) == sa.true()
    op.create_index(
        "uq_rollouts_active_model", "rollouts", ["model"], unique=True, sqlite_where=active, postgresql_where=active
    )
    op.create_table(
        "versions",
        _name("model"),
        _name("version"),
        _name("artifact", nullable=True, length=4096),
        _name("runtime", length=64),
        sa.Column("batching", sa.JSON(), nullable=False),
        _name("desired", length=16),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("model", "version"),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        _at("at"),
        _name("actor"),
        _name("action"),
        _name("model", nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_events_model_id", "audit_events", ["model", "id"])
    op.create_table(
        "predictions",
        _name("model"),
        _name("id", length=256),
        _name("version"),
        _name("route", length=16),
        _at("at"),
        sa.Column("latency_s", sa.Float(), nullable=False),
        _name("outcome", length=32),
        sa.Column("inputs", sa.LargeBinary(), nullable=False),
        sa.Column("outputs", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("model", "id", "version"),
    )
    op.create_index("ix_predictions_model_version_at", "predictions", ["model", "version", "at"])
    op.create_table(
        "labels",
        _name("model"),
        _name("prediction_id", length=256),
        sa.Column("value", sa.JSON(), nullable=False),
        _at("at"),
        _at("received_at"),
        sa.PrimaryKeyConstraint("model", "prediction_id"),
    )
    op.create_table(
        "monitor_runs",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        _name("model"),
        _name("version"),
        _name("kind", length=16),
        _name("status", length=16),
        _at("at"),
        _name("actor"),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        _name("report", nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_monitor_runs_model_kind_id", "monitor_runs", ["model", "kind", "id"])
    op.create_table(
        "trigger_states",
        _name("model"),
        _name("version"),
        _name("rule"),
        sa.Column("streak", sa.Integer(), nullable=False),
        sa.Column("last_fired_clock", sa.Float(), nullable=True),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("model", "version", "rule"),
    )
    revision_table = op.create_table(
        "control_revision",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(revision_table, [{"id": 1, "revision": 0}])
    op.create_table(
        "leases",
        _name("name", length=64),
        _name("holder"),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        _name("address", nullable=True, length=1024),
        _at("acquired_at"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "window_summaries",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        _name("replica"),
        _name("model"),
        _name("version"),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        _at("at"),
        *(sa.Column(n, sa.Integer(), nullable=False) for n in ("requests", "errors")),
        sa.Column("latency", sa.JSON(), nullable=False),
        sa.Column("min_s", sa.Float(), nullable=True),
        sa.Column("max_s", sa.Float(), nullable=True),
        *(sa.Column(n, sa.Integer(), nullable=False) for n in ("shadow_compared", "shadow_agreed", "batches")),
        sa.Column("batch_rows", sa.Integer(), nullable=False),
        sa.Column("taken", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_window_summaries_model_version_revision", "window_summaries", ["model", "version", "revision"])
    op.create_index("ix_window_summaries_model_at", "window_summaries", ["model", "at"])


def downgrade() -> None:
    raise NotImplementedError("the state database only moves forward; restore a backup to go back")
