"""Deliveries in the state store: what the delivery controller persists so a new leader goes on where the old
one stood. Control state: written by the leader only (fenced), inside its `change()` with the audit event."""

from __future__ import annotations

from sqlalchemy import insert, select, true, update
from sqlalchemy.exc import IntegrityError

from gateway.control.delivery_engine import DeliveryState
from gateway.errors import Conflict
from gateway.storage.engine import Database
from gateway.storage.schema import deliveries_table, utc_now


class DeliveryData(Database):
    def save_delivery(self, state: DeliveryState) -> None:
        """Upsert the model's delivery of `state.version`: its active row is updated in place (history once
        finished); otherwise a new row. Another version's delivery still active on the model: Conflict."""
        t = deliveries_table
        now = utc_now()
        values = {
            "version": state.version,
            "phase": state.phase.value,
            "active": not state.phase.finished,
            "state": state.to_json(),
            "updated_at": now,
        }
        try:
            with self._control_write() as conn:
                latest = conn.execute(
                    select(t.c.id, t.c.active, t.c.version)
                    .where(t.c.model == state.model)
                    .order_by(t.c.id.desc())
                    .limit(1)
                ).first()
                same = latest is not None and latest.version == state.version
                if latest is not None and latest.active and not same:
                    raise Conflict(f"model {state.model} already has a delivery of version {latest.version} under way")
                if latest is not None and same and (latest.active or state.phase.finished):
                    conn.execute(update(t).where(t.c.id == latest.id).values(**values))
                else:
                    conn.execute(insert(t).values(model=state.model, created_at=now, **values))
        except IntegrityError as exc:  # another writer started a delivery on this model meanwhile
            raise Conflict(f"model {state.model} already has a delivery under way") from exc

    def active_deliveries(self) -> list[DeliveryState]:
        t = deliveries_table
        with self._read() as conn:
            docs = conn.execute(select(t.c.state).where(t.c.active == true()).order_by(t.c.model)).scalars().all()
        return [DeliveryState.from_json(doc) for doc in docs]

    def deliveries(self, model: str, limit: int = 20) -> list[DeliveryState]:
        """The model's deliveries, newest first."""
        t = deliveries_table
        with self._read() as conn:
            docs = (
                conn.execute(select(t.c.state).where(t.c.model == model).order_by(t.c.id.desc()).limit(limit))
                .scalars()
                .all()
            )
        return [DeliveryState.from_json(doc) for doc in docs]
