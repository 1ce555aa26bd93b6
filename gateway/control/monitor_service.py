"""The monitor: scheduled and on-demand drift and accuracy runs, their gauges and history, and triggers.

Per model with a `monitoring` config, on its schedule (and when the admin API asks), for the stable
and the canary:

1. a job (`gateway.control.monitor_jobs`) runs in a worker process: it reads the version's window from the
   state database, runs Evidently or the accuracy computation and writes the HTML report. The
   serving process only waits on a future, so a drift job does not hold the GIL the event loop needs;
2. the run is stored (`monitor_runs`), its figures go to the Prometheus gauges and to the latest
   figures the rollout checks "drift" and "accuracy" read;
3. each trigger rule of the run's kind folds the figure into its state (`monitors.triggers`); a
   firing is audited and counted, and acts by the version's role: a canary is rolled back through
   the control plane, the stable's retraining hook is called (a signed webhook and/or a command).

Rule state (each rule's streak of breaching runs and when it last fired, per version) is kept in
the state database and read back at the first run after a start: a drift episode that spans a
restart still calls the retraining hook once, and a streak carries over. At start-up `restore` also
reads back each version's newest figures and gauges from the stored runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gateway.control import monitor_jobs
from gateway.control.plane import ControlPlane
from gateway.control.webhooks import WebhookSender
from gateway.errors import Conflict, InvalidInput, ModelNotFound
from gateway.observability.metrics import GatewayMetrics
from gateway.serving.model_config import MonitoringSection
from gateway.serving.router import newest_ready
from gateway.storage.store import Store
from gateway.tasks import cancel_and_wait, tick_forever
from monitors.drift import DriftOptions
from monitors.triggers import Rule, RuleState, figure_value, observe

log = logging.getLogger(__name__)

UTC = timezone.utc
ACTOR = "monitor"
KINDS = ("drift", "accuracy")
RETRAIN_EVENT = "monitor.retrain"


@dataclass(frozen=True)
class Latest:
    """A version's newest figures of one kind, and when (the control plane's clock) they were made."""

    clock_at: float
    rows: int
    figures: dict[str, Any]


class MonitorService:
    def __init__(
        self,
        control: ControlPlane,
        store: Store,
        metrics: GatewayMetrics,
        *,
        reports_dir: Path,
        webhook_secret: bytes | None,
        tick_s: float = 5.0,
        executor: Executor | None = None,
        webhook_factory: Callable[[list[str]], WebhookSender] | None = None,
    ) -> None:
        self.control = control
        self.store = store
        self.metrics = metrics
        self.reports_dir = reports_dir
        self.tick_s = tick_s
        self._secret = webhook_secret
        self._executor = executor
        self._owns_executor = executor is None
        self._webhook_factory = webhook_factory or (lambda urls: WebhookSender(urls, webhook_secret, metrics))
        self._senders: dict[str, WebhookSender] = {}
        self._latest: dict[tuple[str, str, str], Latest] = {}
        self._rules: dict[tuple[str, str, str], RuleState] | None = None
        """(model, version, rule) -> state; None until read from the store."""
        self._last_run: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._hooks: set[asyncio.Task[None]] = set()
        self._db_url = store.connect_url
        control.monitor_figures = self.window_figures

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, run_loop: bool = True) -> None:
        if run_loop and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                tick_forever(self.tick, self.tick_s, "monitor"), name="monitor-scheduler"
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        for task in list(self._hooks):
            task.cancel()
        for sender in self._senders.values():
            await sender.aclose()
        self._senders.clear()
        self._rules = None  # read anew when leading again: another leader may have moved them meanwhile
        if self._executor is not None and self._owns_executor:
            monitor_jobs.end_pool(self._executor)
            self._executor = None

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=monitor_jobs.pool_context(), initializer=monitor_jobs.worker_init
            )
        return self._executor

    async def tick(self) -> None:
        """Start every run whose schedule is due (a run already going for a model and kind is not doubled)."""
        now = self.control.clock()
        for name, served in list(self.control.registry.models.items()):
            monitoring = served.config.monitoring
            for kind, every in (("drift", monitoring.drift.schedule_s), ("accuracy", monitoring.accuracy.schedule_s)):
                if every <= 0 or self._lock(name, kind).locked():
                    continue
                # The first run is one period after start-up: a fresh gateway has no window to judge yet.
                if now - self._last_run.setdefault((name, kind), now) >= every:
                    self._last_run[(name, kind)] = now
                    await self.run(name, kind, actor="schedule")

    # -- runs -------------------------------------------------------------------------------

    def _lock(self, model: str, kind: str) -> asyncio.Lock:
        return self._locks.setdefault((model, kind), asyncio.Lock())

    def roles(self, model: str) -> dict[str, str]:
        """version -> "stable" / "canary" for the versions the monitor watches."""
        served = self.control.registry.models[model]
        policy = self.control.policy(model)
        rollout = self.control.rollout(model)
        stable = policy.stable or getattr(newest_ready(served), "version", None)
        canary = policy.canary or (rollout.spec.canary if rollout is not None and not rollout.phase.finished else None)
        roles: dict[str, str] = {}
        if stable is not None:
            roles[stable] = "stable"
        if canary is not None and canary != stable:
            roles[canary] = "canary"
        return roles

    async def run(
        self, model: str, kind: str, *, version: str | None = None, actor: str = ACTOR
    ) -> list[dict[str, Any]]:
        """Run `kind` for one version, or for the stable and the canary; the stored runs."""
        if kind not in KINDS:
            raise InvalidInput(f"unknown monitor kind '{kind}'; expected one of {', '.join(KINDS)}")
        served = self.control.registry.models.get(model)
        if served is None:
            raise ModelNotFound(f"unknown model '{model}'")
        roles = self.roles(model)
        if version is not None:
            if version not in served.versions:
                raise ModelNotFound(f"model '{model}' has no version '{version}'")
            targets = [version]
        else:
            targets = list(roles)
        if not targets:
            raise Conflict(f"model '{model}' has no ready version to monitor")
        runs = []
        async with self._lock(model, kind):
            for v in targets:
                runs.append(await self._run_one(model, v, kind, served.config.monitoring, roles, actor))
        return runs

    def _job(self, model: str, version: str, kind: str, monitoring: MonitoringSection, roles: dict[str, str]) -> Any:
        now = datetime.now(UTC)
        if kind == "accuracy":
            a = monitoring.accuracy
            return monitor_jobs.AccuracyJob(
                self._db_url, model, version, now, a.window_s, a.min_labels, monitoring.task
            ), monitor_jobs.run_accuracy
        d = monitoring.drift
        reference_file = None
        if d.reference is not None:
            reference_file = str(self.control.registry.repo / model / d.reference)
        stable = next((v for v, role in roles.items() if role == "stable"), None)
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        report = self.reports_dir / model / f"{model}-{version}-{stamp}.html"
        job = monitor_jobs.DriftJob(
            db_url=self._db_url,
            model=model,
            version=version,
            now=now,
            window_rows=d.window_rows,
            window_s=d.window_s,
            min_rows=d.min_rows,
            reference_version=stable,
            reference_rows=d.reference_rows,
            reference_file=reference_file,
            options=DriftOptions(
                drift_share=d.drift_share,
                num_method=d.num_method,
                cat_method=d.cat_method,
                threshold=d.threshold,
                feature_names=tuple(monitoring.feature_names),
            ),
            report_path=str(report),
        )
        return job, monitor_jobs.run_drift

    async def _run_one(
        self, model: str, version: str, kind: str, monitoring: MonitoringSection, roles: dict[str, str], actor: str
    ) -> dict[str, Any]:
        job, fn = self._job(model, version, kind, monitoring, roles)
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            outcome = await loop.run_in_executor(self._pool(), fn, job)
        except Exception as exc:
            log.error("%s run for %s version %s failed: %s", kind, model, version, exc)
            outcome = {"status": "error", "rows": 0, "figures": {}, "detail": {"reason": str(exc)}, "report": None}
        self.metrics.monitor_run_duration.labels(model, kind).observe(time.perf_counter() - started)
        self.metrics.monitor_runs.labels(model, version, kind, outcome["status"]).inc()
        role = roles.get(version)
        figures = dict(outcome["figures"])
        if kind == "accuracy" and "accuracy" in figures:
            stable = next((v for v, r in roles.items() if r == "stable"), None)
            base = self._latest.get((model, stable, "accuracy")) if stable is not None else None
            if version == stable:
                figures["accuracy_delta"] = 0.0
            elif base is not None and "accuracy" in base.figures:
                figures["accuracy_delta"] = base.figures["accuracy"] - figures["accuracy"]
        clock_at = self.control.clock()
        run = {
            "model": model,
            "version": version,
            "kind": kind,
            "status": outcome["status"],
            "actor": actor,
            "rows": int(outcome["rows"]),
            "figures": figures,
            # clock_at: the control plane's clock, which rollouts are timed by; `restore` reads it back.
            "detail": {**outcome["detail"], "role": role, "clock_at": clock_at},
            "report": outcome["report"],
        }
        run["id"] = await asyncio.to_thread(self.store.save_monitor_run, run)
        if outcome["status"] == monitor_jobs.OK:
            self._latest[(model, version, kind)] = Latest(clock_at, run["rows"], figures)
            self._export(model, version, kind, run)
            await self._fire_triggers(model, version, kind, role, monitoring, run)
        if kind == "drift":
            await asyncio.to_thread(self._prune_reports, model, monitoring.drift.keep_reports)
        return run

    async def restore(self, models: list[str]) -> int:
        """Read back each version's newest stored figures of each kind, with their gauges.

        After a restart the rollout checks "drift" and "accuracy" then judge by what the last runs
        found (when they were made since the rollout began), and a canary's accuracy delta has the
        stable's accuracy, instead of both waiting for the next scheduled run. A run made while this
        one was reading back is newer, and is kept. Returns how many figures were read back.
        """
        try:
            newest = await asyncio.to_thread(self._newest_runs, models)
        except Exception as exc:  # the next runs fill them in
            log.error("monitor: stored figures not read back: %s", exc)
            return 0
        restored = 0
        for (model, version, kind), run in newest.items():
            if (model, version, kind) in self._latest:
                continue
            self._latest[(model, version, kind)] = Latest(run["detail"]["clock_at"], run["rows"], run["figures"])
            self._export(model, version, kind, run)
            restored += 1
        return restored

    def _newest_runs(self, models: list[str], per_kind: int = 50) -> dict[tuple[str, str, str], dict[str, Any]]:
        newest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for model in models:
            for kind in KINDS:
                for run in self.store.monitor_runs(model, kind=kind, limit=per_kind):  # newest first
                    if run["status"] == monitor_jobs.OK and "clock_at" in run["detail"]:
                        newest.setdefault((model, run["version"], kind), run)
        return newest

    def _export(self, model: str, version: str, kind: str, run: dict[str, Any]) -> None:
        m, f = self.metrics, run["figures"]
        if kind == "drift":
            m.drift_share.labels(model, version).set(f["drift_share"])
            m.dataset_drift.labels(model, version).set(1.0 if f["dataset_drift"] else 0.0)
            result = run["detail"]["result"]
            for column in result["columns"]:
                if column["score"] is not None:
                    m.feature_drift_score.labels(model, version, column["column"], column["method"]).set(
                        column["score"]
                    )
            for column in result["predictions"]:
                if column["score"] is not None:
                    name = column["column"].removeprefix("pred:")
                    m.prediction_drift_score.labels(model, version, name, column["method"]).set(column["score"])
            return
        for metric in ("accuracy", "precision", "recall", "f1", "mae", "rmse"):
            if f.get(metric) is not None:
                m.accuracy.labels(model, version, metric).set(f[metric])
        if f.get("coverage") is not None:
            m.label_coverage.labels(model, version).set(f["coverage"])
        if f.get("lag_median_s") is not None:
            m.label_lag.labels(model, version).set(f["lag_median_s"])

    def _prune_reports(self, model: str, keep: int) -> None:
        folder = self.reports_dir / model
        if not folder.is_dir():
            return
        files = sorted(folder.glob("*.html"), key=lambda p: p.stat().st_mtime)
        for path in files[: max(0, len(files) - keep)]:
            with contextlib.suppress(OSError):
                path.unlink()

    def report_file(self, model: str, run_id: int) -> Path | None:
        """The HTML report of a stored drift run, when it is still on disk."""
        run = self.store.monitor_run(model, run_id)
        if run is None or not run.get("report"):
            return None
        path = self.reports_dir / model / str(run["report"])
        return path if path.is_file() else None

    # -- the control plane's view ---------------------------------------------------------------

    def window_figures(self, model: str, version: str, since_clock: float) -> dict[str, Any]:
        """The VersionWindow fields the "drift" and "accuracy" rollout checks read: the newest figures
        made at or after `since_clock` (the rollout's start)."""
        out: dict[str, Any] = {}
        drift = self._latest.get((model, version, "drift"))
        if drift is not None and drift.clock_at >= since_clock:
            out["drift_share"] = drift.figures.get("drift_share")
            out["drift_rows"] = drift.rows
        acc = self._latest.get((model, version, "accuracy"))
        if acc is not None and acc.clock_at >= since_clock:
            out["accuracy"] = acc.figures.get("accuracy")
            out["mae"] = acc.figures.get("mae")
            out["labeled"] = int(acc.figures.get("labeled", 0))
        return out

    # -- triggers -----------------------------------------------------------------------------

    async def _fire_triggers(
        self, model: str, version: str, kind: str, role: str | None, monitoring: MonitoringSection, run: dict[str, Any]
    ) -> None:
        if role is None:
            return
        for section in monitoring.triggers:
            rule = Rule(
                section.name,
                section.figure,
                section.threshold,
                section.direction,
                section.windows,
                section.cooldown_s,
                tuple(section.roles),
            )
            if rule.kind != kind or role not in rule.on:
                continue
            key = (model, version, rule.name)
            states = await self._rule_states()
            before = states.get(key, RuleState())
            seen = observe(rule, before, figure_value(rule.figure, run["figures"]), self.control.clock())
            states[key] = seen.state
            if seen.state != before:
                # Before acting: a crash between the two then errs on the side of not calling a hook twice.
                try:
                    await asyncio.to_thread(self.store.save_trigger_state, model, version, rule.name, seen.state)
                except Exception as exc:  # the rule still acts; its state is then only in memory
                    log.error("trigger %s: state for %s version %s not stored: %s", rule.name, model, version, exc)
            if seen.fired:
                await self._act(model, version, role, rule, seen.reason, run, monitoring)

    async def _rule_states(self) -> dict[tuple[str, str, str], RuleState]:
        if self._rules is None:
            stored = await asyncio.to_thread(self.store.trigger_states)
            if self._rules is None:  # another run may have read them meanwhile
                self._rules = stored
        return self._rules

    async def _act(
        self,
        model: str,
        version: str,
        role: str,
        rule: Rule,
        reason: str,
        run: dict[str, Any],
        monitoring: MonitoringSection,
    ) -> None:
        action = "rollback" if role == "canary" else "retrain"
        event = {
            "model": model,
            "version": version,
            "role": role,
            "rule": rule.name,
            "figure": rule.figure,
            "value": figure_value(rule.figure, run["figures"]),
            "threshold": rule.threshold,
            "direction": rule.effective_direction,
            "reason": reason,
            "action": action,
            "run_id": run["id"],
            "window": run["detail"].get("window"),
            "figures": {k: v for k, v in run["figures"].items() if not k.startswith(("feature:", "prediction:"))},
            "report": f"/admin/models/{model}/monitor/runs/{run['id']}/report" if run.get("report") else None,
        }
        log.warning("monitor trigger %s fired for %s version %s (%s): %s", rule.name, model, version, role, reason)
        self.metrics.trigger_firings.labels(model, version, rule.name, action).inc()
        await asyncio.to_thread(self.store.audit, f"{ACTOR}:{rule.name}", "monitor.trigger", model, None, event)
        if action == "rollback":
            try:
                await self.control.rollback(f"{ACTOR}:{rule.name}", model)
            except Conflict as exc:  # the canary went away meanwhile (promoted, rolled back by hand)
                log.info("monitor trigger %s: nothing to roll back: %s", rule.name, exc)
            return
        retrain = monitoring.retrain
        if retrain.webhook_urls:
            sender = self._senders.get(model)
            if sender is None:
                sender = self._senders[model] = self._webhook_factory(list(retrain.webhook_urls))
            sender.deliver_in_background(RETRAIN_EVENT, event)
        if retrain.command:
            task = asyncio.get_running_loop().create_task(self._command(retrain.command, retrain.timeout_s, event))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _command(self, argv: list[str], timeout_s: float, event: dict[str, Any]) -> None:
        """Run the retraining command with the event as JSON in SLUICE_EVENT; bounded, never raises."""
        env = {**os.environ, "SLUICE_EVENT": json.dumps(event)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            log.error("retraining command %s cannot start: %s", argv[0], exc)
            return
        try:
            _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("retraining command %s killed after %.0f s", argv[0], timeout_s)
            return
        if proc.returncode:
            log.error(
                "retraining command %s exited %d: %s", argv[0], proc.returncode, err.decode(errors="replace")[-500:]
            )
