"""OpenTelemetry: a span per request, children for queue wait and batch run, batch spans linked to members."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tests.helpers import ThreadedGateway, settings_for


async def _burst(url: str, n: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as client:
        body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.1] * 32}]}
        responses = await asyncio.gather(*(client.post(f"{url}/v2/models/mlp/infer", json=body) for _ in range(n)))
    return [r.status_code for r in responses]


def test_request_spans_have_queue_and_batch_children_and_batches_link_members(demo_repo: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with ThreadedGateway(settings_for(demo_repo, grpc_port=-1), tracer_provider=provider) as gw:
        exporter.clear()  # drop warm-up spans
        assert set(asyncio.run(_burst(gw.http_url, 48))) == {200}
    spans = exporter.get_finished_spans()
    infers = [s for s in spans if s.name == "infer"]
    assert len(infers) == 48
    assert all(s.kind is SpanKind.SERVER and s.attributes["sluice.model"] == "mlp" for s in infers)
    by_parent: dict[int, set[str]] = {}
    for s in spans:
        if s.parent is not None:
            by_parent.setdefault(s.parent.span_id, set()).add(s.name)
    for infer in infers:
        assert by_parent.get(infer.context.span_id) == {"queue_wait", "batch_run"}
    batches = [s for s in spans if s.name == "batch"]
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == {s.context.span_id for s in infers}
    assert sum(len(b.links) for b in batches) == 48
    assert max(len(b.links) for b in batches) > 1, "48 concurrent requests should share at least one batch"
    assert all(b.attributes["sluice.batch.rows"] == len(b.links) for b in batches)
