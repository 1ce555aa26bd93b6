"""Drift end to end: a real gateway logs predictions, Evidently judges windows in the monitor's worker
process, gauges and stored runs follow, and a drift trigger calls a real retraining webhook once,
also across a restart, after which the newest figures and gauges are read back.

Runs on the real PostgreSQL (the worker process reads the window over its own connection); see the test's
docstring for why not on SQLite too. Traffic is seeded, so every window's rows, and therefore Evidently's
verdicts, are the same on every run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.control.webhooks import verify_signature
from tests.databases import Backend
from tests.helpers import HookReceiver, ThreadedGateway, metric_value, settings_for, wait_until
from tests.models import build_tabular

TOKEN = "drift-admin-token-0123456789"
SECRET = "drift-hook-secret"
FEATURES = 6
SHIFTED = (0, 1, 2)
ROWS_PER_REQUEST = 10
WINDOW = 300
runner = CliRunner()


def write_repo(root: Path, hook_url: str) -> Path:
    build_tabular(root / "tab" / "1" / "model.onnx", features=FEATURES)
    (root / "tab" / "config.yaml").write_text(
        f"""
monitoring:
  task: classification
  feature_names: [{", ".join(f"f{i}" for i in range(FEATURES))}]
  drift:
    schedule_s: 0
    window_rows: {WINDOW}
    min_rows: 100
    reference_rows: {WINDOW}
    num_method: ks
  accuracy:
    schedule_s: 0
  triggers:
    - name: input-drift
      figure: drift_share
      threshold: 0.3
      windows: 1
      cooldown_s: 3600
      roles: [stable]
  retrain:
    webhook_urls: [{hook_url}]
