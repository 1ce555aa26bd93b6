"""New versions delivered by policy, in real gateway processes (`--workers 2`, a local repository, traffic
running): a version written into the repository is found by a sync, loaded on every worker, shadowed behind
the gate, rolled out by the rollout controller and promoted, with nothing done by hand; a worse one fails the
shadow gate and never answers a caller. Asserted on the audit trail, the signed webhooks and the versions
that answered."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli.demo import build_demo_repository
from gateway.cli.tour import Tour
from gateway.control.webhooks import verify_signature
from gateway.storage.store import Store
from tests.helpers import ROOT, GatewayProcess, HookReceiver, Load, Paced, gateway_process, wait_until
from tests.models import build_tabular
from tests.test_console import console_client

pytestmark = pytest.mark.slow

SECRET = "delivery-webhook-secret"
BODY = {
    "inputs": [
        {
            "name": "input",
            "shape": [2, 6],
            "datatype": "FP32",
            "data": [0.5, -1.0, 2.0, 0.25, 1.5, -0.75, -0.3, 0.8, -1.2, 0.9, 0.1, 0.4],
        }
    ]
}
POLICY = """
version_policy: {all: true}
delivery:
  on_new_version: rollout
  shadow: {sample_rate: 1.0, min_requests: 40, min_agreement: 0.95, timeout_s: 120}
  rollout: {steps: [50, 100], interval_s: 2, checks: [error_ratio, shadow_agreement], min_requests: 5}
