"""V2 gRPC (GRPCInferenceService) against a real `sluice serve` process over 127.0.0.1.

The real tritonclient.grpc (which sends `raw_input_contents`), plus requests built by hand
with typed `contents` through the generated stub, to prove both encodings decode. Expected
values come from ONNX Runtime run directly on the demo repository's files.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from gateway.cli.demo import DTYPES
from gateway.serving.dataplane import EXTENSIONS, SERVER_NAME, SERVER_VERSION
from tests.expected import ATOL, RTOL, V2_TO_NUMPY, onnx_signature, reference
from tests.helpers import GatewayProcess, metric_value

MODELS: dict[str, list[str]] = {
    "mlp": ["1", "2"],
    "classifier": ["1", "2"],
    "multi_io": ["1"],
    "dtypes": ["1"],
    "fixed": ["1"],
}
MODEL_VERSIONS = [(m, v) for m, versions in MODELS.items() for v in versions]


def raw_outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """Decode `raw_output_contents` of a hand-made call, by each output's datatype and shape."""
    assert len(response.raw_output_contents) == len(response.outputs)
    result = {}
    for out, blob in zip(response.outputs, response.raw_output_contents, strict=True):
        result[out.name] = np.frombuffer(blob, dtype=V2_TO_NUMPY[out.datatype]).reshape(list(out.shape))
    return result


def infer_input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


