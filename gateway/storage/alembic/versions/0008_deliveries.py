"""Deliveries: a version a repository sync found, taken through its model's delivery policy (one row each; at
most one active per model).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_deliveries_model_id", "deliveries", ["model", "id"])
    active = sa.column("active", sa.Boolean()) == sa.true()
    op.create_index(
        "uq_deliveries_active_model", "deliveries", ["model"], unique=True, sqlite_where=active, postgresql_where=active
    )


def downgrade() -> None:
    raise NotImplementedError("the state database only moves forward; restore a backup to go back")
