"""The error table over HTTP and gRPC against a real `sluice serve` process.

Every case checks the status code and that the message names the tensor or field at fault;
every HTTP error body is `{"error": "..."}`. After the table, the same gateway process must
still be alive and serving. Models that cannot load get a gateway of their own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.cli.demo import build_reference_mlp
from tests.helpers import GatewayProcess, gateway_process, metric_value

MAX_BODY = 4 * 1024 * 1024
ABSURD = [1_000_000_000, 32]
ROW = [0.5] * 32
ROW_BYTES = np.full((1, 32), 0.5, dtype=np.float32).tobytes()
FAST_S = 5.0  # generous: an allocation of 10^9 rows would take far longer, or kill the process


# -- request builders ------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpCall:
    path: str
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)


def tensor(name: str, datatype: str, shape: list[int], data: Any = None, **params: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        t["data"] = data
    if params:
        t["parameters"] = params
    return t


def post(model: str, *tensors: dict[str, Any], version: str | None = None, **extra: Any) -> HttpCall:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return HttpCall(path, orjson.dumps({"inputs": list(tensors), **extra}))


def post_binary(model: str, header: dict[str, Any], blob: bytes, header_length: int | None = None) -> HttpCall:
    head = orjson.dumps(header)
    length = len(head) if header_length is None else header_length
    return HttpCall(
        f"/v2/models/{model}/infer",
        head + blob,
        {"Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"},
    )


def post_raw(model: str, content: bytes, **headers: str) -> HttpCall:
    return HttpCall(f"/v2/models/{model}/infer", content, {k.replace("_", "-"): v for k, v in headers.items()})


GrpcTensor = tuple[str, str, list[int], bytes]


def g_raw(
    model: str,
    *tensors: GrpcTensor,
    version: str = "",
    outputs: tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
    extra_raw: tuple[bytes, ...] = (),
) -> pb.ModelInferRequest:
    """A request as tritonclient.grpc builds it: one raw_input_contents blob per input."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, blob in tensors:
        msg.inputs.add(name=name, datatype=datatype, shape=shape)
        msg.raw_input_contents.append(blob)
    msg.raw_input_contents.extend(extra_raw)
    for out in outputs:
        msg.outputs.add(name=out)
    for key, value in (params or {}).items():
        _set_param(msg.parameters[key], value)
    return msg


def g_typed(model: str, name: str, datatype: str, shape: list[int], **contents: list[Any]) -> pb.ModelInferRequest:
    """One input with typed `contents` (e.g. fp32_contents=[...]), no raw blobs."""
    msg = pb.ModelInferRequest(model_name=model)
    msg.inputs.add(name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents))
    return msg


def _set_param(param: Any, value: Any) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def fp32(rows: int, cols: int = 32) -> bytes:
    return np.full((rows, cols), 0.5, dtype=np.float32).tobytes()


def mlp_input(rows: int = 1) -> GrpcTensor:
    return ("input", "FP32", [rows, 32], fp32(rows))


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    http: HttpCall | None
    grpc: pb.ModelInferRequest | None
    status: int
    code: grpc.StatusCode
    names: tuple[str, ...]
    """Substrings the message must contain: the tensor, field or model at fault."""


INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
MULTI_IO_PARTIAL = (
    tensor("features", "FP32", [1, 4], [1.0, 2.0, 3.0, 4.0]),
    tensor("offsets", "INT64", [1, 4], [1, 2, 3, 4]),
)
MULTI_IO_PARTIAL_RAW: tuple[GrpcTensor, ...] = (
    ("features", "FP32", [1, 4], np.ones((1, 4), np.float32).tobytes()),
    ("offsets", "INT64", [1, 4], np.ones((1, 4), np.int64).tobytes()),
)

