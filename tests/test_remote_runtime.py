"""Sluice fronting another V2 server: the remote runtime end to end, with real servers only.

- Sluice A serves the demo repository (the session's `demo_gateway`).
- Sluice C serves a deliberately slow real ONNX model (`slow`, y = x after a chain of n*n
  matrix products sized so one call takes about 1.5 s on one thread) and the demo `mlp`.
- Sluice B serves only `kind: remote` models: A's mlp over gRPC and over HTTP, A's multi_io,
  C's slow model with `timeout_ms: 300`, and remotes that cannot load (a model A lacks, a port
  where nothing listens, and a TCP server that accepts connections and never answers).

Every call goes through the real tritonclient (HTTP and gRPC) or raw httpx; expected values come
from A itself and from ONNX Runtime run directly on the demo repository's files.
"""

from __future__ import annotations

import functools
import math
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.cli.demo import build_reference_mlp
from loadtests.ports import free_port
from tests.helpers import GatewayProcess, gateway_process, metric_value
from tests.models import build_slow

PROTOCOLS = ("http", "grpc")
MLP_OUT = ["output"]
MULTI_OUT = ["scores", "count", "inverted"]
RTOL, ATOL = 1e-5, 1e-6
SLOW_TARGET_S = 2.0  # well above the 1 s the tests need, so a loaded machine cannot make it come up short
B_TIMEOUT_MS = 300
C_SLOW_TIMEOUT_MS = 1000  # below one call of C's slow model: a caller must ask for more time to get an answer

# -- clients ----------------------------------------------------------------------------------


def infer(
    protocol: str,
    addr: str,
    model: str,
    feeds: dict[str, np.ndarray],
    outputs: list[str],
    version: str = "",
    timeout_us: int | None = None,
    client_timeout: float | None = 30.0,
) -> dict[str, np.ndarray]:
    """One request with the real tritonclient; raises InferenceServerException on an error.

    `timeout_us` is the V2 `timeout` request parameter; `client_timeout` the gRPC deadline
    (None: no deadline, so the server's own timeout decides).
    """
    if protocol == "http":
        hc = httpclient.InferenceServerClient(addr, network_timeout=30.0)
        try:
            inputs = []
            for name, array in feeds.items():
                x = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
                x.set_data_from_numpy(array, binary_data=True)
                inputs.append(x)
            wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in outputs]
            result = hc.infer(model, inputs, model_version=version, outputs=wanted, timeout=timeout_us)
            return {n: result.as_numpy(n) for n in outputs}
        finally:
            hc.close()
    gc = grpcclient.InferenceServerClient(addr)
    try:
        inputs = []
        for name, array in feeds.items():
            x = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            x.set_data_from_numpy(array)
            inputs.append(x)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs]
        result = gc.infer(
            model, inputs, model_version=version, outputs=wanted, timeout=timeout_us, client_timeout=client_timeout
        )
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        gc.close()


def metadata(protocol: str, addr: str, model: str, version: str = "") -> dict[str, Any]:
    if protocol == "http":
        hc = httpclient.InferenceServerClient(addr, network_timeout=30.0)
        try:
            meta: dict[str, Any] = hc.get_model_metadata(model, version)
        finally:
            hc.close()
    else:
        gc = grpcclient.InferenceServerClient(addr)
        try:
            meta = gc.get_model_metadata(model, version, as_json=True)
        finally:
            gc.close()
    for key in ("inputs", "outputs"):  # gRPC-as-JSON spells int64 dims as strings
        meta[key] = [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[key]]
    return meta


def addr_of(gw: GatewayProcess, protocol: str) -> str:
    return gw.http_addr if protocol == "http" else gw.grpc_addr


def status_of(exc: InferenceServerException) -> str:
    return str(exc.status()).removeprefix("StatusCode.")


@functools.cache
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def reference(repo: Path, model: str, version: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(str(repo / model / version / "model.onnx"))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def mlp_rows(seed: int, rows: int = 5) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((rows, 32)).astype(np.float32)}


def assert_close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    for name, expected in want.items():
        assert got[name].dtype == expected.dtype, name
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


# -- the slow model and the black hole --------------------------------------------------------


