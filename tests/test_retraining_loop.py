"""The whole loop, one test, nothing done by hand after the start: a model with drift and accuracy monitoring and a
delivery policy serves traffic whose inputs shift; the drift trigger calls the retraining hook; a trainer in the test
receives the signed webhook, fits a better model on the shifted data with numpy, exports it as ONNX and writes it
into the repository as the next version; the gateway's poll finds it, the delivery policy shadows it, rolls it out
with the accuracy gate fed by labels that arrive as traffic goes on, and promotes it. Then a worse version arrives
(a retrain gone wrong: the old weights again): the accuracy gate rolls it back, and the better one keeps serving.

The world the test plays: before the shift the truth is `argmax(x @ w_old)`, which version 1 is; after features 0-2
shift by +1.5 the truth is `argmax(x @ w_new)`, which version 1 gets right about a third of the time.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.control.webhooks import verify_signature
from tests.helpers import GatewayProcess, HookReceiver, gateway_process, wait_until
from tests.models import build_linear

pytestmark = pytest.mark.slow

FEATURES, CLASSES = 6, 3
SECRET = "loop-webhook-secret"
_world = np.random.default_rng(11)
W_OLD = _world.standard_normal((FEATURES, CLASSES))
W_NEW = _world.standard_normal((FEATURES, CLASSES))


def config(retrain_url: str) -> str:
    return f"""
monitoring:
  task: classification
  feature_names: [f0, f1, f2, f3, f4, f5]
  # Every second, 200 rows against 200: at KS's default p < 0.05 two of six columns of one unchanged world cross
  # it in about one window in forty (2.4% of 3,000 simulated), and the stable version 2, judged against its own
  # first rows, called the hook again now and then (CI, stop 30). The shift here gives p-values below 1e-20, so a
  # strict per-column threshold loses nothing of the real drift.
  drift: {{schedule_s: 1, window_rows: 200, min_rows: 100, reference_rows: 200, num_method: ks, threshold: 0.0001}}
  accuracy: {{schedule_s: 1, window_s: 60, min_labels: 20}}
  triggers:
    - {{name: input-drift, figure: drift_share, threshold: 0.3, windows: 1, cooldown_s: 3600, roles: [stable]}}
  retrain:
    webhook_urls: [{retrain_url}]
delivery:
  on_new_version: rollout
  # A retrained model is meant to disagree with the old one where the world changed: the shadow gate only asks
  # that it answers (and agrees now and then); the accuracy gate of the rollout judges it on the labels.
  shadow: {{sample_rate: 1.0, min_requests: 50, min_agreement: 0.2, timeout_s: 120}}
  rollout:
    steps: [50, 100]
    interval_s: 3
    checks: [error_ratio, accuracy]
    thresholds: {{accuracy: 0.05}}
    min_requests: 20
    failure_threshold: 2
    max_no_data_windows: 20
