"""The traffic policies the data plane routes by: a read-only view of what the control plane decided.

Serving only reads it (`route`, `policy`). It is written from outside serving: by the control plane
when this process leads (at once, after the change is persisted) and by the replica's follower when
the control revision in the state store moves (`gateway.replica`). Each policy carries the control
revision that wrote it; a route carries that revision on to the window statistics, so a rollout's
window counts only the requests its step's weights routed. A revision never goes backwards: a stale
reload cannot undo a newer change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.serving.registry import ServedModel
from gateway.serving.request import InferRequest
from gateway.serving.router import Routed, route_request
from gateway.serving.traffic import TrafficPolicy

_DEFAULT = TrafficPolicy()


@dataclass(frozen=True)
class PolicyEntry:
    policy: TrafficPolicy
    revision: int


class PolicyView:
    def __init__(self) -> None:
        self._entries: dict[str, PolicyEntry] = {}
        self._sequence: dict[str, int] = {}
        self.on_change: Callable[[str], None] | None = None
        """Called with the model's name after its policy changed (the traffic-weight gauges follow)."""

    # -- read: the data plane ------------------------------------------------------------------

    def route(self, model: ServedModel, request: InferRequest) -> Routed:
        """Hot path: a dict lookup, a counter and the pure routing decision."""
        name = model.name
        n = self._sequence.get(name, 0)
        self._sequence[name] = n + 1
        entry = self._entries.get(name)
        if entry is None:
            return route_request(model, request, None, n)
        return route_request(model, request, entry.policy, n, entry.revision)

    def policy(self, model: str) -> TrafficPolicy:
        entry = self._entries.get(model)
        return _DEFAULT if entry is None else entry.policy

    def revision(self, model: str) -> int:
        entry = self._entries.get(model)
        return 0 if entry is None else entry.revision

    def models(self) -> list[str]:
        return sorted(self._entries)

    # -- write: the control plane (leading) or the follower --------------------------------------

    def apply(self, model: str, policy: TrafficPolicy, revision: int) -> bool:
        """Route the model by `policy` from now on, unless a newer revision is in force already."""
        current = self._entries.get(model)
        if current is not None and (revision < current.revision or current == PolicyEntry(policy, revision)):
            return False
        self._entries[model] = PolicyEntry(policy, revision)
        self.changed(model)
        return True

    def changed(self, model: str) -> None:
        """Tell the listener the model's effective weights may have moved (its policy, or a version's state)."""
        if self.on_change is not None:
            self.on_change(model)
