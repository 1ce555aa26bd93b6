"""Check a request against the serving version's signature before it is queued.

Nothing that fails here reaches a batch, so one caller's bad tensor can never fail its
batch-mates. Messages name the tensor and what the model expects.
"""

from __future__ import annotations

from gateway.errors import InvalidInput
from gateway.serving.request import InferRequest
from runtimes.tensors import DataType, ModelSignature


def validate(request: InferRequest, signature: ModelSignature, max_batch_size: int) -> int:
    """Raise `InvalidInput` on any mismatch; return the request's row count (1 when unbatched)."""
    expected = signature.by_name
    for name in request.inputs:
        if name not in expected:
            raise InvalidInput(f"unexpected input '{name}': model '{request.model}' takes {sorted(expected)}")
    missing = [name for name in expected if name not in request.inputs]
    if missing:
        raise InvalidInput(f"missing input(s) {missing} for model '{request.model}'")

    batched = max_batch_size > 0 and signature.batchable
    rows = -1
    for spec in signature.inputs:
        array = request.inputs[spec.name]
        if array.dtype != spec.dtype:
            try:
                got = DataType.from_numpy(array.dtype).value
            except ValueError:
                got = str(array.dtype)
            raise InvalidInput(f"input '{spec.name}': datatype {got} does not match the model's {spec.datatype.value}")
        shape = array.shape
        if len(shape) != len(spec.shape):
            raise InvalidInput(
                f"input '{spec.name}': shape {list(shape)} has rank {len(shape)}, the model expects {list(spec.shape)}"
            )
        for axis, (got_dim, want_dim) in enumerate(zip(shape, spec.shape, strict=True)):
            if want_dim >= 0 and got_dim != want_dim:
                raise InvalidInput(
                    f"input '{spec.name}': dimension {axis} is {got_dim}, the model expects {list(spec.shape)}"
                )
        if batched:
            if shape[0] < 1:
                raise InvalidInput(f"input '{spec.name}': batch dimension must be at least 1")
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidInput(
                    f"input '{spec.name}': batch dimension {shape[0]} differs from the other inputs' {rows}"
                )
    if batched and rows > max_batch_size:
        raise InvalidInput(f"batch of {rows} rows is over the model's max_batch_size {max_batch_size}")
    if request.outputs is not None:
        known = signature.output_set
        for out in request.outputs:
            if out.name not in known:
                raise InvalidInput(
                    f"requested output '{out.name}' is not an output of model '{request.model}': {sorted(known)}"
                )
    return rows if batched else 1
