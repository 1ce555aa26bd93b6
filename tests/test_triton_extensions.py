"""Triton's protocol extensions through the real tritonclient (HTTP and gRPC) against real gateways: model
configuration, statistics, the model repository (index, load, unload), and server metadata that advertises
exactly what is served. Then the same with `--workers 2` and inference keys: statistics summed over both
workers (each worker is sent requests through its own listener, so both served some), reads guarded by
the inference key, load and unload passed to the leader from either worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.observability.statistics import BATCH_PHASES as PHASES
from gateway.observability.statistics import StatisticsCounters, read_totals
from gateway.serving.dataplane import EXTENSIONS
from gateway.serving.triton_stats import statistics_response
from tests.helpers import GatewayProcess, gateway_process, wait_until
from tests.test_workers import worker_urls

MODELS = {
    "churn": ["1", "2", "3"],
    "classifier": ["1", "2"],
    "dtypes": ["1"],
    "fixed": ["1"],
    "mlp": ["1", "2"],
    "multi_io": ["1"],
}
ROW = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
BAD_ROW = {"inputs": [{"name": "input", "shape": [1, 31], "datatype": "FP32", "data": [0.5] * 31}]}
KEY = "k-" + "7" * 30


@pytest.fixture(scope="module")
def gw(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway of this module's own: its load and unload calls change what it serves."""
    with gateway_process(demo_repo, tmp=tmp_path_factory.mktemp("triton")) as g:
        yield g


@pytest.fixture(scope="module")
def http(gw: GatewayProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(gw.http_addr, concurrency=8)
    yield c
    c.close()


@pytest.fixture(scope="module")
def grpc_client(gw: GatewayProcess) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(gw.grpc_addr)
    yield c
    c.close()


def _row(rng: np.random.Generator, rows: int = 1) -> httpclient.InferInput:
    inp = httpclient.InferInput("input", [rows, 32], "FP32")
    inp.set_data_from_numpy(rng.random((rows, 32), dtype=np.float32))
    return inp


def _stats(entry: dict[str, Any]) -> dict[str, Any]:
    """A version's statistics with every number as an int (gRPC's JSON writes uint64 as strings, omits zeros)."""
    s = entry["inference_stats"]
    return {
        "inference_count": int(entry.get("inference_count", 0)),
        "execution_count": int(entry.get("execution_count", 0)),
        "last_inference": int(entry.get("last_inference", 0)),
        **{f"{k}.{u}": int(s.get(k, {}).get(u, 0)) for k in s for u in ("count", "ns")},
        "batches": {
            int(b["batch_size"]): {
                f"{p}.{u}": int(b.get(p, {}).get(u, 0))
                for p in ("compute_input", "compute_infer", "compute_output")
                for u in ("count", "ns")
            }
            for b in entry.get("batch_stats", [])
        },
    }


def _one(response: dict[str, Any], model: str, version: str) -> dict[str, Any]:
    [entry] = [e for e in response["model_stats"] if e["name"] == model and e["version"] == version]
    return _stats(entry)


def _rows(stats: dict[str, Any]) -> int:
    return sum(size * b["compute_infer.count"] for size, b in stats["batches"].items())


def _index(entries: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(e["name"], e.get("version", "")): e.get("state", "UNKNOWN") for e in entries}


# -- server metadata ------------------------------------------------------------------------


def test_server_metadata_advertises_exactly_the_extensions_served(
    gw: GatewayProcess,
    http: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
) -> None:
    expected = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]
    assert list(EXTENSIONS) == expected
    assert http.get_server_metadata()["extensions"] == expected
    assert list(grpc_client.get_server_metadata().extensions) == expected
    # ... and each one answers, on both protocols.
    served: dict[str, Callable[[], object]] = {
        "binary_tensor_data": lambda: http.infer("mlp", [_row(np.random.default_rng(1))]).as_numpy("output"),
        "model_configuration": lambda: (http.get_model_config("mlp"), grpc_client.get_model_config("mlp")),
        "statistics": lambda: (http.get_inference_statistics("mlp"), grpc_client.get_inference_statistics("mlp")),
        "model_repository": lambda: (http.get_model_repository_index(), grpc_client.get_model_repository_index()),
    }
    for extension in expected:
        assert served[extension]() is not None, extension


