"""Progressive rollouts end to end: a real gateway, real ONNX versions, a clock the test moves.

The controller's loop is off; the test advances the injected clock by one analysis interval
and calls `tick()`, so a whole rollout runs in seconds without sleeping through intervals.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.control.rollout_model import CheckSpec, Phase, RolloutSpec
from gateway.control.webhooks import verify_signature
from tests.databases import Backend
from tests.helpers import FakeClock, ThreadedGateway, metric_value, settings_for
from tests.models import build_lookup

INTERVAL = 60.0
SECRET = "rollout-test-secret"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    build_lookup(root / "lookup" / "1" / "model.onnx", rows=100)  # stable: every idx 0..99 works
    build_lookup(root / "lookup" / "2" / "model.onnx", rows=100)  # a good canary
    build_lookup(root / "lookup" / "3" / "model.onnx", rows=80)  # fails for idx >= 80 (a fifth of inputs)
    build_lookup(root / "lookup" / "4" / "model.onnx", rows=100, slow_matmuls=40)  # right answers, 25-35 ms each
    (root / "lookup" / "config.yaml").write_text("version_policy:\n  all: true\nbatching:\n  max_batch_size: 16\n")
    return root


class Receiver:
    """A real webhook receiver on 127.0.0.1 that records what it is sent."""

    def __init__(self) -> None:
        self.events: list[tuple[dict[str, Any], bytes, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.events.append((json.loads(body), body, self.headers.get("X-Sluice-Signature", "")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Harness:
    def __init__(self, gw: ThreadedGateway, clock: FakeClock) -> None:
        self.gw, self.clock = gw, clock
        self.control = gw.gateway.control
        self.http = httpx.Client(base_url=gw.http_url, timeout=30)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.gw.loop).result(60)

    def traffic(self, n: int, seed: int = 0, concurrency: int = 16) -> list[tuple[int, str, str]]:
        """n unpinned requests, `concurrency` at a time; returns (status, version served or '', error)."""
        rng = np.random.default_rng(seed)

        def one(idx: int) -> tuple[int, str, str]:
            body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [idx]}]}
            r = self.http.post("/v2/models/lookup/infer", json=body)
            doc = r.json()
            return r.status_code, doc.get("model_version", ""), doc.get("error", "")

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, (int(i) for i in rng.integers(0, 100, n))))

    def window(self, n: int, seed: int, concurrency: int = 16) -> list[tuple[int, str, str]]:
        """Send a window's traffic, move the clock one interval, let the controller analyse."""
        results = self.traffic(n, seed, concurrency)
        self.clock.now += INTERVAL
        self.run(self.control.tick())
        return results


@pytest.fixture
def harness(repo: Path, tmp_path: Path, receiver: Receiver) -> Iterator[Harness]:
    clock = FakeClock()
    settings = settings_for(
        repo, state_dir=tmp_path / "state", webhook_urls=[receiver.url], webhook_secret=SECRET, grpc_port=-1
    )
    with ThreadedGateway(settings, clock=clock, run_controller=False) as gw:
        h = Harness(gw, clock)
        yield h
        h.http.close()


def spec(canary: str, **overrides: Any) -> RolloutSpec:
    values: dict[str, Any] = {
        "canary": canary,
        "steps": (20.0, 50.0, 100.0),
        "interval_s": INTERVAL,
        "failure_threshold": 2,
        # Mechanics only: in-process gateways share pytest's heap, whose GC pauses make tiny-window p99s
        # noise. Latency is tested where it is the point (the slow canary, with its own checks).
        "checks": (CheckSpec("error_ratio", 1.5, min_requests=10),),
    }
    values.update(overrides)
    return RolloutSpec(**values)


def pin_stable(h: Harness) -> None:
    from gateway.serving.traffic import TrafficPolicy

    h.run(h.control.set_policy("test", "lookup", TrafficPolicy(stable="1")))


def test_a_good_canary_rolls_through_every_step_and_is_promoted(harness: Harness, receiver: Receiver) -> None:
    h = harness
    pin_stable(h)
    h.run(h.control.start_rollout("alice", "lookup", spec("2")))
    weights = []
    for i in range(3):
        results = h.window(300, seed=i)
        assert all(status == 200 for status, _, _ in results)
        state = h.control.rollout("lookup")
        weights.append(state.weight if state else None)
    assert weights == [50.0, 100.0, None]  # stepped twice, then promoted (no active rollout left)
    assert h.control.policy("lookup").stable == "2" and h.control.policy("lookup").canary is None
    assert {v for _, v, _ in h.traffic(50)} == {"2"}
    text = h.gw.metrics()
    assert metric_value(text, "sluice_promotions_total", model="lookup") == 1
    assert metric_value(text, "sluice_traffic_weight", model="lookup", version="2") == 100
    h.run(h.control.webhooks.aclose())  # type: ignore[union-attr]
    kinds = [doc["event"] for doc, _, _ in receiver.events]
    assert kinds[0] == "rollout.start" and "rollout.analysis" in kinds
    assert all(verify_signature(SECRET.encode(), body, sig) for _, body, sig in receiver.events)
    assert receiver.events[-1][0]["payload"]["rollout"]["phase"] == Phase.PROMOTED.value


