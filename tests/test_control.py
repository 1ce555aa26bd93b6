"""ControlPlane guarantees that the admin API relies on, against a real in-process gateway."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.cli.demo import build_reference_mlp
from gateway.control.plane import ControlPlane
from gateway.errors import ModelNotFound, ModelNotReady
from gateway.serving.traffic import TrafficPolicy
from tests.helpers import ThreadedGateway, metric_value, settings_for, wait_until
from tests.models import build_slow


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[ThreadedGateway]:
    repo = tmp_path / "models"
    build_reference_mlp(repo / "mlp" / "1" / "model.onnx", 1)
    build_reference_mlp(repo / "mlp" / "2" / "model.onnx", 2)
    (repo / "mlp" / "3").mkdir()
    (repo / "mlp" / "3" / "model.onnx").write_bytes(b"not an onnx file")
    (repo / "mlp" / "config.yaml").write_text("version_policy:\n  specific: [1, 2]\n")
    with ThreadedGateway(settings_for(repo, tmp=tmp_path, grpc_port=-1), run_controller=False) as g:
        yield g


def run(gw: ThreadedGateway, coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run_coroutine_threadsafe(coro, gw.loop).result(60)


def audit_count(gw: ThreadedGateway, control: ControlPlane) -> int:
    return len(run(gw, control.audit_events("mlp", 1000, None)))


def test_a_failed_load_is_an_error_and_records_nothing(gw: ThreadedGateway) -> None:
    control = gw.gateway.control
    before = audit_count(gw, control)
    with pytest.raises(ModelNotReady, match=r"mlp/3/model.onnx"):
        run(gw, control.load_version("alice", "mlp", "3"))
    assert audit_count(gw, control) == before
    assert not [r for r in control.store.versions("mlp") if r["version"] == "3"]


def test_loading_a_loaded_version_changes_and_audits_nothing(gw: ThreadedGateway) -> None:
    control = gw.gateway.control
    before = audit_count(gw, control)
    view = run(gw, control.load_version("alice", "mlp", "1"))
    assert view["state"] == "READY" and audit_count(gw, control) == before


def test_promote_and_rollback_on_an_unknown_model_are_not_found(gw: ThreadedGateway) -> None:
    control = gw.gateway.control
    with pytest.raises(ModelNotFound):
        run(gw, control.promote("alice", "nope"))
    with pytest.raises(ModelNotFound):
        run(gw, control.rollback("alice", "nope"))


def test_concurrent_policy_edits_lose_no_update(gw: ThreadedGateway) -> None:
    control = gw.gateway.control
    run(gw, control.set_policy("alice", "mlp", TrafficPolicy(stable="1", shadows=("2",), shadow_sample_rate=0.0)))

    async def twenty() -> None:
        def bump(p: TrafficPolicy) -> TrafficPolicy:
            return TrafficPolicy(**{**p.__dict__, "shadow_sample_rate": round(p.shadow_sample_rate + 0.05, 2)})

        await asyncio.gather(*(control.update_policy(f"user{i}", "mlp", bump) for i in range(20)))

    run(gw, twenty())
    assert control.policy("mlp").shadow_sample_rate == 1.0
    assert control.store.get_policy("mlp") == control.policy("mlp")


def test_a_store_failure_leaves_the_live_policy_unchanged(gw: ThreadedGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    control = gw.gateway.control
    run(gw, control.set_policy("alice", "mlp", TrafficPolicy(stable="1")))

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(control.store, "put_policy", broken)
    with pytest.raises(OSError, match="disk full"):
        run(gw, control.set_policy("alice", "mlp", TrafficPolicy(stable="1", canary="2", canary_weight=50)))
    assert control.policy("mlp") == TrafficPolicy(stable="1")


def test_unload_drains_in_flight_requests_before_freeing_the_runtime(tmp_path: Path) -> None:
    repo = tmp_path / "slowrepo"
    # ~0.35 s a call: all six requests are surely in flight before the first batch ends.
    build_slow(repo / "slow" / "1" / "model.onnx", matmuls=16, n=1024)
    build_slow(repo / "slow" / "2" / "model.onnx", matmuls=1, n=64)
    (repo / "slow" / "config.yaml").write_text("version_policy:\n  all: true\nbatching:\n  max_batch_size: 2\n")

    with ThreadedGateway(settings_for(repo, tmp=tmp_path, grpc_port=-1), run_controller=False) as gw:
        control = gw.gateway.control
        run(gw, control.set_policy("alice", "slow", TrafficPolicy(stable="2")))

        def pinned(value: float) -> tuple[int, list[float]]:
            body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [value]}]}
            r = httpx.post(f"{gw.http_url}/v2/models/slow/versions/1/infer", json=body, timeout=60)
            return r.status_code, (r.json()["outputs"][0]["data"] if r.status_code == 200 else [])

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(pinned, float(i)) for i in range(6)]
            wait_until(lambda: metric_value(gw.metrics(), "sluice_inflight_requests", model="slow", version="1") == 6)
            view = run(gw, control.unload_version("alice", "slow", "1"))
            assert view["state"] == "UNLOADED"
            assert [f.result(60) for f in futures] == [(200, [float(i)]) for i in range(6)]
        after = httpx.post(
            f"{gw.http_url}/v2/models/slow/versions/1/infer",
            json={"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]},
        )
        assert after.status_code == 503 and "UNLOADED" in after.json()["error"]


def test_a_load_is_not_undone_by_a_sync_that_read_the_desired_states_before_it(tmp_path: Path) -> None:
    """The replica's follower read the versions' desired states (version 2 unloaded) just before the leader loaded
    version 2 again; acting on what it read after the load, it unloaded the version the leader had just loaded
    (the admin API answered UNLOADED to a load). The leader's own change and a sync must not interleave."""
    repo = tmp_path / "models"
    build_reference_mlp(repo / "mlp" / "1" / "model.onnx", 1)
    build_reference_mlp(repo / "mlp" / "2" / "model.onnx", 2)
    (repo / "mlp" / "config.yaml").write_text("version_policy:\n  specific: [1, 2]\n")
    settings = settings_for(repo, tmp=tmp_path, grpc_port=-1, sync_interval_s=3600.0)  # syncs only when asked
    with ThreadedGateway(settings, run_controller=False) as gw:
        control, follower, store = gw.gateway.control, gw.gateway.follower, gw.gateway.control.store
        run(gw, control.set_policy("alice", "mlp", TrafficPolicy(stable="1")))
        run(gw, follower.sync())
        run(gw, control.unload_version("alice", "mlp", "2"))  # the follower has not synced since

        read, release = threading.Event(), threading.Event()
        real_versions = store.versions

        def versions(model: str | None = None) -> list[dict[str, Any]]:
            rows = real_versions(model)  # version 2: desired "unloaded"
            read.set()
            release.wait(30)
            return rows

        store.versions = versions  # type: ignore[method-assign]
        try:
            syncing = asyncio.run_coroutine_threadsafe(follower.sync(), gw.loop)
            assert read.wait(30)
            loading = asyncio.run_coroutine_threadsafe(control.load_version("alice", "mlp", "2"), gw.loop)
            futures.wait([loading], timeout=3)  # the old code loaded here, under the sync's feet
            release.set()
            syncing.result(60)
            view = loading.result(60)
        finally:
            store.versions = real_versions  # type: ignore[method-assign]
        assert view["state"] == "READY"
        assert gw.gateway.registry.get_version("mlp", "2").ready, "the sync undid the leader's load"