CASES: list[Case] = [
    Case(
        "malformed_json",
        post_raw("mlp", b'{"inputs": [{"name": "input",'),
        None,
        400,
        INVALID,
        ("malformed JSON",),
    ),
    Case("body_not_object", post_raw("mlp", b"[1, 2, 3]"), None, 400, INVALID, ("JSON object",)),
    Case(
        "id_not_string",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), id=7),
        None,
        400,
        INVALID,
        ("'id'",),
    ),
    Case("no_inputs", post("mlp"), pb.ModelInferRequest(model_name="mlp"), 400, INVALID, ("'inputs'",)),
    Case("input_not_object", post_raw("mlp", b'{"inputs": [42]}'), None, 400, INVALID, ("inputs[0]",)),
    Case(
        "missing_input",
        post("multi_io", *MULTI_IO_PARTIAL),
        g_raw("multi_io", *MULTI_IO_PARTIAL_RAW),
        400,
        INVALID,
        ("'mask'", "multi_io"),
    ),
    Case(
        "unknown_input",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), tensor("bogus", "FP32", [1, 32], ROW)),
        g_raw("mlp", mlp_input(), ("bogus", "FP32", [1, 32], fp32(1))),
        400,
        INVALID,
        ("'bogus'",),
    ),
    Case(
        "duplicate_input",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), tensor("input", "FP32", [1, 32], ROW)),
        g_raw("mlp", mlp_input(), mlp_input()),
        400,
        INVALID,
        ("'input'", "more than once"),
    ),
    Case(
        "wrong_datatype",
        post("mlp", tensor("input", "FP64", [1, 32], ROW)),
        g_raw("mlp", ("input", "FP64", [1, 32], np.zeros((1, 32), np.float64).tobytes())),
        400,
        INVALID,
        ("'input'", "FP64", "FP32"),
    ),
    Case(
        "unsupported_datatype_bytes",
        post("mlp", tensor("input", "BYTES", [1, 32], ["a"] * 32)),
        g_raw("mlp", ("input", "BYTES", [1, 32], b"")),
        400,
        INVALID,
        ("'input'", "'BYTES'", "not supported"),
    ),
    Case(
        "unsupported_datatype_foo",
        post("mlp", tensor("input", "FOO", [1, 32], ROW)),
        g_raw("mlp", ("input", "FOO", [1, 32], fp32(1))),
        400,
        INVALID,
        ("'input'", "'FOO'", "not supported"),
    ),
    Case(
        "shape_vs_model",
        post("mlp", tensor("input", "FP32", [1, 31], [0.5] * 31)),
        g_raw("mlp", ("input", "FP32", [1, 31], fp32(1, 31))),
        400,
        INVALID,
        ("'input'", "dimension 1 is 31", "[-1, 32]"),
    ),
    Case(
        "rank_vs_model",
        post("mlp", tensor("input", "FP32", [32], ROW)),
        g_raw("mlp", ("input", "FP32", [32], fp32(1))),
        400,
        INVALID,
        ("'input'", "rank 1"),
    ),
    Case(
        "fixed_shape_vs_model",
        post("fixed", tensor("x", "FP32", [2, 4], [1.0] * 8)),
        g_raw("fixed", ("x", "FP32", [2, 4], fp32(2, 4))),
        400,
        INVALID,
        ("'x'", "[3, 4]"),
    ),
    Case(
        "zero_rows",
        post("mlp", tensor("input", "FP32", [0, 32], [])),
        g_raw("mlp", ("input", "FP32", [0, 32], b"")),
        400,
        INVALID,
        ("'input'", "batch dimension"),
    ),
    Case(
        "shape_vs_data",
        post("mlp", tensor("input", "FP32", [2, 32], ROW)),
        g_raw("mlp", ("input", "FP32", [2, 32], fp32(1))),
        400,
        INVALID,
        ("'input'", "[2, 32]"),
    ),
    Case(
        "shape_vs_data_typed",
        None,
        g_typed("mlp", "input", "FP32", [2, 32], fp32_contents=ROW),
        400,
        INVALID,
        ("'input'", "needs 64 values", "fp32_contents"),
    ),
    Case(
        "shape_vs_nested_data",
        post("mlp", tensor("input", "FP32", [2, 32], [ROW])),
        None,
        400,
        INVALID,
        ("'input'", "needs 64 values"),
    ),
    Case(
        "ragged_data",
        post("mlp", tensor("input", "FP32", [2, 32], [ROW, [0.5] * 31])),
        None,
        400,
        INVALID,
        ("'input'",),
    ),
    Case(
        "data_not_numbers",
        post("mlp", tensor("input", "FP32", [1, 32], ["x"] * 32)),
        None,
        400,
        INVALID,
        ("'input'", "FP32"),
    ),
    Case(
        "int8_overflow",
        post("dtypes", tensor("in_INT8", "INT8", [1, 3], [300, 0, 0])),
        g_typed("dtypes", "in_INT8", "INT8", [1, 3], int_contents=[300, 0, 0]),
        400,
        INVALID,
        ("'in_INT8'", "INT8"),
    ),
    Case(
        "fp16_typed_contents",
        None,
        g_typed("dtypes", "in_FP16", "FP16", [1, 3], fp32_contents=[1.0, 2.0, 3.0]),
        400,
        INVALID,
        ("'in_FP16'", "raw_input_contents"),
    ),
    Case(
        "negative_dim",
        post("mlp", tensor("input", "FP32", [-1, 32], ROW)),
        g_raw("mlp", ("input", "FP32", [-1, 32], fp32(1))),
        400,
        INVALID,
        ("'input'", "non-negative"),
    ),
    Case(
        "absurd_dims_json_flat",
        post("mlp", tensor("input", "FP32", ABSURD, ROW)),
        g_raw("mlp", ("input", "FP32", ABSURD, fp32(1))),
        400,
        INVALID,
        ("'input'", "1000000000"),
    ),
    Case(
        "absurd_dims_json_nested",
        post("mlp", tensor("input", "FP32", ABSURD, [ROW])),
        None,
        400,
        INVALID,
        ("'input'", "1000000000"),
    ),
    Case(
        "absurd_dims_typed",
        None,
        g_typed("mlp", "input", "FP32", ABSURD, fp32_contents=ROW),
        400,
        INVALID,
        ("'input'", "32000000000", "fp32_contents"),
    ),
    Case(
        "absurd_dims_binary_true_size",
        post_binary("mlp", {"inputs": [tensor("input", "FP32", ABSURD, binary_data_size=128)]}, ROW_BYTES),
        None,
        400,
        INVALID,
        ("'input'", "binary_data_size 128"),
    ),
    Case(
        "absurd_dims_binary_claimed_size",
        post_binary("mlp", {"inputs": [tensor("input", "FP32", ABSURD, binary_data_size=128_000_000_000)]}, ROW_BYTES),
        None,
        400,
        INVALID,
        ("'input'", "runs past the end"),
    ),
    Case(
        "header_length_past_body",
        post_binary("mlp", {"inputs": [tensor("input", "FP32", [1, 32], binary_data_size=128)]}, ROW_BYTES, 10**6),
        None,
        400,
        INVALID,
        ("Inference-Header-Content-Length",),
    ),
    Case(
        "header_length_not_integer",
        post_raw(
            "mlp",
            orjson.dumps({"inputs": [tensor("input", "FP32", [1, 32], ROW)]}),
            Inference_Header_Content_Length="twelve",
        ),
        None,
        400,
        INVALID,
        ("Inference-Header-Content-Length",),
    ),
    Case(
        "binary_size_past_remaining",
        post_binary("mlp", {"inputs": [tensor("input", "FP32", [1, 32], binary_data_size=128)]}, ROW_BYTES[:64]),
        None,
        400,
        INVALID,
        ("'input'", "binary_data_size 128", "runs past the end"),
    ),
    Case(
        "binary_size_vs_shape",
        post_binary("mlp", {"inputs": [tensor("input", "FP32", [1, 32], binary_data_size=64)]}, ROW_BYTES[:64]),
        g_raw("mlp", ("input", "FP32", [1, 32], ROW_BYTES[:64])),
        400,
        INVALID,
        ("'input'", "64"),
    ),
    Case(
        "binary_leftover_bytes",
        post_binary(
            "mlp",
            {"inputs": [tensor("input", "FP32", [1, 32], binary_data_size=128)]},
            ROW_BYTES + b"12345678",
        ),
        None,
        400,
        INVALID,
        ("8 bytes", "binary_data_size"),
    ),
    Case(
        "raw_blob_longer_than_shape",
        None,
        g_raw("mlp", ("input", "FP32", [1, 32], ROW_BYTES + b"12345678")),
        400,
        INVALID,
        ("'input'", "136 bytes", "needs 128"),
    ),
    Case(
        "binary_size_and_data",
        post("mlp", tensor("input", "FP32", [1, 32], ROW, binary_data_size=128)),
        None,
        400,
        INVALID,
        ("'input'", "binary_data_size"),
    ),
    Case(
        "unknown_model",
        post("nope", tensor("input", "FP32", [1, 32], ROW)),
        g_raw("nope", mlp_input()),
        404,
        NOT_FOUND,
        ("'nope'",),
    ),
    Case(
        "unknown_version",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), version="7"),
        g_raw("mlp", mlp_input(), version="7"),
        404,
        NOT_FOUND,
        ("'mlp'", "'7'"),
    ),
    Case(
        "unknown_output",
        post("classifier", tensor("input", "FP32", [1, 32], ROW), outputs=[{"name": "nope_out"}]),
        g_raw("classifier", mlp_input(), outputs=("nope_out",)),
        400,
        INVALID,
        ("'nope_out'",),
    ),
    Case(
        "output_binary_data_not_bool",
        post(
            "classifier",
            tensor("input", "FP32", [1, 32], ROW),
            outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}],
        ),
        None,
        400,
        INVALID,
        ("'label'", "binary_data"),
    ),
    Case(
        "binary_data_output_not_bool",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), parameters={"binary_data_output": "yes"}),
        None,
        400,
        INVALID,
        ("binary_data_output",),
    ),
    Case(
        "over_max_batch_size",
        post("mlp", tensor("input", "FP32", [65, 32], ROW * 65)),
        g_raw("mlp", mlp_input(65)),
        400,
        INVALID,
        ("65", "max_batch_size 64"),
    ),
    Case(
        "timeout_negative",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), parameters={"timeout": -5}),
        g_raw("mlp", mlp_input(), params={"timeout": -5}),
        400,
        INVALID,
        ("'timeout'",),
    ),
    Case(
        "timeout_zero",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), parameters={"timeout": 0}),
        g_raw("mlp", mlp_input(), params={"timeout": 0}),
        400,
        INVALID,
        ("'timeout'",),
    ),
    Case(
        "timeout_string",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), parameters={"timeout": "soon"}),
        g_raw("mlp", mlp_input(), params={"timeout": "soon"}),
        400,
        INVALID,
        ("'timeout'",),
    ),
    Case(
        "timeout_bool",
        post("mlp", tensor("input", "FP32", [1, 32], ROW), parameters={"timeout": True}),
        g_raw("mlp", mlp_input(), params={"timeout": True}),
        400,
        INVALID,
        ("'timeout'",),
    ),
    Case(
        "raw_contents_do_not_pair_up",
        None,
        g_raw("mlp", mlp_input(), extra_raw=(fp32(1),)),
        400,
        INVALID,
        ("raw_input_contents",),
    ),
]