"""
ENV = {
    "SLUICE_ROLLOUT_TICK_S": "0.2",
    "SLUICE_WEBHOOK_SECRET": SECRET,
    "SLUICE_LEADER_RENEW_S": "0.5",
    "SLUICE_WINDOW_PUBLISH_S": "0.3",
}


def admin(gw: GatewayProcess, method: str, path: str) -> Any:
    r = httpx.request(method, f"{gw.http_url}/admin{path}", headers=gw.admin_headers, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def served_by_fresh_connections(gw: GatewayProcess, n: int = 12) -> set[str]:
    """The versions that answer the model's default route, each call on a new connection (so the kernel
    spreads them over both workers)."""
    answers = [httpx.post(f"{gw.http_url}/v2/models/tab/infer", json=BODY, timeout=10) for _ in range(n)]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    return {r.json()["model_version"] for r in answers}


def delivery(gw: GatewayProcess) -> dict[str, Any]:
    return admin(gw, "GET", "/models/tab/delivery")


def phase_of(gw: GatewayProcess, version: str) -> str | None:
    doc = delivery(gw)
    found = [d for d in doc["history"] if d["version"] == version]
    return found[0]["phase"] if found else None


def test_without_a_policy_a_synced_version_serves_on_every_worker_without_a_restart(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build_tabular(repo / "tab" / "1" / "model.onnx", seed=3)
    with gateway_process(repo, "--workers", "2", "--repository-poll-s", "1", tmp=tmp_path, env=ENV) as gw:
        assert served_by_fresh_connections(gw) == {"1"}
        build_tabular(repo / "tab" / "2" / "model.onnx", seed=4)  # the poll finds it: no call, no restart
        wait_until(lambda: served_by_fresh_connections(gw) == {"2"}, timeout=60, what="every worker serving 2")
        events = admin(gw, "GET", "/audit?model=tab")["events"]
        assert ("repository-sync", "version.load") in {(e["actor"], e["action"]) for e in events}
        assert delivery(gw)["delivery"] is None  # the default policy (none): loaded only


def test_a_new_version_is_shadowed_rolled_out_and_promoted_and_a_worse_one_never_serves(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build_tabular(repo / "tab" / "1" / "model.onnx", seed=3)
    (repo / "tab" / "config.yaml").write_text(POLICY)
    with (
        HookReceiver() as hook,
        gateway_process(repo, "--workers", "2", "--webhook-url", hook.url, tmp=tmp_path, env=ENV) as gw,
        Load(gw.http_url, clients=3, model="tab", body=BODY) as load,
    ):
        wait_until(lambda: len(load.results) > 20, timeout=30, what="traffic")
        # version 2: a retrained model that agrees with version 1 (its weights scaled: the same top classes)
        build_tabular(repo / "tab" / "2" / "model.onnx", seed=3, scale=1.5)
        report = admin(gw, "POST", "/repository/sync")
        assert report["loaded"] == ["tab/2"] and report["delivered"] == {"tab/2": "delivery started"}, report
        assert delivery(gw)["delivery"]["phase"] in ("shadow", "rollout", "promoted")
        wait_until(lambda: phase_of(gw, "2") == "promoted", timeout=90, what="version 2 promoted")
        wait_until(lambda: served_by_fresh_connections(gw) == {"2"}, timeout=30, what="every worker serving 2")
        promoted = next(d for d in delivery(gw)["history"] if d["version"] == "2")
        assert promoted["compared"] >= 40 and promoted["agreement"] >= 0.95
        assert promoted["stable"] == "1" and "rollout promoted" in promoted["reason"]

        # version 3: worse (its top classes reversed): the shadow gate fails, and it never answers a caller
        build_tabular(repo / "tab" / "3" / "model.onnx", seed=3, scale=-1.0)
        report = admin(gw, "POST", "/repository/sync")
        assert report["delivered"] == {"tab/3": "delivery started"}, report
        wait_until(lambda: phase_of(gw, "3") == "rejected", timeout=60, what="version 3 rejected")
        rejected = next(d for d in delivery(gw)["history"] if d["version"] == "3")
        assert "shadow gate failed" in rejected["reason"] and rejected["agreement"] < 0.95
        assert served_by_fresh_connections(gw) == {"2"}
        assert admin(gw, "GET", "/models/tab")["policy"]["shadows"] == []  # the shadow ended with the gate
        shown = subprocess.run(
            [sys.executable, "-m", "gateway", "repo", "delivery", "tab", "--url", gw.http_url],
            cwd=ROOT,
            env={"SLUICE_ADMIN_TOKEN": gw.admin_token, "PATH": "/usr/bin:/bin", "COLUMNS": "250"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode == 0, shown.stderr
        assert "delivery policy rollout" in shown.stdout
        assert "rejected" in shown.stdout and "promoted" in shown.stdout and "shadow gate failed" in shown.stdout
        with console_client(gw) as http:  # the console's model page shows the delivery
            panel = http.get("/console/models/tab/panels/status", headers={"HX-Request": "true"}).text
        html = panel.split('id="delivery"', 1)[1].split("</p>", 1)[0]
        shown_delivery = " ".join(unescape(re.sub(r"<[^>]+>", "", html)).split())
        assert "Last delivery: v3 against v2, rejected" in shown_delivery, shown_delivery
        assert "shadow gate failed" in shown_delivery
        events = list(reversed(admin(gw, "GET", "/audit?model=tab&limit=1000")["events"]))  # oldest first
        wait_until(lambda: sum(b"delivery.rejected" in body for _, body in hook.hits) == 1, timeout=30, what="hook")
        load_results = list(load.results)

    served = [v for status, v, _ in load_results if status == 200]
    assert {"1", "2"} <= set(served) and "3" not in served  # 3 never answered a caller
    assert not [r for r in load_results if r[0] != 200]

    trail = [(e["actor"], e["action"], (e["after"] or {}).get("delivery", {}).get("version")) for e in events]
    delivery_steps = [(a, v) for actor, a, v in trail if actor == "delivery" and a.startswith("delivery.")]
    assert delivery_steps == [
        ("delivery.shadow", "2"),
        ("delivery.rollout", "2"),
        ("delivery.promoted", "2"),
        ("delivery.shadow", "3"),
        ("delivery.rejected", "3"),
    ]
    assert ("delivery", "rollout.start", None) in trail  # the rollout controller's own rollout, started by it
    rollout_starts = [e for e in events if e["action"] == "rollout.start"]
    assert [e["after"]["rollout"]["spec"]["canary"] for e in rollout_starts] == ["2"]  # never one for 3

    sent = [(json.loads(body), headers) for headers, body in hook.hits]
    assert all(verify_signature(SECRET.encode(), body, h.get("x-sluice-signature")) for h, body in hook.hits)
    names = [doc["event"] for doc, _ in sent]
    steps = [n for n in names if n.startswith("delivery.")]
    assert steps == ["delivery.shadow", "delivery.rollout", "delivery.promoted", "delivery.shadow", "delivery.rejected"]
    assert "rollout.start" in names and "rollout.analysis" in names


def test_a_delivery_goes_on_under_the_next_leader_when_the_leader_is_killed_mid_shadow(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build_tabular(repo / "tab" / "1" / "model.onnx", seed=3)
    (repo / "tab" / "config.yaml").write_text(POLICY.replace("min_requests: 40,", "min_requests: 300,"))
    env = {**ENV, "SLUICE_LEADER_LEASE_S": "3"}
    with (
        HookReceiver() as hook,
        gateway_process(repo, "--workers", "2", "--webhook-url", hook.url, tmp=tmp_path, env=env) as gw,
        # Paced, two connections (the kernel spreads them over the workers): the shadow's 300 comparisons take
        # five seconds, so the poll below sees it under way. Under a closed-loop load of ~2,000 req/s they took a
        # third of a second, between two of the windows' publications: the poll saw 0, then 630, and waited out.
        Paced(gw.http_url, "tab", BODY, 30.0),
        Paced(gw.http_url, "tab", BODY, 30.0),
    ):
        store = Store.for_state_dir(gw.state_dir)
        build_tabular(repo / "tab" / "2" / "model.onnx", seed=3, scale=1.5)
        assert admin(gw, "POST", "/repository/sync")["delivered"] == {"tab/2": "delivery started"}
        wait_until(lambda: 0 < delivery(gw)["delivery"]["compared"] < 300, timeout=60, what="the shadow under way")
        lease, _ = store.lease("control-plane")
        assert lease is not None
        os.kill(int(lease.holder.split(":")[1]), signal.SIGKILL)  # the leader, mid-shadow
        new_term = lambda: (store.lease("control-plane")[0] or lease).epoch > lease.epoch  # noqa: E731
        wait_until(new_term, timeout=30, what="a new leader")
        wait_until(lambda: phase_of(gw, "2") == "promoted", timeout=90, what="version 2 promoted by the next leader")
        wait_until(lambda: sum(b"delivery.promoted" in body for _, body in hook.hits) == 1, timeout=30, what="hook")
        events = list(reversed(admin(gw, "GET", "/audit?model=tab&limit=1000")["events"]))
    steps = [e["action"] for e in events if e["actor"] == "delivery" and e["action"].startswith("delivery.")]
    assert steps == ["delivery.shadow", "delivery.rollout", "delivery.promoted"]  # each once, across the handover
    assert [e["action"] for e in events].count("rollout.start") == 1


def test_the_demo_tours_last_act_delivers_a_retrained_version_by_churns_policy(tmp_path: Path) -> None:
    """The tour's delivery act on the demo repository, alone: version 4 written and synced, then shadowed,
    rolled out and promoted by churn's own delivery policy, with the tour's traffic running."""
    repo = build_demo_repository(tmp_path / "demo")
    with gateway_process(repo, tmp=tmp_path, env={"SLUICE_ROLLOUT_TICK_S": "0.5"}) as gw:
        said: list[str] = []
        tour = Tour(gw.http_url, gw.admin_token, said.append, repo=repo)
        stop = threading.Event()
        feeder = threading.Thread(target=tour.traffic.run, args=(stop, time.monotonic() + 120), daemon=True)
        with httpx.Client(base_url=gw.http_url, headers=gw.admin_headers, timeout=30) as client:
            tour._reset(client)  # version 1 stable, as the tour starts
            feeder.start()
            try:
                tour.delivery_act(client, stop, time.monotonic() + 120)
            finally:
                stop.set()
                feeder.join(15)
        assert said[-1] == "tour: the delivery of version 4 ended promoted", said
        assert admin(gw, "GET", "/models/churn")["policy"]["stable"] == "4"