def time_one_call(path: Path, calls: int = 1) -> float:
    """The quickest of `calls` timed calls: a busy machine only ever makes a call slower, so the
    minimum is the figure a quiet moment can reach, the one a timeout test must stay above."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.array([[0.5], [-2.0]], dtype=np.float32)
    sess.run(None, {"x": x})  # first call pays for lazy initialisation
    quickest = math.inf
    for _ in range(calls):
        started = time.perf_counter()
        (y,) = sess.run(None, {"x": x})
        quickest = min(quickest, time.perf_counter() - started)
        np.testing.assert_array_equal(y, x)
    return quickest


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections, holds them, and never writes a byte."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.addr = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        for conn in self._conns:
            conn.close()


# -- the servers ------------------------------------------------------------------------------


def remote(url: str, protocol: str, model: str, *, timeout_ms: int = 10_000, versions: str = "[1]") -> str:
    return f"""\
runtime:
  kind: remote
  url: "{url}"
  protocol: {protocol}
  remote_model: {model}
  versions: {versions}
version_policy:
  all: true
timeout_ms: {timeout_ms}
batching:
  max_batch_size: 64
  max_queue_delay_ms: 5
  max_concurrent_batches: 2
"""


@pytest.fixture(scope="module")
def slow_matmuls(tmp_path_factory: pytest.TempPathFactory) -> int:
    """How many 1024x1024 products make one call take about SLOW_TARGET_S here, measured."""
    probe = build_slow(tmp_path_factory.mktemp("probe") / "slow.onnx", matmuls=16)
    per_product = time_one_call(probe, calls=5) / 16
    return max(4, min(4000, math.ceil(SLOW_TARGET_S / per_product)))


@pytest.fixture(scope="module")
def sluice_c(slow_matmuls: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repo = tmp_path_factory.mktemp("c") / "models"
    matmuls = slow_matmuls
    for _ in range(3):  # a probe taken while the machine was busy comes out short: grow and time again
        slow = build_slow(repo / "slow" / "1" / "model.onnx", matmuls=matmuls)
        elapsed = time_one_call(slow)
        if elapsed >= 0.75 * SLOW_TARGET_S:
            break
        matmuls = min(8000, math.ceil(matmuls * SLOW_TARGET_S / elapsed))
    assert elapsed >= 1.0, f"slow model takes only {elapsed:.2f}s with {matmuls} products"
    (repo / "slow" / "config.yaml").write_text(
        f"batching:\n  max_batch_size: 8\n  max_concurrent_batches: 1\ntimeout_ms: {C_SLOW_TIMEOUT_MS}\n"
        "runtime:\n  intra_op_threads: 1\n  execution_providers: [cpu]\n"
    )
    build_reference_mlp(repo / "mlp" / "1" / "model.onnx", 1234)
    # Enough runtime threads that a busy slow model never holds up the mlp.
    with gateway_process(repo, "--runtime-threads", "4", tmp=tmp_path_factory.mktemp("c-logs")) as gw:
        yield gw


@pytest.fixture(scope="module")
def blackhole() -> Iterator[BlackHole]:
    hole = BlackHole()
    try:
        yield hole
    finally:
        hole.close()


@pytest.fixture(scope="module")
def dead_addr() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def sluice_b(
    demo_gateway: GatewayProcess,
    sluice_c: GatewayProcess,
    blackhole: BlackHole,
    dead_addr: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    a, c = demo_gateway, sluice_c
    models = {
        "mlp_grpc": remote(a.grpc_addr, "grpc", "mlp", versions="[1, 2]"),
        "mlp_http": remote(a.http_addr, "http", "mlp", versions="[1, 2]"),
        "multi_remote": remote(a.grpc_addr, "grpc", "multi_io"),
        "multi_remote_http": remote(a.http_addr, "http", "multi_io"),
        "slow_grpc": remote(c.grpc_addr, "grpc", "slow", timeout_ms=B_TIMEOUT_MS),
        "slow_http": remote(c.http_addr, "http", "slow", timeout_ms=B_TIMEOUT_MS),
        "missing_grpc": remote(a.grpc_addr, "grpc", "no_such_model"),
        "missing_http": remote(a.http_addr, "http", "no_such_model"),
        "dead_grpc": remote(dead_addr, "grpc", "mlp", timeout_ms=2000),
        "dead_http": remote(dead_addr, "http", "mlp", timeout_ms=2000),
        "hole_grpc": remote(blackhole.addr, "grpc", "mlp", timeout_ms=1000),
        "hole_http": remote(blackhole.addr, "http", "mlp", timeout_ms=1000),
    }
    repo = tmp_path_factory.mktemp("b") / "models"
    for name, config in models.items():
        (repo / name).mkdir(parents=True)
        (repo / name / "config.yaml").write_text(config)
    with gateway_process(repo, tmp=tmp_path_factory.mktemp("b-logs")) as gw:
        yield gw


# -- metadata -----------------------------------------------------------------------------------

FRONTED = [("mlp_grpc", "mlp", "grpc"), ("mlp_http", "mlp", "http"), ("multi_remote", "multi_io", "grpc")]


@pytest.mark.parametrize("client", PROTOCOLS)
@pytest.mark.parametrize(("b_model", "a_model", "via"), FRONTED)
def test_metadata_mirrors_the_remote(
    sluice_b: GatewayProcess, demo_gateway: GatewayProcess, client: str, b_model: str, a_model: str, via: str
) -> None:
    theirs = metadata(client, addr_of(demo_gateway, client), a_model)
    ours = metadata(client, addr_of(sluice_b, client), b_model)
    assert ours["name"] == b_model
    assert ours["platform"] == "remote_v2"
    assert ours["versions"] == theirs["versions"]
    assert ours["inputs"] == theirs["inputs"]
    assert ours["outputs"] == theirs["outputs"]
    if client == "http":  # V2 gRPC metadata has no parameters
        params = ours["parameters"]
        assert params["remote_url"] == addr_of(demo_gateway, via)
        assert params["remote_model"] == a_model
        assert params["remote_platform"] == theirs["platform"] == "onnxruntime_onnx"
        assert params["remote_version"] == params["version"] == theirs["versions"][-1]
    text = sluice_b.metrics()
    for version in ours["versions"]:
        assert metric_value(text, "sluice_execution_provider", model=b_model, version=version) == 1
        assert metric_value(text, "sluice_execution_provider", model=b_model, provider=f"remote:{via}") >= 1
        assert metric_value(text, "sluice_model_ready", model=b_model, version=version) == 1


def test_version_metadata_names_the_remote_version(sluice_b: GatewayProcess) -> None:
    for version in ("1", "2"):
        meta = httpx.get(f"{sluice_b.http_url}/v2/models/mlp_grpc/versions/{version}", timeout=10).json()
        assert meta["parameters"]["version"] == meta["parameters"]["remote_version"] == version
        assert meta["parameters"]["max_batch_size"] == "64"


@pytest.mark.parametrize(("b_model", "via"), [("mlp_grpc", "grpc"), ("mlp_http", "http")])
def test_metadata_parameters_name_the_remote_execution_provider(
    sluice_b: GatewayProcess, b_model: str, via: str
) -> None:
    meta = httpx.get(f"{sluice_b.http_url}/v2/models/{b_model}", timeout=10).json()
    assert meta["parameters"]["execution_provider"] == f"remote:{via}"


def test_model_config_of_a_remote_version_says_what_is_known(
    sluice_b: GatewayProcess, demo_gateway: GatewayProcess
) -> None:
    """Triton's model configuration of a proxied version: its batching and the remote it runs on; the remote
    decides where (KIND_MODEL)."""
    http = httpclient.InferenceServerClient(sluice_b.http_addr)
    grpc_client = grpcclient.InferenceServerClient(sluice_b.grpc_addr)
    try:
        for config in (
            http.get_model_config("mlp_grpc", "1"),
            grpc_client.get_model_config("mlp_grpc", "1", as_json=True),
        ):
            config = config.get("config", config)
            assert config["platform"] == "remote_v2"
            assert int(config["max_batch_size"]) == 64
            assert [[int(d) for d in t["dims"]] for t in config["input"]] == [[32]]
            assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 5000
            [group] = config["instance_group"]
            assert group["kind"] == "KIND_MODEL" and int(group["count"]) == 2
            params = {k: v["string_value"] for k, v in config["parameters"].items()}
            assert params["remote_url"] == demo_gateway.grpc_addr and params["remote_model"] == "mlp"
            assert params["runtime_kind"] == "remote" and params["version"] == "1"
    finally:
        http.close()
        grpc_client.close()


# -- inference ----------------------------------------------------------------------------------


@pytest.mark.parametrize("client", PROTOCOLS)
@pytest.mark.parametrize("b_model", ["mlp_grpc", "mlp_http"])
def test_answers_equal_the_remote_and_onnxruntime(
    sluice_b: GatewayProcess,
    demo_gateway: GatewayProcess,
    demo_repo: Path,
    client: str,
    b_model: str,
) -> None:
    for seed in range(3):
        feeds = mlp_rows(seed, rows=1 + 3 * seed)
        ours = infer(client, addr_of(sluice_b, client), b_model, feeds, MLP_OUT)
        theirs = infer(client, addr_of(demo_gateway, client), "mlp", feeds, MLP_OUT)
        assert_close(ours, theirs)
        assert_close(ours, reference(demo_repo, "mlp", "2", feeds))  # newest version by default


@pytest.mark.parametrize("client", PROTOCOLS)
@pytest.mark.parametrize("b_model", ["mlp_grpc", "mlp_http"])
def test_version_pinning_goes_through(
    sluice_b: GatewayProcess,
    demo_gateway: GatewayProcess,
    demo_repo: Path,
    client: str,
    b_model: str,
) -> None:
    feeds = mlp_rows(7, rows=4)
    answers = {}
    for version in ("1", "2"):
        ours = infer(client, addr_of(sluice_b, client), b_model, feeds, MLP_OUT, version=version)
        theirs = infer(client, addr_of(demo_gateway, client), "mlp", feeds, MLP_OUT, version=version)
        assert_close(ours, theirs)
        assert_close(ours, reference(demo_repo, "mlp", version, feeds))
        answers[version] = ours["output"]
    assert not np.allclose(answers["1"], answers["2"]), "versions 1 and 2 should answer differently"


@pytest.mark.parametrize("client", PROTOCOLS)
@pytest.mark.parametrize("b_model", ["multi_remote", "multi_remote_http"])
def test_multi_io_datatypes_round_trip(
    sluice_b: GatewayProcess,
    demo_gateway: GatewayProcess,
    demo_repo: Path,
    client: str,
    b_model: str,
) -> None:
    rng = np.random.default_rng(11)
    feeds = {
        "features": rng.standard_normal((3, 4)).astype(np.float32),
        "offsets": rng.integers(-(2**40), 2**40, (3, 4)).astype(np.int64) // (2**20),
        "mask": rng.integers(0, 2, (3, 4)).astype(np.bool_),
    }
    ours = infer(client, addr_of(sluice_b, client), b_model, feeds, MULTI_OUT)
    assert {k: v.dtype for k, v in ours.items()} == {
        "scores": np.dtype(np.float64),
        "count": np.dtype(np.int32),
        "inverted": np.dtype(np.bool_),
    }
    theirs = infer(client, addr_of(demo_gateway, client), "multi_io", feeds, MULTI_OUT)
    for name in MULTI_OUT:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert_close(ours, reference(demo_repo, "multi_io", "1", feeds))
    np.testing.assert_array_equal(ours["inverted"], ~feeds["mask"])


@pytest.mark.parametrize("b_model", ["mlp_grpc", "mlp_http"])
def test_concurrent_requests_are_batched_and_each_caller_gets_its_own_rows(
    sluice_b: GatewayProcess, demo_repo: Path, b_model: str
) -> None:
    def sums() -> tuple[float, float]:
        text = sluice_b.metrics()
        return (
            metric_value(text, "sluice_batch_size_sum", model=b_model),
            metric_value(text, "sluice_batch_size_count", model=b_model),
        )

    n = 64
    barrier = threading.Barrier(n)

    def one(i: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        feeds = mlp_rows(1000 + i, rows=1 + i % 3)
        client = PROTOCOLS[i % 2]
        barrier.wait(timeout=30)
        return feeds, infer(client, addr_of(sluice_b, client), b_model, feeds, MLP_OUT)

    rows_before, batches_before = sums()
    with ThreadPoolExecutor(n) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(one, i) for i in range(n)]]
    rows_after, batches_after = sums()
    for feeds, got in results:
        assert_close(got, reference(demo_repo, "mlp", "2", feeds))
    rows = rows_after - rows_before
    assert rows == sum(f["input"].shape[0] for f, _ in results)
    assert rows / (batches_after - batches_before) > 1, "64 concurrent requests were never batched together"


# -- remotes that cannot load -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("b_model", "why"),
    [
        ("missing_grpc", "not in the repository"),
        ("missing_http", "not in the repository"),
        ("dead_grpc", "cannot read model metadata"),
        ("dead_http", "cannot read model metadata"),
        ("hole_grpc", "deadline"),
        ("hole_http", "timeout"),
    ],
)
def test_a_remote_that_cannot_load_is_not_ready_and_the_others_serve(
    sluice_b: GatewayProcess,
    demo_gateway: GatewayProcess,
    blackhole: BlackHole,
    dead_addr: str,
    demo_repo: Path,
    b_model: str,
    why: str,
) -> None:
    url = {
        "missing_grpc": demo_gateway.grpc_addr,
        "missing_http": demo_gateway.http_addr,
        "dead_grpc": dead_addr,
        "dead_http": dead_addr,
        "hole_grpc": blackhole.addr,
        "hole_http": blackhole.addr,
    }[b_model]
    b = sluice_b
    assert httpx.get(f"{b.http_url}/v2/health/ready", timeout=5).status_code == 200
    r = httpx.get(f"{b.http_url}/v2/models/{b_model}/ready", timeout=5)
    assert r.status_code == 503 and r.json()["ready"] is False
    r = httpx.get(f"{b.http_url}/v2/models/{b_model}", timeout=5)
    assert r.status_code == 503
    message = r.json()["error"]
    assert url in message and why in message.lower(), message
    assert metric_value(b.metrics(), "sluice_model_ready", model=b_model) == 0

    gc = grpcclient.InferenceServerClient(b.grpc_addr)
    try:
        assert gc.is_model_ready(b_model) is False
    finally:
        gc.close()
    feeds = mlp_rows(3, rows=2)
    for client in PROTOCOLS:
        with pytest.raises(InferenceServerException) as caught:
            infer(client, addr_of(b, client), b_model, feeds, MLP_OUT)
        assert status_of(caught.value) == ("503" if client == "http" else "UNAVAILABLE")
        assert url in caught.value.message()
        # ... and the healthy remotes still answer.
        assert_close(
            infer(client, addr_of(b, client), "mlp_grpc", feeds, MLP_OUT), reference(demo_repo, "mlp", "2", feeds)
        )
    if b_model.startswith("hole"):
        assert blackhole.accepted >= 1, "the black hole never saw a connection"


# -- a remote that does not answer in time ------------------------------------------------------


def _count(gw: GatewayProcess, model: str, outcome: str) -> float:
    return metric_value(gw.metrics(), "sluice_requests_total", 0.0, model=model, outcome=outcome)


def _timed(call: Any) -> tuple[float, InferenceServerException | None]:
    started = time.monotonic()
    try:
        call()
    except InferenceServerException as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


SLOW_X = {"x": np.array([[1.5]], dtype=np.float32)}


@pytest.mark.parametrize("client", PROTOCOLS)
@pytest.mark.parametrize("b_model", ["slow_grpc", "slow_http"])
def test_a_slow_remote_times_out_and_the_other_models_keep_answering(
    sluice_b: GatewayProcess, demo_repo: Path, client: str, b_model: str
) -> None:
    """The caller sets no deadline of its own, so B's `timeout_ms: 300` decides."""
    b = sluice_b
    feeds = mlp_rows(5, rows=3)
    want = reference(demo_repo, "mlp", "2", feeds)
    before = _count(b, b_model, "timeout")

    answered_during = 0
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            _timed, lambda: infer(client, addr_of(b, client), b_model, SLOW_X, ["y"], client_timeout=None)
        )
        while not future.done():
            assert_close(infer(client, addr_of(b, client), "mlp_grpc", feeds, MLP_OUT), want)
            answered_during += 1
        elapsed, error = future.result()
    assert error is not None, f"the slow remote answered within {B_TIMEOUT_MS} ms"
    assert status_of(error) == ("504" if client == "http" else "DEADLINE_EXCEEDED"), error
    assert "timed out" in error.message(), error.message()
    assert elapsed < 2.0, f"the timeout took {elapsed:.2f}s"
    assert answered_during >= 1, "no other request was answered while the slow one waited"

    # B is alive and keeps serving, on both remote protocols.
    assert b.proc.poll() is None
    assert httpx.get(f"{b.http_url}/v2/health/ready", timeout=5).status_code == 200
    for other in ("mlp_grpc", "mlp_http"):
        assert_close(infer(client, addr_of(b, client), other, feeds, MLP_OUT), want)
    assert _count(b, b_model, "timeout") - before == 1


