"""Optional inference keys: off by default (every other test), enforced over both protocols when set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess, gateway_process

KEY = "app-key-0123456789abcdef"
BODY = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}]}


@pytest.fixture(scope="module")
def keyed(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(
        demo_repo, tmp=tmp_path_factory.mktemp("keys"), env={"SLUICE_INFERENCE_KEYS": f"checkout-app:{KEY}"}
    ) as gw:
        yield gw


def test_http_infer_needs_a_key_when_keys_are_set(keyed: GatewayProcess) -> None:
    url = f"{keyed.http_url}/v2/models/mlp/infer"
    missing = httpx.post(url, json=BODY)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in missing.json()["error"]
    wrong = httpx.post(url, json=BODY, headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 403 and wrong.json() == {"error": "invalid inference key"}
    assert httpx.post(url, json=BODY, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_model_metadata_is_guarded_but_probes_and_metrics_stay_open(keyed: GatewayProcess) -> None:
    base = keyed.http_url
    assert httpx.get(f"{base}/v2/models/mlp").status_code == 401
    assert httpx.get(f"{base}/v2/models/mlp/ready").status_code == 401
    assert httpx.get(f"{base}/v2/models/mlp", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    for open_path in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics"):
        assert httpx.get(f"{base}{open_path}").status_code == 200


def test_tritonclient_http_and_grpc_send_the_key_as_a_header(keyed: GatewayProcess) -> None:
    x = np.full((1, 32), 0.25, np.float32)
    auth = {"Authorization": f"Bearer {KEY}"}
    http = httpclient.InferenceServerClient(keyed.http_addr)
    hin = httpclient.InferInput("input", [1, 32], "FP32")
    hin.set_data_from_numpy(x)
    assert http.infer("mlp", [hin], headers=auth).as_numpy("output").shape == (1, 8)
    with pytest.raises(InferenceServerException, match=r"401|bearer"):
        http.infer("mlp", [hin])
    http.close()

    client = grpcclient.InferenceServerClient(keyed.grpc_addr)
    gin = grpcclient.InferInput("input", [1, 32], "FP32")
    gin.set_data_from_numpy(x)
    assert client.infer("mlp", [gin], headers={"authorization": f"Bearer {KEY}"}).as_numpy("output").shape == (1, 8)
    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        client.infer("mlp", [gin])
    with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
        client.infer("mlp", [gin], headers={"authorization": "Bearer wrong"})
    client.close()


def test_grpc_metadata_is_guarded(keyed: GatewayProcess) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(keyed.grpc_addr) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="mlp"))
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        ok = stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name="mlp"), metadata=(("authorization", f"Bearer {KEY}"),)
        )
        assert ok.name == "mlp"
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live


def test_the_key_never_reaches_the_logs(keyed: GatewayProcess) -> None:
    httpx.post(f"{keyed.http_url}/v2/models/mlp/infer", json=BODY, headers={"Authorization": f"Bearer {KEY}"})
    httpx.post(f"{keyed.http_url}/v2/models/mlp/infer", json=BODY, headers={"Authorization": "Bearer guess"})
    logs = keyed.logs()
    assert "checkout-app" in logs  # the name is logged at start-up, so the log was read
    assert KEY not in logs and "guess" not in logs
