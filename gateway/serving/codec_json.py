"""V2 REST body <-> `InferRequest` / `InferResponse`, with the binary tensor extension.

The binary extension (what tritonclient.http sends by default): the first
`Inference-Header-Content-Length` bytes are the JSON header; each input whose parameters
carry `binary_data_size` takes that many bytes of the rest, in input order. Binary inputs are
viewed in place (`np.frombuffer`), not copied. Every size is checked against the body before
anything is allocated, so a shape of 10^9 rows with 32 values of data is a 400, not a 128 GB
allocation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from gateway.errors import InvalidInput
from gateway.serving.request import InferRequest, InferResponse, RequestedOutput
from runtimes.tensors import DataType

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def decode_request(body: bytes, header_length: int | None, model: str, version: str | None) -> InferRequest:
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"malformed JSON body: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")

    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    parameters = _object(doc.get("parameters"), "parameters")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")

    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict):
            raise InvalidInput(f"inputs[{position}] must be an object")
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{position}].name must be a non-empty string")
        if name in inputs:
            raise InvalidInput(f"input '{name}' appears more than once")
        datatype = _datatype(raw.get("datatype"), name)
        shape = _shape(raw.get("shape"), name)
        count = math.prod(shape)
        tensor_params = _object(raw.get("parameters"), f"input '{name}' parameters")
        size = tensor_params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"input '{name}': binary_data_size must be a non-negative integer")
            if "data" in raw:
                raise InvalidInput(f"input '{name}' has both 'data' and binary_data_size")
            expected = count * datatype.itemsize
            if size != expected:
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} does not match shape {shape} of "
                    f"{datatype.value} ({expected} bytes)"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"input '{name}': binary_data_size {size} runs past the end of the body "
                    f"({len(binary) - offset} bytes left)"
                )
            array = np.frombuffer(binary, dtype=datatype.numpy, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            array = _json_data(raw.get("data"), datatype, shape, count, name)
        inputs[name] = array
    if offset != len(binary):
        raise InvalidInput(f"binary data has {len(binary) - offset} bytes that no input's binary_data_size claims")

    outputs = None
    if "outputs" in doc:
        outputs = _requested_outputs(doc["outputs"])
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInput("parameter 'binary_data_output' must be a boolean")
    return InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        id=request_id,
        parameters=parameters,
        outputs=outputs,
        timeout_s=timeout_from_parameters(parameters),
        binary_output=binary_output,
    )


def timeout_from_parameters(parameters: dict[str, Any]) -> float | None:
    """The V2 `timeout` parameter is in microseconds (as Triton reads it)."""
    timeout = parameters.get("timeout")
    if timeout is None:
        return None
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not math.isfinite(timeout) or timeout <= 0:
        raise InvalidInput("parameter 'timeout' must be a positive number of microseconds")
    return float(timeout) / 1e6


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, int | None]:
    """Return the body and, when any output is binary, the JSON header's length."""
    binary_flags: dict[str, bool] = {}
    if request.outputs is not None:
        for out in request.outputs:
            binary_flags[out.name] = request.binary_output if out.binary is None else out.binary
    chunks: list[bytes] = []
    outputs = []
    for name, array in response.outputs.items():
        datatype = DataType.from_numpy(array.dtype).value
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": array.shape}
        if binary_flags.get(name, request.binary_output):
            data = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = np.ascontiguousarray(array).ravel()
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "id": response.id,
        "outputs": outputs,
    }
    if response.parameters:
        doc["parameters"] = response.parameters
    header = orjson.dumps(doc, option=_DUMPS_OPTIONS)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"'{what}' must be an object")
    return value


_DATATYPES: dict[str, DataType] = {d.value: d for d in DataType}


def _datatype(value: Any, name: str) -> DataType:
    datatype = _DATATYPES.get(value) if isinstance(value, str) else None
    if datatype is None:
        supported = ", ".join(d.value for d in DataType)
        raise InvalidInput(f"input '{name}': datatype {value!r} is not supported ({supported})")
    return datatype


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list):
        raise InvalidInput(f"input '{name}': shape must be a list of integers")
    for dim in value:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise InvalidInput(f"input '{name}': shape {value} must hold non-negative integers")
    return value


def _json_data(data: Any, datatype: DataType, shape: list[int], count: int, name: str) -> np.ndarray:
    if data is None:
        raise InvalidInput(f"input '{name}' has no 'data' and no binary_data_size")
    if not isinstance(data, list):
        data = [data]
    # A flat list can be checked before numpy allocates anything.
    if (not data or not isinstance(data[0], list)) and len(data) != count:
        raise InvalidInput(f"input '{name}': shape {shape} needs {count} values, 'data' has {len(data)}")
    try:
        array = np.array(data, dtype=datatype.numpy)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(f"input '{name}': data is not valid {datatype.value}: {exc}") from None
    if array.size != count:
        raise InvalidInput(f"input '{name}': shape {shape} needs {count} values, 'data' has {array.size}")
    return array.reshape(shape)


def _requested_outputs(value: Any) -> list[RequestedOutput]:
    if not isinstance(value, list):
        raise InvalidInput("'outputs' must be a list")
    result = []
    for position, raw in enumerate(value):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise InvalidInput(f"outputs[{position}] must be an object with a 'name'")
        params = _object(raw.get("parameters"), f"output '{raw['name']}' parameters")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInput(f"output '{raw['name']}': binary_data must be a boolean")
        result.append(RequestedOutput(raw["name"], binary))
    return result
