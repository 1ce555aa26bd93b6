"""A runtime call that never returns: the watchdog cancels it, frees the slot and the thread, counts it,
marks the version not ready after N hangs in a row, and brings it back when a probe answers.

The hang is real: `tests.models.build_hang` is an ONNX model whose Loop runs 10^15 iterations when a
request holds a value above 999, and ONNX Runtime stops it only through `RunOptions.terminate`. The
gateway runs with two runtime threads, so if a hung call kept its thread, two hangs would starve every
model; a second model (`lookup`) is under load throughout and must be untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from runtimes.onnx import OnnxRuntime
from tests.faults import Load, lookup_body, report, row_body, stored_ids
from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until
from tests.models import build_hang, build_lookup

LIMIT_MS = 300
PROBE_S = 1.0
HANG_CONFIG = f"""\
batching: {{max_batch_size: 8, max_concurrent_batches: 1}}
timeout_ms: 20000
runtime: {{execution_providers: [cpu]}}
watchdog: {{call_timeout_ms: {LIMIT_MS}, unresponsive_after: 3, probe_interval_s: {PROBE_S}}}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    build_hang(root / "hang" / "1" / "model.onnx")
    (root / "hang" / "config.yaml").write_text(HANG_CONFIG)
    build_lookup(root / "lookup" / "1" / "model.onnx", rows=10)
    return root


@pytest.fixture
def gateway(repo: Path, tmp_path: Path) -> Iterator[GatewayProcess]:
    with gateway_process(repo, "--runtime-threads", "2", tmp=tmp_path) as gw:
        yield gw


def test_a_cancelled_call_really_stops_onnx_runtime(tmp_path: Path) -> None:
    """The runtime alone: cancelling `infer` sets the terminate flag and the thread comes back."""
    runtime = OnnxRuntime.load(build_hang(tmp_path / "hang.onnx"), providers=["cpu"])

    async def main() -> float:
        call = asyncio.ensure_future(runtime.infer({"x": np.full((1, 1), 5000.0, np.float32)}))
        await asyncio.sleep(0.2)
        assert not call.done(), "the hang model answered: it does not hang"
        started = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return time.monotonic() - started

    loop = asyncio.new_event_loop()
    try:
        stopped_in = loop.run_until_complete(main())
        # The thread is free: a normal call right after answers at once.
        fine = loop.run_until_complete(runtime.infer({"x": np.ones((2, 1), np.float32)}))
    finally:
        loop.close()
    assert stopped_in < 1.0, stopped_in
    np.testing.assert_array_equal(fine["y"], np.ones((2, 1), np.float32))


def hang_call(gw: GatewayProcess, value: float, rid: str) -> httpx.Response:
    body = row_body(value)(rid, 0)
    return httpx.post(f"{gw.http_url}/v2/models/hang/infer", json=body, timeout=30)


