"""`runtime.placement: device`: one runtime process per device holds the session, every worker sends it batches.

Real processes throughout: `sluice serve --workers 2` with real ONNX Runtime on the CPU (the device placement
is asked for explicitly; `auto` would keep the CPU's versions in the workers). One gateway is shared by the
tests that do not disturb each other; the one that kills the runtime process runs on it last.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.cli.demo import build_reference_mlp
from gateway.serving.model_config import ConfigError, RuntimeSection, load_model_config
from gateway.serving.placement import Choice, count_visible, devices_needed, resolve, visible_gpus
from tests.faults import row_body
from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until
from tests.models import build_hang
from tests.test_runtime_watchdog import HANG_CONFIG
from tests.test_workers import worker_urls

CPU = ["CPUExecutionProvider"]
GPU = ["CUDAExecutionProvider", "CPUExecutionProvider"]


# -- the placement rule (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("placement", "providers", "available", "workers", "expected"),
    [
        ("auto", ["cuda", "cpu"], CPU, 16, Choice("worker", ("cpu",))),  # no GPU here: every worker its own
        ("auto", ["cuda", "cpu"], GPU, 1, Choice("worker", ("cuda:0",))),  # one worker: no hop to pay for
        ("auto", ["cuda", "cpu"], GPU, 2, Choice("device", ("cuda:0",))),
        ("auto", ["cpu", "cuda"], GPU, 2, Choice("worker", ("cpu",))),  # the CPU asked for first
        ("device", ["cpu"], CPU, 1, Choice("device", ("cpu",))),  # the CPU when asked
        ("device", ["cuda", "cpu"], CPU, 4, Choice("device", ("cpu",))),  # CUDA missing: ONNX Runtime runs the CPU
        ("worker", ["cuda", "cpu"], GPU, 16, Choice("worker", ("cuda:0",))),
        ("auto", ["tensorrt", "cuda"], ["TensorrtExecutionProvider"], 2, Choice("device", ("cuda:0",))),
    ],
)
def test_placement_resolves_per_machine_and_worker_count(
    placement: str, providers: list[str], available: list[str], workers: int, expected: Choice
) -> None:
    runtime = RuntimeSection(placement=placement, execution_providers=providers)  # type: ignore[arg-type]
    assert resolve(runtime, workers, available) == expected


def test_the_device_is_the_configured_ordinal_and_remote_versions_stay_in_the_workers() -> None:
    assert resolve(RuntimeSection(placement="device", devices=[1]), 2, GPU) == Choice("device", ("cuda:1",))
    remote = RuntimeSection(kind="remote", url="127.0.0.1:8001")
    assert resolve(remote, 8, GPU) == Choice("worker", ("remote",))
    sections = [
        RuntimeSection(placement="device", execution_providers=["cpu"]),
        RuntimeSection(),
        RuntimeSection(devices=[2]),
        RuntimeSection(placement="worker"),
    ]
    assert devices_needed(sections, 1, GPU) == ["cpu"]
    assert devices_needed(sections, 2, GPU) == ["cpu", "cuda:0", "cuda:2"]
    assert devices_needed(sections, 2, CPU) == ["cpu"]


@pytest.mark.parametrize(
    ("devices", "available", "gpus", "expected"),
    [
        ([0, 1], GPU, 1, ("cuda:0", "cuda:1")),  # one runtime process per listed GPU, whatever NVML counts
        ([1, 0], GPU, 2, ("cuda:1", "cuda:0")),  # in the order given: the first is the metadata's device
        ("all", GPU, 3, ("cuda:0", "cuda:1", "cuda:2")),  # every visible GPU
        ("all", CPU, 3, ("cpu",)),  # no GPU provider: all is the one CPU process
        ([0, 1], CPU, 1, ("cpu", "cpu:1")),  # on the CPU each ordinal is a process of its own
        ([2], CPU, 1, ("cpu:2",)),
    ],
)
def test_devices_name_one_runtime_process_each(
    devices: list[int] | str, available: list[str], gpus: int, expected: tuple[str, ...]
) -> None:
    runtime = RuntimeSection(placement="device", devices=devices)
    assert resolve(runtime, 2, available, gpus) == Choice("device", expected)
    # The worker placement runs on the first of them (each worker its own session).
    worker = RuntimeSection(placement="worker", devices=devices)
    assert resolve(worker, 2, available, gpus) == Choice("worker", expected[:1])


def test_every_device_of_every_device_model_gets_one_process_in_ordinal_order() -> None:
    sections = [
        RuntimeSection(placement="device", devices=[0, 1], execution_providers=["cpu"]),
        RuntimeSection(placement="device", devices=[10, 2]),
        RuntimeSection(placement="device", devices="all"),
    ]
    assert devices_needed(sections, 2, GPU, gpus=3) == ["cpu", "cpu:1", "cuda:0", "cuda:1", "cuda:2", "cuda:10"]


@pytest.mark.parametrize(
    ("cuda_visible_devices", "nvml_count", "expected"),
    [
        ("2,3", 8, 2),  # CUDA numbers only what is visible: ordinals 0 and 1
        ("GPU-aaaa", None, 1),
        ("", 8, 0),  # an empty list hides every GPU
        (None, 4, 4),
        (None, None, 1),  # a GPU provider without NVML: the one CUDA always has
    ],
)
def test_visible_gpus_follow_cuda_visible_devices_then_nvml(
    cuda_visible_devices: str | None, nvml_count: int | None, expected: int
) -> None:
    assert count_visible(cuda_visible_devices, nvml_count) == expected


def test_visible_gpus_reads_cuda_visible_devices_before_asking_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() >= 1  # NVML's count where a driver answers; here none does: one


@pytest.mark.parametrize(
    ("yaml", "names"),
    [
        ("runtime: {placement: gpu}", "runtime.placement"),
        ("runtime: {instances: 0}", "runtime.instances"),
        ("runtime: {instances: 65}", "runtime.instances"),
        ("runtime: {devices: [0, 0]}", "distinct CUDA ordinals"),
        ("runtime: {devices: some}", "runtime.devices"),
        ("runtime: {devices: []}", "runtime.devices needs at least one"),
        ("runtime: {devices: [-1]}", "distinct CUDA ordinals"),
        ("runtime: {kind: remote, url: 'h:1', placement: device}", "runtime.kind 'remote' takes worker"),
    ],
)
def test_bad_placement_settings_are_refused_naming_the_field(tmp_path: Path, yaml: str, names: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml + "\n")
    with pytest.raises(ConfigError) as caught:
        load_model_config(path)
    assert names in str(caught.value) and str(path) in str(caught.value)


def test_a_call_is_stuck_only_once_past_its_limit_and_the_terminate_grace() -> None:
    from gateway.serving.device_host import STUCK_AFTER_GRACE_S, _StuckCalls
    from runtimes.onnx import TERMINATE_GRACE_S

    release = threading.Event()
    calls = _StuckCalls(limit_s=1.0)
    try:
        started = time.monotonic()
        future = calls.submit(release.wait)
        wait_until(lambda: calls.stuck(started + 3600), timeout=10, what="the call to start")
        assert not calls.stuck(started + 1.0 + TERMINATE_GRACE_S + STUCK_AFTER_GRACE_S - 0.5)
        release.set()
        future.result(10)
        assert not calls.stuck(started + 3600), "a call that came back is not stuck"
        unwatched = _StuckCalls(limit_s=None)  # no watchdog: a long call is the model's business
        assert not unwatched.stuck(started + 3600)
        unwatched.shutdown()
    finally:
        release.set()
        calls.shutdown()


# -- a real gateway with two workers -----------------------------------------------------------

DEVICE_CONFIG = """\
runtime: {placement: device, execution_providers: [cpu]}
batching: {max_batch_size: 64, max_queue_delay_ms: 4, greedy: false}
"""
WORKER_CONFIG = """\
runtime: {placement: worker, execution_providers: [cpu]}
batching: {max_batch_size: 64, max_queue_delay_ms: 4, greedy: false}
"""
MODEL_DIRS: dict[int, Path] = {}
"""The fixture's model folder of `mlp`, by the gateway's port (the hot-load test adds a version there)."""
DEVICE_HANG_CONFIG = HANG_CONFIG.replace("runtime: {", "runtime: {placement: device, ")


def write_mlp_pair(repo: Path, config: str) -> Path:
    """The reference MLP as `mlp` with `config`, and the same file as `mlpw` in the worker placement."""
    build_reference_mlp(repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.yaml").write_text(config)
    (repo / "mlpw" / "1").mkdir(parents=True)
    shutil.copy(repo / "mlp" / "1" / "model.onnx", repo / "mlpw" / "1" / "model.onnx")
    (repo / "mlpw" / "config.yaml").write_text(WORKER_CONFIG)
    return repo


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("device")
    repo = write_mlp_pair(tmp / "models", DEVICE_CONFIG)
    build_hang(repo / "hang" / "1" / "model.onnx")
    (repo / "hang" / "config.yaml").write_text(DEVICE_HANG_CONFIG)
    env = {"SLUICE_LEADER_LEASE_S": "3", "SLUICE_LEADER_RENEW_S": "0.5", "SLUICE_SYNC_INTERVAL_S": "0.5"}
    with gateway_process(repo, "--workers", "2", "--drain-timeout", "10", tmp=tmp, env=env) as gw:
        wait_until(lambda: len(worker_urls(gw)) == 2, timeout=30, what="both workers listening")
        MODEL_DIRS[gw.http_port] = repo / "mlp"
        yield gw


ROWS = np.random.default_rng(7).standard_normal((64, 32)).astype(np.float32)


def body(first: int, rows: int = 1) -> dict[str, Any]:
    x = ROWS[first : first + rows]
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry))
    return found


def device_pid(url: str, model: str = "mlp") -> int:
    doc = httpx.get(f"{url}/v2/models/{model}", timeout=10).json()
    assert doc["parameters"]["placement"] == "device" and doc["parameters"]["device"] == "cpu", doc
    return int(doc["parameters"]["device_pid"])


def ready(gw: GatewayProcess, model: str = "mlp", version: str | None = None) -> bool:
    """Whether every worker (each through its private listener) has the model, or that version, ready."""
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
    return all(httpx.get(f"{u}{path}", timeout=5).status_code == 200 for u in worker_urls(gw).values())


def console_status(gw: GatewayProcess, model: str) -> str:
    """The console's versions panel of a model, after logging in with the admin token as a browser would."""
    with httpx.Client(base_url=gw.http_url, timeout=30) as http:
        http.get("/console/login")
        nonce = http.cookies["sluice_console_login"]
        http.post("/console/login", data={"nonce": nonce, "token": gw.admin_token})
        panel = http.get(f"/console/models/{model}/panels/status", headers={"HX-Request": "true"})
        assert panel.status_code == 200, panel.text
        return panel.text


