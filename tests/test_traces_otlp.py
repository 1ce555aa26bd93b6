"""Traces leave a real `sluice serve` over OTLP (gRPC and HTTP) and arrive whole at a real receiver.

The gateway is configured only through the standard OTEL_* variables, as an operator would. The span
tree a backend shows must be: each request (`infer`, SERVER) with its `queue_wait` then its `batch_run`;
one `batch` span per runtime call, linked to every request it served; model and version on each; and the
request's log line carries the same trace id, so a log search and a trace search meet.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from tests.helpers import gateway_process, wait_until
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

SERVER, INTERNAL = 2, 1
ROW = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.1] * 32}]}
TRACE_ID = "5e1f0c0ffee0c0ffee0c0ffee0c0ffee"
PARENT = "00f067aa0ba902b7"
N = 24


async def _burst(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:
        responses = await asyncio.gather(*(client.post(f"{url}/v2/models/mlp/infer", json=ROW) for _ in range(n)))
    return [r.status_code for r in responses]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_reach_an_otlp_receiver_as_one_tree_linked_to_the_log(
    demo_repo: Path, tmp_path: Path, protocol: str
) -> None:
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint(protocol),
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_SERVICE_NAME": "sluice-otlp-test",
        }
        with gateway_process(
            demo_repo, "--trace-sample-ratio", "1.0", "--grpc-port", "-1", tmp=tmp_path, env=env
        ) as gw:
            assert set(asyncio.run(_burst(gw.http_url, N))) == {200}
            # A request that times out in the queue (1 µs) is logged (504) under its caller's sampled trace.
            timed_out = {**ROW, "id": "late-1", "parameters": {"timeout": 1}}
            headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
            r = httpx.post(f"{gw.http_url}/v2/models/mlp/versions/1/infer", json=timed_out, headers=headers)
            assert r.status_code == 504, r.text
            wait_until(
                lambda: len([s for s in receiver.spans if s.name == "infer"]) >= N + 1,
                timeout=30,
                what="the infer spans at the receiver",
            )
            assert gw.terminate() == 0  # shutdown flushes whatever the batch processor still holds
        logs = gw.logs()
    assert receiver.requests["grpc" if protocol == "grpc" else "http"] > 0
    spans = list(receiver.spans)
    by_id = {s.span_id: s for s in spans}
    infers = [s for s in spans if s.name == "infer" and s.trace_id != TRACE_ID]
    assert len(infers) == N  # warm-up runs the runtime directly: no request spans before the burst
    assert {s.service for s in spans} == {"sluice-otlp-test"}

    # request -> queue wait -> batch run, each with model and version
    children: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id, []).append(s)
    for infer in infers:
        assert infer.kind == SERVER
        assert (infer.attributes["sluice.model"], infer.attributes["sluice.version"]) == ("mlp", "2")
        mine = {c.name: c for c in children.get(infer.span_id, [])}
        assert {"queue_wait", "batch_run"} <= set(mine) <= {"queue_wait", "batch_run", "batch"}
        wait, run = mine["queue_wait"], mine["batch_run"]
        assert infer.start_ns <= wait.start_ns <= wait.end_ns <= run.start_ns <= run.end_ns <= infer.end_ns
        for child in (wait, run):
            assert child.trace_id == infer.trace_id
            assert (child.attributes["sluice.model"], child.attributes["sluice.version"]) == ("mlp", "2")

    # one batch span per runtime call, linked to every request it served and to nothing else
    batches = [s for s in spans if s.name == "batch"]
    linked = [link for b in batches for link in b.links]
    assert sorted(linked) == sorted((s.trace_id, s.span_id) for s in infers)
    assert max(len(b.links) for b in batches) > 1, f"{N} concurrent requests should share a batch"
    for b in batches:
        assert b.kind == INTERNAL
        assert (b.attributes["sluice.model"], b.attributes["sluice.version"]) == ("mlp", "2")
        assert b.attributes["sluice.batch.requests"] == len(b.links)
        first = by_id[b.parent_span_id]  # parented under its first member, so it shows in that trace's tree
        assert (first.trace_id, first.span_id) == b.links[0]

    # the timed-out request: its span continues the caller's trace, and its log line names that trace and span
    (failed,) = [s for s in spans if s.name == "infer" and s.trace_id == TRACE_ID]
    assert failed.parent_span_id == PARENT and failed.status_code == 2  # STATUS_CODE_ERROR
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    (line,) = [doc for doc in lines if doc.get("msg", "").startswith("inference failed")]
    assert line["status"] == 504 and line["request_id"] == "late-1"
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, failed.span_id)
