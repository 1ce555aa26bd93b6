"""The control plane's state: traffic policies, rollouts, versions' desired states, the audit log."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.control.rollout_model import RolloutState
from gateway.errors import InvalidInput
from gateway.serving.traffic import TrafficPolicy
from gateway.storage.active_records import ActiveRecords
from gateway.storage.revision_probe import REVISION_CHANNEL_SQL
from gateway.storage.schema import (
    audit_table,
    leases_table,
    policies_table,
    revision_table,
    rollouts_table,
    upsert,
    utc_now,
    versions_table,
)

log = logging.getLogger(__name__)

DESIRED_STATES = ("loaded", "unloaded")


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEvent:
    id: int
    at: datetime
    """Timezone-aware, UTC."""
    actor: str
    action: str
    model: str | None
    before: Any
    after: Any

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "actor": self.actor,
            "action": self.action,
            "model": self.model,
            "before": self.before,
            "after": self.after,
        }


_POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(TrafficPolicy))


def policy_to_json(policy: TrafficPolicy) -> dict[str, Any]:
    doc = dataclasses.asdict(policy)
    doc["shadows"] = list(policy.shadows)
    return doc


def policy_from_json(doc: Mapping[str, Any]) -> TrafficPolicy:
    """Fields the document lacks take their defaults; fields this code does not know are dropped."""
    values = {name: doc[name] for name in _POLICY_FIELDS if name in doc}
    if "shadows" in values:
        values["shadows"] = tuple(values["shadows"])
    return TrafficPolicy(**values)


@dataclass(frozen=True)
class Lease:
    """Who holds a lease, under which epoch, until when (the database's clock), and where it takes requests."""

    name: str
    holder: str
    epoch: int
    expires_at: float
    address: str | None


class ControlState(ActiveRecords):
    """Written by the control plane only (fenced: see `Database.fence`); read by every replica.

    Each change to a policy or a version's desired state raises the control revision in the same
    transaction, so a replica that sees the revision move knows there is something to reload.
    """

    # --- the revision replicas follow -------------------------------------------------------------

    def control_revision(self) -> int:
        """The counter every control change raises: one indexed read, cheap enough to poll."""
        with self._read() as conn:
            return int(conn.execute(select(revision_table.c.revision).where(revision_table.c.id == 1)).scalar_one())

    def _next_revision(self, conn: Connection) -> int:
        t = revision_table
        conn.execute(update(t).where(t.c.id == 1).values(revision=t.c.revision + 1))
        revision = int(conn.execute(select(t.c.revision).where(t.c.id == 1)).scalar_one())
        if conn.dialect.name == "postgresql":
            # Delivered when this transaction commits, to every replica listening (`storage.revision_probe`).
            conn.execute(select(func.pg_notify(text(REVISION_CHANNEL_SQL), str(revision))))
        return revision

    # --- the leader lease ---------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, ttl_s: float, address: str | None) -> Lease | None:
        """Take the lease if it is free or expired (a new epoch), or extend it if `holder` has it.

        Returns the lease held, or None when another holder's lease has not expired. Time is the
        database's, so holders on machines whose clocks disagree still agree on expiry.
        """
        try:
            return self._acquire_lease(name, holder, ttl_s, address)
        except IntegrityError:  # another candidate created the lease row first: it holds the lease
            return None

    def _acquire_lease(self, name: str, holder: str, ttl_s: float, address: str | None) -> Lease | None:
        t = leases_table
        with self._write() as conn:
            now = _database_now(conn)
            query = select(t).where(t.c.name == name)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                epoch = 1
                conn.execute(
                    insert(t).values(
                        name=name,
                        holder=holder,
                        epoch=epoch,
                        expires_at=now + ttl_s,
                        address=address,
                        acquired_at=utc_now(),
                    )
                )
            elif row.holder == holder and row.expires_at >= now:
                epoch = int(row.epoch)
                conn.execute(update(t).where(t.c.name == name).values(expires_at=now + ttl_s, address=address))
            elif row.expires_at < now:
                epoch = int(row.epoch) + 1
                conn.execute(
                    update(t)
                    .where(t.c.name == name)
                    .values(holder=holder, epoch=epoch, expires_at=now + ttl_s, address=address, acquired_at=utc_now())
                )
            else:
                return None
        return Lease(name, holder, epoch, now + ttl_s, address)

    def renew_lease(self, name: str, holder: str, epoch: int, ttl_s: float) -> Lease | None:
        """Extend the lease if `holder` still has it under `epoch` (even just expired: nobody took it
        meanwhile, or the epoch would have moved); None when it was lost."""
        t = leases_table
        with self._write() as conn:
            now = _database_now(conn)
            where = (t.c.name == name) & (t.c.holder == holder) & (t.c.epoch == epoch)
            if not conn.execute(update(t).where(where).values(expires_at=now + ttl_s)).rowcount:
                return None
            address = conn.execute(select(t.c.address).where(t.c.name == name)).scalar_one_or_none()
        return Lease(name, holder, epoch, now + ttl_s, address)

    def release_lease(self, name: str, holder: str, epoch: int) -> None:
        """Give the lease up at once (a clean shutdown): the next candidate need not wait for expiry."""
        t = leases_table
        with self._write() as conn:
            where = (t.c.name == name) & (t.c.holder == holder) & (t.c.epoch == epoch)
            conn.execute(update(t).where(where).values(expires_at=0.0))

    def lease(self, name: str) -> tuple[Lease | None, float]:
        """The lease as stored (None if never taken) and the database's time now."""
        t = leases_table
        with self._read() as conn:
            now = _database_now(conn)
            row = conn.execute(select(t).where(t.c.name == name)).first()
        if row is None:
            return None, now
        return Lease(row.name, row.holder, int(row.epoch), float(row.expires_at), row.address), now

    # --- traffic policies -----------------------------------------------------------------------

    def get_policy(self, model: str) -> TrafficPolicy | None:
        t = policies_table
        with self._read() as conn:
            doc = conn.execute(select(t.c.policy).where(t.c.model == model)).scalar_one_or_none()
        return None if doc is None else policy_from_json(doc)

    def put_policy(self, model: str, policy: TrafficPolicy) -> int:
        """Store the model's policy under a new control revision, and return that revision."""
        t = policies_table
        with self._control_write() as conn:
            revision = self._next_revision(conn)
            values = {"policy": policy_to_json(policy), "updated_at": utc_now(), "revision": revision}
            upsert(conn, t, {"model": model}, values)
        return revision

    def all_policies(self) -> dict[str, TrafficPolicy]:
        return {model: policy for model, (policy, _) in self.policies_with_revisions().items()}

    def policies_with_revisions(self) -> dict[str, tuple[TrafficPolicy, int]]:
        """Every stored policy and the revision that wrote it: what a replica routes by."""
        t = policies_table
        with self._read() as conn:
            rows = conn.execute(select(t.c.model, t.c.policy, t.c.revision).order_by(t.c.model)).all()
        return {row.model: (policy_from_json(row.policy), int(row.revision)) for row in rows}

    # --- rollouts -------------------------------------------------------------------------------

    def save_rollout(self, state: RolloutState) -> None:
        """Upsert the model's current rollout.

        The model's active row is updated in place (it becomes history when `state` is finished).
        With no active row, an unfinished state starts a new row; a finished one updates the latest
        row when it is the same rollout (same stable and canary), else is recorded as a new row.
        A state for a different canary or stable while another rollout is active: Conflict.
        """
        self._save_active(
            rollouts_table,
            state.model,
            {"stable": state.stable, "canary": state.spec.canary},
            {"phase": state.phase.value, "state": state.to_json()},
            state.phase.finished,
            lambda latest: (
                f"model {state.model} already has an active rollout "
                f"(canary {latest.canary} against stable {latest.stable})"
            ),
            f"model {state.model} already has an active rollout",
        )

    def active_rollouts(self) -> list[RolloutState]:
        return [RolloutState.from_json(doc) for doc in self._active_docs(rollouts_table)]

    def rollout(self, model: str) -> RolloutState | None:
        """The model's latest rollout, active or finished."""
        docs = self._history_docs(rollouts_table, model, 1)
        return RolloutState.from_json(docs[0]) if docs else None

    def rollout_history(self, model: str, limit: int = 100) -> list[RolloutState]:
        """The model's rollouts, newest first."""
        return [RolloutState.from_json(doc) for doc in self._history_docs(rollouts_table, model, limit)]

    # --- versions -------------------------------------------------------------------------------

    def put_version(
        self,
        model: str,
        version: str,
        *,
        artifact: str | None,
        runtime: str,
        batching: dict[str, Any],
        desired: str,
    ) -> None:
        """Record a version and its desired state ("loaded" or "unloaded"): every replica, and a restart,
        brings its own registry to it."""
        if desired not in DESIRED_STATES:
            raise InvalidInput(f"desired state must be one of {', '.join(DESIRED_STATES)}, got {desired!r}")
        t = versions_table
        now = utc_now()
        with self._control_write() as conn:
            self._next_revision(conn)
            upsert(
                conn,
                t,
                {"model": model, "version": version},
                {"artifact": artifact, "runtime": runtime, "batching": batching, "desired": desired, "updated_at": now},
                insert_only={"created_at": now},
            )

    def versions(self, model: str | None = None) -> list[dict[str, Any]]:
        """Rows as dicts (model, version, artifact, runtime, batching, desired, created_at, updated_at),
        ordered by model then version."""
        t = versions_table
        query = select(t).order_by(t.c.model, t.c.version)
        if model is not None:
            query = query.where(t.c.model == model)
        with self._read() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    # --- audit log ------------------------------------------------------------------------------

    def audit(
        self,
        actor: str,
        action: str,
        model: str | None,
        before: Any,
        after: Any,
        at: datetime | None = None,
    ) -> int:
        """Record one event (before/after: JSON-serialisable); return its id. `at`: aware, default now."""
        if at is not None and (at.tzinfo is None or at.utcoffset() is None):
            raise ValueError(f"naive datetime {at!r}: the store takes timezone-aware datetimes only")
        with self._control_write() as conn:
            event_id = conn.execute(
                insert(audit_table)
                .values(
                    at=at if at is not None else utc_now(),
                    actor=actor,
                    action=action,
                    model=model,
                    before=before,
                    after=after,
                )
                .returning(audit_table.c.id)
            ).scalar_one()
            return int(event_id)

    def audit_events(
        self, *, model: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[AuditEvent]:
        """Newest first. Next page: `before_id=` the last event's id."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1, got {limit}")
        t = audit_table
        query = select(t).order_by(t.c.id.desc()).limit(limit)
        if model is not None:
            query = query.where(t.c.model == model)
        if before_id is not None:
            query = query.where(t.c.id < before_id)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [
            AuditEvent(
                id=int(row.id),
                at=row.at,
                actor=row.actor,
                action=row.action,
                model=row.model,
                before=row.before,
                after=row.after,
            )
            for row in rows
        ]


def _database_now(conn: Connection) -> float:
    """The database's clock, epoch seconds: the one clock every replica of a deployment shares."""
    if conn.dialect.name == "postgresql":
        return float(conn.execute(select(func.extract("epoch", func.clock_timestamp()))).scalar_one())
    return float(conn.execute(select((func.julianday("now") - 2440587.5) * 86400.0)).scalar_one())
