"""Console sessions revoked before their expiry (a logout), so every replica refuses them.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from gateway.storage.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_revocations",
        sa.Column("sid", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sid"),
    )
    op.create_index("ix_console_revocations_expires_at", "console_revocations", ["expires_at"])


def downgrade() -> None:
    raise NotImplementedError("the state database only moves forward; restore a backup to go back")
