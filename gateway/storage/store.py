"""The state store: one storage layer, two engines, one code path (SQLAlchemy 2.x Core).

- SQLite, the default: a file in the state directory (`Store.for_state_dir`), WAL journal, nothing
  to install.
- PostgreSQL by DSN (`postgresql+psycopg://user@host/db`), when several gateway replicas share
  state. Extra libpq settings go in the DSN's query (`?options=-csearch_path%3Dsluice`) or in
  `connect_args`.

`Store` is the sum of one class per job over one engine: `control_state` (policies, rollouts,
versions, the audit log, the leader lease and the revision replicas follow), `delivery_state` (deliveries
of new versions by policy), `windows` (replicas'
per-version window summaries), `predictions` (the prediction log and its labels), `monitor_state`
(drift and accuracy runs, trigger states) and `console_sessions` (console sessions ended by a logout).
`engine` has the connection discipline they share, `schema` the live tables, `migrations` the frozen
history of schema changes.

The API is synchronous: the caller runs it in a thread; it is never on the request hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.storage.console_sessions import ConsoleSessionState
from gateway.storage.control_state import ControlState
from gateway.storage.delivery_state import DeliveryData
from gateway.storage.monitor_state import MonitorState
from gateway.storage.predictions import PredictionData
from gateway.storage.windows import WindowData


class Store(ControlState, DeliveryData, WindowData, PredictionData, MonitorState, ConsoleSessionState):
    """Synchronous and thread-safe (one pooled engine); every method is one short transaction.

    One class per job, each over the same engine (`gateway.storage.engine.Database`): the control
    plane's state, the replicas' window summaries, the prediction log and its labels, the monitors'
    runs and rule states, the console's revoked sessions.
    """


def upgrade_database(url: str, *, connect_args: Mapping[str, Any] | None = None) -> int:
    """Bring the database at `url` to the newest schema; return its version (`sluice db upgrade`)."""
    store = Store(url, connect_args=connect_args)
    try:
        return store.upgrade()
    finally:
        store.close()