def test_a_grpc_method_not_served_is_unimplemented_in_plain_words(gw: GatewayProcess) -> None:
    with grpc.insecure_channel(gw.grpc_addr) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for call, request in (
            (stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest()),
            (stub.CudaSharedMemoryRegister, pb.CudaSharedMemoryRegisterRequest(name="r")),
            (stub.TraceSetting, pb.TraceSettingRequest()),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call(request, timeout=10)
            assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED
            assert "not implemented" in info.value.details()
            assert "class" not in info.value.details() and "Error" not in info.value.details()


# -- model configuration --------------------------------------------------------------------


def test_model_config_matches_the_metadata_and_config_yaml(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    meta = http.get_model_metadata("mlp")
    for config in (http.get_model_config("mlp"), grpc_client.get_model_config("mlp", as_json=True)["config"]):
        assert config["name"] == "mlp"
        assert config["platform"] == meta["platform"] == "onnxruntime_onnx"
        # mlp's config.yaml: max_batch_size 64, max_queue_delay_ms 2, queue_capacity 2048, timeout_ms 10000,
        # version_policy all.
        assert int(config["max_batch_size"]) == 64
        batching = config["dynamic_batching"]
        assert int(batching["max_queue_delay_microseconds"]) == 2000
        assert int(batching["default_queue_policy"]["max_queue_size"]) == 2048
        assert int(batching["default_queue_policy"]["default_timeout_microseconds"]) == 10_000_000
        assert config["version_policy"] == {"all": {}}
        for tensors, specs in ((config["input"], meta["inputs"]), (config["output"], meta["outputs"])):
            assert [t["name"] for t in tensors] == [s["name"] for s in specs]
            assert [t["data_type"] for t in tensors] == ["TYPE_" + s["datatype"] for s in specs]
            # Without the batch dimension, as Triton writes a batched model's dims.
            assert [[int(d) for d in t["dims"]] for t in tensors] == [s["shape"][1:] for s in specs]
        [group] = config["instance_group"]
        assert group["kind"] == "KIND_CPU" and int(group["count"]) == 1
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        assert params["placement"] == "worker"
        assert params["execution_provider"] == "CPUExecutionProvider"
        assert params["version"] == "2"  # the version a request without one is served by
        assert params["max_queue_delay_ms"] == "2" and params["queue_capacity"] == "2048"
    pinned = http.get_model_config("mlp", "1")
    assert pinned["parameters"]["version"]["string_value"] == "1"


def test_a_model_without_a_batch_dimension_is_configured_as_unbatched(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    meta = http.get_model_metadata("fixed")
    for config in (http.get_model_config("fixed"), grpc_client.get_model_config("fixed", as_json=True)["config"]):
        assert int(config.get("max_batch_size", 0)) == 0
        assert "dynamic_batching" not in config
        assert [[int(d) for d in t["dims"]] for t in config["input"]] == [s["shape"] for s in meta["inputs"]]


def test_config_of_an_unknown_model_or_version_is_not_found(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    for model, version, named in (("nope", "", "'nope'"), ("mlp", "9", "'9'")):
        with pytest.raises(InferenceServerException) as h:
            http.get_model_config(model, version)
        assert h.value.status() == "404" and named in h.value.message()
        with pytest.raises(InferenceServerException) as g:
            grpc_client.get_model_config(model, version)
        assert g.value.status() == "StatusCode.NOT_FOUND" and named in g.value.message()


# -- statistics -----------------------------------------------------------------------------


def test_statistics_count_successes_failures_queue_compute_and_batches(
    gw: GatewayProcess, http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    before = _one(http.get_inference_statistics("mlp", "1"), "mlp", "1")
    started_ms = time.time() * 1000
    rng = np.random.default_rng(5)
    n, failing = 40, 3
    # Concurrent (tritonclient's own async calls), so some batches may hold several requests.
    pending = [http.async_infer("mlp", [_row(rng)], model_version="1") for _ in range(n)]
    assert all(p.get_result().as_numpy("output").shape == (1, 8) for p in pending)
    for _ in range(failing):  # a row of 31 features: refused (400), counted as a failure of version 1
        assert httpx.post(f"{gw.http_url}/v2/models/mlp/versions/1/infer", json=BAD_ROW).status_code == 400
    via_http = _one(http.get_inference_statistics("mlp", "1"), "mlp", "1")
    via_grpc = _one(grpc_client.get_inference_statistics("mlp", "1", as_json=True), "mlp", "1")
    assert via_http == via_grpc
    delta = {k: via_http[k] - before[k] for k in via_http if k not in ("batches", "last_inference")}
    assert delta["success.count"] == n
    assert delta["fail.count"] == failing and delta["fail.ns"] > 0
    assert delta["success.ns"] > 0
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert delta[f"{phase}.count"] == n, phase
    assert delta["queue.ns"] > 0 and delta["compute_infer.ns"] > 0
    assert delta["cache_hit.count"] == 0 and delta["cache_miss.count"] == 0
    # Every successful request's row went through exactly one batch: the batch rows add up to the requests.
    assert _rows(via_http) - _rows(before) == n == delta["inference_count"]
    assert delta["execution_count"] == sum(b["compute_infer.count"] for b in via_http["batches"].values()) - sum(
        b["compute_infer.count"] for b in before["batches"].values()
    )
    assert 1 <= delta["execution_count"] <= n
    assert all(b["compute_infer.ns"] > 0 for b in via_http["batches"].values())
    assert via_http["last_inference"] >= started_ms
    page = gw.metrics()
    assert "sluice_requests_total" in page and "sluice_statistics" not in page, "kept off /metrics"


def test_statistics_of_all_models_of_one_model_and_unknown_ones(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    every = {(e["name"], e["version"]) for e in http.get_inference_statistics()["model_stats"]}
    assert every == {(m, v) for m, versions in MODELS.items() for v in versions}
    grpc_every = grpc_client.get_inference_statistics(as_json=True)["model_stats"]
    assert {(e["name"], e["version"]) for e in grpc_every} == every
    assert [e["version"] for e in http.get_inference_statistics("classifier")["model_stats"]] == ["1", "2"]
    for model, version, named in (("nope", "", "'nope'"), ("mlp", "9", "'9'")):
        with pytest.raises(InferenceServerException) as h:
            http.get_inference_statistics(model, version)
        assert h.value.status() == "404" and named in h.value.message()
        with pytest.raises(InferenceServerException) as g:
            grpc_client.get_inference_statistics(model, version)
        assert g.value.status() == "StatusCode.NOT_FOUND" and named in g.value.message()


# -- model repository -----------------------------------------------------------------------


def test_repository_index_lists_every_model_and_version_with_its_state(
    http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    expected = {(m, v): "READY" for m, versions in MODELS.items() for v in versions}
    assert _index(http.get_model_repository_index()) == expected
    assert _index(grpc_client.get_model_repository_index(as_json=True)["models"]) == expected


def test_load_and_unload_need_the_admin_token_change_the_state_and_are_audited(
    gw: GatewayProcess, http: httpclient.InferenceServerClient, grpc_client: grpcclient.InferenceServerClient
) -> None:
    admin = gw.admin_headers
    grpc_admin = {"authorization": f"Bearer {gw.admin_token}"}
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    grpc_wrong = {"authorization": "Bearer not-the-token-at-all"}
    before = _index(http.get_model_repository_index())
    refusals = (
        (lambda: http.unload_model("classifier"), "401"),
        (lambda: http.unload_model("classifier", headers=wrong), "403"),
        (lambda: http.load_model("classifier", headers=wrong), "403"),
        (lambda: grpc_client.unload_model("classifier"), "StatusCode.UNAUTHENTICATED"),
        (lambda: grpc_client.unload_model("classifier", headers=grpc_wrong), "StatusCode.PERMISSION_DENIED"),
        (lambda: grpc_client.load_model("classifier"), "StatusCode.UNAUTHENTICATED"),
    )
    for call, status in refusals:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status
        assert "token" in info.value.message()
    assert _index(http.get_model_repository_index()) == before, "a refused call changed nothing"
    assert http.is_model_ready("classifier")

    # A model configuration to load instead of the repository's is refused, naming the parameter.
    with pytest.raises(InferenceServerException) as info:
        http.load_model("classifier", headers=admin, config='{"max_batch_size": 8}')
    assert info.value.status() == "400" and "parameters.config" in info.value.message()

    http.unload_model("classifier", headers=admin)
    index = _index(http.get_model_repository_index())
    assert index[("classifier", "1")] == index[("classifier", "2")] == "UNAVAILABLE"
    assert index[("mlp", "1")] == "READY"
    assert not http.is_model_ready("classifier")
    reasons = {e.get("reason") for e in http.get_model_repository_index() if e["name"] == "classifier"}
    assert reasons == {"unloaded"}
    assert _index(grpc_client.get_model_repository_index(as_json=True)["models"]) == index
    ready_only = _index(httpx.post(f"{gw.http_url}/v2/repository/index", json={"ready": True}).json())
    assert ready_only == {k: v for k, v in index.items() if v == "READY"}

    grpc_client.load_model("classifier", headers=grpc_admin)
    assert _index(grpc_client.get_model_repository_index(as_json=True)["models"]) == before
    assert http.is_model_ready("classifier", "1") and http.is_model_ready("classifier", "2")
    rng = np.random.default_rng(2)
    inp = httpclient.InferInput("input", [1, 32], "FP32")
    inp.set_data_from_numpy(rng.random((1, 32), dtype=np.float32))
    assert http.infer("classifier", [inp]).as_numpy("probabilities") is not None

    events = httpx.get(f"{gw.http_url}/admin/audit", params={"model": "classifier"}, headers=admin).json()["events"]
    for action in ("version.unload", "version.load"):
        versions = {e["after"]["version"] for e in events if e["action"] == action and e["actor"] == "ci"}
        assert versions == {"1", "2"}, action


def test_unload_of_a_model_the_policy_names_is_refused_and_changes_nothing(
    gw: GatewayProcess, http: httpclient.InferenceServerClient
) -> None:
    admin = gw.admin_headers
    url = f"{gw.http_url}/admin/models/multi_io/traffic"
    assert httpx.put(url, json={"stable": "1"}, headers=admin).status_code == 200
    try:
        with pytest.raises(InferenceServerException) as info:
            http.unload_model("multi_io", headers=admin)
        assert info.value.status() == "409" and "stable" in info.value.message()
        assert _index(http.get_model_repository_index())[("multi_io", "1")] == "READY"
    finally:
        assert httpx.put(url, json={}, headers=admin).status_code == 200


def test_statistics_counters_add_up_and_sync_only_their_growth() -> None:
    """The counters behind the statistics, through a real prometheus_client registry, without a gateway."""
    counters = StatisticsCounters()
    stats = counters.version("m", "1")
    stats.request(True, 0.002)
    stats.request(False, 0.001)
    stats.ran(100, 150, 160, 1160, 1170)
    stats.batch(3, 10, 1000, 10)
    stats.batch(3, 20, 2000, 30)
    stats.batch(1, 5, 500, 5)
    stats.sync()
    stats.sync()  # nothing new: nothing added twice
    totals = read_totals(counters.registry.collect())[("m", "1")]
    response = statistics_response([("m", "1"), ("m", "2")], {("m", "1"): totals})
    first, second = response["model_stats"]
    assert first["inference_stats"]["success"] == {"count": 1, "ns": 2_000_000}
    assert first["inference_stats"]["fail"] == {"count": 1, "ns": 1_000_000}
    assert first["inference_stats"]["queue"] == {"count": 1, "ns": 50}
    assert first["inference_stats"]["compute_input"] == {"count": 1, "ns": 10}
    assert first["inference_stats"]["compute_infer"] == {"count": 1, "ns": 1000}
    assert first["inference_stats"]["compute_output"] == {"count": 1, "ns": 10}
    assert first["batch_stats"] == [
        {"batch_size": 1, **{p: {"count": 1, "ns": n} for p, n in zip(PHASES, (5, 500, 5), strict=True)}},
        {"batch_size": 3, **{p: {"count": 2, "ns": n} for p, n in zip(PHASES, (30, 3000, 40), strict=True)}},
    ]
    assert first["inference_count"] == 7 and first["execution_count"] == 3
    assert first["last_inference"] > 0
    assert second["inference_count"] == 0 and second["batch_stats"] == [] and second["last_inference"] == 0
    stats.ran(0, 10, 5, 20, 25)  # a step of the wall clock backwards never makes a time negative
    stats.sync()
    again = read_totals(counters.registry.collect())[("m", "1")]
    assert again.phases["compute_input"].ns == 10 and again.phases["queue"].ns == 60


# -- --workers 2, with inference keys --------------------------------------------------------


@pytest.mark.slow
def test_with_two_workers_statistics_are_summed_and_every_call_works_from_either_worker(
    demo_repo: Path, tmp_path: Path
) -> None:
    env = {"SLUICE_INFERENCE_KEYS": f"app:{KEY}"}
    with gateway_process(demo_repo, "--workers", "2", tmp=tmp_path, env=env) as gw:
        wait_until(lambda: len(worker_urls(gw)) == 2, timeout=60, what="both workers listening")
        key = {"Authorization": f"Bearer {KEY}"}
        grpc_key = {"authorization": f"Bearer {KEY}"}
        http = httpclient.InferenceServerClient(gw.http_addr)
        grpc_client = grpcclient.InferenceServerClient(gw.grpc_addr)
        try:
            _two_workers(gw, http, grpc_client, key, grpc_key)
        finally:
            http.close()
            grpc_client.close()


def _two_workers(
    gw: GatewayProcess,
    http: httpclient.InferenceServerClient,
    grpc_client: grpcclient.InferenceServerClient,
    key: dict[str, str],
    grpc_key: dict[str, str],
) -> None:
    # Read-only calls need the inference key when keys are set, as infer does.
    for call in (
        lambda: http.get_model_config("mlp"),
        lambda: http.get_inference_statistics("mlp"),
        lambda: http.get_model_repository_index(),
    ):
        with pytest.raises(InferenceServerException) as h:
            call()
        assert h.value.status() == "401"
    for grpc_call in (
        lambda: grpc_client.get_model_config("mlp"),
        lambda: grpc_client.get_inference_statistics("mlp"),
        lambda: grpc_client.get_model_repository_index(),
    ):
        with pytest.raises(InferenceServerException) as g:
            grpc_call()
        assert g.value.status() == "StatusCode.UNAUTHENTICATED"
    assert int(http.get_model_config("mlp", headers=key)["max_batch_size"]) == 64

    # Each worker serves its own share, through its own listener: both served some.
    urls = sorted(worker_urls(gw).values())
    shares = dict(zip(urls, (11, 6), strict=True))
    for url, count in shares.items():
        with httpx.Client(base_url=url, headers=key, timeout=10) as worker:
            for _ in range(count):
                assert worker.post("/v2/models/mlp/versions/1/infer", json=ROW).status_code == 200
            assert worker.post("/v2/models/mlp/versions/1/infer", json=BAD_ROW).status_code == 400
    total = sum(shares.values())

    def summed(stats: dict[str, Any]) -> bool:
        s = _one(stats, "mlp", "1")
        return s["success.count"] == total and s["fail.count"] == 2 and _rows(s) == total

    # Whichever worker answers, it shows both workers' counts (the other's within a second).
    for url in urls:
        with httpx.Client(base_url=url, headers=key, timeout=10) as worker:
            wait_until(lambda w=worker: summed(w.get("/v2/models/mlp/versions/1/stats").json()), timeout=30)
    wait_until(lambda: summed(http.get_inference_statistics("mlp", "1", headers=key)), timeout=30)
    stats = grpc_client.get_inference_statistics("mlp", "1", headers=grpc_key, as_json=True)
    assert summed(stats)
    s = _one(stats, "mlp", "1")
    assert s["queue.ns"] > 0 and s["compute_infer.ns"] > 0 and s["inference_count"] == total
    page = gw.metrics()
    assert "sluice_requests_total" in page and "sluice_statistics" not in page, "kept off /metrics"

    # Load and unload through each worker in turn: one of them does not lead and passes the call on.
    admin = {"Authorization": f"Bearer {gw.admin_token}"}

    def states(url: str) -> set[str]:
        with httpx.Client(base_url=url, headers=key, timeout=10) as worker:
            index = _index(worker.post("/v2/repository/index").json())
        return {index[("classifier", "1")], index[("classifier", "2")]}

    for url, action, state in ((urls[0], "unload", "UNAVAILABLE"), (urls[1], "load", "READY")):
        with httpx.Client(base_url=url, timeout=30) as worker:
            refused = worker.post(f"/v2/repository/models/classifier/{action}", headers=key)
            assert refused.status_code == 403, "an inference key is not an admin token"
            answer = worker.post(f"/v2/repository/models/classifier/{action}", headers=admin)
            assert answer.status_code == 200, answer.text
        for each in urls:
            wait_until(lambda u=each, s=state: states(u) == {s}, timeout=30, what=f"classifier {state} on {each}")
    grpc_admin = {"authorization": f"Bearer {gw.admin_token}"}
    grpc_client.unload_model("classifier", headers=grpc_admin)
    for each in urls:
        wait_until(lambda u=each: states(u) == {"UNAVAILABLE"}, timeout=30, what=f"classifier unloaded on {each}")
    grpc_client.load_model("classifier", headers=grpc_admin)
    for each in urls:
        wait_until(lambda u=each: states(u) == {"READY"}, timeout=30, what=f"classifier loaded on {each}")