@dataclass
class Clients:
    """`n` threads, each on a connection of its own (so both workers serve), sending one row at a time; after
    a failure a thread waits until the model is ready again on its own connection before it sends more."""

    url: str
    n: int = 16
    model: str = "mlp"
    answers: list[tuple[int, int, str]] = field(default_factory=list)
    """(row sent, status, body: the outputs' JSON when 200, else the error)"""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, seed: int) -> None:
        row = seed
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                row = (row * 7 + 3) % 64
                r = client.post(f"/v2/models/{self.model}/infer", json=body(row))
                text = str(r.json()["outputs"]) if r.status_code == 200 else r.text
                with self._lock:
                    self.answers.append((row, r.status_code, text))
                if r.status_code != 200:
                    while not self._stop.is_set() and client.get(f"/v2/models/{self.model}/ready").status_code != 200:
                        time.sleep(0.05)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def failures(self) -> list[tuple[int, int, str]]:
        with self._lock:
            return [a for a in self.answers if a[1] != 200]

    def __enter__(self) -> Clients:
        self._pool = ThreadPoolExecutor(self.n)
        self._futures = [self._pool.submit(self._run, seed) for seed in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for f in self._futures:
            f.result(120)
        self._pool.shutdown()


def expected_answers(gw: GatewayProcess) -> dict[int, str]:
    """Each row's outputs from the worker placement (the same artifact, loaded in each worker)."""
    with httpx.Client(base_url=gw.http_url, timeout=30) as client:
        return {row: str(client.post("/v2/models/mlpw/infer", json=body(row)).json()["outputs"]) for row in range(64)}


def answered_as_the_worker_placement(gw: GatewayProcess, expected: dict[int, str], answers: int) -> None:
    """Under load from 16 connections (both workers) `mlp` answers without a failure, bit for bit as `mlpw`."""
    with Clients(gw.http_url, n=16) as load:
        wait_until(lambda: load.count() >= answers, timeout=120, interval=0.2, what=f"{answers} answers under load")
    assert not load.failures(), Counter(s for _, s, _ in load.failures())
    mismatched = [row for row, _, text in load.answers if text != expected[row]]
    assert not mismatched, f"{len(mismatched)} answers differ from the worker placement's"


@pytest.mark.slow
def test_one_runtime_process_holds_the_model_and_merges_both_workers_batches(gateway: GatewayProcess) -> None:
    gw = gateway
    wait_until(lambda: ready(gw), timeout=60, what="mlp ready")
    workers = worker_urls(gw)
    assert len(workers) == 2
    # Every worker describes the same runtime process: a child of the supervisor, not a worker.
    pids = {device_pid(url) for url in workers.values()}
    assert len(pids) == 1, pids
    host = pids.pop()
    assert host in children(gw.proc.pid) and host not in workers
    # It loaded the session once; the workers did not (the admin API says where each version runs).
    loaded = [line for line in gw.logs().splitlines() if "mlp/1@" in line and "loaded on cpu" in line]
    assert len(loaded) == 1, loaded
    view = httpx.get(f"{gw.http_url}/admin/models/mlp", headers=gw.admin_headers, timeout=10).json()
    assert view["versions"][0]["placement"] == "device" and view["versions"][0]["device_pid"] == host
    plain = httpx.get(f"{gw.http_url}/admin/models/mlpw", headers=gw.admin_headers, timeout=10).json()
    assert plain["versions"][0]["placement"] == "worker" and plain["versions"][0]["device_pid"] is None
    # mlpw is a copy of mlp's file: the digest comes back from the runtime process as the worker computes it.
    assert view["versions"][0]["sha256"] == plain["versions"][0]["sha256"] and len(plain["versions"][0]["sha256"]) == 64
    assert f"device cpu (runtime process {host})" in console_status(gw, "mlp")

    # Bit for bit the worker placement's answers: alone (a 64-row request too) and under load.
    expected = expected_answers(gw)
    with httpx.Client(base_url=gw.http_url, timeout=30) as client:
        for row in range(0, 64, 5):
            assert str(client.post("/v2/models/mlp/infer", json=body(row)).json()["outputs"]) == expected[row]
        whole = client.post("/v2/models/mlp/infer", json=body(0, 64)).json()["outputs"]
        alone = client.post("/v2/models/mlpw/infer", json=body(0, 64)).json()["outputs"]
        assert whole == alone
    # A worker's batch histograms reach the shared files within a second (as its request counters do), the
    # runtime process's at once: read each side once the workers' have caught up (this module's first mlp traffic:
    # the 13 rows alone and the 64 at once above).
    labels = {"device": "cpu", "model": "mlp", "version": "1"}
    scraped = [gw.metrics()]

    def worker_rows_are(rows: float) -> bool:
        scraped.append(gw.metrics())
        return metric_value(scraped[-1], "sluice_batch_size_sum", 0.0, model="mlp", version="1") == rows

    wait_until(lambda: worker_rows_are(13 + 64), timeout=10, what="the workers' batch histograms")
    before = scraped[-1]
    answered_as_the_worker_placement(gw, expected, 3000)

    # Both workers served; the runtime process merged their batches: calls with rows of two workers, and
    # larger calls than either worker made.
    def delta(name: str, **labels: str) -> float:
        return metric_value(scraped[-1], name, 0.0, **labels) - metric_value(before, name, 0.0, **labels)

    def caught_up() -> bool:
        scraped.append(gw.metrics())
        worker_rows = delta("sluice_batch_size_sum", model="mlp", version="1")
        return worker_rows == delta("sluice_device_batch_size_sum", **labels)

    wait_until(caught_up, timeout=10, what="the workers' batch histograms")
    calls = delta("sluice_device_batch_workers_count", **labels)
    merged = calls - delta("sluice_device_batch_workers_bucket", le="1.0", **labels)
    assert calls > 0 and merged > 0, (calls, merged)
    device_rows = delta("sluice_device_batch_size_sum", **labels)
    text = scraped[-1]
    worker_rows = delta("sluice_batch_size_sum", model="mlp", version="1")
    worker_calls = delta("sluice_batch_size_count", model="mlp", version="1")
    assert device_rows == worker_rows >= 3000
    assert device_rows / calls > worker_rows / worker_calls, "the runtime process's calls are no larger"
    assert metric_value(text, "sluice_device_host_resident_memory_bytes", device="cpu") > 10_000_000
    # The queue time across workers is measured in the runtime process.
    assert delta("sluice_device_queue_wait_seconds_count", **labels) >= calls


@pytest.mark.slow
def test_a_hung_call_in_the_runtime_process_is_stopped_by_the_watchdog(gateway: GatewayProcess) -> None:
    gw = gateway
    wait_until(lambda: ready(gw, "hang"), timeout=60, what="hang ready")
    host = device_pid(gw.http_url, "hang")
    hangs = metric_value(gw.metrics(), "sluice_runtime_hangs_total", 0.0, model="hang", version="1")
    r = httpx.post(f"{gw.http_url}/v2/models/hang/infer", json=row_body(5000.0)("hung", 0), timeout=30)
    assert r.status_code == 504, r.text
    assert "watchdog" in r.json()["error"]
    # The session in the runtime process was told to stop: its thread answers the next call, in the same
    # process (no restart was needed).
    ok = httpx.post(f"{gw.http_url}/v2/models/hang/infer", json=row_body(1.0)("fine", 0), timeout=30)
    assert ok.status_code == 200, ok.text
    assert device_pid(gw.http_url, "hang") == host
    wait_until(
        lambda: metric_value(gw.metrics(), "sluice_runtime_hangs_total", 0.0, model="hang", version="1") == hangs + 1,
        timeout=10,
        what="the hang counted",
    )
    assert "did not stop after its terminate flag" not in gw.logs()


@pytest.mark.slow
def test_a_version_loaded_and_one_unloaded_under_load_fail_no_request(gateway: GatewayProcess) -> None:
    gw = gateway
    wait_until(lambda: ready(gw), timeout=60, what="mlp ready")
    admin = httpx.Client(base_url=gw.http_url, headers=gw.admin_headers, timeout=60)
    source = MODEL_DIRS[gw.http_port]
    (source / "2").mkdir(exist_ok=True)
    shutil.copy(source / "1" / "model.onnx", source / "2" / "model.onnx")
    expected = expected_answers(gw)
    with Clients(gw.http_url, n=8) as load:
        wait_until(lambda: load.count() >= 200, timeout=60, what="load before the switch")
        r = admin.post("/admin/models/mlp/versions/2/load")
        assert r.status_code == 200, r.text
        # The other worker loads it when it follows the change: route to it once every worker has it.
        wait_until(lambda: ready(gw, "mlp", "2"), timeout=60, what="version 2 ready on every worker")
        assert admin.put("/admin/models/mlp/traffic", json={"stable": "2"}).status_code == 200
        wait_until(lambda: all_serve(gw, "2"), timeout=30, what="every worker routing to version 2")
        assert admin.post("/admin/models/mlp/versions/1/unload").status_code == 200
        seen = load.count()
        wait_until(lambda: load.count() >= seen + 200, timeout=60, what="load after the switch")
    assert not load.failures(), load.failures()[:5]
    assert all(text == expected[row] for row, _, text in load.answers)
    view = admin.get("/admin/models/mlp").json()
    states = {v["version"]: v["state"] for v in view["versions"]}
    assert states == {"1": "UNLOADED", "2": "READY"}, states
    admin.close()


def all_serve(gw: GatewayProcess, version: str) -> bool:
    return all(
        httpx.post(f"{url}/v2/models/mlp/infer", json=body(0), timeout=10).json()["model_version"] == version
        for url in worker_urls(gw).values()
    )


def failed_only_in_flight(load: Clients, clients: int, *, some: bool = True) -> None:
    """Each client had one request in flight at most: the failures are bounded by them, and each is a 503 that
    names the runtime process (not a 500 that blames the request)."""
    failures = load.failures()
    assert len(failures) <= clients and (len(failures) > 0 or not some), len(failures)
    assert {status for _, status, _ in failures} <= {503}, failures
    assert all("runtime process" in text for _, _, text in failures), failures


@pytest.mark.slow
def test_a_killed_runtime_process_fails_only_the_batches_in_flight_and_comes_back(gateway: GatewayProcess) -> None:
    gw = gateway
    wait_until(lambda: ready(gw), timeout=60, what="mlp ready")
    workers = set(worker_urls(gw))
    host = device_pid(gw.http_url)
    clients = 12
    with Clients(gw.http_url, n=clients) as load:
        wait_until(lambda: load.count() >= 500, timeout=60, what="load before the kill")
        os.kill(host, signal.SIGKILL)
        wait_until(lambda: load.failures(), timeout=30, what="the batches in flight to fail", explain=gw.log_tail)
        wait_until(lambda: host not in children(gw.proc.pid), timeout=30, what="the killed process reaped")
        wait_until(lambda: device_pid(gw.http_url) != host, timeout=120, what="a new runtime", explain=gw.log_tail)
        wait_until(lambda: ready(gw), timeout=60, what="mlp ready again on every worker", explain=gw.log_tail)
        seen = load.count()
        wait_until(lambda: load.count() >= seen + 500, timeout=60, what="load after the restart", explain=gw.log_tail)
    failed_only_in_flight(load, clients)
    # Restarted by the supervisor; no worker died with it.
    new_host = device_pid(gw.http_url)
    assert new_host in children(gw.proc.pid)
    assert set(worker_urls(gw)) == workers
    text = gw.metrics()
    assert metric_value(text, "sluice_device_host_restarts", device="cpu") >= 1


@pytest.mark.slow
def test_one_process_starts_its_own_runtime_process_which_ignores_sigint(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    build_reference_mlp(repo / "mlp" / "1" / "model.onnx")
    (repo / "mlp" / "config.yaml").write_text(DEVICE_CONFIG)
    with gateway_process(repo, tmp=tmp_path) as gw:
        host = device_pid(gw.http_url)
        assert host in children(gw.proc.pid)
        first = httpx.post(f"{gw.http_url}/v2/models/mlp/infer", json=body(0, 3), timeout=30)
        assert first.status_code == 200
        # Ctrl-C reaches every process of the terminal's group: the parent drains first, the child stays.
        os.kill(host, signal.SIGINT)
        again = httpx.post(f"{gw.http_url}/v2/models/mlp/infer", json=body(0, 3), timeout=30)
        assert again.status_code == 200 and again.json()["outputs"] == first.json()["outputs"]
        assert device_pid(gw.http_url) == host
        assert gw.terminate() == 0
    wait_until(lambda: not Path(f"/proc/{host}").exists(), timeout=30, what="the runtime process to stop with it")
