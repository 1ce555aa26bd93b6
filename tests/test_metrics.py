"""Every metric named in gateway.observability.metrics is exported, labelled by model and version."""

from __future__ import annotations

import os

import httpx
import pytest

from gateway.observability.metrics import METRIC_NAMES
from tests.helpers import GatewayProcess, metric_value, wait_until

ROW = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}]}


def test_every_defined_metric_is_exported(demo_gateway: GatewayProcess) -> None:
    assert httpx.post(f"{demo_gateway.http_url}/v2/models/mlp/infer", json=ROW).status_code == 200
    text = demo_gateway.metrics()
    # Families are declared (# TYPE) even before their first labelled sample exists.
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    for name in METRIC_NAMES:
        assert name in declared or name.removesuffix("_total") in declared, f"{name} missing from /metrics"


def test_version_metrics_carry_model_version_and_provider(demo_gateway: GatewayProcess) -> None:
    url = demo_gateway.http_url
    before = _ok(demo_gateway, "2")
    assert httpx.post(f"{url}/v2/models/mlp/infer", json=ROW).status_code == 200
    assert httpx.post(f"{url}/v2/models/mlp/versions/1/infer", json=ROW).status_code == 200
    assert _ok(demo_gateway, "2") == before + 1
    text = demo_gateway.metrics()
    for version in ("1", "2"):
        assert metric_value(text, "sluice_model_ready", model="mlp", version=version) == 1
        assert (
            metric_value(
                text, "sluice_execution_provider", model="mlp", version=version, provider="CPUExecutionProvider"
            )
            == 1
        )
    assert metric_value(text, "sluice_request_duration_seconds_count", model="mlp", protocol="http") >= 2
    assert metric_value(text, "sluice_queue_wait_seconds_count", model="mlp", version="1") >= 1
    assert metric_value(text, "sluice_compute_duration_seconds_count", model="mlp", version="1") >= 1
    assert metric_value(text, "sluice_inflight_requests", model="mlp", version="1") == 0


def test_failed_requests_count_by_outcome(demo_gateway: GatewayProcess) -> None:
    url = demo_gateway.http_url
    bad = {"inputs": [{"name": "input", "shape": [1, 31], "datatype": "FP32", "data": [0.0] * 31}]}
    before = _count(demo_gateway, "invalid")
    assert httpx.post(f"{url}/v2/models/mlp/versions/1/infer", json=bad).status_code == 400
    assert _count(demo_gateway, "invalid") == before + 1


def _ok(gw: GatewayProcess, version: str) -> float:
    return metric_value(gw.metrics(), "sluice_requests_total", 0.0, model="mlp", version=version, outcome="ok")


def _count(gw: GatewayProcess, outcome: str) -> float:
    return metric_value(gw.metrics(), "sluice_requests_total", 0.0, model="mlp", version="1", outcome=outcome)


def test_unknown_models_count_under_one_bounded_series(demo_gateway: GatewayProcess) -> None:
    url = demo_gateway.http_url
    for name in ("nope-1", "nope-2", "nope-3"):
        assert httpx.post(f"{url}/v2/models/{name}/infer", json=ROW).status_code == 404
    text = demo_gateway.metrics()
    assert metric_value(text, "sluice_requests_total", model="", outcome="not_found") >= 3
    assert "nope-1" not in text


def test_the_process_group_collector_sums_the_tree_and_its_cpu_time_never_goes_back() -> None:
    """With workers, `process_*` describe the supervisor and everything below it: a child's memory counts,
    and its CPU time stays counted after it exits (it moves into the parent's cutime when reaped)."""
    import subprocess
    import sys

    from gateway.observability.process_group import ProcessGroupCollector

    def figures() -> dict[str, float]:
        return {m.name: m.samples[0].value for m in ProcessGroupCollector(os.getpid()).collect()}

    before = figures()
    child = subprocess.Popen(
        [sys.executable, "-c", "x = bytearray(64_000_000); sum(range(5_000_000)); import time; time.sleep(30)"]
    )
    try:
        wait_until(lambda: figures()["process_resident_memory_bytes"] > before["process_resident_memory_bytes"] + 50e6)
        busy = figures()["process_cpu_seconds"]
    finally:
        child.kill()
        child.wait()
    after = figures()
    assert after["process_cpu_seconds"] >= busy > before["process_cpu_seconds"]
    assert after["process_resident_memory_bytes"] < before["process_resident_memory_bytes"] + 50e6
    assert after["process_open_fds"] > 0 and after["process_start_time_seconds"] > 0