HTTP_CASES = [pytest.param(c, id=c.id) for c in CASES if c.http is not None]
GRPC_CASES = [pytest.param(c, id=c.id) for c in CASES if c.grpc is not None]


@pytest.fixture(scope="module")
def http(demo_gateway: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_gateway.http_url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="module")
def stub(demo_gateway: GatewayProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(demo_gateway.grpc_addr) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def assert_error_body(response: httpx.Response, status: int, *names: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    doc = response.json()
    assert set(doc) == {"error"}, doc
    message = doc["error"]
    assert isinstance(message, str)
    assert message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


def grpc_error(stub: service_pb2_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    return info.value


@pytest.mark.parametrize("case", HTTP_CASES)
def test_http_error(case: Case, http: httpx.Client) -> None:
    assert case.http is not None
    started = time.monotonic()
    response = http.post(case.http.path, content=case.http.content, headers=case.http.headers)
    assert time.monotonic() - started < FAST_S
    assert_error_body(response, case.status, *case.names)


@pytest.mark.parametrize("case", GRPC_CASES)
def test_grpc_error(case: Case, stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    assert case.grpc is not None
    started = time.monotonic()
    err = grpc_error(stub, case.grpc)
    assert time.monotonic() - started < FAST_S
    assert err.code() is case.code, err.details()
    for name in case.names:
        assert name in err.details(), f"{name!r} not in {err.details()!r}"


def test_grpc_timeout_nan_is_invalid(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    err = grpc_error(stub, g_raw("mlp", mlp_input(), params={"timeout": float("nan")}))
    assert err.code() is INVALID, err.details()
    assert "'timeout'" in err.details()


def test_http_timeout_not_finite_is_invalid(http: httpx.Client) -> None:
    """JSON has no NaN or infinity: orjson refuses them, so HTTP cannot reach the gRPC NaN bug."""
    inputs = orjson.dumps([tensor("input", "FP32", [1, 32], ROW)])
    body = b'{"parameters": {"timeout": 1e400}, "inputs": ' + inputs + b"}"
    assert_error_body(http.post("/v2/models/mlp/infer", content=body), 400, "malformed JSON")


def test_http_unsupported_content_encoding(http: httpx.Client) -> None:
    call = post("mlp", tensor("input", "FP32", [1, 32], ROW))
    response = http.post(call.path, content=call.content, headers={"Content-Encoding": "br"})
    assert_error_body(response, 415, "Content-Encoding", "br")


def test_http_oversize_body_declared(http: httpx.Client) -> None:
    """Content-Length over --max-body-bytes: refused before the body is read."""
    response = http.post("/v2/models/mlp/infer", content=b"x" * (MAX_BODY + 1))
    assert_error_body(response, 413, str(MAX_BODY), "body")


def test_http_oversize_body_chunked(http: httpx.Client) -> None:
    """No Content-Length (chunked): the limit is enforced while reading."""

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"x" * (1024 * 1024)

    response = http.post("/v2/models/mlp/infer", content=chunks())
    assert_error_body(response, 413, str(MAX_BODY), "body")


def test_grpc_oversize_message(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    rows = MAX_BODY // 128 + 1000  # just over 4 MiB of FP32 rows
    err = grpc_error(stub, g_raw("mlp", ("input", "FP32", [rows, 32], fp32(rows))))
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    assert str(MAX_BODY) in err.details()


@pytest.mark.parametrize(
    ("path", "names"),
    [
        ("/v2/models/nope", ("'nope'",)),
        ("/v2/models/nope/ready", ("'nope'",)),
        ("/v2/models/mlp/versions/7", ("'mlp'", "'7'")),
        ("/v2/models/mlp/versions/7/ready", ("'mlp'", "'7'")),
    ],
)
def test_http_metadata_errors(path: str, names: tuple[str, ...], http: httpx.Client) -> None:
    assert_error_body(http.get(path), 404, *names)


def test_tritonclient_surfaces_the_errors(demo_gateway: GatewayProcess) -> None:
    """tritonclient raises InferenceServerException; status() is the HTTP code or 'StatusCode.X'."""
    x = np.zeros((1, 31), dtype=np.float32)
    hc = httpclient.InferenceServerClient(demo_gateway.http_addr)
    try:
        inp = httpclient.InferInput("input", [1, 31], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            hc.infer("mlp", [inp])
        assert info.value.status() == "400"
        assert "'input'" in info.value.message()
    finally:
        hc.close()
    gc = grpcclient.InferenceServerClient(demo_gateway.grpc_addr)
    try:
        inp = grpcclient.InferInput("input", [1, 31], "FP32")
        inp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as info:
            gc.infer("mlp", [inp])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "'input'" in info.value.message()
        with pytest.raises(InferenceServerException) as info:
            gc.infer("nope", [inp])
        assert info.value.status() == "StatusCode.NOT_FOUND"
    finally:
        gc.close()


def test_gateway_survived_the_error_table(
    demo_gateway: GatewayProcess, http: httpx.Client, stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    """Runs after the table (file order): same process, still serving both protocols."""
    assert demo_gateway.proc.poll() is None
    assert Path(f"/proc/{demo_gateway.proc.pid}").exists()
    call = post("mlp", tensor("input", "FP32", [1, 32], ROW))
    response = http.post(call.path, content=call.content)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 8]
    reply = stub.ModelInfer(g_raw("mlp", mlp_input(2)), timeout=30)
    assert list(reply.outputs[0].shape) == [2, 8]
    assert http.get("/v2/health/ready").status_code == 200
    text = demo_gateway.metrics()
    assert metric_value(text, "sluice_requests_total", model="mlp", protocol="http", outcome="invalid") >= 1
    assert metric_value(text, "sluice_requests_total", model="mlp", protocol="grpc", outcome="invalid") >= 1
    assert demo_gateway.proc.poll() is None


# -- models that cannot load -----------------------------------------------------------------


@dataclass
class BrokenRepo:
    gateway: GatewayProcess
    broken_onnx: Path
    badconfig_yaml: Path
    badyaml_yaml: Path


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokenRepo]:
    tmp = tmp_path_factory.mktemp("broken").resolve()
    repo = tmp / "models"
    build_reference_mlp(repo / "mlp" / "1" / "model.onnx")
    broken_onnx = repo / "broken" / "1" / "model.onnx"
    broken_onnx.parent.mkdir(parents=True)
    broken_onnx.write_bytes(b"this is not an ONNX protobuf \x00\xff\x13\x37")
    build_reference_mlp(repo / "badconfig" / "1" / "model.onnx")
    badconfig_yaml = repo / "badconfig" / "config.yaml"
    badconfig_yaml.write_text("batching:\n  max_batch_size: 4\nno_such_key: 1\n")
    build_reference_mlp(repo / "badyaml" / "1" / "model.onnx")
    badyaml_yaml = repo / "badyaml" / "config.yaml"
    badyaml_yaml.write_text("batching: [max_batch_size: 4\n")
    with gateway_process(repo, tmp=tmp) as gw:
        yield BrokenRepo(gw, broken_onnx, badconfig_yaml, badyaml_yaml)


BAD_MODELS = ("broken", "badconfig", "badyaml")


def _bad_file(b: BrokenRepo, model: str) -> Path:
    return {"broken": b.broken_onnx, "badconfig": b.badconfig_yaml, "badyaml": b.badyaml_yaml}[model]


def test_bad_models_are_not_ready_http(broken: BrokenRepo) -> None:
    with httpx.Client(base_url=broken.gateway.http_url, timeout=30.0) as c:
        assert c.get("/v2/health/ready").status_code == 200, "one broken model must not take the gateway out"
        assert c.get("/v2/models/mlp/ready").json() == {"name": "mlp", "ready": True}
        for model in BAD_MODELS:
            response = c.get(f"/v2/models/{model}/ready")
            assert response.status_code == 503
            assert response.json() == {"name": model, "ready": False}
        pinned = c.get("/v2/models/broken/versions/1/ready")
        assert pinned.status_code == 503
        assert pinned.json()["ready"] is False


def test_bad_models_are_not_ready_grpc(broken: BrokenRepo) -> None:
    client = grpcclient.InferenceServerClient(broken.gateway.grpc_addr)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("mlp")
        assert client.is_model_ready("mlp", model_version="1")
        for model in BAD_MODELS:
            assert not client.is_model_ready(model)
        assert not client.is_model_ready("broken", model_version="1")
    finally:
        client.close()


@pytest.mark.parametrize(("model", "version"), [("broken", "1"), ("badconfig", None), ("badyaml", None)])
def test_infer_on_bad_model_names_the_file(model: str, version: str | None, broken: BrokenRepo) -> None:
    path = str(_bad_file(broken, model))
    call = post(model, tensor("input", "FP32", [1, 32], ROW), version=version)
    response = httpx.post(broken.gateway.http_url + call.path, content=call.content, timeout=30)
    assert_error_body(response, 503, f"'{model}'", path)
    with grpc.insecure_channel(broken.gateway.grpc_addr) as channel:
        err = grpc_error(
            service_pb2_grpc.GRPCInferenceServiceStub(channel),
            g_raw(model, mlp_input(), version=version or ""),
        )
    assert err.code() is grpc.StatusCode.UNAVAILABLE, err.details()
    assert path in err.details()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_unpinned_infer_on_broken_model_names_the_file(protocol: str, broken: BrokenRepo) -> None:
    path = str(broken.broken_onnx)
    if protocol == "http":
        call = post("broken", tensor("input", "FP32", [1, 32], ROW))
        response = httpx.post(broken.gateway.http_url + call.path, content=call.content, timeout=30)
        assert_error_body(response, 503, "'broken'", path)
    else:
        with grpc.insecure_channel(broken.gateway.grpc_addr) as channel:
            err = grpc_error(service_pb2_grpc.GRPCInferenceServiceStub(channel), g_raw("broken", mlp_input()))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert path in err.details()


def test_good_model_still_serves(broken: BrokenRepo) -> None:
    call = post("mlp", tensor("input", "FP32", [2, 32], ROW * 2))
    response = httpx.post(broken.gateway.http_url + call.path, content=call.content, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [2, 8]
    with grpc.insecure_channel(broken.gateway.grpc_addr) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(g_raw("mlp", mlp_input()), timeout=30)
    assert reply.model_version == "1"


def test_gateway_log_names_the_bad_files(broken: BrokenRepo) -> None:
    logs = broken.gateway.logs()
    assert str(broken.broken_onnx) in logs
    assert str(broken.badconfig_yaml) in logs
    assert str(broken.badyaml_yaml) in logs
    assert broken.gateway.proc.poll() is None
