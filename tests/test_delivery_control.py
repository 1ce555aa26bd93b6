"""The delivery controller in an in-process gateway driven by an injected clock (no sleeping): what a newer
version does to a delivery under way, a shadow nobody calls, and a policy whose rollout cannot start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.control.delivery_engine import DeliveryPhase
from tests.helpers import FakeClock, ThreadedGateway, settings_for, wait_until
from tests.models import build_tabular

ROW = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75]
POLICY = """
version_policy: {all: true}
delivery:
  on_new_version: rollout
  shadow: {sample_rate: 1.0, min_requests: 30, min_agreement: 0.9, timeout_s: 600}
  rollout: {steps: [50, 100], interval_s: 10, checks: [CHECK], min_requests: 5}
"""


class Harness:
    def __init__(self, gw: ThreadedGateway, clock: FakeClock, repo: Path) -> None:
        self.gw, self.clock, self.repo = gw, clock, repo
        self.control = gw.gateway.control
        self.delivery = gw.gateway.delivery
        self.http = httpx.Client(base_url=gw.http_url, timeout=30)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.gw.loop).result(60)

    def add_version(self, version: str, scale: float = 1.0) -> dict[str, Any]:
        build_tabular(self.repo / "tab" / version / "model.onnx", seed=3, scale=scale)
        report: dict[str, Any] = self.run(self.gw.gateway.repository_sync.run("test")).to_json()
        return report

    def traffic(self, n: int) -> set[str]:
        body = {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": ROW}]}

        def one(_: int) -> str:
            r = self.http.post("/v2/models/tab/infer", json=body)
            assert r.status_code == 200, r.text
            return str(r.json()["model_version"])

        with ThreadPoolExecutor(8) as pool:
            return set(pool.map(one, range(n)))

    def tick(self, advance_s: float = 0.0) -> None:
        self.clock.now += advance_s
        self.run(self.delivery.tick())
        self.run(self.control.tick())

    def tick_until(self, condition: Callable[[], bool], what: str) -> None:
        """Tick with the clock standing still until `condition` holds: a shadow's copies run after the answers
        they copy, so the last comparisons may land a moment after the traffic returned."""

        def ticked() -> bool:
            self.tick()
            return condition()

        wait_until(ticked, timeout=30, interval=0.1, what=what)

    def phase(self) -> DeliveryPhase | None:
        state = self.delivery.delivery("tab")
        return None if state is None else state.phase

    def history(self) -> list[tuple[str, str]]:
        return [(d.version, d.phase.value) for d in self.run(self.delivery.history("tab"))]


@contextlib.contextmanager
def harness_for(tmp_path: Path, check: str) -> Iterator[Harness]:
    repo = tmp_path / "models"
    build_tabular(repo / "tab" / "1" / "model.onnx", seed=3)
    (repo / "tab" / "config.yaml").write_text(POLICY.replace("CHECK", check))
    clock = FakeClock()
    settings = settings_for(repo, tmp_path, grpc_port=-1)
    with ThreadedGateway(settings, clock=clock, run_controller=False) as gw:
        h = Harness(gw, clock, repo)
        yield h
        h.http.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with harness_for(tmp_path, "error_ratio") as h:
        yield h


def test_a_newer_version_replaces_one_in_shadow_and_waits_behind_a_rollout(harness: Harness) -> None:
    h = harness
    assert h.add_version("2")["delivered"] == {"tab/2": "delivery started"}
    assert h.control.policy("tab").stable == "1" and h.control.policy("tab").shadows == ("2",)
    assert h.traffic(10) == {"1"}  # pinned: version 2 is the newest, and still answers nobody
    assert h.add_version("3")["delivered"] == {"tab/3": "delivery started"}
    assert h.control.policy("tab").shadows == ("3",)  # 2 left the shadows: superseded
    assert h.history() == [("3", "shadow"), ("2", "superseded")]

    assert h.traffic(40) == {"1"}
    h.tick_until(lambda: h.phase() is DeliveryPhase.ROLLOUT, "the gate")  # 40 comparisons, all agreeing
    assert h.phase() is DeliveryPhase.ROLLOUT and h.control.rollout("tab") is not None
    assert h.control.policy("tab").shadows == () and h.control.policy("tab").canary == "3"
    assert h.add_version("4")["delivered"] == {"tab/4": "waits for the rollout of version 3"}
    state = h.delivery.delivery("tab")
    assert state is not None and (state.version, state.pending) == ("3", "4")

    for _ in range(3):  # the rollout controller's windows (on the injected clock): 50%, 100%, promoted
        h.traffic(30)
        h.tick(10.0)
    h.tick()  # the delivery sees the rollout promoted, then delivers the version that waited
    assert h.control.policy("tab").stable == "3"
    assert h.history()[:2] == [("4", "shadow"), ("3", "promoted")]
    assert h.control.policy("tab").shadows == ("4",)


def test_a_shadow_nobody_calls_is_rejected_when_its_time_is_up(harness: Harness) -> None:
    h = harness
    h.run(h.control.update_policy("ops", "tab", lambda p: replace(p, shadow_sample_rate=0.25)))
    h.add_version("2")
    assert h.control.policy("tab").shadow_sample_rate == 1.0  # the delivery's own, while it shadows
    h.tick(599.0)
    assert h.phase() is DeliveryPhase.SHADOW
    h.tick(1.0)
    assert h.phase() is None and h.history() == [("2", "rejected")]
    reason = h.run(h.delivery.history("tab"))[0].reason
    assert "0 comparisons in 600 s" in reason
    assert h.control.policy("tab").shadows == () and h.control.rollout("tab") is None
    assert h.control.policy("tab").shadow_sample_rate == 0.25  # the model's own rate, given back
    assert h.traffic(10) == {"1"}


def test_a_rollout_that_cannot_start_rejects_the_version_with_the_reason(tmp_path: Path) -> None:
    with harness_for(tmp_path, "no_such_check") as h:
        h.add_version("2")
        h.traffic(40)
        h.tick_until(lambda: h.phase() is None, "the gate")
        assert h.history() == [("2", "rejected")]
        reason = h.run(h.delivery.history("tab"))[0].reason
        assert "its rollout cannot start" in reason and "no_such_check" in reason
        assert h.traffic(10) == {"1"}


def test_a_rollout_that_ends_without_promotion_rolls_the_delivery_back(harness: Harness) -> None:
    h = harness
    h.add_version("2")
    h.traffic(40)
    h.tick_until(lambda: h.phase() is DeliveryPhase.ROLLOUT, "the gate")
    h.run(h.control.abort_rollout("alice", "tab"))  # or the controller's checks roll it back: the same end
    h.tick()
    assert h.history() == [("2", "rolled_back")]
    reason = h.run(h.delivery.history("tab"))[0].reason
    assert reason == "rollout aborted: aborted by alice"
    assert h.control.policy("tab").stable == "1" and h.traffic(10) == {"1"}
