"""A runtime batch's tag on its stored row (`monitors.prediction_log.batch_request_id`): the ids the gateway makes
for a batch's requests name the batch, which finds them without a key row a request.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN on both databases: no copy of the log's table (rows logged before keep their key rows).
    op.add_column("prediction_batches", sa.Column("tag", sa.String(length=28), nullable=True))
    op.add_column("prediction_batches", sa.Column("part", sa.Integer(), nullable=True))
    op.create_index(
        "ux_prediction_batches_model_tag_version_part",
        "prediction_batches",
        ["model", "tag", "version", "part"],
        unique=True,
    )


def downgrade() -> None:
    raise NotImplementedError("the state database only moves forward; restore a backup to go back")
