"""The shadow dispatcher in one process, with real ONNX Runtime sessions, a real batcher and a real prediction
log: the copies of a whole primary runtime batch go to the shadow as that batch's arrays, as they are (nothing
concatenated or sliced per request), and are compared, counted and logged exactly as copies concatenated one
by one are."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.observability.metrics import GatewayMetrics
from gateway.serving.batch_policy import BatchingConfig
from gateway.serving.batcher import Batcher
from gateway.serving.model_config import ModelConfig
from gateway.serving.registry import ServedVersion, VersionState
from gateway.serving.request import InferRequest
from gateway.serving.shadow import ShadowDispatcher
from gateway.serving.window_stats import WindowRecorder
from monitors.log_batches import BatchTensors
from monitors.prediction_log import PredictionLog, tensors_from_bytes
from runtimes.onnx import OnnxRuntime
from tests.helpers import Rows
from tests.models import build_lookup


class Shadow:
    """A shadow version served by a real session and batcher; `calls` holds the inputs of each runtime call."""

    def __init__(self, tmp: Path, metrics: GatewayMetrics) -> None:
        self.runtime = OnnxRuntime.load(build_lookup(tmp / "shadow.onnx", rows=100))
        self.calls: list[Mapping[str, np.ndarray]] = []
        batching = BatchingConfig(max_batch_size=32, default_timeout_s=None)
        self.batcher = Batcher(self._run, batching, name="lookup/3")
        self.version = ServedVersion(
            "lookup",
            "3",
            ModelConfig(),
            metrics.version("lookup", "3"),
            state=VersionState.READY,
            runtime=self.runtime,
            batcher=self.batcher,
            batching=batching,
        )

    async def _run(self, inputs: Mapping[str, np.ndarray], wanted: Sequence[str] | None) -> dict[str, np.ndarray]:
        self.calls.append(inputs)
        return await self.runtime.infer(inputs, wanted)


def primary_batch(tmp: Path, idx: list[int], changed: set[int]) -> tuple[BatchTensors, list[Any]]:
    """A primary runtime batch of one-row requests as the batcher leaves it, and each request's (request, its
    outputs, start, stop); the answers of the requests in `changed` are altered, so their copies disagree."""
    runtime = OnnxRuntime.load(build_lookup(tmp / "primary.onnx", rows=100))
    inputs = {"idx": np.array(idx, dtype=np.int64).reshape(-1, 1)}
    outputs = runtime.run(inputs)
    for i in changed:
        outputs["out"][i] += 1.0
    tensors = BatchTensors(inputs, outputs, len(idx), False)
    requests = []
    for i in range(len(idx)):
        request = InferRequest(model="lookup", version=None, inputs={"idx": inputs["idx"][i : i + 1]})
        requests.append((request, {"out": outputs["out"][i : i + 1]}, i, i + 1))
    return tensors, requests


def figures(metrics: GatewayMetrics) -> dict[str, float]:
    metrics.exposition()  # syncs the lock-free counters
    get = metrics.registry.get_sample_value
    where = {"model": "lookup", "version": "3"}
    return {
        "agreed": get("sluice_shadow_requests_total", {**where, "outcome": "agreed"}) or 0.0,
        "disagreed": get("sluice_shadow_requests_total", {**where, "outcome": "disagreed"}) or 0.0,
        "latencies": get("sluice_shadow_latency_seconds_count", where) or 0.0,
    }


@pytest.mark.parametrize("whole", [True, False], ids=["every-request", "one-missing"])
async def test_copies_of_a_whole_primary_batch_go_as_its_arrays_and_count_as_copies_sent_one_by_one(
    whole: bool, tmp_path: Path
) -> None:
    metrics = GatewayMetrics()
    shadow = Shadow(tmp_path, metrics)
    sink = Rows()
    plog = PredictionLog(sink, batch_size=500)  # type: ignore[arg-type]  # only the writing half is used
    dispatcher = ShadowDispatcher(metrics, WindowRecorder(), predictions=plog)
    idx = [3, 17, 5, 99, 42, 0, 8, 64]
    tensors, requests = primary_batch(tmp_path, idx, changed={1, 6})
    sent = requests if whole else requests[:3] + requests[4:]  # one request's copy missing (it was not shadowed)
    shadow.batcher.start()
    for n, (request, outputs, start, stop) in enumerate(sent):
        dispatcher.dispatch(request, outputs, (shadow.version,), f"p{n}", 1, tensors, start, stop)
    await dispatcher.wait_idle()
    await plog.flush()

    (call,) = shadow.calls  # one runtime call for the whole batch either way
    if whole:
        assert call["idx"] is tensors.inputs["idx"]  # the primary batch's array itself
    else:
        assert call["idx"] is not tensors.inputs["idx"]
        np.testing.assert_array_equal(call["idx"], np.concatenate([r[0].inputs["idx"] for r in sent]))
    got = figures(metrics)
    assert got == {"agreed": len(sent) - 2, "disagreed": 2, "latencies": len(sent)}
    # Each copy logged under its id with its own input and the shadow's answer to it.
    assert [row[1] for row in sink.rows] == [f"p{n}" for n in range(len(sent))]
    for row, (request, _, _, _) in zip(sink.rows, sent, strict=True):
        assert row[3] == "shadow" and row[2] == "3" and row[6] == "ok"
        logged_in, logged_out = tensors_from_bytes(row[7]), tensors_from_bytes(row[8])
        np.testing.assert_array_equal(logged_in["idx"], request.inputs["idx"])
        np.testing.assert_array_equal(logged_out["out"], shadow.runtime.run(request.inputs)["out"])
    await shadow.batcher.close()
