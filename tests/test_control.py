"""ControlPlane guarantees that the admin API relies on, against a real in-process gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.control import ControlPlane
from gateway.demo import build_reference_mlp
from gateway.errors import ModelNotFound, ModelNotReady
from gateway.traffic import TrafficPolicy
from tests.helpers import ThreadedGateway, settings_for


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
