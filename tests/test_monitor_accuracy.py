"""Accuracy end to end: labels posted after the predictions give each version's accuracy, the gauges and
stored history follow, and a canary that loses accuracy against the stable is rolled back by its trigger.

Version 1 (stable) and version 2 (canary) are linear classifiers with different weights; the ground
truth is version 1's own answer, so the stable scores 100% and the canary what it agrees with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from tests.databases import Backend
from tests.helpers import ThreadedGateway, metric_value, settings_for
from tests.models import build_tabular

TOKEN = "accuracy-admin-token-0123456789"
FEATURES = 6
REQUESTS = 200


def write_repo(root: Path) -> Path:
    build_tabular(root / "tab" / "1" / "model.onnx", features=FEATURES, seed=0)
    build_tabular(root / "tab" / "2" / "model.onnx", features=FEATURES, seed=1)
    (root / "tab" / "config.yaml").write_text(
        """
version_policy: {all: true}
monitoring:
  task: classification
  drift: {schedule_s: 0}
  accuracy: {schedule_s: 0, window_s: 3600, min_labels: 20}
  triggers:
    - {name: canary-accuracy, figure: accuracy_delta, threshold: 0.1, windows: 1, roles: [canary]}
"""
    )
    return root


def test_labels_give_accuracy_and_a_worse_canary_is_rolled_back(tmp_path: Path, backend: Backend) -> None:
    repo = write_repo(tmp_path / "repo")
    truth_model = ort.InferenceSession(str(repo / "tab" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    overrides: dict[str, Any] = {"admin_tokens": f"ci:{TOKEN}"}
    if backend.name == "postgresql":
        overrides["database_url"] = backend.url_with_search_path()
    rng = np.random.default_rng(7)
    with (
        ThreadedGateway(settings_for(repo, tmp_path, **overrides), run_controller=False) as gw,
        httpx.Client(base_url=gw.http_url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30) as http,
    ):
        r = http.put("/admin/models/tab/traffic", json={"stable": "1", "canary": "2", "canary_weight": 50})
        assert r.status_code == 200, r.text
        labels: list[dict[str, Any]] = []
        served: dict[str, int] = {"1": 0, "2": 0}
        agree = 0
        for i in range(REQUESTS):
            row = rng.standard_normal((1, FEATURES)).astype(np.float32)
            body = {
                "id": f"req-{i}",
                "inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": row.ravel().tolist()}],
            }
            answer = http.post("/v2/models/tab/infer", json=body)
            assert answer.status_code == 200, answer.text
            doc = answer.json()
            truth = int(np.argmax(truth_model.run(None, {"input": row})[0], axis=1)[0])
            predicted = int(np.argmax(doc["outputs"][0]["data"]))
            served[doc["model_version"]] += 1
            if doc["model_version"] == "2":
                agree += predicted == truth
            labels.append({"id": doc["id"], "value": truth})
        assert min(served.values()) > 50
        # Before any label: no verdict.
        runs = http.post("/admin/models/tab/monitor/accuracy").json()["runs"]
        assert [r["status"] for r in runs] == ["no_data", "no_data"]

        # The truth arrives later, all at once.
        r = http.post("/v2/models/tab/feedback", json={"labels": labels})
        assert r.status_code == 200 and r.json()["stored"] == REQUESTS, r.text
        runs = http.post("/admin/models/tab/monitor/accuracy").json()["runs"]
        by_version = {r["version"]: r for r in runs}
        stable, canary = by_version["1"]["figures"], by_version["2"]["figures"]
        assert stable["accuracy"] == 1.0 and stable["labeled"] == served["1"]
        assert canary["accuracy"] == pytest.approx(agree / served["2"]) and canary["accuracy"] < 0.8
        assert canary["accuracy_delta"] == pytest.approx(1.0 - canary["accuracy"])
        assert stable["coverage"] == 1.0 and stable["lag_median_s"] >= 0

        # The canary's trigger fired: it no longer gets traffic, and the firing is audited and counted.
        policy = http.get("/admin/models/tab/traffic").json()
        assert policy["canary"] is None and policy["stable"] == "1"
        events = http.get("/admin/audit", params={"model": "tab"}).json()["events"]
        trigger = next(e for e in events if e["action"] == "monitor.trigger")
        assert trigger["after"]["action"] == "rollback" and trigger["after"]["version"] == "2"
        assert any(e["action"] == "policy.rollback" and e["actor"] == "monitor:canary-accuracy" for e in events)
        text = gw.metrics()
        assert metric_value(text, "sluice_accuracy", model="tab", version="1", metric="accuracy") == 1.0
        assert metric_value(text, "sluice_accuracy", model="tab", version="2", metric="f1") < 0.8
        assert metric_value(text, "sluice_label_coverage", model="tab", version="2") == 1.0
        assert metric_value(text, "sluice_trigger_firings_total", model="tab", version="2", action="rollback") == 1
        for _ in range(20):
            assert (
                http.post(
                    "/v2/models/tab/infer",
                    json={
                        "inputs": [
                            {"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.0] * FEATURES}
                        ]
                    },
                ).json()["model_version"]
                == "1"
            )
        history = http.get("/admin/models/tab/monitor/runs", params={"kind": "accuracy", "version": "2"}).json()
        assert [r["status"] for r in history["runs"]] == ["ok", "no_data"]
