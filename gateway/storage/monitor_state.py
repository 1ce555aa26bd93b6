"""Drift and accuracy runs, and trigger rules' state."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import (
    insert,
    select,
)

from gateway.storage.engine import Database
from gateway.storage.schema import monitor_runs_table, trigger_states_table, upsert, utc_now
from monitors.triggers import RuleState

log = logging.getLogger(__name__)


class MonitorState(Database):
    # --- monitor runs (drift, accuracy) -------------------------------------------------------------

    def save_monitor_run(self, run: Mapping[str, Any]) -> int:
        """Store one drift or accuracy run (the keys of `monitor_runs`, less `id`); returns its id."""
        values = {c.name: run[c.name] for c in monitor_runs_table.columns if c.name != "id" and c.name in run}
        values.setdefault("at", utc_now())
        with self._control_write() as conn:
            key = conn.execute(insert(monitor_runs_table).values(**values)).inserted_primary_key
        assert key is not None
        return int(key[0])

    def monitor_runs(
        self, model: str, *, kind: str | None = None, version: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The model's runs, newest first."""
        t = monitor_runs_table
        query = select(t).where(t.c.model == model).order_by(t.c.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(t.c.kind == kind)
        if version is not None:
            query = query.where(t.c.version == version)
        with self._read() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def monitor_run(self, model: str, run_id: int) -> dict[str, Any] | None:
        t = monitor_runs_table
        with self._read() as conn:
            row = conn.execute(select(t).where(t.c.model == model, t.c.id == run_id)).mappings().first()
        return dict(row) if row is not None else None

    def trigger_states(self) -> dict[tuple[str, str, str], RuleState]:
        """Every stored rule state, by (model, version, rule): a small table, read once at start-up."""
        t = trigger_states_table
        with self._read() as conn:
            return {
                (row.model, row.version, row.rule): RuleState(row.streak, row.last_fired_clock)
                for row in conn.execute(select(t.c.model, t.c.version, t.c.rule, t.c.streak, t.c.last_fired_clock))
            }

    def save_trigger_state(self, model: str, version: str, rule: str, state: RuleState) -> None:
        values = {"streak": state.streak, "last_fired_clock": state.last_fired_at, "updated_at": utc_now()}
        with self._control_write() as conn:
            upsert(conn, trigger_states_table, {"model": model, "version": version, "rule": rule}, values)
