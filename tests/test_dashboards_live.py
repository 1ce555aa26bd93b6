"""Every panel and variable of every dashboard returns data from a real Prometheus scraping a real gateway.

One `sluice serve` process is driven through a bounded scenario: good traffic, bad requests (400, 404),
requests that time out (504), a burst a small queue sheds (429), a shadow, a canary that the rollout
controller rolls back, a drift run that fires a retraining webhook, labels and accuracy runs (classification
and regression). A real Prometheus scrapes it every second and evaluates dashboards/alerts.yml. Then every
template variable query and every panel target, with the variables substituted as Grafana does, goes through
the Prometheus HTTP API: each must parse and return at least one finite value over the scenario. GPU panels
need a GPU: without one they must parse and are counted apart. Every rule must evaluate without error.
With SLUICE_PREVIEWS_DIR set, the previews are written there (`make dashboards-previews`); otherwise they
are drawn into a temporary folder, so the renderer cannot rot.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from dashboards import build, previews
from dashboards.queries import label_values_call, substitute
from tests.helpers import GatewayProcess, HookReceiver, gateway_process, metric_value, wait_until
from tests.models import build_lookup, build_slow, build_tabular
from tests.prometheus import Prometheus, prometheus_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RATE_INTERVAL = "4s"  # what Grafana's $__rate_interval is for a 1 s scrape: four scrape intervals
FEATURES = 6
SECRET = "dashboards-live-secret"


def build_regressor(path: Path, features: int = 4) -> Path:
    """y = x . w for x FP32 [batch, features]: output FP32 [batch, 1]."""
    w = np.linspace(0.5, 2.0, features, dtype=np.float32).reshape(features, 1)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["y"])],
        "regressor",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    onnx.save(model, str(path))
    return path


def write_repo(root: Path, hook_url: str) -> Path:
    for version, rows in (("1", 100), ("2", 80), ("3", 100)):  # v2 fails for idx >= 80: a bad canary
        build_lookup(root / "lookup" / version / "model.onnx", rows=rows)
    (root / "lookup" / "config.yaml").write_text("version_policy:\n  all: true\nbatching:\n  max_batch_size: 16\n")
    build_slow(root / "slow" / "1" / "model.onnx")
    (root / "slow" / "config.yaml").write_text("batching:\n  max_batch_size: 1\n  queue_capacity: 2\n")
    build_tabular(root / "tab" / "1" / "model.onnx", features=FEATURES)
    (root / "tab" / "config.yaml").write_text(
        f"""
monitoring:
  task: classification
  drift: {{schedule_s: 0, window_rows: 200, min_rows: 100, reference_rows: 200, num_method: ks}}
  accuracy: {{schedule_s: 0, min_labels: 20}}
  triggers:
    - {{name: input-drift, figure: drift_share, threshold: 0.3, windows: 1, cooldown_s: 3600, roles: [stable]}}
  retrain:
    webhook_urls: [{hook_url}]
