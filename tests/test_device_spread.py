"""`runtime.instances` and `runtime.devices` of the device placement, with real processes on the CPU.

`sluice serve --workers 2` with real ONNX Runtime: a version with `devices: [0, 1]` on the CPU gets two CPU
runtime processes (`cpu` and `cpu:1`), each holding `instances: 2` sessions of it; every worker spreads its
batches over both. The hang model (`tests.models.build_hang`) shows the sessions really run at once: with two
instances a quick call is answered while a hung call holds the other session; with one it must wait.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from dashboards import build
from tests.faults import row_body
from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until
from tests.models import build_hang
from tests.test_dashboards import metric_names
from tests.test_device_placement import (
    Clients,
    answered_as_the_worker_placement,
    children,
    console_status,
    expected_answers,
    failed_only_in_flight,
    ready,
    write_mlp_pair,
)
from tests.test_workers import worker_urls

SPREAD_CONFIG = """\
runtime: {placement: device, execution_providers: [cpu], instances: 2, devices: [0, 1]}
batching: {max_batch_size: 64, max_queue_delay_ms: 4, greedy: false}
"""
HUNG_MS = 5000


def hang_config(instances: int) -> str:
    return f"""\
batching: {{max_batch_size: 8, max_concurrent_batches: 1}}
timeout_ms: 30000
runtime: {{placement: device, execution_providers: [cpu], instances: {instances}}}
watchdog: {{call_timeout_ms: {HUNG_MS}, unresponsive_after: 5, probe_interval_s: 1}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("spread")
    repo = write_mlp_pair(tmp / "models", SPREAD_CONFIG)
    for name, instances in (("hang1", 1), ("hang2", 2)):
        build_hang(repo / name / "1" / "model.onnx")
        (repo / name / "config.yaml").write_text(hang_config(instances))
    with gateway_process(repo, "--workers", "2", "--drain-timeout", "10", tmp=tmp) as gw:
        wait_until(lambda: len(worker_urls(gw)) == 2, timeout=30, what="both workers listening")
        yield gw


def parameters(url: str, model: str) -> dict[str, str]:
    doc = httpx.get(f"{url}/v2/models/{model}", timeout=10).json()
    params: dict[str, str] = doc["parameters"]
    return params


def host_pids(url: str, model: str = "mlp") -> list[int]:
    return [int(p) for p in parameters(url, model)["device_pids"].split(",")]


@pytest.mark.slow
def test_two_cpu_runtime_processes_hold_two_sessions_each_and_share_the_load(gateway: GatewayProcess) -> None:
    gw = gateway
    wait_until(lambda: ready(gw), timeout=90, what="mlp ready")
    workers = worker_urls(gw)
    # Every worker names the same two runtime processes: children of the supervisor, neither a worker.
    seen = {tuple(host_pids(url)) for url in workers.values()}
    assert len(seen) == 1, seen
    pids = list(seen.pop())
    assert len(set(pids)) == 2 and all(p in children(gw.proc.pid) and p not in workers for p in pids), pids
    params = parameters(gw.http_url, "mlp")
    assert params["placement"] == "device" and params["devices"] == "cpu,cpu:1", params
    assert params["instances"] == "2" and params["device"] == "cpu", params
    # Each loaded the version once, as two sessions; no worker loaded it.
    loaded = [line for line in gw.logs().splitlines() if "mlp/1@" in line and "loaded on" in line]
    assert len(loaded) == 2, loaded
    assert len([line for line in loaded if "loaded on cpu (CPUExecutionProvider, 2 instances)" in line]) == 1, loaded
    assert len([line for line in loaded if "loaded on cpu:1 (CPUExecutionProvider, 2 instances)" in line]) == 1
    text = gw.metrics()
    for device in ("cpu", "cpu:1"):
        assert metric_value(text, "sluice_device_instances", device=device, model="mlp", version="1") == 2
    # Every series the overview's device placement row reads is exported here (its live test has one process).
    panels = [p for make in build.DASHBOARDS for p in make().panels if p.needs_device]
    named = {n for p in panels for t in p.targets for n in metric_names(t.expr)}
    assert len(panels) == 3 and named
    assert all(f"\n{n}{{" in text for n in named), sorted(n for n in named if f"\n{n}{{" not in text)
    view = httpx.get(f"{gw.http_url}/admin/models/mlp", headers=gw.admin_headers, timeout=10).json()["versions"][0]
    assert view["devices"] == [{"device": "cpu", "pid": pids[0]}, {"device": "cpu:1", "pid": pids[1]}], view
    assert view["instances"] == 2 and view["placement"] == "device"
    status = console_status(gw, "mlp")
    assert f"cpu (runtime process {pids[0]}), cpu:1 (runtime process {pids[1]}), 2 instances each" in status
    # Triton's model configuration reports the instance count per device.
    config = httpx.get(f"{gw.http_url}/v2/models/mlp/config", timeout=10).json()
    assert config["instance_group"][0]["count"] == 2, config["instance_group"]

    # Bit for bit the worker placement's answers, alone and under load from both workers.
    expected = expected_answers(gw)
    before = gw.metrics()
    answered_as_the_worker_placement(gw, expected, 2000)
    after = gw.metrics()

    def rows(device: str) -> float:
        labels = {"device": device, "model": "mlp", "version": "1"}
        return metric_value(after, "sluice_device_batch_size_sum", 0.0, **labels) - metric_value(
            before, "sluice_device_batch_size_sum", 0.0, **labels
        )

    # Both runtime processes took a real share of the rows (least loaded first, ties in turn).
    total = rows("cpu") + rows("cpu:1")
    assert total >= 2000
    assert min(rows("cpu"), rows("cpu:1")) > total * 0.1, (rows("cpu"), rows("cpu:1"))


def answered_while_hung(gw: GatewayProcess, model: str) -> bool:
    """Send a call that hangs (until the watchdog stops it), wait until the runtime process runs it, then a
    quick call: whether the quick one was answered while the hung one still held its session, that is, well
    before the hung one's answer (when they wait for the same session, both answers come within moments of
    each other, in either order)."""
    url = f"{gw.http_url}/v2/models/{model}/infer"
    labels = {"device": "cpu", "model": model, "version": "1"}

    def post_hung() -> tuple[httpx.Response, float]:
        response = httpx.post(url, json=row_body(5000.0)("hung", 0), timeout=60)
        return response, time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        hung = pool.submit(post_hung)
        wait_until(
            lambda: metric_value(gw.metrics(), "sluice_device_batches_running", 0.0, **labels) >= 1,
            timeout=HUNG_MS / 1000 - 1.5,
            interval=0.1,
            what=f"{model}: the hung call running in the runtime process",
        )
        quick = httpx.post(url, json=row_body(1.0)("quick", 0), timeout=60)
        quick_at = time.monotonic()
        assert quick.status_code == 200, quick.text
        answer, hung_at = hung.result()
        assert answer.status_code == 504
    return hung_at - quick_at > HUNG_MS / 2000


@pytest.mark.slow
def test_two_instances_run_two_batches_at_once(gateway: GatewayProcess) -> None:
    gw = gateway
    wait_until(lambda: ready(gw, "hang1") and ready(gw, "hang2"), timeout=90, what="hang models ready")
    assert parameters(gw.http_url, "hang2")["instances"] == "2"
    # One instance: the quick call waits for the hung one's session (the watchdog frees it).
    assert not answered_while_hung(gw, "hang1")
    wait_until(lambda: ready(gw, "hang1"), timeout=30, what="hang1 ready again")
    # Two instances: the quick call runs on the other session while the first still hangs.
    started = time.monotonic()
    assert answered_while_hung(gw, "hang2")
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_a_killed_runtime_process_of_two_leaves_the_other_serving(gateway: GatewayProcess) -> None:
    gw = gateway
    wait_until(lambda: ready(gw), timeout=90, what="mlp ready")
    first, second = host_pids(gw.http_url)
    workers = set(worker_urls(gw))
    clients = 12
    with Clients(gw.http_url, n=clients) as load:
        wait_until(lambda: load.count() >= 300, timeout=60, what="load before the kill")
        os.kill(second, signal.SIGKILL)
        # The version stays ready on the other process, which answers while the killed one restarts (a
        # process start, ONNX Runtime's import and two sessions' load: seconds, where answers take milliseconds).
        # Only the batches in flight on the killed one fail: there may be none (on a busy box the other one
        # can hold all the load at that moment), so the test does not wait for a failure.
        at_kill = load.count()
        assert ready(gw)
        wait_until(lambda: host_pids(gw.http_url)[1] != second, timeout=120, interval=0.05, what="cpu:1 restarted")
        seen = load.count()
        assert seen - at_kill - len(load.failures()) >= 20, (at_kill, seen)
        wait_until(lambda: load.count() >= seen + 300, timeout=60, what="load after the restart")
    failed_only_in_flight(load, clients, some=False)  # none when nothing was in flight on the killed one
    pids = host_pids(gw.http_url)
    assert pids[0] == first and pids[1] != second and pids[1] in children(gw.proc.pid)
    assert set(worker_urls(gw)) == workers
    assert metric_value(gw.metrics(), "sluice_device_host_restarts", device="cpu:1") >= 1
    assert metric_value(gw.metrics(), "sluice_device_host_restarts", device="cpu") == 0
