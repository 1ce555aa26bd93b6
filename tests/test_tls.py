"""HTTPS and gRPC over TLS, and mutual TLS, with certificates the test makes, through the real tritonclient
(`ssl=True`). Plain HTTP stays the default: the other tests all use it.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.certs import Certs, make_certs
from tests.helpers import GatewayProcess, gateway_process
from tests.models import build_lookup

IDX = np.array([[3], [7]], dtype=np.int64)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls") / "models"
    build_lookup(root / "lookup" / "1" / "model.onnx", rows=10)
    return root


def context(certs: Certs, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if client is not None:
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    return ctx


@pytest.fixture(scope="module")
def https(repo: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    args = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key))
    with gateway_process(repo, *args, tmp=tmp_path_factory.mktemp("https"), probe={"verify": context(certs)}) as gw:
        yield gw


@pytest.fixture(scope="module")
def mutual(repo: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    args = ("--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key), "--tls-client-ca", str(certs.ca))
    probe = {"verify": context(certs, (certs.client_cert, certs.client_key))}
    with gateway_process(repo, *args, tmp=tmp_path_factory.mktemp("mtls"), probe=probe) as gw:
        yield gw


def http_infer(gw: GatewayProcess, ssl_options: dict[str, str]) -> np.ndarray:
    client = httpclient.InferenceServerClient(gw.http_addr, ssl=True, ssl_options=ssl_options)
    try:
        x = httpclient.InferInput("idx", list(IDX.shape), "INT64")
        x.set_data_from_numpy(IDX, binary_data=True)
        out: np.ndarray = client.infer("lookup", [x]).as_numpy("out")
        return out
    finally:
        client.close()


def grpc_infer(gw: GatewayProcess, certs: Certs, client_pair: tuple[Path, Path] | None = None) -> np.ndarray:
    kwargs: dict[str, str] = {"root_certificates": str(certs.ca)}
    if client_pair is not None:
        kwargs |= {"certificate_chain": str(client_pair[0]), "private_key": str(client_pair[1])}
    client = grpcclient.InferenceServerClient(gw.grpc_addr, ssl=True, **kwargs)
    try:
        x = grpcclient.InferInput("idx", list(IDX.shape), "INT64")
        x.set_data_from_numpy(IDX)
        out: np.ndarray = client.infer("lookup", [x], client_timeout=10).as_numpy("out")
        return out
    finally:
        client.close()


def test_https_and_grpc_over_tls_with_tritonclient(https: GatewayProcess, certs: Certs) -> None:
    expected = np.arange(40, dtype=np.float32).reshape(10, 4)[[3, 7]][:, None, :]
    np.testing.assert_array_equal(http_infer(https, {"ca_certs": str(certs.ca)}), expected)
    np.testing.assert_array_equal(grpc_infer(https, certs), expected)
    assert https.http_url.startswith("https://")
    # The same port does not speak plain HTTP, and a client that does not trust the CA is refused.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{https.http_addr}/v2/health/ready", timeout=5)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{https.http_url}/v2/health/ready", timeout=5)  # the system's CAs do not know ours
    assert httpx.get(f"{https.http_url}/v2/health/ready", timeout=5, verify=context(certs)).status_code == 200


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(mutual: GatewayProcess, certs: Certs) -> None:
    client = (certs.client_cert, certs.client_key)
    ok = {"ca_certs": str(certs.ca), "certfile": str(client[0]), "keyfile": str(client[1])}
    assert http_infer(mutual, ok).shape == (2, 1, 4)
    assert grpc_infer(mutual, certs, client).shape == (2, 1, 4)
    stranger = (certs.stranger_cert, certs.stranger_key)
    for pair in (None, stranger):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{mutual.http_url}/v2/health/ready", timeout=5, verify=context(certs, pair))
        with pytest.raises(InferenceServerException):
            grpc_infer(mutual, certs, pair)
    with pytest.raises(Exception):  # noqa: B017 - geventhttpclient raises ssl or socket errors
        http_infer(mutual, {"ca_certs": str(certs.ca)})
