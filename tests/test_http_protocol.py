"""V2 REST against a real `sluice serve` process over 127.0.0.1.

The real tritonclient.http (binary tensor extension by default) and raw JSON through httpx;
expected values come from ONNX Runtime run directly on the demo repository's files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from gateway.cli.demo import DTYPES
from gateway.serving.dataplane import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from tests.expected import ATOL, RTOL, V2_TO_NUMPY, onnx_signature, reference
from tests.helpers import GatewayProcess, metric_value

# model -> (versions, max_batch_size reported in metadata)
MODELS: dict[str, tuple[list[str], str]] = {
    "mlp": (["1", "2"], "64"),
    "classifier": (["1", "2"], "64"),
    "multi_io": (["1"], "32"),
    "dtypes": (["1"], "32"),
    "fixed": (["1"], "0"),
}
MODEL_VERSIONS = [(m, v) for m, (versions, _) in MODELS.items() for v in versions]


def dtype_values(name: str, rows: int, rng: np.random.Generator, special: bool) -> np.ndarray:
    """Rows of [rows, 3] values that stress the datatype: extremes first, then random."""
    dt: np.dtype[Any] = np.dtype(V2_TO_NUMPY[name])
    if dt == np.bool_:
        return rng.integers(0, 2, size=(rows, 3)).astype(np.bool_)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        head = np.array([[info.min, info.max, 0]], dtype=dt)
        body = rng.integers(info.min, info.max, size=(rows - 1, 3), dtype=dt, endpoint=True)
        return np.concatenate([head, body])
    finfo = np.finfo(dt)
    head = np.array([[finfo.max, finfo.min, finfo.smallest_subnormal]], dtype=dt)
    body = (rng.standard_normal((rows - 1, 3)) * 100).astype(dt)
    values = np.concatenate([head, body])
    if special:
        values[1] = np.array([np.nan, np.inf, -np.inf], dtype=dt)
    return values


def parse_binary_response(response: httpx.Response) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split a binary-extension answer: JSON header, then each binary output's bytes in order."""
    length = int(response.headers["inference-header-content-length"])
    body = response.content
    header = orjson.loads(body[:length])
    arrays: dict[str, np.ndarray] = {}
    offset = length
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if size is None:
            continue
        dtype = np.dtype(V2_TO_NUMPY[out["datatype"]])
        arrays[out["name"]] = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize, offset=offset)
        arrays[out["name"]] = arrays[out["name"]].reshape(out["shape"])
        offset += size
    assert offset == len(body), "binary outputs must account for every byte after the header"
    return header, arrays


@pytest.fixture(scope="module")
def client(demo_gateway: GatewayProcess) -> Iterator[httpclient.InferenceServerClient]:
    c = httpclient.InferenceServerClient(demo_gateway.http_addr, network_timeout=30.0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(demo_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_gateway.http_url, timeout=30.0) as c:
        yield c


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240601)


# -- health and metadata --------------------------------------------------------------------


def test_health_live_and_ready(http: httpx.Client, client: httpclient.InferenceServerClient) -> None:
    live = http.get("/v2/health/live")
    assert live.status_code == 200
    assert live.json() == {"live": True}
    ready = http.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}
    assert client.is_server_live()
    assert client.is_server_ready()


def test_server_metadata(http: httpx.Client, client: httpclient.InferenceServerClient) -> None:
    response = http.get("/v2")
    assert response.status_code == 200
    meta = response.json()
    assert meta["name"] == SERVER_NAME
    assert meta["version"] == SERVER_VERSION
    assert meta["extensions"] == list(EXTENSIONS)
    assert "binary_tensor_data" in meta["extensions"]
    assert client.get_server_metadata() == meta


@pytest.mark.parametrize("model", list(MODELS))
def test_model_metadata(
    model: str, http: httpx.Client, client: httpclient.InferenceServerClient, demo_repo: Path
) -> None:
    versions, max_batch_size = MODELS[model]
    latest = versions[-1]
    response = http.get(f"/v2/models/{model}")
    assert response.status_code == 200
    meta = response.json()
    inputs, outputs = onnx_signature(demo_repo, model, latest)
    assert meta["name"] == model
    assert meta["versions"] == versions
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == inputs
    assert meta["outputs"] == outputs
    params = meta["parameters"]
    assert params["execution_provider"] == "CPUExecutionProvider"
    assert params["version"] == latest
    assert params["max_batch_size"] == max_batch_size
    assert client.get_model_metadata(model) == meta