"""
    )
    build_regressor(root / "reg" / "1" / "model.onnx")
    (root / "reg" / "config.yaml").write_text(
        "monitoring:\n  task: regression\n  drift: {schedule_s: 0}\n  accuracy: {schedule_s: 0, min_labels: 20}\n"
    )
    return root


@dataclass
class Scenario:
    gw: GatewayProcess
    prom: Prometheus
    start: float
    end: float


def _post(http: httpx.Client, path: str, body: dict[str, Any], **kw: Any) -> httpx.Response:
    return http.post(path, json=body, **kw)


def lookup_traffic(http: httpx.Client, n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)

    def one(idx: int) -> int:
        body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [idx]}]}
        return http.post("/v2/models/lookup/infer", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, (int(i) for i in rng.integers(0, 100, n))))


def rows_traffic(http: httpx.Client, model: str, rows: np.ndarray, per_request: int = 10) -> list[str]:
    """Send `rows` in requests of `per_request` rows; returns the prediction ids."""
    ids = []
    for start in range(0, len(rows), per_request):
        chunk = rows[start : start + per_request]
        body = {
            "inputs": [
                {"name": "input", "shape": list(chunk.shape), "datatype": "FP32", "data": chunk.ravel().tolist()}
            ]
        }
        r = http.post(f"/v2/models/{model}/infer", json=body)
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    return ids


class Steady:
    """Paced background traffic to `lookup` (about 25 requests a second) while the scenario runs, so the
    previews show lines rather than dots; `make dashboards-previews` also holds a while between steps."""

    def __init__(self, url: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)

    def _run(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            i = 0
            while not self._stop.wait(0.04):
                body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [i % 100]}]}
                http.post("/v2/models/lookup/infer", json=body)
                i += 7

    def __enter__(self) -> Steady:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def hold() -> None:
    """Let time pass between steps when drawing previews (a longer picture); no wait in the test itself."""
    if os.environ.get("SLUICE_PREVIEWS_DIR"):
        time.sleep(20)


def drive(gw: GatewayProcess, hook: HookReceiver) -> None:
    """The bounded scenario: about 1,000 requests, one rollout, two drift runs, two accuracy runs."""
    admin = {"authorization": f"Bearer {gw.admin_token}"}
    with httpx.Client(base_url=gw.http_url, timeout=60) as http, Steady(gw.http_url):
        # Pin the stable (the newest version would be picked otherwise) and shadow v3 on every request.
        r = http.put("/admin/models/lookup/traffic", json={"stable": "1"}, headers=admin)
        assert r.status_code == 200, r.text
        r = http.post("/admin/models/lookup/shadow", json={"versions": ["3"], "sample_rate": 1.0}, headers=admin)
        assert r.status_code == 200, r.text
        assert set(lookup_traffic(http, 150, seed=1)) == {200}
        hold()

        # Callers' mistakes and deadlines: 400, 404, 504.
        bad = {"inputs": [{"name": "idx", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]}
        assert {http.post("/v2/models/lookup/infer", json=bad).status_code for _ in range(5)} == {400}
        assert http.post("/v2/models/nope/infer", json=bad).status_code == 404
        late = {
            "inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [3]}],
            "parameters": {"timeout": 1},
        }
        assert {http.post("/v2/models/lookup/versions/1/infer", json=late).status_code for _ in range(3)} == {504}

        # Load shedding: 16 at once into a queue of 2 in front of a slow model.
        x = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
        with ThreadPoolExecutor(16) as pool:
            shed = list(pool.map(lambda _: http.post("/v2/models/slow/infer", json=x).status_code, range(16)))
        assert 429 in shed and 200 in shed, shed
        hold()

        # A bad canary, rolled back by the controller after one failed one-second window.
        rollout = {
            "canary": "2",
            "steps": [50],
            "interval_s": 6.0 if os.environ.get("SLUICE_PREVIEWS_DIR") else 1.0,  # a canary the picture can show
            "failure_threshold": 1,
            "checks": [{"name": "error_ratio", "threshold": 1.5, "min_requests": 10}],
        }
        r = http.post("/admin/models/lookup/rollout", json=rollout, headers=admin)
        assert r.status_code == 201, r.text
        deadline, seed = time.monotonic() + 60, 10
        while http.get("/admin/models/lookup/rollout", headers=admin).json()["phase"] != "rolled_back":
            assert time.monotonic() < deadline, "the bad canary was not rolled back within 60 s"
            lookup_traffic(http, 60, seed=seed)
            seed += 1
        assert set(lookup_traffic(http, 60, seed=99)) == {200}
        hold()

        # Drift: a reference window, then a shifted one that fires the retraining hook.
        rng = np.random.default_rng(7)
        tab_ids = rows_traffic(http, "tab", rng.standard_normal((200, FEATURES)).astype(np.float32))
        shifted = rng.standard_normal((200, FEATURES)).astype(np.float32)
        shifted[:, :3] += 1.5
        tab_ids += rows_traffic(http, "tab", shifted)
        reg_rows = rng.standard_normal((300, 4)).astype(np.float32)
        reg_ids = rows_traffic(http, "reg", reg_rows)
        wait_until(
            lambda: (
                metric_value(gw.metrics(), "sluice_prediction_log_records_total", outcome="written")
                >= len(tab_ids) + len(reg_ids) + 300
            ),
            timeout=30,
            what="prediction records written",
        )
        r = http.post("/admin/models/tab/monitor/drift", json={"version": "1"}, headers=admin, timeout=120)
        assert r.status_code == 200 and r.json()["runs"][0]["status"] == "ok", r.text
        wait_until(lambda: len(hook.hits) >= 1, timeout=30, what="the retraining webhook")

        # Labels for the classifier and the regressor, then accuracy runs.
        # A request of ten rows takes a label of ten values.
        labels = [{"id": pid, "value": [(i + j) % 3 for j in range(10)]} for i, pid in enumerate(tab_ids)]
        assert http.post("/v2/models/tab/feedback", json={"labels": labels}).status_code == 200
        truth = (reg_rows @ np.linspace(0.5, 2.0, 4)).reshape(-1, 10) + 0.1
        reg_labels = [{"id": pid, "value": t.tolist()} for pid, t in zip(reg_ids, truth, strict=True)]
        assert http.post("/v2/models/reg/feedback", json={"labels": reg_labels}).status_code == 200
        for model in ("tab", "reg"):
            r = http.post(f"/admin/models/{model}/monitor/accuracy", json={"version": "1"}, headers=admin, timeout=120)
            assert r.status_code == 200 and r.json()["runs"][0]["status"] == "ok", r.text


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("dashboards-live")
    with HookReceiver() as hook:
        repo = write_repo(tmp / "models", hook.url)
        env = {"SLUICE_ROLLOUT_TICK_S": "0.2", "SLUICE_WEBHOOK_SECRET": SECRET}
        with (
            gateway_process(repo, "--webhook-url", hook.url, "--grpc-port", "0", tmp=tmp, env=env) as gw,
            prometheus_server(tmp, [gw.http_addr], rule_files=(ROOT / "dashboards" / "alerts.yml",)) as prom,
        ):
            wait_until(lambda: prom.query('up{job="sluice"} == 1'), timeout=30, what="the first scrape")
            start = time.time() - 2
            drive(gw, hook)
            done = time.time()
            # Three more scrapes, so every rate over the last events has samples on both sides.
            wait_until(
                lambda: float(prom.query('timestamp(up{job="sluice"})')[0]["value"][1]) >= done + 3,
                timeout=30,
                what="scrapes after the scenario",
            )
            yield Scenario(gw, prom, start, time.time())


def _finite(result: list[dict[str, Any]]) -> bool:
    for series in result:
        values = series.get("values") or [series["value"]]
        if any(math.isfinite(float(v)) for _, v in values):
            return True
    return False


def test_every_panel_and_variable_returns_data(scenario: Scenario) -> None:
    prom, start, end = scenario.prom, scenario.start, scenario.end
    gpu_present = bool(prom.query("sluice_gpu_memory_total_bytes"))
    proven, gpu_parsed, device_parsed, failures = 0, 0, 0, []
    for make in build.DASHBOARDS:
        d = make()
        for v in d.variables:
            label, match = label_values_call(v.query)
            values = prom.label_values(label, substitute(match, d, RATE_INTERVAL), start, end)
            if not [x for x in values if x]:
                failures.append(f"{d.uid} variable ${v.name}: {v.query} has no values")
            proven += 1
        for panel in d.panels:
            for target in panel.targets:
                expr = substitute(target.expr, d, RATE_INTERVAL)
                try:
                    result = prom.query(expr, at=end) if target.instant else prom.query_range(expr, start, end, 1.0)
                except AssertionError as exc:
                    failures.append(f"{d.uid} / {panel.title}: does not parse or run: {exc}")
                    continue
                if panel.needs_gpu and not gpu_present:
                    gpu_parsed += 1
                    continue
                if panel.needs_device:  # one process here: a runtime process's figures are scraped with --workers
                    device_parsed += 1
                    continue
                if not _finite(result):
                    failures.append(f"{d.uid} / {panel.title}: no data for {expr}")
                proven += 1
    print(
        f"\n{proven} variable and panel queries returned data; {gpu_parsed} GPU queries parsed (no GPU here), "
        f"{device_parsed} device placement queries parsed (checked in tests/test_device_spread.py)"
    )
    assert not failures, "\n".join(failures)
    assert gpu_present or gpu_parsed == 4  # the GPU row's four NVML targets; its placement table has data
    assert device_parsed == 4


def test_every_rule_evaluates_on_real_data(scenario: Scenario) -> None:
    groups = scenario.prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 36
    bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not bad, bad
    # The SLO ratios are computed from the scenario's traffic: the bad canary burned budget.
    ratio = scenario.prom.query('sluice:availability_errors:ratio_rate5m{model="lookup"}')
    assert ratio and float(ratio[0]["value"][1]) > 0


def test_previews_render_from_the_same_queries(scenario: Scenario, tmp_path: Path) -> None:
    out = Path(os.environ.get("SLUICE_PREVIEWS_DIR") or tmp_path)
    paths = previews.render(scenario.prom, scenario.start, scenario.end, out, rate_interval=RATE_INTERVAL)
    assert [p.name for p in paths] == ["sluice-overview.png", "sluice-rollouts.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000
