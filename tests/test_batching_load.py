"""Under concurrent load, requests really are batched and every caller gets exactly its own rows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.grpc.aio as grpc_aio

from tests.helpers import GatewayProcess, metric_value


def _batch_stats(text: str) -> tuple[float, float]:
    labels = {"model": "mlp", "version": "1"}
    return metric_value(text, "sluice_batch_size_sum", **labels), metric_value(
        text, "sluice_batch_size_count", **labels
    )


async def _http_caller(client: httpx.AsyncClient, rows: np.ndarray, idx: int) -> tuple[int, np.ndarray]:
    body = {
        "id": f"caller-{idx}",
        "inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}],
    }
    r = await client.post("/v2/models/mlp/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == f"caller-{idx}"
    out = doc["outputs"][0]
    return idx, np.array(out["data"], dtype=np.float32).reshape(out["shape"])


async def _grpc_caller(client: grpc_aio.InferenceServerClient, rows: np.ndarray, idx: int) -> tuple[int, np.ndarray]:
    x = grpc_aio.InferInput("input", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    result = await client.infer("mlp", [x], model_version="1", request_id=f"caller-{idx}")
    return idx, result.as_numpy("output")


async def _load(gw: GatewayProcess, inputs: list[np.ndarray]) -> dict[int, np.ndarray]:
    limits = httpx.Limits(max_connections=48)
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=60, limits=limits) as http:
        grpc_client = grpc_aio.InferenceServerClient(gw.grpc_addr)
        try:
            tasks = [
                _http_caller(http, rows, i) if i % 2 else _grpc_caller(grpc_client, rows, i)
                for i, rows in enumerate(inputs)
            ]
            return dict(await asyncio.gather(*tasks))
        finally:
            await grpc_client.close()


def test_concurrent_callers_are_batched_and_each_gets_its_own_rows(
    demo_gateway: GatewayProcess, demo_repo: Path
) -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.standard_normal((int(rng.integers(1, 4)), 32)).astype(np.float32) for _ in range(600)]
    before_sum, before_count = _batch_stats(demo_gateway.metrics())

    answers = asyncio.run(_load(demo_gateway, inputs))

    session = ort.InferenceSession(str(demo_repo / "mlp" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for i, rows in enumerate(inputs):
        expected = session.run(None, {"input": rows})[0]
        assert answers[i].shape == (rows.shape[0], 8)
        np.testing.assert_allclose(answers[i], expected, rtol=1e-5, atol=1e-6)

    after_sum, after_count = _batch_stats(demo_gateway.metrics())
    rows_total = sum(r.shape[0] for r in inputs)
    assert after_sum - before_sum == rows_total
    runs = after_count - before_count
    assert runs < len(inputs), "some requests must have shared a runtime call"
    assert (after_sum - before_sum) / runs > 1.5