"""


class World:
    """Traffic on the model, one row a request, its truth posted as labels as it goes (in batches, as an
    application that learns the outcome a moment later would)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shifted = threading.Event()
        self.stop = threading.Event()
        self.served: list[tuple[bool, str]] = []
        """(after the shift, version) per answer."""
        self.failures: list[str] = []
        self.rows = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> World:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        rng = np.random.default_rng(5)
        labels: list[dict[str, Any]] = []
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                shifted = self.shifted.is_set()
                row = rng.standard_normal(FEATURES)
                if shifted:
                    row[:3] += 1.5
                truth = int(np.argmax(row @ (W_NEW if shifted else W_OLD)))
                body = {"inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": row.tolist()}]}
                try:
                    answer = http.post("/v2/models/loop/infer", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if answer.status_code != 200:
                    self.failures.append(answer.text)
                    continue
                doc = answer.json()
                self.served.append((shifted, doc["model_version"]))
                self.rows += 1
                labels.append({"id": doc["id"], "value": truth})
                if len(labels) >= 25:
                    r = http.post("/v2/models/loop/feedback", json={"labels": labels})
                    if r.status_code != 200:
                        self.failures.append(r.text)
                    labels = []


def train_on_the_shifted_world(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """What the retraining job does: multinomial logistic regression by gradient descent, numpy only, on fresh
    data from the world as it is now (the shifted inputs, their truth)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4000, FEATURES))
    x[:, :3] += 1.5
    y = np.eye(CLASSES)[np.argmax(x @ W_NEW, axis=1)]
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros((FEATURES + 1, CLASSES))
    for _ in range(500):
        z = xb @ w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= 0.5 * xb.T @ (p - y) / len(x)
    return w[:-1], w[-1]


def publish(repo: Path, staging: Path, version: int, w: np.ndarray, b: np.ndarray) -> None:
    """Upload a version as a trainer's last step would: the folder made aside, then renamed into place at once (a
    poll never sees half of it)."""
    build_linear(staging / str(version) / "model.onnx", w, b)
    os.rename(staging / str(version), repo / "loop" / str(version))


def admin(gw: GatewayProcess, path: str) -> Any:
    r = httpx.get(f"{gw.http_url}/admin{path}", headers=gw.admin_headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def version_of(event: dict[str, Any]) -> str | None:
    """The version an audit event is about: a load's or an unload's, or a delivery step's."""
    after = event["after"] or {}
    return after.get("version") or (after.get("delivery") or {}).get("version")


def phase_of(gw: GatewayProcess, version: str) -> str | None:
    found = [d for d in admin(gw, "/models/loop/delivery")["history"] if d["version"] == version]
    return found[0]["phase"] if found else None


def test_drift_calls_the_retraining_hook_and_the_retrained_version_is_delivered_and_a_worse_one_rolled_back(
    tmp_path: Path,
) -> None:
    repo, staging = tmp_path / "models", tmp_path / "staging"
    build_linear(repo / "loop" / "1" / "model.onnx", W_OLD, np.zeros(CLASSES))
    env = {
        "SLUICE_WEBHOOK_SECRET": SECRET,
        "SLUICE_ROLLOUT_TICK_S": "0.2",
        "SLUICE_WINDOW_PUBLISH_S": "0.3",
    }
    with HookReceiver() as retrain, HookReceiver() as events:
        (repo / "loop" / "config.yaml").write_text(config(retrain.url))
        args = ("--repository-poll-s", "1", "--webhook-url", events.url)
        with gateway_process(repo, *args, tmp=tmp_path, env=env) as gw, World(gw.http_url) as world:
            wait_until(lambda: world.rows >= 400, timeout=60, what="the reference traffic")
            assert retrain.hits == []  # the world as version 1 knows it: no drift
            world.shifted.set()

            # The drift trigger calls the retraining hook; the trainer answers it.
            wait_until(lambda: len(retrain.hits) >= 1, timeout=90, what="the retraining webhook")
            headers, body = retrain.hits[0]
            assert verify_signature(SECRET.encode(), body, headers.get("x-sluice-signature"))
            event = json.loads(body)["payload"]
            assert (event["model"], event["version"], event["rule"], event["action"]) == (
                "loop",
                "1",
                "input-drift",
                "retrain",
            )
            publish(repo, staging, 2, *train_on_the_shifted_world(seed=21))

            # Found by the poll, shadowed, rolled out behind the accuracy gate, promoted.
            wait_until(lambda: phase_of(gw, "2") == "promoted", timeout=180, what="version 2 promoted")
            promoted = next(d for d in admin(gw, "/models/loop/delivery")["history"] if d["version"] == "2")
            assert promoted["stable"] == "1" and "rollout promoted" in promoted["reason"], promoted
            accuracy = {
                r["version"]: r["figures"]["accuracy"]
                for r in admin(gw, "/models/loop/monitor/runs?kind=accuracy&limit=50")["runs"]
                if r["status"] == "ok" and r["version"] in ("1", "2")
            }
            assert accuracy["2"] > 0.9 and accuracy["1"] < 0.6, accuracy

            # A retrain gone wrong: the old weights again, as version 3. The accuracy gate rolls it back.
            publish(repo, staging, 3, W_OLD, np.zeros(CLASSES))
            wait_until(lambda: phase_of(gw, "3") == "rolled_back", timeout=180, what="version 3 rolled back")
            rolled_back = next(d for d in admin(gw, "/models/loop/delivery")["history"] if d["version"] == "3")
            assert "accuracy" in rolled_back["reason"], rolled_back
            assert admin(gw, "/models/loop")["policy"]["stable"] == "2"
            wait_until(lambda: world.served[-1][1] == "2", timeout=30, what="version 2 serving alone")
            trail = list(reversed(admin(gw, "/audit?model=loop&limit=1000")["events"]))  # oldest first
            wait_until(
                lambda: sum(b"delivery.rolled_back" in b for _, b in events.hits) == 1, timeout=30, what="the hook"
            )
        assert not world.failures, world.failures[:5]

    # The audit trail tells the loop in order: the trigger, the sync's loads, each delivery's steps. (Version 1,
    # out of the version policy's selection once 2 is stable, is unloaded by a sync somewhere after the promotion.)
    relevant = [
        (e["actor"], e["action"], version_of(e))
        for e in trail
        if e["action"] == "monitor.trigger" or e["action"].startswith("delivery.") or e["actor"] == "repository-sync"
    ]
    unloaded = [i for i, (_, action, _) in enumerate(relevant) if action == "version.unload"]
    promoted = relevant.index(("delivery", "delivery.promoted", "2"))
    assert [relevant[i][2] for i in unloaded] == ["1"] and unloaded[0] > promoted, relevant
    steps = [(actor, action) for actor, action, _ in relevant if action != "version.unload"]
    assert steps == [
        ("monitor:input-drift", "monitor.trigger"),
        ("repository-sync", "version.load"),
        ("delivery", "delivery.shadow"),
        ("delivery", "delivery.rollout"),
        ("delivery", "delivery.promoted"),
        ("repository-sync", "version.load"),
        ("delivery", "delivery.shadow"),
        ("delivery", "delivery.rollout"),
        ("delivery", "delivery.rolled_back"),
    ], steps
    names = [json.loads(body)["event"] for _, body in events.hits]
    assert [n for n in names if n.startswith("delivery.")] == [
        "delivery.shadow",
        "delivery.rollout",
        "delivery.promoted",
        "delivery.shadow",
        "delivery.rollout",
        "delivery.rolled_back",
    ]
    assert all(verify_signature(SECRET.encode(), body, h.get("x-sluice-signature")) for h, body in events.hits)
    # Who answered the callers: version 1 before and after the shift, then 2; version 3 only as a canary.
    after = Counter(version for shifted, version in world.served if shifted)
    assert after["2"] > after["3"] > 0 and len(retrain.hits) == 1, after