@pytest.fixture(scope="module")
def client(demo_gateway: GatewayProcess) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(demo_gateway.grpc_addr)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(demo_gateway: GatewayProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(demo_gateway.grpc_addr) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(77)


# -- health and metadata --------------------------------------------------------------------


def test_server_live_and_ready(
    client: grpcclient.InferenceServerClient, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready


def test_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata(as_json=True)
    assert meta == {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}
    msg = client.get_server_metadata()
    assert msg.name == SERVER_NAME
    assert list(msg.extensions) == list(EXTENSIONS)


def _tensors(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # MessageToJson writes int64 as strings: shapes come back as ["-1", "32"].
    return [{"name": e["name"], "datatype": e["datatype"], "shape": [int(d) for d in e["shape"]]} for e in entries]


@pytest.mark.parametrize("model", list(MODELS))
def test_model_metadata(model: str, client: grpcclient.InferenceServerClient, demo_repo: Path) -> None:
    versions = MODELS[model]
    meta = client.get_model_metadata(model, as_json=True)
    inputs, outputs = onnx_signature(demo_repo, model, versions[-1])
    assert meta["name"] == model
    assert meta["versions"] == versions
    assert meta["platform"] == "onnxruntime_onnx"
    assert _tensors(meta["inputs"]) == inputs
    assert _tensors(meta["outputs"]) == outputs
    msg = client.get_model_metadata(model)
    assert [list(i.shape) for i in msg.inputs] == [i["shape"] for i in inputs]


@pytest.mark.parametrize(("model", "version"), MODEL_VERSIONS)
def test_version_metadata_and_ready(
    model: str, version: str, client: grpcclient.InferenceServerClient, demo_repo: Path
) -> None:
    meta = client.get_model_metadata(model, model_version=version, as_json=True)
    inputs, outputs = onnx_signature(demo_repo, model, version)
    assert _tensors(meta["inputs"]) == inputs
    assert _tensors(meta["outputs"]) == outputs
    assert client.is_model_ready(model)
    assert client.is_model_ready(model, model_version=version)


def test_model_ready_unknown(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    for request, named in (
        (pb.ModelReadyRequest(name="mlp", version="9"), "'9'"),
        (pb.ModelReadyRequest(name="nope"), "'nope'"),
    ):
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelReady(request, timeout=10)
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
        assert named in info.value.details()


def test_metadata_unknown_model(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    assert "'nope'" in info.value.details()


# -- inference with tritonclient.grpc (raw_input_contents) ----------------------------------


@pytest.mark.parametrize("version", [None, "1", "2"], ids=["unpinned", "v1", "v2"])
def test_mlp_infer(
    version: str | None, client: grpcclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((3, 32)).astype(np.float32)
    result = client.infer(
        "mlp",
        [infer_input("input", x, "FP32")],
        model_version=version or "",
        outputs=[grpcclient.InferRequestedOutput("output")],
        request_id="grpc-mlp",
    )
    served = version or "2"
    response = result.get_response()
    assert response.model_name == "mlp"
    assert response.model_version == served
    assert response.id == "grpc-mlp"
    out = result.get_output("output")
    assert out.datatype == "FP32"
    assert list(out.shape) == [3, 8]
    got = result.as_numpy("output")
    assert got.dtype == np.float32
    want = reference(demo_repo, "mlp", served, {"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_generated_id_when_absent(client: grpcclient.InferenceServerClient) -> None:
    x = np.full((1, 32), 0.5, dtype=np.float32)
    ids = {client.infer("mlp", [infer_input("input", x, "FP32")]).get_response().id for _ in range(2)}
    assert len(ids) == 2
    assert all(ids)


def test_tritonclient_sends_raw_input_contents() -> None:
    """What tritonclient puts on the wire: one raw blob per input, no typed contents."""
    x = np.arange(32, dtype=np.float32).reshape(1, 32)
    inp = infer_input("input", x, "FP32")
    assert inp._get_content() == x.tobytes()
    assert not inp._get_tensor().HasField("contents")


@pytest.mark.parametrize("version", ["1", "2"])
def test_classifier_only_requested_output(
    version: str, client: grpcclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((4, 32)).astype(np.float32)
    result = client.infer(
        "classifier",
        [infer_input("input", x, "FP32")],
        model_version=version,
        outputs=[grpcclient.InferRequestedOutput("label")],
    )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["label"]
    assert len(response.raw_output_contents) == 1
    assert result.as_numpy("probabilities") is None
    label = result.as_numpy("label")
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, reference(demo_repo, "classifier", version, {"input": x})["label"])


def test_classifier_all_outputs(
    client: grpcclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((2, 32)).astype(np.float32)
    result = client.infer("classifier", [infer_input("input", x, "FP32")])
    assert [o.name for o in result.get_response().outputs] == ["probabilities", "label"]
    want = reference(demo_repo, "classifier", "2", {"input": x})
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])


def test_multi_io(client: grpcclient.InferenceServerClient, demo_repo: Path, rng: np.random.Generator) -> None:
    rows = 3
    feed: dict[str, np.ndarray] = {
        "features": rng.standard_normal((rows, 4)).astype(np.float32),
        "offsets": rng.integers(-50, 50, size=(rows, 4)).astype(np.int64),
        "mask": rng.integers(0, 2, size=(rows, 4)).astype(np.bool_),
    }
    inputs = [
        infer_input("features", feed["features"], "FP32"),
        infer_input("offsets", feed["offsets"], "INT64"),
        infer_input("mask", feed["mask"], "BOOL"),
    ]
    result = client.infer("multi_io", inputs)
    want = reference(demo_repo, "multi_io", "1", feed)
    expected = {"scores": ("FP64", [rows, 4]), "count": ("INT32", [rows]), "inverted": ("BOOL", [rows, 4])}
    for name, (datatype, shape) in expected.items():
        out = result.get_output(name)
        assert out.datatype == datatype
        assert list(out.shape) == shape
        assert result.as_numpy(name).dtype == V2_TO_NUMPY[datatype]
    np.testing.assert_allclose(result.as_numpy("scores"), want["scores"], rtol=RTOL)
    manual = ((feed["features"] + feed["offsets"].astype(np.float32)) * feed["mask"]).astype(np.float64)
    np.testing.assert_allclose(result.as_numpy("scores"), manual, rtol=RTOL)
    np.testing.assert_array_equal(result.as_numpy("count"), feed["mask"].sum(axis=1).astype(np.int32))
    np.testing.assert_array_equal(result.as_numpy("inverted"), ~feed["mask"])


def _dtype_values(name: str, rows: int, rng: np.random.Generator) -> np.ndarray:
    dt: np.dtype[Any] = np.dtype(V2_TO_NUMPY[name])
    if dt == np.bool_:
        return rng.integers(0, 2, size=(rows, 3)).astype(np.bool_)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        head = np.array([[info.min, info.max, 0]], dtype=dt)
        return np.concatenate([head, rng.integers(info.min, info.max, size=(rows - 1, 3), dtype=dt, endpoint=True)])
    finfo = np.finfo(dt)
    head = np.array([[finfo.max, finfo.min, finfo.smallest_subnormal], [np.nan, np.inf, -np.inf]], dtype=dt)
    return np.concatenate([head, (rng.standard_normal((rows - 2, 3)) * 100).astype(dt)])


def test_every_dtype_round_trips(client: grpcclient.InferenceServerClient, rng: np.random.Generator) -> None:
    rows = 4
    sent = {name: _dtype_values(name, rows, rng) for name in DTYPES}
    inputs = [infer_input(f"in_{name}", values, name) for name, values in sent.items()]
    result = client.infer("dtypes", inputs)
    for name, values in sent.items():
        out = result.get_output(f"out_{name}")
        assert out.datatype == name
        assert list(out.shape) == [rows, 3]
        got = result.as_numpy(f"out_{name}")
        assert got.dtype == values.dtype, name
        np.testing.assert_array_equal(got, values, err_msg=name)


def test_fixed_model(client: grpcclient.InferenceServerClient, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3, 4)).astype(np.float32)
    result = client.infer("fixed", [infer_input("x", x, "FP32")])
    assert list(result.get_output("y").shape) == [3, 4]
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)


# -- typed contents, built by hand ----------------------------------------------------------


def test_typed_fp32_contents(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, demo_repo: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((2, 32)).astype(np.float32)
    request = pb.ModelInferRequest(
        model_name="mlp",
        model_version="1",
        id="typed",
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="input",
                datatype="FP32",
                shape=[2, 32],
                contents=pb.InferTensorContents(fp32_contents=x.ravel().tolist()),
            )
        ],
    )
    assert not request.raw_input_contents
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "typed"
    assert response.model_version == "1"
    got = raw_outputs(response)["output"]
    assert got.shape == (2, 8)
    want = reference(demo_repo, "mlp", "1", {"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_typed_contents_of_several_datatypes(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, demo_repo: Path, rng: np.random.Generator
) -> None:
    features = rng.standard_normal((2, 4)).astype(np.float32)
    offsets = np.array([[-3, 0, 5, 2**40], [1, 2, 3, 4]], dtype=np.int64)
    mask = np.array([[True, False, True, True], [False, False, True, False]])
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name="multi_io",
        inputs=[
            tensor(
                name="features",
                datatype="FP32",
                shape=[2, 4],
                contents=pb.InferTensorContents(fp32_contents=features.ravel().tolist()),
            ),
            tensor(
                name="offsets",
                datatype="INT64",
                shape=[2, 4],
                contents=pb.InferTensorContents(int64_contents=offsets.ravel().tolist()),
            ),
            tensor(
                name="mask",
                datatype="BOOL",
                shape=[2, 4],
                contents=pb.InferTensorContents(bool_contents=mask.ravel().tolist()),
            ),
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="scores")],
    )
    response = stub.ModelInfer(request, timeout=30)
    assert [o.name for o in response.outputs] == ["scores"]
    got = raw_outputs(response)["scores"]
    assert got.dtype == np.float64
    want = reference(demo_repo, "multi_io", "1", {"features": features, "offsets": offsets, "mask": mask})
    np.testing.assert_allclose(got, want["scores"], rtol=RTOL)


def test_metrics_count_grpc_requests(demo_gateway: GatewayProcess, client: grpcclient.InferenceServerClient) -> None:
    def ok_count() -> float:
        return metric_value(
            demo_gateway.metrics(),
            "sluice_requests_total",
            0.0,
            model="mlp",
            version="2",
            protocol="grpc",
            outcome="ok",
        )

    before = ok_count()
    client.infer("mlp", [infer_input("input", np.zeros((1, 32), dtype=np.float32), "FP32")])
    assert ok_count() >= before + 1
