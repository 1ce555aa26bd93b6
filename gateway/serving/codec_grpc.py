"""V2 gRPC messages <-> `InferRequest` / `InferResponse`.

The messages are tritonclient's generated ones (package `inference`, service
GRPCInferenceService), so tritonclient.grpc and any KServe V2 gRPC client work unchanged.
`raw_input_contents` are viewed in place; answers always use `raw_output_contents`, as
Triton does. Sizes are checked before anything is allocated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.grpc import service_pb2 as pb

from gateway.errors import InvalidInput
from gateway.serving.codec_json import timeout_from_parameters
from gateway.serving.request import InferRequest, InferResponse, RequestedOutput
from runtimes.tensors import DataType

# Which typed `contents` field carries each datatype (FP16 has none: it must come raw).
_CONTENTS_FIELD = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
}


def parameters_to_dict(params: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, param in params.items():
        kind = param.WhichOneof("parameter_choice")
        if kind is not None:
            result[key] = getattr(param, kind)
    return result


def decode_request(msg: pb.ModelInferRequest) -> InferRequest:
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} inputs; they must pair up")
    if not msg.inputs:
        raise InvalidInput("'inputs' must hold at least one tensor")
    inputs: dict[str, np.ndarray] = {}
    for position, tensor in enumerate(msg.inputs):
        name = tensor.name
        if not name:
            raise InvalidInput(f"inputs[{position}].name must be a non-empty string")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once")
        try:
            datatype = DataType(tensor.datatype)
        except ValueError:
            supported = ", ".join(d.value for d in DataType)
            raise InvalidInput(f"input '{name}': datatype {tensor.datatype!r} is not supported ({supported})") from None
        shape = list(tensor.shape)
        if any(d < 0 for d in shape):
            raise InvalidInput(f"input '{name}': shape {shape} must hold non-negative integers")
        count = math.prod(shape)
        if raw:
            blob = raw[position]
            expected = count * datatype.itemsize
            if len(blob) != expected:
                raise InvalidInput(
                    f"input '{name}': raw content has {len(blob)} bytes, shape {shape} of "
                    f"{datatype.value} needs {expected}"
                )
            array = np.frombuffer(blob, dtype=datatype.numpy, count=count).reshape(shape)
        else:
            field = _CONTENTS_FIELD.get(datatype)
            if field is None:
                raise InvalidInput(f"input '{name}': {datatype.value} must be sent in raw_input_contents")
            values = getattr(tensor.contents, field)
            if len(values) != count:
                raise InvalidInput(
                    f"input '{name}': shape {shape} needs {count} values, contents.{field} has {len(values)}"
                )
            try:
                array = np.array(values, dtype=datatype.numpy).reshape(shape)
            except (ValueError, OverflowError) as exc:
                raise InvalidInput(f"input '{name}': contents are not valid {datatype.value}: {exc}") from None
        inputs[name] = array
    parameters = parameters_to_dict(msg.parameters)
    outputs = [RequestedOutput(o.name) for o in msg.outputs] if msg.outputs else None
    return InferRequest(
        model=msg.model_name,
        version=msg.model_version or None,
        inputs=inputs,
        id=msg.id,
        parameters=parameters,
        outputs=outputs,
        timeout_s=timeout_from_parameters(parameters),
    )


def encode_response(response: InferResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(model_name=response.model, model_version=response.version, id=response.id)
    for key, value in response.parameters.items():
        msg.parameters[key].string_param = str(value)
    for name, array in response.outputs.items():
        out = msg.outputs.add()
        out.name = name
        out.datatype = DataType.from_numpy(array.dtype).value
        out.shape.extend(array.shape)
        msg.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return msg


def metadata_response(meta: dict[str, Any]) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
    for spec in meta["inputs"]:
        msg.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
    for spec in meta["outputs"]:
        msg.outputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
    return msg


def config_response(config: dict[str, Any]) -> pb.ModelConfigResponse:
    """Triton's model configuration (the JSON form the HTTP endpoint answers) as `ModelConfigResponse`."""
    return pb.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))


def statistics_response(stats: dict[str, Any]) -> pb.ModelStatisticsResponse:
    return json_format.ParseDict(stats, pb.ModelStatisticsResponse())


def index_response(index: list[dict[str, str]]) -> pb.RepositoryIndexResponse:
    return json_format.ParseDict({"models": index}, pb.RepositoryIndexResponse())