def test_a_callers_short_grpc_deadline_is_honoured_through_b(sluice_b: GatewayProcess) -> None:
    elapsed, error = _timed(lambda: infer("grpc", sluice_b.grpc_addr, "slow_grpc", SLOW_X, ["y"], client_timeout=0.15))
    assert error is not None and status_of(error) == "DEADLINE_EXCEEDED", error
    assert elapsed < 1.0


@pytest.mark.parametrize("b_model", ["slow_grpc", "slow_http"])
def test_a_remote_timeout_is_a_gateway_timeout_even_when_the_caller_allows_longer(
    sluice_b: GatewayProcess, b_model: str
) -> None:
    """The caller allows 5 s; B's remote client gives up after its timeout_ms (300 ms): that is a 504."""
    elapsed, error = _timed(lambda: infer("http", sluice_b.http_addr, b_model, SLOW_X, ["y"], timeout_us=5_000_000))
    assert error is not None
    assert elapsed < 2.0
    assert status_of(error) == "504", f"{status_of(error)}: {error.message()}"


def test_a_remote_timeout_is_not_retried_batch_half_by_batch_half(sluice_b: GatewayProcess) -> None:
    n = 8
    barrier = threading.Barrier(n)

    def one(_: int) -> tuple[float, InferenceServerException | None]:
        barrier.wait(timeout=30)
        return _timed(lambda: infer("http", sluice_b.http_addr, "slow_grpc", SLOW_X, ["y"], timeout_us=20_000_000))

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n), timeout=60))
    assert all(error is not None for _, error in results)
    slowest = max(elapsed for elapsed, _ in results)
    assert slowest < 4 * B_TIMEOUT_MS / 1000, f"a caller waited {slowest:.2f}s for a {B_TIMEOUT_MS} ms remote timeout"


