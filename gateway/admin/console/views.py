"""What each console page and panel shows, gathered from the control plane, the monitor and the store.

Store reads run in a worker thread (never on the event loop). The console runs in the control plane's
leader (non-leaders forward /console to it), so the policy, the rollout and the versions' states read
here are the ones in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from gateway.admin.console import figures
from gateway.admin.console.audit_summary import summary
from gateway.control.delivery import DeliveryController
from gateway.control.monitor_service import MonitorService
from gateway.control.plane import ControlPlane
from gateway.control.rollout_engine import allowed_actions
from gateway.control.rollout_model import Phase

RANGES: dict[str, tuple[float, float]] = {
    "15m": (900.0, 5.0),
    "1h": (3600.0, 20.0),
    "6h": (21600.0, 120.0),
    "2d": (172800.0, 900.0),
}
"""Chart ranges of a model's page: (seconds shown, seconds per bucket)."""
DEFAULT_RANGE = "15m"
OVERVIEW = (600.0, 10.0)
"""The models page: the last ten minutes in ten-second buckets."""


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, timezone.utc)


def _role(version: dict[str, Any]) -> str:
    """A version's roles in words; a version with traffic and no role is the implicit stable (newest ready)."""
    if version["roles"]:
        return ", ".join(version["roles"])
    return "stable (newest ready)" if version["weight"] > 0 else "pinned only"


class ConsoleViews:
    def __init__(
        self, control: ControlPlane, monitor: MonitorService, delivery: DeliveryController | None = None
    ) -> None:
        self.control = control
        self.monitor = monitor
        self.delivery = delivery
        self.store = control.store

    async def models(self) -> list[dict[str, Any]]:
        """The models page: every model, its versions with state, roles, weight and live figures."""
        range_s, bucket_s = OVERVIEW
        now = time.time()
        since = figures.aligned_since(now, range_s, bucket_s)
        models = self.control.models_view()

        def read() -> dict[str, figures.Series]:
            start = _utc(since)
            return {m["name"]: self.store.window_series(m["name"], since=start, bucket_s=bucket_s) for m in models}

        series = await asyncio.to_thread(read)
        # What needs looking at first: models with a rollout under way, then by name; models that failed last.
        models.sort(key=lambda m: (m["rollout"] is None, m["error"] is not None, m["name"]))
        for model in models:
            versions = [v["version"] for v in model["versions"]]
            data = series[model["name"]]
            charts = figures.traffic_charts(data, versions, since=since, now=now, bucket_s=bucket_s)
            live = figures.live_figures(data, now=now, bucket_s=bucket_s)
            for v in model["versions"]:
                v["live"] = live.get(v["version"], {})
                v["role"] = _role(v)
                label = f"v{v['version']}"
                v["charts"] = {name: figures.sparkline(charts[name], label) for name in ("rate", "p99")}
        return models

    async def status(self, model: str) -> dict[str, Any]:
        """A model's versions, policy and rollout (active, else the last one) with its windows' verdicts."""
        view = self.control.model_view(model)
        now = time.time()
        bucket_s = RANGES[DEFAULT_RANGE][1]
        since = figures.aligned_since(now, 60.0, bucket_s)

        def read() -> tuple[Any, ...]:
            series = self.store.window_series(model, since=_utc(since), bucket_s=bucket_s)
            history = self.store.rollout_history(model, limit=10)
            events = self.store.audit_events(model=model, limit=500)
            return series, history, events, self.store.deliveries(model, limit=1)

        series, history, events, deliveries = await asyncio.to_thread(read)
        live = figures.live_figures(series, now=now, bucket_s=bucket_s)
        for v in view["versions"]:
            v["live"] = live.get(v["version"], {})
            v["role"] = _role(v)
        rollout = view["rollout"] or (history[0].to_json() if history else None)
        if rollout is not None:
            rollout["timeline"] = figures.timeline(rollout)
            rollout["windows"] = figures.analysis_windows(rollout, events)
            rollout["active"] = view["rollout"] is not None
        view["rollout"] = rollout
        view["history"] = [h.to_json() for h in history]
        current = self.delivery.delivery(model) if self.delivery is not None else None
        latest = current or (deliveries[0] if deliveries else None)  # the leader's has the shadow's live figures
        view["delivery"] = None if latest is None else {**latest.to_json(), "active": not latest.phase.finished}
        return view

    async def controls(self, model: str) -> dict[str, Any]:
        """What the action buttons and the policy forms show: the versions, the policy, the actions that apply
        now, and a key that changes when any of them does (a form or the buttons are redrawn only then)."""
        view = self.control.model_view(model)
        versions = [v["version"] for v in view["versions"]]
        rollout = view["rollout"]
        phase = Phase(rollout["phase"]) if rollout is not None else None
        actions = allowed_actions(phase, has_canary=view["policy"]["canary"] is not None)
        shown = json.dumps(
            {"versions": versions, "policy": view["policy"], "actions": sorted(actions)}, sort_keys=True, default=str
        )
        return {
            "versions": versions,
            "policy": view["policy"],
            "phase": phase.value if phase is not None else None,
            "actions": sorted(actions),
            "key": hashlib.sha256(shown.encode()).hexdigest()[:16],
        }

    async def traffic(self, model: str, range_name: str) -> dict[str, Any]:
        """Traffic, errors, latency, batch size and shadow agreement per version over the chosen range."""
        range_s, bucket_s = RANGES.get(range_name, RANGES[DEFAULT_RANGE])
        view = self.control.model_view(model)
        now = time.time()
        since = figures.aligned_since(now, range_s, bucket_s)
        series = await asyncio.to_thread(self.store.window_series, model, since=_utc(since), bucket_s=bucket_s)
        versions = [v["version"] for v in view["versions"]]
        names = ("rate", "errors", "p99", "batch", "agreement")
        charts = figures.traffic_charts(series, versions, since=since, now=now, bucket_s=bucket_s, figures=names)
        return {"charts": charts, "bucket_s": bucket_s}

    async def monitor_panel(self, model: str) -> dict[str, Any]:
        """Drift and accuracy over the stored runs, each version's newest figures, and the newest runs."""
        self.control.registry.get_model(model)
        runs = await asyncio.to_thread(self.store.monitor_runs, model, limit=400)
        monitoring = self.control.registry.models[model].config.monitoring
        return {
            "drift_charts": figures.drift_charts(runs),
            "accuracy_charts": figures.accuracy_charts(runs),
            "latest_drift": figures.latest_runs(runs, "drift"),
            "latest_accuracy": figures.latest_runs(runs, "accuracy"),
            "runs": runs[:20],
            "task": monitoring.task,
            "roles": self.monitor.roles(model),
        }

    async def audit(self, model: str) -> list[dict[str, Any]]:
        self.control.registry.get_model(model)
        events = await self.control.audit_events(model, 50, None)
        return [{**e.to_json(), "at": e.at, "summary": summary(e)} for e in events]

    async def run(self, model: str, run_id: int) -> dict[str, Any] | None:
        self.control.registry.get_model(model)
        return await asyncio.to_thread(self.store.monitor_run, model, run_id)
