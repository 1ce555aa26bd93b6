"""A bad request never fails its batch-mates: a real ONNX model that raises at run time on some inputs.

`lookup` gathers rows of a fixed table: idx INT64 [batch, 1] -> out FP32 [batch, 1, 4]. ONNX
Runtime raises INVALID_ARGUMENT on an index outside [-10, 9], so a request with idx 50 passes
the gateway's validation (right name, datatype and shape) and fails only inside the runtime,
taking its whole batch down. The batcher must split that batch until the poisoned request stands
alone, so every good caller still gets exactly its own row and only the poisoned one gets
500 / INTERNAL.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until

MODEL = "lookup"
TABLE = (np.arange(40, dtype=np.float32).reshape(10, 4) * 1.5 + 0.25).astype(np.float32)
POISON = (50, 10, -11)  # out of range for a 10-row table: ONNX Runtime raises on each
GOOD_PER_ROUND = 40
MIN_ROUNDS, MAX_ROUNDS = 3, 10
CONFIG = """\
batching:
  max_batch_size: 64
  max_queue_delay_ms: 5
  max_concurrent_batches: 1
timeout_ms: 30000
runtime:
  execution_providers: [cpu]
  inline_max_ms: 0  # runtime threads: a batch runs while the next fills, so mixed batches form to be split