"""
    )
    return root


def send(http: httpx.Client, rows: np.ndarray) -> None:
    for start in range(0, len(rows), ROWS_PER_REQUEST):
        chunk = rows[start : start + ROWS_PER_REQUEST]
        body = {
            "inputs": [
                {"name": "input", "shape": list(chunk.shape), "datatype": "FP32", "data": chunk.ravel().tolist()}
            ]
        }
        r = http.post("/v2/models/tab/infer", json=body)
        assert r.status_code == 200, r.text


def run_drift(http: httpx.Client, gw: ThreadedGateway, expected_written: int) -> dict[str, Any]:
    # The log writes in batches every 0.5 s: wait until this window's records are stored.
    wait_until(
        lambda: (
            metric_value(gw.metrics(), "sluice_prediction_log_records_total", default=0.0, outcome="written")
            >= expected_written
        ),
        timeout=30,
        what="prediction records written",
    )
    r = http.post("/admin/models/tab/monitor/drift", json={"version": "1"}, timeout=120)
    assert r.status_code == 200, r.text
    (run,) = r.json()["runs"]
    assert run["status"] == "ok", run["detail"]
    return dict(run)


@pytest.fixture
def hook() -> Any:
    with HookReceiver() as receiver:
        yield receiver


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_drift_windows_gauges_and_a_retraining_hook_called_once(
    tmp_path: Path, backend: Backend, hook: HookReceiver
) -> None:
    """On PostgreSQL only: a SQLite run took a further 50 s of CI for the same storage calls, which are
    dialect-neutral SQLAlchemy Core (`gateway/storage/monitor_state.py`) and are covered on SQLite
    elsewhere: monitor runs stored and listed, and a monitor worker process reading the window over its own
    connection, by tests/test_monitor_accuracy.py (both engines); trigger states kept across a restart, by
    tests/test_store.py (both engines). PostgreSQL is the multi-process deployment, and CI=true fails when
    it is unreachable, so this scenario always runs in CI."""
    repo = write_repo(tmp_path / "repo", hook.url)
    overrides: dict[str, Any] = {"admin_tokens": f"ci:{TOKEN}", "webhook_secret": SECRET}
    if backend.name == "postgresql":
        overrides["database_url"] = backend.url_with_search_path()
    rng = np.random.default_rng(2024)
    reference = rng.standard_normal((WINDOW, FEATURES)).astype(np.float32)
    headers = {"authorization": f"Bearer {TOKEN}"}
    settings = settings_for(repo, tmp_path, **overrides)
    with (
        ThreadedGateway(settings, run_controller=False) as gw,
        httpx.Client(base_url=gw.http_url, headers=headers, timeout=30) as http,
    ):
        # Too early: the stable's first WINDOW rows are the reference, and there are none yet.
        r = http.post("/admin/models/tab/monitor/drift", json={"version": "1"}, timeout=120)
        assert r.status_code == 200 and r.json()["runs"][0]["status"] == "no_data", r.text
        assert "reference" in r.json()["runs"][0]["detail"]["reason"]

        send(http, reference)
        written = WINDOW // ROWS_PER_REQUEST
        # Reference traffic, three windows: no drift, no firing.
        for _ in range(3):
            send(http, rng.standard_normal((WINDOW, FEATURES)).astype(np.float32))
            written += WINDOW // ROWS_PER_REQUEST
            run = run_drift(http, gw, written)
            assert run["rows"] == WINDOW
            assert run["figures"]["dataset_drift"] is False
            assert run["figures"]["drift_share"] <= 0.3, run["figures"]
            assert run["detail"]["reference"]["version"] == "1"
        assert hook.hits == []
        text = gw.metrics()
        assert metric_value(text, "sluice_dataset_drift", model="tab", version="1") == 0.0
        assert metric_value(text, "sluice_trigger_firings_total", default=0.0, model="tab") == 0.0

        # Shift three of six features: detected within this one window, the hook fires once.
        shifted = rng.standard_normal((WINDOW, FEATURES)).astype(np.float32)
        shifted[:, SHIFTED] += 1.5
        send(http, shifted)
        written += WINDOW // ROWS_PER_REQUEST
        run = run_drift(http, gw, written)
        figures = run["figures"]
        assert figures["dataset_drift"] is True and figures["drift_share"] == pytest.approx(0.5)
        drifted = {c["column"] for c in run["detail"]["result"]["columns"] if c["drifted"]}
        assert drifted == {f"f{i}" for i in SHIFTED}
        assert all(figures[f"feature:f{i}"] < 0.05 for i in SHIFTED)  # K-S p-values
        wait_until(lambda: len(hook.hits) == 1, timeout=15, what="the retraining webhook")
        headers_in, body = hook.hits[0]
        assert verify_signature(SECRET.encode(), body, headers_in.get("x-sluice-signature"))
        assert headers_in["x-sluice-event"] == "monitor.retrain"
        event = json.loads(body)["payload"]
        assert event["model"] == "tab" and event["version"] == "1" and event["role"] == "stable"
        assert event["rule"] == "input-drift" and event["action"] == "retrain"
        assert event["value"] == pytest.approx(0.5) and event["threshold"] == 0.3
        assert event["window"]["requests"] == WINDOW // ROWS_PER_REQUEST
        assert event["report"] == f"/admin/models/tab/monitor/runs/{run['id']}/report"

        # The same episode, one window later: still drifting, but within the cooldown no second call.
        more = rng.standard_normal((WINDOW, FEATURES)).astype(np.float32)
        more[:, SHIFTED] += 1.5
        send(http, more)
        written += WINDOW // ROWS_PER_REQUEST
        assert run_drift(http, gw, written)["figures"]["dataset_drift"] is True
        time.sleep(1.0)
        assert len(hook.hits) == 1

        text = gw.metrics()
        assert metric_value(text, "sluice_drift_share", model="tab", version="1") == pytest.approx(0.5)
        assert metric_value(text, "sluice_dataset_drift", model="tab", version="1") == 1.0
        assert metric_value(text, "sluice_feature_drift_score", model="tab", version="1", feature="f0") < 0.05
        assert (
            metric_value(text, "sluice_trigger_firings_total", model="tab", rule="input-drift", action="retrain") == 1
        )
        assert metric_value(text, "sluice_monitor_runs_total", model="tab", kind="drift", status="ok") == 5

        # Stored history, the audit event, and Evidently's HTML report.
        runs = http.get("/admin/models/tab/monitor/runs", params={"kind": "drift"}).json()["runs"]
        assert [r["status"] for r in runs] == ["ok"] * 5 + ["no_data"]
        assert [r["figures"].get("dataset_drift") for r in runs[:5]] == [True, True, False, False, False]
        report = http.get(f"/admin/models/tab/monitor/runs/{run['id']}/report")
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        assert "root_metric_" in report.text and "f0" in report.text and len(report.content) > 10_000
        audit = http.get("/admin/audit", params={"model": "tab"}).json()["events"]
        firings = [e for e in audit if e["action"] == "monitor.trigger"]
        assert len(firings) == 1 and firings[0]["actor"] == "monitor:input-drift"

        # The CLI lists the runs and saves the report.
        listing = ["monitor", "runs", "tab", "--kind", "drift", "--url", gw.http_url, "--token", TOKEN]
        listed = runner.invoke(app, listing)
        assert listed.exit_code == 0, listed.output
        as_json = runner.invoke(app, [*listing, "--json"])
        assert [r["id"] for r in json.loads(as_json.output)["runs"]] == [r["id"] for r in runs]
        saved = tmp_path / "report.html"
        args = ["monitor", "report", "tab", str(run["id"]), "-o", str(saved), "--url", gw.http_url, "--token", TOKEN]
        assert runner.invoke(app, args).exit_code == 0
        assert saved.read_bytes() == report.content
        gone = runner.invoke(app, ["monitor", "report", "tab", "999999", "--url", gw.http_url, "--token", TOKEN])
        assert gone.exit_code == 1 and "999999" in gone.output

        # Errors name what is wrong.
        assert http.post("/admin/models/nope/monitor/drift").status_code == 404
        assert http.post("/admin/models/tab/monitor/entropy").status_code == 422
        missing = http.get("/admin/models/tab/monitor/runs/999999/report")
        assert missing.status_code == 404 and "999999" in missing.text
        assert httpx.post(f"{gw.http_url}/admin/models/tab/monitor/drift").status_code == 401

    # A restart within the cooldown, the same episode still drifting: the rule's state is in the
    # state database, so the hook is not called a second time.
    with (
        ThreadedGateway(settings, run_controller=False) as gw,
        httpx.Client(base_url=gw.http_url, headers=headers, timeout=30) as http,
    ):
        # Before any run: the newest stored figures are back, in the gauges and for the rollout checks.
        text = gw.metrics()
        assert metric_value(text, "sluice_drift_share", model="tab", version="1") == pytest.approx(0.5)
        assert metric_value(text, "sluice_dataset_drift", model="tab", version="1") == 1.0
        assert metric_value(text, "sluice_feature_drift_score", model="tab", version="1", feature="f0") < 0.05
        assert gw.gateway.monitor.window_figures("tab", "1", 0.0) == {"drift_share": 0.5, "drift_rows": WINDOW}
        more = rng.standard_normal((WINDOW, FEATURES)).astype(np.float32)
        more[:, SHIFTED] += 1.5
        send(http, more)
        assert run_drift(http, gw, WINDOW // ROWS_PER_REQUEST)["figures"]["dataset_drift"] is True
        # A firing is counted and audited before the run answers, and only a firing sends the hook.
        assert metric_value(gw.metrics(), "sluice_trigger_firings_total", default=0.0, model="tab") == 0.0
        audit = http.get("/admin/audit", params={"model": "tab"}).json()["events"]
        assert len([e for e in audit if e["action"] == "monitor.trigger"]) == 1
        assert len(hook.hits) == 1


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")
def test_the_monitor_worker_runs_only_on_otherwise_idle_cpu() -> None:
    """The worker's start-up puts every thread under SCHED_IDLE, those already running (as a BLAS pool
    started by an import) and those started later: a serving thread that wakes preempts it at once.
    And BLAS runs on one thread: a job does not fan out over the serving cores."""
    code = """
import os, threading
stop = threading.Event()
early = threading.Thread(target=stop.wait)
early.start()
from gateway.control.monitor_jobs import worker_init
worker_init()
late = threading.Thread(target=stop.wait)
late.start()
policies = [os.sched_getscheduler(int(tid)) for tid in os.listdir("/proc/self/task")]
stop.set()
from threadpoolctl import threadpool_info
blas = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
print(len(policies), all(p == os.SCHED_IDLE for p in policies), blas)
"""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    threads, all_idle, blas = done.stdout.strip().splitlines()[-1].split(maxsplit=2)
    assert int(threads) >= 3 and all_idle == "True"
    assert blas.startswith("[1") and set(blas.strip("[]").split(", ")) == {"1"}  # numpy's BLAS: one thread
