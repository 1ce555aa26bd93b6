"""The prediction log, one row per runtime batch and a key per request (`gateway.storage.prediction_batches`):
each stored prediction becomes a batch of one, and the table of a row per request goes.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import logging

import orjson
import sqlalchemy as sa
from alembic import op

from gateway.storage.schema import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

_CHUNK = 5_000
"""Predictions moved per round trip."""

# The tables as this revision leaves them (frozen here: the live models may move on).
_old = sa.table(
    "predictions",
    sa.column("model"),
    sa.column("id"),
    sa.column("version"),
    sa.column("route"),
    sa.column("at"),
    sa.column("latency_s"),
    sa.column("outcome"),
    sa.column("inputs"),
    sa.column("outputs"),
)
_batches = sa.table(
    "prediction_batches",
    sa.column("seq"),
    sa.column("model"),
    sa.column("version"),
    sa.column("at"),
    sa.column("rows"),
    sa.column("ok"),
    sa.column("whole"),
    sa.column("slots"),
    sa.column("inputs"),
    sa.column("outputs"),
)
_keys = sa.table("prediction_keys", sa.column("model"), sa.column("id"), sa.column("version"), sa.column("seq"))


def upgrade() -> None:
    op.create_table(
        "prediction_batches",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("whole", sa.Boolean(), nullable=False),
        sa.Column("slots", sa.LargeBinary(), nullable=False),
        sa.Column("inputs", sa.LargeBinary(), nullable=False),
        sa.Column("outputs", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_prediction_batches_model_version_at", "prediction_batches", ["model", "version", "at"])
    op.create_table(
        "prediction_keys",
        sa.Column("model", sa.String(length=255), nullable=False),
        sa.Column("id", sa.String(length=256), nullable=False),
        sa.Column("version", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "id", "version"),
        sqlite_with_rowid=False,
    )
    moved = _move_predictions(op.get_bind())
    if moved:
        log.info("store migration 9: %d predictions moved to prediction_batches", moved)
    op.drop_index("ix_predictions_model_version_at", table_name="predictions")
    op.drop_table("predictions")


def _move_predictions(conn: sa.Connection) -> int:
    """Each stored prediction as a batch of one: its tensors as they are (the stored form, or the JSON text of a
    row from before migration 3), its time as stored (the columns are untyped here: values pass through)."""
    key = sa.tuple_(_old.c.model, _old.c.id, _old.c.version)
    page = sa.select(_old).order_by(_old.c.model, _old.c.id, _old.c.version).limit(_CHUNK)
    seq = 0
    after: tuple[str, str, str] | None = None
    while True:
        query = page if after is None else page.where(key > sa.tuple_(*(sa.literal(v) for v in after)))
        rows = conn.execute(query).all()
        if not rows:
            break
        batches, keys = [], []
        for row in rows:
            seq += 1
            slot: list[object] = [row.id, row.route, row.latency_s, 0, 0, None]
            if row.outcome != "ok":
                slot.append(row.outcome)
            batches.append(
                {
                    "seq": seq,
                    "model": row.model,
                    "version": row.version,
                    "at": row.at,
                    "rows": 1,
                    "ok": int(row.outcome == "ok"),
                    "whole": True,
                    "slots": orjson.dumps([slot]),
                    "inputs": row.inputs,
                    "outputs": row.outputs,
                }
            )
            keys.append({"model": row.model, "id": row.id, "version": row.version, "seq": seq})
        conn.execute(sa.insert(_batches), batches)
        conn.execute(sa.insert(_keys), keys)
        after = (rows[-1].model, rows[-1].id, rows[-1].version)
    if seq and conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('prediction_batches', 'seq'), %s)", (seq,))
    return seq


def downgrade() -> None:
    raise NotImplementedError("the state database only moves forward; restore a backup to go back")
