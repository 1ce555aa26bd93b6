"""Start-up and SIGTERM: readiness follows loading, and a drain loses no accepted request.

The tests that neither stop nor reconfigure the gateway share one for the module (`idle_gateway`): the
readiness test sends no inference, so the disconnect test's counts are its own whichever runs first.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until
from tests.models import build_slow

SLOW_CONFIG = """\
batching:
  max_batch_size: 4
  max_concurrent_batches: 1
timeout_ms: 60000
runtime:
  intra_op_threads: 1
"""


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("lifecycle") / "models"
    build_slow(repo / "slow" / "1" / "model.onnx", matmuls=16, n=1024)  # about 0.3 s a call
    (repo / "slow" / "config.yaml").write_text(SLOW_CONFIG)
    return repo


@pytest.fixture(scope="module")
def idle_gateway(slow_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway on the slow model for the tests that leave it running as they found it."""
    with gateway_process(slow_repo, tmp=tmp_path_factory.mktemp("lifecycle-logs")) as gw:
        yield gw


def _http_infer(url: str, value: float) -> tuple[int, list[float]]:
    body = {"id": f"req-{value}", "inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [value]}]}
    r = httpx.post(f"{url}/v2/models/slow/infer", json=body, timeout=60)
    data = r.json()["outputs"][0]["data"] if r.status_code == 200 else []
    return r.status_code, data


def _grpc_infer(addr: str, value: float) -> float:
    client = grpcclient.InferenceServerClient(addr)
    x = grpcclient.InferInput("x", [1, 1], "FP32")
    x.set_data_from_numpy(np.array([[value]], dtype=np.float32))
    result = client.infer("slow", [x], client_timeout=60)
    client.close()
    return float(result.as_numpy("y")[0, 0])


def test_sigterm_drains_in_flight_and_queued_requests_then_exits_zero(slow_repo: Path, tmp_path: Path) -> None:
    with gateway_process(slow_repo, "--drain-timeout", "30", tmp=tmp_path) as gw, ThreadPoolExecutor(12) as pool:
        http_values = [float(i) for i in range(8)]
        grpc_values = [100.0 + i for i in range(4)]
        http_futures = [pool.submit(_http_infer, gw.http_url, v) for v in http_values]
        grpc_futures = [pool.submit(_grpc_infer, gw.grpc_addr, v) for v in grpc_values]

        # Every request is accepted (in flight, or already answered: on a busy box the last ones may arrive after
        # the first batch is done) before the signal, and some wait in the queue behind the running batch of 4.
        def accepted() -> bool:
            text = gw.metrics()
            in_flight = metric_value(text, "sluice_inflight_requests", model="slow")
            return in_flight + metric_value(text, "sluice_requests_total", 0.0, model="slow") == 12 and in_flight > 4

        wait_until(accepted, timeout=30, what="12 requests accepted, more than 4 of them in flight")
        gw.proc.send_signal(15)

        for value, future in zip(http_values, http_futures, strict=True):
            status, data = future.result(timeout=60)
            assert status == 200
            assert data == [value]
        for value, future in zip(grpc_values, grpc_futures, strict=True):
            assert future.result(timeout=60) == value
        assert gw.proc.wait(60) == 0

    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{gw.http_url}/v2/health/live", timeout=2)
    logs = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert "draining" in messages and messages[-1] == "stopped"


def test_ready_only_after_models_load(idle_gateway: GatewayProcess) -> None:
    """Live at once, ready once loaded; readiness and liveness are separate probes."""
    gw = idle_gateway
    assert httpx.get(f"{gw.http_url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{gw.http_url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{gw.http_url}/v2/models/slow/ready").status_code == 200
    text = gw.metrics()
    assert metric_value(text, "sluice_model_ready", model="slow", version="1") == 1
    logs = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
    listening = next(e for e in logs if e["msg"] == "listening")
    ready = next(e for e in logs if e["msg"] == "ready")
    assert logs.index(listening) < logs.index(ready)
    assert ready["models"] == ["slow"]


def test_port_in_use_is_a_clear_error(slow_repo: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--model-repo",
                str(slow_repo),
                "--http-port",
                str(port),
                "--grpc-port",
                "-1",
                "--state-dir",
                str(tmp_path / "state"),  # not the checkout's .sluice
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr and "Traceback" not in proc.stderr


def test_client_that_disconnects_gives_up_its_batch_slot(idle_gateway: GatewayProcess) -> None:
    """A request whose HTTP client went away while queued is never run."""
    gw = idle_gateway
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_http_infer, gw.http_url, 1.0)  # occupies the only runtime slot
        wait_until(lambda: metric_value(gw.metrics(), "sluice_inflight_requests", model="slow") == 1)

        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [2.0]}]}).encode()
        with socket.create_connection(("127.0.0.1", gw.http_port)) as sock:
            sock.sendall(
                b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            wait_until(lambda: metric_value(gw.metrics(), "sluice_inflight_requests", model="slow") == 2)
        # The socket is closed: the queued request is cancelled and leaves the queue.
        wait_until(lambda: metric_value(gw.metrics(), "sluice_inflight_requests", model="slow") == 1)

        third = pool.submit(_http_infer, gw.http_url, 3.0)
        assert first.result(60) == (200, [1.0])
        assert third.result(60) == (200, [3.0])
        text = gw.metrics()
        assert metric_value(text, "sluice_batch_size_sum", model="slow") == 2  # rows 1.0 and 3.0 only
        assert metric_value(text, "sluice_requests_total", model="slow", outcome="cancelled") == 1
