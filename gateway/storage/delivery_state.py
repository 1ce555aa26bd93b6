"""Deliveries in the state store: what the delivery controller persists so a new leader goes on where the old
one stood. Control state: written by the leader only (fenced), inside its `change()` with the audit event."""

from __future__ import annotations

from gateway.control.delivery_engine import DeliveryState
from gateway.storage.active_records import ActiveRecords
from gateway.storage.schema import deliveries_table


class DeliveryData(ActiveRecords):
    def save_delivery(self, state: DeliveryState) -> None:
        """Upsert the model's delivery of `state.version` (`ActiveRecords`' rules): another version's delivery
        still active on the model is a Conflict."""
        self._save_active(
            deliveries_table,
            state.model,
            {"version": state.version},
            {"phase": state.phase.value, "state": state.to_json()},
            state.phase.finished,
            lambda latest: f"model {state.model} already has a delivery of version {latest.version} under way",
            f"model {state.model} already has a delivery under way",
        )

    def active_deliveries(self) -> list[DeliveryState]:
        return [DeliveryState.from_json(doc) for doc in self._active_docs(deliveries_table)]

    def deliveries(self, model: str, limit: int = 20) -> list[DeliveryState]:
        """The model's deliveries, newest first."""
        return [DeliveryState.from_json(doc) for doc in self._history_docs(deliveries_table, model, limit)]