def test_cpu_seconds_do_not_go_back_by_a_rounding_when_a_child_is_reaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child's ticks move into its parent's cutime when it is reaped: the same ticks, summed another way. Dividing
    per process and adding the quotients rounded differently (CI saw 240.05 then 240.04999999999998), and a
    Prometheus counter that goes back by 1e-14 is a counter reset to `rate()`. The ticks are added as integers."""
    from gateway.observability import process_group

    def stat(utime: int, cutime: int = 0) -> list[str]:
        fields = ["S"] + ["0"] * 40  # from the state on: 11 utime, 12 stime, 13 cutime, 14 cstime, 19 start
        fields[11], fields[13] = str(utime), str(cutime)
        return fields

    alive = {1: stat(20002), 2: stat(37), 3: stat(100)}  # the gateway, a worker, a log writer
    reaped = {1: stat(20002, cutime=37), 3: stat(100)}  # the worker died: its 37 ticks are the gateway's cutime
    tree: dict[int, list[str]] = alive
    monkeypatch.setattr(process_group, "descendants", lambda root: list(tree))
    monkeypatch.setattr(process_group, "_stat", lambda pid: tree.get(pid))
    collector = process_group.ProcessGroupCollector(1)
    monkeypatch.setattr(collector, "_ticks", 100)

    def cpu() -> float:
        return next(m.samples[0].value for m in collector.collect() if m.name == "process_cpu_seconds")

    before = cpu()
    tree = reaped
    assert cpu() >= before == 201.39


def test_fast_instruments_export_exactly_what_prometheus_clients_own_would() -> None:
    """The request path counts in plain ints and lists; after a sync, the exposition must equal what
    prometheus_client's own observe/inc would have produced (this pins the private attributes used)."""
    import random

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from gateway.observability.metrics import FastCounter, FastHistogram

    bounds = (0.001, 0.01, 0.1, 1.0)
    own, fast = CollectorRegistry(), CollectorRegistry()
    reference_h = Histogram("lat", "l", buckets=bounds, registry=own)
    reference_c = Counter("hits", "h", registry=own)
    hist = FastHistogram(Histogram("lat", "l", buckets=bounds, registry=fast), bounds)
    count = FastCounter(Counter("hits", "h", registry=fast))
    rng = random.Random(3)
    for round_ in range(3):
        for _ in range(500):
            value = rng.choice([0.0005, 0.001, 0.0011, 0.05, 0.1, 2.0, rng.random()])
            reference_h.observe(value)
            hist.observe(value)
            reference_c.inc()
            count.inc()
        hist.sync()
        count.sync()
        hist.sync()  # idempotent

        def samples(registry: CollectorRegistry) -> list[str]:
            return [
                line
                for line in generate_latest(registry).decode().splitlines()
                if not line.startswith("#") and "_created" not in line
            ]

        assert samples(fast) == samples(own), f"round {round_}"


def test_a_batchs_histograms_cost_no_prometheus_client_call_and_are_exported_at_the_scrape() -> None:
    """Three histograms a runtime call: with workers prometheus_client's multiprocess values cost 2.6 µs an
    observation, so they are counted in plain lists (`FastHistogram`) and handed over before a scrape (one
    process) or once a second (workers), as the per-request ones are."""
    from gateway.observability.metrics import GatewayMetrics

    m = GatewayMetrics()
    version = m.version("m", "1")
    version.batch_done(5, 3, 0.004, True, (1, 2, 3))
    version.batch_done(64, 1, 0.02, True, (1, 2, 3))
    version.batch_done(2, 2, 0.001, False)
    assert m.batch_size.labels("m", "1")._sum.get() == 0  # nothing on prometheus_client's values yet
    text = m.exposition().decode()
    labels = {"model": "m", "version": "1"}
    assert metric_value(text, "sluice_batch_size_sum", **labels) == 71
    assert metric_value(text, "sluice_batch_size_count", **labels) == 3
    assert metric_value(text, "sluice_batch_size_bucket", le="4.0", **labels) == 1
    assert metric_value(text, "sluice_batch_size_bucket", le="8.0", **labels) == 2
    assert metric_value(text, "sluice_batch_requests_sum", **labels) == 6
    assert metric_value(text, "sluice_compute_duration_seconds_sum", **labels) == pytest.approx(0.025)
    assert metric_value(text, "sluice_batch_failures_total", **labels) == 1
    again = m.exposition().decode()  # a second scrape adds nothing twice
    assert [line for line in again.splitlines() if line.startswith("sluice_batch")] == [
        line for line in text.splitlines() if line.startswith("sluice_batch")
    ]