"""


def build_lookup(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)],
        MODEL,
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 1, 4])],
        initializer=[numpy_helper.from_array(TABLE, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def lookup_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("faults") / "models"
    build_lookup(repo / MODEL / "1" / "model.onnx")
    (repo / MODEL / "config.yaml").write_text(CONFIG)
    return repo


@pytest.fixture(scope="module")
def lookup_gateway(lookup_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(lookup_repo, tmp=tmp_path_factory.mktemp("faults-logs")) as gw:
        yield gw


def _metric(text: str, name: str, **labels: str) -> float:
    return metric_value(text, name, 0.0, model=MODEL, **labels)


@dataclass
class Snapshot:
    ok: float
    errors: float
    failures: float
    batch_rows: float
    batches: float

    @classmethod
    def take(cls, gw: GatewayProcess) -> Snapshot:
        text = gw.metrics()
        return cls(
            ok=_metric(text, "sluice_requests_total", outcome="ok"),
            errors=_metric(text, "sluice_requests_total", outcome="error"),
            failures=_metric(text, "sluice_batch_failures_total"),
            batch_rows=_metric(text, "sluice_batch_size_sum"),
            batches=_metric(text, "sluice_batch_size_count"),
        )


@dataclass
class Outcome:
    status: str
    """'200' on success, else the HTTP status or the gRPC status code name."""
    rows: np.ndarray | None
    message: str


def _feed(idx: int) -> np.ndarray:
    return np.array([[idx]], dtype=np.int64)


def _expected(idx: int) -> np.ndarray:
    return TABLE[[idx]][:, None, :]


def http_triton(addr: str, idx: int) -> Outcome:
    client = httpclient.InferenceServerClient(addr, network_timeout=30.0)
    try:
        x = httpclient.InferInput("idx", [1, 1], "INT64")
        x.set_data_from_numpy(_feed(idx), binary_data=True)
        out = httpclient.InferRequestedOutput("out", binary_data=True)
        result = client.infer(MODEL, [x], outputs=[out])
        return Outcome("200", result.as_numpy("out"), "")
    except InferenceServerException as exc:
        return Outcome(str(exc.status()), None, exc.message())
    finally:
        client.close()


def http_raw(http: httpx.Client, url: str, idx: int) -> Outcome:
    body = {"id": f"raw-{idx}", "inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [idx]}]}
    r = http.post(f"{url}/v2/models/{MODEL}/infer", json=body)
    doc = r.json()
    if r.status_code != 200:
        assert set(doc) == {"error"}, f"not a V2 error body: {doc}"
        return Outcome(str(r.status_code), None, doc["error"])
    (output,) = doc["outputs"]
    assert output["name"] == "out" and output["datatype"] == "FP32" and output["shape"] == [1, 1, 4]
    return Outcome("200", np.array(output["data"], dtype=np.float32).reshape(output["shape"]), "")


def grpc_triton(addr: str, idx: int) -> Outcome:
    client = grpcclient.InferenceServerClient(addr)
    try:
        x = grpcclient.InferInput("idx", [1, 1], "INT64")
        x.set_data_from_numpy(_feed(idx))
        result = client.infer(MODEL, [x], client_timeout=30)
        return Outcome("200", result.as_numpy("out"), "")
    except InferenceServerException as exc:
        return Outcome(str(exc.status()).removeprefix("StatusCode."), None, exc.message())
    finally:
        client.close()


Call = Callable[[int], Outcome]


def fire_round(calls: list[tuple[int, Call]]) -> list[Outcome]:
    """Run every call at once: each thread waits at a barrier, then sends."""
    barrier = threading.Barrier(len(calls))

    def one(idx: int, call: Call) -> Outcome:
        barrier.wait(timeout=30)
        return call(idx)

    with ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(one, idx, call) for idx, call in calls]
        return [f.result(timeout=60) for f in futures]


def run_rounds(gw: GatewayProcess, good_calls: list[Call], bad_calls: list[Call], seed: int) -> tuple[int, int]:
    """Mixed rounds of good and poisoned requests until a mixed batch failed; checks every answer."""
    rng = random.Random(seed)
    before = Snapshot.take(gw)
    good = bad = 0
    for round_no in range(MAX_ROUNDS):
        calls: list[tuple[int, Call]] = [(i % 10, good_calls[i % len(good_calls)]) for i in range(GOOD_PER_ROUND)]
        calls += [(p, bad_calls[j % len(bad_calls)]) for j, p in enumerate(POISON)]
        rng.shuffle(calls)
        for (idx, _), outcome in zip(calls, fire_round(calls), strict=True):
            if 0 <= idx < 10:
                good += 1
                assert outcome.status == "200", f"good idx {idx} failed: {outcome.status} {outcome.message}"
                assert outcome.rows is not None
                np.testing.assert_array_equal(outcome.rows, _expected(idx))
            else:
                bad += 1
                assert outcome.status in ("500", "INTERNAL"), f"poisoned idx {idx}: {outcome.status}"
                assert MODEL in outcome.message and f"idx={idx}" in outcome.message, outcome.message
        now = Snapshot.take(gw)
        if round_no + 1 >= MIN_ROUNDS and now.failures - before.failures > len(POISON) * (round_no + 1):
            break
    after = Snapshot.take(gw)
    assert after.ok - before.ok == good
    assert after.errors - before.errors == bad
    failures = after.failures - before.failures
    # Each poisoned request fails at least once alone; more than that means a batch with
    # good requests in it failed and was split.
    assert failures > bad, f"no mixed batch failed in {round_no + 1} rounds ({failures} failures, {bad} poisoned)"
    batches = after.batches - before.batches
    assert (after.batch_rows - before.batch_rows) / batches > 1, "requests were never batched together"
    return good, bad


def test_onnxruntime_itself_raises_on_an_out_of_range_index(lookup_repo: Path) -> None:
    session = ort.InferenceSession(str(lookup_repo / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (rows,) = session.run(None, {"idx": np.array([[3], [0], [9]], dtype=np.int64)})
    np.testing.assert_array_equal(rows, TABLE[[3, 0, 9]][:, None, :])
    for bad in POISON:
        with pytest.raises(Exception, match="out of data bounds"):
            session.run(None, {"idx": _feed(bad)})


def test_poisoned_requests_over_http_never_fail_their_batch_mates(lookup_gateway: GatewayProcess) -> None:
    gw = lookup_gateway
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64)) as http:
        calls: list[Call] = [
            lambda i: http_triton(gw.http_addr, i),
            lambda i: http_raw(http, gw.http_url, i),
        ]
        good, bad = run_rounds(gw, calls, calls, seed=1)
    assert good >= MIN_ROUNDS * GOOD_PER_ROUND and bad >= MIN_ROUNDS * len(POISON)


def test_poisoned_requests_over_grpc_never_fail_their_batch_mates(lookup_gateway: GatewayProcess) -> None:
    gw = lookup_gateway
    calls: list[Call] = [lambda i: grpc_triton(gw.grpc_addr, i)]
    good, bad = run_rounds(gw, calls, calls, seed=2)
    assert good >= MIN_ROUNDS * GOOD_PER_ROUND and bad >= MIN_ROUNDS * len(POISON)


def test_mixed_protocols_in_one_batch(lookup_gateway: GatewayProcess) -> None:
    gw = lookup_gateway
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=64)) as http:
        calls: list[Call] = [
            lambda i: http_triton(gw.http_addr, i),
            lambda i: grpc_triton(gw.grpc_addr, i),
            lambda i: http_raw(http, gw.http_url, i),
        ]
        run_rounds(gw, calls, calls, seed=3)


def test_a_lone_runtime_failure_is_500_and_the_gateway_serves_the_next_request(lookup_gateway: GatewayProcess) -> None:
    gw = lookup_gateway
    before = Snapshot.take(gw)
    r = httpx.post(
        f"{gw.http_url}/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [50]}]},
        timeout=30,
    )
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/json"
    assert MODEL in r.json()["error"] and "idx=50" in r.json()["error"]

    client = grpcclient.InferenceServerClient(gw.grpc_addr)
    try:
        x = grpcclient.InferInput("idx", [1, 1], "INT64")
        x.set_data_from_numpy(_feed(50))
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [x], client_timeout=30)
        assert caught.value.status() == str(grpc.StatusCode.INTERNAL)
        assert MODEL in caught.value.message()

        # The next requests, on the same connections, are answered.
        x.set_data_from_numpy(_feed(7))
        np.testing.assert_array_equal(client.infer(MODEL, [x], client_timeout=30).as_numpy("out"), _expected(7))
    finally:
        client.close()
    ok = http_triton(gw.http_addr, 4)
    assert ok.status == "200" and ok.rows is not None
    np.testing.assert_array_equal(ok.rows, _expected(4))

    # A request whose own rows are partly bad fails whole; it is one request, not a batch-mate.
    r = httpx.post(
        f"{gw.http_url}/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "idx", "shape": [2, 1], "datatype": "INT64", "data": [2, 50]}]},
        timeout=30,
    )
    assert r.status_code == 500 and MODEL in r.json()["error"]

    after = Snapshot.take(gw)
    assert after.ok - before.ok == 2
    assert after.errors - before.errors == 3
    assert after.failures - before.failures == 3
    assert gw.proc.poll() is None
    assert httpx.get(f"{gw.http_url}/v2/models/{MODEL}/ready", timeout=5).status_code == 200


def test_a_failure_is_logged_as_json_with_its_request_id(lookup_gateway: GatewayProcess) -> None:
    body = {"id": "find-me-7f3a", "inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [50]}]}
    assert httpx.post(f"{lookup_gateway.http_url}/v2/models/lookup/infer", json=body).status_code == 500

    def entries() -> list[dict[str, object]]:
        lines = lookup_gateway.logs().splitlines()
        return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e.get("request_id") == "find-me-7f3a"]

    wait_until(lambda: entries(), timeout=10, what="a log line carrying the request id")
    entry = entries()[0]
    assert entry["level"] == "warning" and "lookup" in entry["msg"] and entry["model"] == "lookup"