def test_a_canary_failing_on_some_inputs_is_rolled_back_and_only_its_share_saw_errors(harness: Harness) -> None:
    h = harness
    pin_stable(h)
    h.run(h.control.start_rollout("alice", "lookup", spec("3")))
    seen: list[tuple[int, str, str]] = []
    for i in range(4):
        seen += h.window(300, seed=10 + i)
        if h.control.rollout("lookup") is None:
            break
    last = h.run(h.control.last_rollout("lookup"))
    assert last is not None and last.phase is Phase.ROLLED_BACK and "error_ratio" in last.reason
    assert last.failures == 2
    errors = [e for status, _, e in seen if status != 200]
    assert errors, "the canary's bad inputs must have failed"
    assert all("lookup/3" in e for e in errors), "errors come only from the canary"
    assert len(errors) < 0.2 * len(seen), "only the canary's share of traffic saw errors"
    after = h.traffic(200, seed=99)
    assert all(status == 200 and v == "1" for status, v, _ in after)
    assert metric_value(h.gw.metrics(), "sluice_rollbacks_total", model="lookup", reason="analysis") == 1
    events = h.run(h.control.audit_events("lookup", 50, None))
    assert events[0].actor == "rollout-controller" and events[0].after["rollout"]["phase"] == "rolled_back"
    assert any(e.actor == "alice" and e.action == "rollout.start" for e in events)


def test_a_slow_canary_is_rolled_back(harness: Harness) -> None:
    h = harness
    pin_stable(h)
    checks = (CheckSpec("error_ratio", 1.5, min_requests=10), CheckSpec("latency_p99_ratio", 1.5, 10))
    h.run(h.control.start_rollout("alice", "lookup", spec("4", steps=(50.0, 100.0), checks=checks)))
    for i in range(3):
        # One at a time: with requests in parallel on 2 cores, the stable's requests queue behind the
        # canary's compute and its p99 grows with the canary's, which hides the very difference tested.
        results = h.window(80, seed=20 + i, concurrency=1)
        assert all(status == 200 for status, _, _ in results)
        if h.control.rollout("lookup") is None:
            break
    last = h.run(h.control.last_rollout("lookup"))
    assert last is not None and last.phase is Phase.ROLLED_BACK and "latency_p99_ratio" in last.reason


def test_no_canary_traffic_is_no_data_never_a_pass(harness: Harness) -> None:
    h = harness
    pin_stable(h)
    h.run(h.control.start_rollout("alice", "lookup", spec("2", max_no_data_windows=2)))
    for _ in range(2):
        h.clock.now += INTERVAL
        h.run(h.control.tick())
    state = h.control.rollout("lookup")
    assert state is not None and state.step == 0 and state.failures == 1
    assert {r.verdict.value for r in state.last_results} == {"no_data"}


def test_a_restart_in_the_middle_of_a_rollout_resumes_it(repo: Path, tmp_path: Path, backend: Backend) -> None:
    """On SQLite (the state dir) and on PostgreSQL (a DSN shared by replicas) alike."""
    clock = FakeClock()
    extra: dict[str, Any] = {"state_dir": tmp_path / "state"}
    if backend.name == "postgresql":
        extra = {"database_url": backend.url_with_search_path()}
    settings = settings_for(repo, grpc_port=-1, **extra)
    with ThreadedGateway(settings, clock=clock, run_controller=False) as gw:
        h = Harness(gw, clock)
        pin_stable(h)
        h.run(h.control.start_rollout("alice", "lookup", spec("2")))
        h.window(200, seed=1)
        state = h.control.rollout("lookup")
        assert state is not None and state.step == 1
        h.http.close()
    with ThreadedGateway(settings, clock=clock, run_controller=False) as gw:
        h = Harness(gw, clock)
        state = h.control.rollout("lookup")
        assert state is not None and state.step == 1 and state.weight == 50.0
        served = [v for _, v, _ in h.traffic(400, seed=5)]
        assert abs(served.count("2") / len(served) - 0.5) < 0.1
        h.window(200, seed=6)
        state = h.control.rollout("lookup")
        assert state is not None and state.weight == 100.0
        h.http.close()


@pytest.mark.parametrize(("candidate", "phase_after_one_window"), [("2", None), ("3", Phase.ROLLED_BACK)])
def test_shadow_agreement_judges_the_canary_on_its_shadow_run_first(
    harness: Harness, candidate: str, phase_after_one_window: Phase | None
) -> None:
    """Version 3 fails on a fifth of inputs while shadowing (counted as disagreeing); version 2 agrees."""
    from gateway.serving.traffic import TrafficPolicy

    h = harness
    h.run(h.control.set_policy("test", "lookup", TrafficPolicy(stable="1", shadows=(candidate,))))
    shadowed = h.traffic(300, seed=40)
    assert all(status == 200 and v == "1" for status, v, _ in shadowed), "a shadow never changes a response"
    h.run(h.gw.gateway.shadows.wait_idle())
    h.run(h.control.set_policy("test", "lookup", TrafficPolicy(stable="1")))
    checks = (CheckSpec("shadow_agreement", 0.95, min_requests=50),)
    h.run(h.control.start_rollout("alice", "lookup", spec(candidate, checks=checks, failure_threshold=1)))
    h.clock.now += INTERVAL
    h.run(h.control.tick())
    state = h.control.rollout("lookup")
    if phase_after_one_window is None:
        assert state is not None and state.step == 1, state
        assert state.last_results[0].verdict.value == "pass"
    else:
        last = h.run(h.control.last_rollout("lookup"))
        assert last.phase is phase_after_one_window and "shadow_agreement" in last.reason
