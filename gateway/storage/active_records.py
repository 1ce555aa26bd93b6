"""Tables that hold one active record per model and its history: rollouts and deliveries.

Each row keeps the whole state as JSON, an `active` flag and the columns that tell one record from another
(a rollout's stable and canary, a delivery's version). The rules are the same for both, so they live here
once: a state updates the model's active row in place (it becomes history when the state is finished); with
no active row, an unfinished state starts a new row and a finished one updates the latest row when it is the
same record, else is recorded as a new row; a state for another record while one is active is a Conflict. A
partial unique index on (model) where active makes a race between two writers a Conflict too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Row, Table, insert, select, true, update
from sqlalchemy.exc import IntegrityError

from gateway.errors import Conflict
from gateway.storage.engine import Database
from gateway.storage.schema import utc_now


class ActiveRecords(Database):
    def _save_active(
        self,
        table: Table,
        model: str,
        identity: Mapping[str, Any],
        state: Mapping[str, Any],
        finished: bool,
        busy: Callable[[Row[Any]], str],
        raced: str,
    ) -> None:
        """Upsert `model`'s record named by `identity` (column values) with its `state` JSON and phase columns;
        `busy(latest)` words the Conflict when another record is active, `raced` the one a racing writer causes."""
        now = utc_now()
        values = {**identity, **state, "active": not finished, "updated_at": now}
        try:
            with self._control_write() as conn:
                latest = conn.execute(
                    select(table.c.id, table.c.active, *(table.c[k] for k in identity))
                    .where(table.c.model == model)
                    .order_by(table.c.id.desc())
                    .limit(1)
                ).first()
                same = latest is not None and all(getattr(latest, k) == v for k, v in identity.items())
                if latest is not None and latest.active and not same:
                    raise Conflict(busy(latest))
                if latest is not None and same and (latest.active or finished):
                    conn.execute(update(table).where(table.c.id == latest.id).values(**values))
                else:
                    conn.execute(insert(table).values(model=model, created_at=now, **values))
        except IntegrityError as exc:  # another writer started one on this model meanwhile
            raise Conflict(raced) from exc

    def _active_docs(self, table: Table) -> list[Any]:
        """The state JSON of every active record, by model."""
        with self._read() as conn:
            return list(
                conn.execute(select(table.c.state).where(table.c.active == true()).order_by(table.c.model)).scalars()
            )

    def _history_docs(self, table: Table, model: str, limit: int) -> list[Any]:
        """The state JSON of the model's records, newest first."""
        with self._read() as conn:
            query = select(table.c.state).where(table.c.model == model).order_by(table.c.id.desc()).limit(limit)
            return list(conn.execute(query).scalars())