@pytest.mark.parametrize(("model", "version"), MODEL_VERSIONS)
def test_version_metadata(
    model: str, version: str, http: httpx.Client, client: httpclient.InferenceServerClient, demo_repo: Path
) -> None:
    response = http.get(f"/v2/models/{model}/versions/{version}")
    assert response.status_code == 200
    meta = response.json()
    inputs, outputs = onnx_signature(demo_repo, model, version)
    assert meta["inputs"] == inputs
    assert meta["outputs"] == outputs
    assert meta["parameters"]["version"] == version
    assert meta["parameters"]["execution_provider"] == "CPUExecutionProvider"
    assert client.get_model_metadata(model, model_version=version) == meta


def test_metadata_shapes_match_the_demo_models(http: httpx.Client) -> None:
    mlp = http.get("/v2/models/mlp").json()
    assert mlp["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}]
    assert mlp["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 8]}]
    classifier = http.get("/v2/models/classifier").json()
    assert [(o["name"], o["datatype"], o["shape"]) for o in classifier["outputs"]] == [
        ("probabilities", "FP32", [-1, 8]),
        ("label", "INT64", [-1]),
    ]
    multi = http.get("/v2/models/multi_io").json()
    assert [(i["name"], i["datatype"]) for i in multi["inputs"]] == [
        ("features", "FP32"),
        ("offsets", "INT64"),
        ("mask", "BOOL"),
    ]
    assert [(o["name"], o["datatype"]) for o in multi["outputs"]] == [
        ("scores", "FP64"),
        ("count", "INT32"),
        ("inverted", "BOOL"),
    ]
    fixed = http.get("/v2/models/fixed").json()
    assert fixed["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [3, 4]}]
    dtypes = http.get("/v2/models/dtypes").json()
    assert {i["name"]: i["datatype"] for i in dtypes["inputs"]} == {f"in_{d}": d for d in DTYPES}


@pytest.mark.parametrize(("model", "version"), MODEL_VERSIONS)
def test_model_and_version_ready(
    model: str, version: str, http: httpx.Client, client: httpclient.InferenceServerClient
) -> None:
    ready = http.get(f"/v2/models/{model}/ready")
    assert ready.status_code == 200
    assert ready.json() == {"name": model, "ready": True}
    pinned = http.get(f"/v2/models/{model}/versions/{version}/ready")
    assert pinned.status_code == 200
    assert pinned.json() == {"name": model, "version": version, "ready": True}
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, model_version=version)


def test_ready_of_unknown_model_or_version(http: httpx.Client, client: httpclient.InferenceServerClient) -> None:
    unknown_version = http.get("/v2/models/mlp/versions/9/ready")
    assert unknown_version.status_code == 404
    assert "'9'" in unknown_version.json()["error"]
    unknown_model = http.get("/v2/models/nope/ready")
    assert unknown_model.status_code == 404
    assert "'nope'" in unknown_model.json()["error"]
    assert not client.is_model_ready("mlp", model_version="9")
    assert not client.is_model_ready("nope")


# -- inference with tritonclient.http -------------------------------------------------------


@pytest.mark.parametrize("version", [None, "1", "2"], ids=["unpinned", "v1", "v2"])
def test_mlp_infer_binary(
    version: str | None, client: httpclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((3, 32)).astype(np.float32)
    inp = httpclient.InferInput("input", [3, 32], "FP32")
    inp.set_data_from_numpy(x)  # binary_data=True is tritonclient's default
    result = client.infer(
        "mlp",
        [inp],
        model_version=version or "",
        outputs=[httpclient.InferRequestedOutput("output")],
        request_id="mlp-binary",
    )
    served = version or "2"
    response = result.get_response()
    assert response["model_name"] == "mlp"
    assert response["model_version"] == served
    assert response["id"] == "mlp-binary"
    out = result.get_output("output")
    assert out["datatype"] == "FP32"
    assert out["shape"] == [3, 8]
    assert out["parameters"]["binary_data_size"] == 3 * 8 * 4
    got = result.as_numpy("output")
    assert got.dtype == np.float32
    want = reference(demo_repo, "mlp", served, {"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_mlp_versions_differ(client: httpclient.InferenceServerClient, rng: np.random.Generator) -> None:
    x = rng.standard_normal((1, 32)).astype(np.float32)
    answers = []
    for version in ("1", "2"):
        inp = httpclient.InferInput("input", [1, 32], "FP32")
        inp.set_data_from_numpy(x)
        answers.append(client.infer("mlp", [inp], model_version=version).as_numpy("output"))
    assert not np.allclose(answers[0], answers[1]), "versions 1 and 2 have different weights"


def test_infer_without_requested_outputs_is_binary(
    client: httpclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator
) -> None:
    """With no `outputs`, tritonclient asks for binary_data_output on the whole request."""
    x = rng.standard_normal((2, 32)).astype(np.float32)
    inp = httpclient.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("classifier", [inp])
    assert result.get_response()["model_version"] == "2"
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities", "label"]
    for name in ("probabilities", "label"):
        assert "binary_data_size" in result.get_output(name)["parameters"]
    want = reference(demo_repo, "classifier", "2", {"input": x})
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])


@pytest.mark.parametrize("version", ["1", "2"])
def test_classifier_only_requested_output(
    version: str, client: httpclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((4, 32)).astype(np.float32)
    inp = httpclient.InferInput("input", [4, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(
        "classifier", [inp], model_version=version, outputs=[httpclient.InferRequestedOutput("label")]
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None
    label = result.as_numpy("label")
    assert label.dtype == np.int64
    assert label.shape == (4,)
    np.testing.assert_array_equal(label, reference(demo_repo, "classifier", version, {"input": x})["label"])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_multi_io(
    binary: bool, client: httpclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator
) -> None:
    rows = 3
    feed: dict[str, np.ndarray] = {
        "features": rng.standard_normal((rows, 4)).astype(np.float32),
        "offsets": rng.integers(-50, 50, size=(rows, 4)).astype(np.int64),
        "mask": rng.integers(0, 2, size=(rows, 4)).astype(np.bool_),
    }
    inputs = []
    for name, datatype in (("features", "FP32"), ("offsets", "INT64"), ("mask", "BOOL")):
        inp = httpclient.InferInput(name, [rows, 4], datatype)
        inp.set_data_from_numpy(feed[name], binary_data=binary)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "count", "inverted")]
    result = client.infer("multi_io", inputs, outputs=outputs)
    want = reference(demo_repo, "multi_io", "1", feed)
    expected_types = {
        "scores": ("FP64", [rows, 4]),
        "count": ("INT32", [rows]),
        "inverted": ("BOOL", [rows, 4]),
    }
    for name, (datatype, shape) in expected_types.items():
        out = result.get_output(name)
        assert out["datatype"] == datatype
        assert out["shape"] == shape
        assert ("binary_data_size" in out.get("parameters", {})) is binary
        assert result.as_numpy(name).dtype == V2_TO_NUMPY[datatype]
    np.testing.assert_allclose(result.as_numpy("scores"), want["scores"], rtol=RTOL)
    # The model's arithmetic, independently of ONNX Runtime:
    manual = (feed["features"] + feed["offsets"].astype(np.float32)) * feed["mask"]
    np.testing.assert_allclose(result.as_numpy("scores"), manual.astype(np.float64), rtol=RTOL)
    np.testing.assert_array_equal(result.as_numpy("count"), feed["mask"].sum(axis=1).astype(np.int32))
    np.testing.assert_array_equal(result.as_numpy("inverted"), ~feed["mask"])


@pytest.mark.parametrize("binary_out", [True, False], ids=["out-binary", "out-json"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["in-binary", "in-json"])
def test_every_dtype_round_trips(
    binary_in: bool, binary_out: bool, client: httpclient.InferenceServerClient, rng: np.random.Generator
) -> None:
    rows = 4
    special = binary_in and binary_out  # NaN and infinities have no JSON spelling
    sent = {name: dtype_values(name, rows, rng, special) for name in DTYPES}
    inputs = []
    for name, values in sent.items():
        inp = httpclient.InferInput(f"in_{name}", [rows, 3], name)
        inp.set_data_from_numpy(values, binary_data=binary_in)
        inputs.append(inp)
    outputs = [httpclient.InferRequestedOutput(f"out_{name}", binary_data=binary_out) for name in DTYPES]
    result = client.infer("dtypes", inputs, outputs=outputs)
    for name, values in sent.items():
        out = result.get_output(f"out_{name}")
        assert out["datatype"] == name
        assert out["shape"] == [rows, 3]
        assert ("binary_data_size" in out.get("parameters", {})) is binary_out
        got = result.as_numpy(f"out_{name}")
        assert got.dtype == values.dtype, name
        np.testing.assert_array_equal(got, values, err_msg=name)


def test_fixed_model(client: httpclient.InferenceServerClient, http: httpx.Client, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("fixed", [inp])
    assert result.get_output("y")["shape"] == [3, 4]
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    body = {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
    response = http.post("/v2/models/fixed/infer", json=body)
    assert response.status_code == 200
    out = response.json()["outputs"][0]
    assert out["shape"] == [3, 4]
    np.testing.assert_array_equal(np.array(out["data"], dtype=np.float32).reshape(3, 4), 2 * x)


# -- raw JSON with httpx --------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_infer(nested: bool, http: httpx.Client, demo_repo: Path, rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 32)).astype(np.float32)
    data = x.tolist() if nested else x.ravel().tolist()
    body = {"id": "req-42", "inputs": [{"name": "input", "shape": [2, 32], "datatype": "FP32", "data": data}]}
    response = http.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "inference-header-content-length" not in response.headers
    doc = response.json()
    assert doc["id"] == "req-42"
    assert doc["model_name"] == "mlp"
    assert doc["model_version"] == "2"
    [out] = doc["outputs"]
    assert out["name"] == "output"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [2, 8]
    assert len(out["data"]) == 16
    want = reference(demo_repo, "mlp", "2", {"input": x})["output"]
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(2, 8), want, rtol=RTOL, atol=ATOL)


def test_json_generated_id_when_absent(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
    ids = []
    for _ in range(2):
        response = http.post("/v2/models/mlp/versions/1/infer", json=body)
        assert response.status_code == 200
        doc = response.json()
        assert doc["model_version"] == "1"
        assert isinstance(doc["id"], str)
        assert doc["id"]
        ids.append(doc["id"])
    assert ids[0] != ids[1]


def test_json_outputs_binary_for_one_json_for_other(
    http: httpx.Client, demo_repo: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((3, 32)).astype(np.float32)
    body = {
        "id": "mixed",
        "inputs": [{"name": "input", "shape": [3, 32], "datatype": "FP32", "data": x.ravel().tolist()}],
        "outputs": [
            {"name": "probabilities", "parameters": {"binary_data": True}},
            {"name": "label", "parameters": {"binary_data": False}},
        ],
    }
    response = http.post("/v2/models/classifier/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    header, arrays = parse_binary_response(response)
    assert header["id"] == "mixed"
    outs = {o["name"]: o for o in header["outputs"]}
    assert outs["probabilities"]["parameters"] == {"binary_data_size": 3 * 8 * 4}
    assert "data" not in outs["probabilities"]
    assert outs["label"]["datatype"] == "INT64"
    assert "parameters" not in outs["label"]
    want = reference(demo_repo, "classifier", "2", {"input": x})
    np.testing.assert_allclose(arrays["probabilities"], want["probabilities"], rtol=RTOL, atol=ATOL)
    assert set(arrays) == {"probabilities"}
    np.testing.assert_array_equal(np.array(outs["label"]["data"], dtype=np.int64), want["label"])


def test_json_binary_data_output_parameter(http: httpx.Client, demo_repo: Path, rng: np.random.Generator) -> None:
    x = rng.standard_normal((2, 4)).astype(np.float32)
    body = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "features", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "offsets", "shape": [2, 4], "datatype": "INT64", "data": [1, 2, 3, 4, 5, 6, 7, 8]},
            {"name": "mask", "shape": [2, 4], "datatype": "BOOL", "data": [True, False] * 4},
        ],
    }
    response = http.post("/v2/models/multi_io/infer", json=body)
    assert response.status_code == 200, response.text
    header, arrays = parse_binary_response(response)
    assert set(arrays) == {"scores", "count", "inverted"}
    assert all("data" not in o for o in header["outputs"])
    offsets = np.arange(1, 9, dtype=np.int64).reshape(2, 4)
    mask = np.array([True, False] * 4).reshape(2, 4)
    want = reference(demo_repo, "multi_io", "1", {"features": x, "offsets": offsets, "mask": mask})
    np.testing.assert_allclose(arrays["scores"], want["scores"], rtol=RTOL)
    np.testing.assert_array_equal(arrays["count"], np.array([2, 2], dtype=np.int32))
    np.testing.assert_array_equal(arrays["inverted"], ~mask)


def test_raw_binary_input_json_output(http: httpx.Client, demo_repo: Path, rng: np.random.Generator) -> None:
    """The binary extension built by hand: JSON header, then the tensor's bytes."""
    x = rng.standard_normal((2, 32)).astype(np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 32],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    )
    response = http.post(
        "/v2/models/mlp/versions/1/infer",
        content=header + x.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert response.status_code == 200, response.text
    [out] = response.json()["outputs"]
    want = reference(demo_repo, "mlp", "1", {"input": x})["output"]
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(2, 8), want, rtol=RTOL, atol=ATOL)


def test_json_multi_row(http: httpx.Client, demo_repo: Path, rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 32)).astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [5, 32], "datatype": "FP32", "data": x.tolist()}]}
    response = http.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200, response.text
    [out] = response.json()["outputs"]
    assert out["shape"] == [5, 8]
    got = np.array(out["data"], dtype=np.float32).reshape(5, 8)
    want = reference(demo_repo, "mlp", "2", {"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_metrics_count_mlp_requests(demo_gateway: GatewayProcess, http: httpx.Client) -> None:
    def ok_count() -> float:
        return metric_value(
            demo_gateway.metrics(),
            "sluice_requests_total",
            0.0,
            model="mlp",
            version="1",
            protocol="http",
            outcome="ok",
        )

    before = ok_count()
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}]}
    assert http.post("/v2/models/mlp/versions/1/infer", json=body).status_code == 200
    text = demo_gateway.metrics()
    assert "sluice_requests_total{" in text
    assert ok_count() >= before + 1
    assert metric_value(text, "sluice_model_ready", model="mlp", version="2") == 1.0


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request_bodies_as_tritonclient_sends_them(demo_gateway: GatewayProcess, algorithm: str) -> None:
    client = httpclient.InferenceServerClient(demo_gateway.http_addr)
    x = np.random.default_rng(3).standard_normal((2, 32)).astype(np.float32)
    inp = httpclient.InferInput("input", [2, 32], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], model_version="1", request_compression_algorithm=algorithm)
    assert result.as_numpy("output").shape == (2, 8)
    client.close()


def test_compressed_body_that_inflates_past_the_limit_is_413(demo_gateway: GatewayProcess) -> None:
    import gzip

    bomb = gzip.compress(b" " * (8 * 1024 * 1024))  # 8 MiB of spaces, a few KiB compressed; limit is 4 MiB
    r = httpx.post(f"{demo_gateway.http_url}/v2/models/mlp/infer", content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    r = httpx.post(
        f"{demo_gateway.http_url}/v2/models/mlp/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"}
    )
    assert r.status_code == 400 and "gzip" in r.json()["error"]
    r = httpx.post(f"{demo_gateway.http_url}/v2/models/mlp/infer", content=b"{}", headers={"Content-Encoding": "br"})
    assert r.status_code == 415
