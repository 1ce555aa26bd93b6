"""OpenTelemetry: a span per request, children for queue wait and batch run, batch spans linked to members."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
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
        children = by_parent.get(infer.context.span_id, set())
        assert {"queue_wait", "batch_run"} <= children <= {"queue_wait", "batch_run", "batch"}
    batches = [s for s in spans if s.name == "batch"]
    for b in batches:  # parented under its first member, linked to all of them
        assert b.parent is not None and b.parent.span_id == b.links[0].context.span_id
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == {s.context.span_id for s in infers}
    assert sum(len(b.links) for b in batches) == 48
    assert max(len(b.links) for b in batches) > 1, "48 concurrent requests should share at least one batch"
    assert all(b.attributes["sluice.batch.rows"] == len(b.links) for b in batches)


def test_callers_sampled_traceparent_is_followed_and_unsampled_roots_record_nothing(demo_repo: Path) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    from gateway.observability.tracing import make_tracer_provider

    exporter = InMemorySpanExporter()
    provider = make_tracer_provider("test", exporter=exporter, sample_ratio=0.0)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    http_parent, grpc_parent = "00f067aa0ba902b7", "00f067aa0ba902b8"
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.1] * 32}]}
    with ThreadedGateway(settings_for(demo_repo), tracer_provider=provider) as gw:
        for _ in range(10):
            assert httpx.post(f"{gw.http_url}/v2/models/mlp/infer", json=body).status_code == 200
        headers = {"traceparent": f"00-{trace_id}-{http_parent}-01"}
        assert httpx.post(f"{gw.http_url}/v2/models/mlp/infer", json=body, headers=headers).status_code == 200
        client = grpcclient.InferenceServerClient(gw.grpc_addr)
        x = grpcclient.InferInput("input", [1, 32], "FP32")
        x.set_data_from_numpy(np.full((1, 32), 0.1, np.float32))
        client.infer("mlp", [x], headers={"traceparent": f"00-{trace_id}-{grpc_parent}-01"})
        client.close()
        provider.force_flush()
    spans = exporter.get_finished_spans()
    infers = [s for s in spans if s.name == "infer"]
    assert len(infers) == 2, "only the two requests with a sampled traceparent are recorded"
    assert {format(s.context.trace_id, "032x") for s in infers} == {trace_id}
    assert {format(s.parent.span_id, "016x") for s in infers if s.parent} == {http_parent, grpc_parent}
    assert {s.attributes["rpc.system"] for s in infers} == {"http", "grpc"}
    assert len([s for s in spans if s.name == "batch"]) == 2


def test_with_no_exporter_no_root_trace_is_started_and_a_callers_is_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans nobody exports cost the request path for nothing: with no exporter configured (the default), a request
    without a sampled `traceparent` gets no span at any ratio; one with a sampled parent still does (its log lines
    name the caller's trace). With an exporter, roots are sampled at the ratio asked for."""
    from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    from gateway.observability.tracing import RequestSpans, make_tracer_provider

    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER"):
        monkeypatch.delenv(name, raising=False)
    spans = RequestSpans(make_tracer_provider("test", sample_ratio=1.0))
    assert all(spans.start(None, "mlp", "http") is INVALID_SPAN for _ in range(200))
    parent = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(TraceFlags.SAMPLED))
    followed = spans.start(set_span_in_context(NonRecordingSpan(parent)), "mlp", "http")
    assert followed.is_recording() and followed.get_span_context().trace_id == parent.trace_id

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    sampled = RequestSpans(make_tracer_provider("test", sample_ratio=1.0))
    assert all(sampled.start(None, "mlp", "http").is_recording() for _ in range(20))