def test_hung_calls_are_cancelled_counted_and_mark_the_version_unready_until_it_answers_again(
    gateway: GatewayProcess,
) -> None:
    gw = gateway
    answers: list[tuple[str, int]] = []

    def call(value: float) -> httpx.Response:
        rid = f"hang-{len(answers)}"
        r = hang_call(gw, value, rid)
        answers.append((rid, r.status_code))
        return r

    with Load(f"{gw.http_url}/v2/models/lookup/infer", lookup_body, clients=2, prefix="other") as other:
        wait_until(lambda: len(other.snapshot()) >= 20, timeout=30, what="load on the other model")
        started = time.monotonic()
        # Hangs between good calls: each is cancelled at the limit, and the slot and the thread come back
        # (two runtime threads: five hangs that kept theirs would have starved both models).
        for _ in range(5):
            t0 = time.monotonic()
            r = call(5000.0)
            took = time.monotonic() - t0
            assert r.status_code == 504, r.text
            assert "watchdog" in r.json()["error"], r.text
            assert took < LIMIT_MS / 1000 + 2.0, took
            assert call(1.0).status_code == 200
        assert httpx.get(f"{gw.http_url}/v2/models/hang/versions/1/ready", timeout=5).status_code == 200

        # Three in a row: the version is marked not ready, and says why.
        for _ in range(3):
            assert call(5000.0).status_code == 504
        marked = time.monotonic()
        ready = httpx.get(f"{gw.http_url}/v2/models/hang/versions/1/ready", timeout=5)
        assert ready.status_code == 503
        refused = call(1.0)
        assert refused.status_code == 503 and "UNRESPONSIVE" in refused.json()["error"], refused.text
        text = gw.metrics()
        assert metric_value(text, "sluice_model_ready", model="hang", version="1") == 0
        assert metric_value(text, "sluice_runtime_hangs_total", model="hang", version="1") == 8

        # A probe (a row of zeros) answers: ready again on its own, and serving.
        wait_until(
            lambda: httpx.get(f"{gw.http_url}/v2/models/hang/versions/1/ready", timeout=5).status_code == 200,
            timeout=PROBE_S + 10,
            what="the version to recover",
        )
        recovered_s = time.monotonic() - marked
        assert call(2.0).status_code == 200
        assert metric_value(gw.metrics(), "sluice_model_ready", model="hang", version="1") == 1
        other_since = time.monotonic() - started

    # The other model was untouched: every request answered 200.
    statuses = other.statuses()
    assert set(statuses) == {200}, statuses

    # Every request that reached the version has its record (the 503s were refused before one was chosen).
    gw.terminate()
    engine = sa.create_engine(f"sqlite:///{gw.state_dir / 'sluice.db'}")
    try:
        stored = stored_ids(engine, "hang")
    finally:
        engine.dispose()
    reached = {rid: status for rid, status in answers if status != 503}
    assert set(stored) == set(reached), set(stored) ^ set(reached)
    assert all(stored[rid] == ("ok" if status == 200 else "timeout") for rid, status in reached.items())
    report(
        "runtime call hangs (ONNX Loop of 10^15 iterations), 8 of them",
        load=f"{other.rate():.0f} req/s on another model, 2 clients",
        requests_lost=0,
        records_lost=len(reached) - len(stored),
        recover_s=round(recovered_s, 2),
        other_model_p99_ms=round(other.p99_ms(), 1),
        other_model_requests=len(other.snapshot()),
        window_s=round(other_since, 1),
    )


def test_a_hung_remote_call_is_cancelled_and_its_slot_freed(tmp_path: Path) -> None:
    """A gateway fronting another over gRPC (runtime kind remote): the front's watchdog cancels the remote call
    (the back end's own watchdog is slower), and the front serves the next request at once."""
    back_repo = tmp_path / "back"
    build_hang(back_repo / "hang" / "1" / "model.onnx")
    back_config = (
        "batching: {max_batch_size: 8, max_concurrent_batches: 2}\nruntime: {execution_providers: [cpu]}\n"
        "watchdog: {call_timeout_ms: 3000, unresponsive_after: 100}\n"
    )
    (back_repo / "hang" / "config.yaml").write_text(back_config)
    (tmp_path / "back-logs").mkdir()
    (tmp_path / "front-logs").mkdir()
    with gateway_process(back_repo, tmp=tmp_path / "back-logs") as back:
        front_repo = tmp_path / "front"
        (front_repo / "hang").mkdir(parents=True)
        (front_repo / "hang" / "config.yaml").write_text(
            f"runtime: {{kind: remote, url: '{back.grpc_addr}', protocol: grpc, versions: [1]}}\n"
            f"watchdog: {{call_timeout_ms: {LIMIT_MS}, unresponsive_after: 100}}\n"
            "batching: {max_batch_size: 8, max_concurrent_batches: 1}\n"
        )
        with gateway_process(front_repo, tmp=tmp_path / "front-logs") as front:
            t0 = time.monotonic()
            hung = hang_call(front, 5000.0, "remote-hang")
            took = time.monotonic() - t0
            assert hung.status_code == 504 and "watchdog" in hung.json()["error"], hung.text
            assert took < 2.0, took  # the front's limit, not the back end's 3 s
            t0 = time.monotonic()
            assert hang_call(front, 1.0, "remote-fine").status_code == 200
            assert time.monotonic() - t0 < 1.5  # the front's only slot was free again
            text = front.metrics()
            assert metric_value(text, "sluice_runtime_hangs_total", model="hang", version="1") == 1