# -- C itself: the V2 timeout parameter and gRPC deadlines on a slow model -----------------------


def test_the_slow_model_really_is_slow_and_answers_given_time(sluice_c: GatewayProcess) -> None:
    x = np.array([[0.25], [2.0]], dtype=np.float32)
    started = time.monotonic()
    y = infer("http", sluice_c.http_addr, "slow", {"x": x}, ["y"], timeout_us=30_000_000)["y"]
    assert time.monotonic() - started >= 1.0
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("client", ["raw-http", *PROTOCOLS])
def test_v2_timeout_parameter_on_a_slow_model(sluice_c: GatewayProcess, demo_repo: Path, client: str) -> None:
    c = sluice_c
    before = _count(c, "slow", "timeout")
    started = time.monotonic()
    if client == "raw-http":
        r = httpx.post(
            f"{c.http_url}/v2/models/slow/infer",
            json={
                "parameters": {"timeout": 200_000},
                "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3.0]}],
            },
            timeout=30,
        )
        elapsed = time.monotonic() - started
        assert r.status_code == 504
        assert "timed out" in r.json()["error"]
    else:
        with pytest.raises(InferenceServerException) as caught:
            infer(client, addr_of(c, client), "slow", SLOW_X, ["y"], timeout_us=200_000)
        elapsed = time.monotonic() - started
        assert status_of(caught.value) == ("504" if client == "http" else "DEADLINE_EXCEEDED")
        assert "timed out" in caught.value.message()
    assert elapsed < 1.5, f"the 200 ms timeout took {elapsed:.2f}s"

    feeds = mlp_rows(9, rows=2)
    assert_close(infer("http", c.http_addr, "mlp", feeds, MLP_OUT), reference(demo_repo, "mlp", "1", feeds))
    assert c.proc.poll() is None
    assert _count(c, "slow", "timeout") - before >= 1


def test_a_long_grpc_deadline_does_not_lengthen_the_models_timeout(sluice_c: GatewayProcess) -> None:
    """C's slow model has timeout_ms 1000 and takes ~1.5 s: HTTP gets 504, and so must gRPC."""
    elapsed, error = _timed(lambda: infer("http", sluice_c.http_addr, "slow", SLOW_X, ["y"]))
    assert error is not None and status_of(error) == "504", "HTTP with no timeout should get the model's 1 s"
    elapsed, error = _timed(lambda: infer("grpc", sluice_c.grpc_addr, "slow", SLOW_X, ["y"], client_timeout=30))
    assert error is not None, f"answered after {elapsed:.2f}s, past the model's {C_SLOW_TIMEOUT_MS} ms timeout"
    assert status_of(error) == "DEADLINE_EXCEEDED"
