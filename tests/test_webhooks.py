"""Webhooks against a real HTTP receiver on 127.0.0.1: signatures, retries, give-up, metrics.

The receiver is a small HTTP/1.1 responder on `asyncio.start_server` (real sockets, no mocks of
httpx). The sender's sleep is injected, so backoff is recorded instead of waited for.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.control.webhooks import WebhookSender, verify_signature
from gateway.observability.metrics import GatewayMetrics
from loadtests.ports import free_port

SECRET = b"s3cret-key"


@dataclass
class Hit:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers each POST with the next scripted status (200 once the script runs out)."""

    statuses: list[int] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.hits.append(Hit(headers, body))
            status = self.statuses.pop(0) if self.statuses else 200
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rec.url = f"http://127.0.0.1:{port}/hooks/rollouts?token=abc"
    async with server:
        yield rec


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def count(metrics: GatewayMetrics, event: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value("sluice_webhook_deliveries_total", {"event": event, "outcome": outcome})
    return value or 0.0


async def test_delivers_a_signed_event(receiver: Receiver) -> None:
    metrics = GatewayMetrics()
    sender = WebhookSender([receiver.url], SECRET, metrics)
    await sender.send("rollout.promoted", {"model": "m", "canary": "2", "weight": 100.0})
    await sender.aclose()

    (hit,) = receiver.hits
    assert hit.headers["x-sluice-event"] == "rollout.promoted"
    assert hit.headers["content-type"] == "application/json"
    header = hit.headers["x-sluice-signature"]
    assert verify_signature(SECRET, hit.body, header)
    expected = "sha256=" + hmac.new(SECRET, hit.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header, expected)
    assert not verify_signature(b"other", hit.body, header)
    assert not verify_signature(SECRET, hit.body + b" ", header)
    assert not verify_signature(SECRET, hit.body, None)
    doc = json.loads(hit.body)
    assert doc["event"] == "rollout.promoted" and doc["payload"]["canary"] == "2"
    assert doc["at"].endswith("Z") and len(doc["id"]) == 36
    assert hit.headers["x-sluice-delivery"] == doc["id"]
    assert count(metrics, "rollout.promoted", "delivered") == 1


async def test_unsigned_without_a_secret(receiver: Receiver) -> None:
    sender = WebhookSender([receiver.url], None, None)
    await sender.send("rollout.step", {})
    await sender.aclose()
    assert "x-sluice-signature" not in receiver.hits[0].headers


async def test_retries_after_503s_then_delivers_the_same_body(receiver: Receiver) -> None:
    receiver.statuses = [503, 503, 429]
    metrics, sleeps = GatewayMetrics(), Sleeps()
    sender = WebhookSender([receiver.url], SECRET, metrics, sleep=sleeps, base_delay_s=1.0)
    await sender.send("rollout.rolled_back", {"reason": "error_ratio"})
    await sender.aclose()
    assert len(receiver.hits) == 4
    assert len({h.body for h in receiver.hits}) == 1, "retries resend the same bytes and id"
    assert all(verify_signature(SECRET, h.body, h.headers["x-sluice-signature"]) for h in receiver.hits)
    assert count(metrics, "rollout.rolled_back", "retried") == 3
    assert count(metrics, "rollout.rolled_back", "delivered") == 1
    assert count(metrics, "rollout.rolled_back", "failed") == 0
    assert len(sleeps.delays) == 3


async def test_gives_up_after_max_attempts_with_growing_capped_backoff(receiver: Receiver) -> None:
    receiver.statuses = [500] * 20
    metrics, sleeps = GatewayMetrics(), Sleeps()
    sender = WebhookSender(
        [receiver.url], SECRET, metrics, sleep=sleeps, max_attempts=7, base_delay_s=0.5, max_delay_s=4
    )
    await sender.send("rollout.step", {"weight": 25.0})
    await sender.aclose()
    assert len(receiver.hits) == 7
    assert count(metrics, "rollout.step", "failed") == 1
    assert count(metrics, "rollout.step", "retried") == 6
    assert count(metrics, "rollout.step", "delivered") == 0
    delays = sleeps.delays
    assert len(delays) == 6
    assert all(a < b for a, b in itertools.pairwise(delays[:4])), f"grow until the cap: {delays}"
    assert all(2.0 <= d <= 4.0 for d in delays[3:]), f"capped at max_delay_s: {delays}"
    assert 0.25 <= delays[0] <= 0.5


async def test_a_400_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    metrics, sleeps = GatewayMetrics(), Sleeps()
    sender = WebhookSender([receiver.url], None, metrics, sleep=sleeps)
    await sender.send("rollout.step", {})
    await sender.aclose()
    assert len(receiver.hits) == 1 and sleeps.delays == []
    assert count(metrics, "rollout.step", "failed") == 1
    assert count(metrics, "rollout.step", "retried") == 0


async def test_retry_after_is_honoured_within_the_cap(receiver: Receiver) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 429 X\r\nRetry-After: 3\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sleeps = Sleeps()
    async with server:
        sender = WebhookSender([f"http://127.0.0.1:{port}/"], None, None, sleep=sleeps, max_attempts=3, max_delay_s=2)
        await sender.send("rollout.step", {})
        await sender.aclose()
    assert sleeps.delays == [2.0, 2.0]


async def test_connection_refused_is_retried_then_counted_failed() -> None:
    metrics, sleeps = GatewayMetrics(), Sleeps()
    sender = WebhookSender([f"http://127.0.0.1:{free_port()}/"], SECRET, metrics, sleep=sleeps, max_attempts=3)
    await sender.send("rollout.aborted", {"reason": "x"})
    await sender.aclose()
    assert len(sleeps.delays) == 2
    assert count(metrics, "rollout.aborted", "retried") == 2
    assert count(metrics, "rollout.aborted", "failed") == 1


async def test_each_url_is_delivered_on_its_own(receiver: Receiver) -> None:
    metrics = GatewayMetrics()
    dead = f"http://127.0.0.1:{free_port()}/"
    sender = WebhookSender([dead, receiver.url], SECRET, metrics, sleep=Sleeps(), max_attempts=2)
    await sender.send("rollout.promoted", {"payload": object()})  # unknown types become strings
    await sender.aclose()
    assert len(receiver.hits) == 1
    assert count(metrics, "rollout.promoted", "delivered") == 1
    assert count(metrics, "rollout.promoted", "failed") == 1


async def test_background_delivery_is_awaited_by_aclose(receiver: Receiver) -> None:
    metrics = GatewayMetrics()
    sender = WebhookSender([receiver.url], SECRET, metrics)
    for i in range(5):
        sender.deliver_in_background("rollout.step", {"i": i})
    assert sender.pending == 5
    await sender.aclose()
    assert sender.pending == 0
    assert sorted(json.loads(h.body)["payload"]["i"] for h in receiver.hits) == [0, 1, 2, 3, 4]
    assert count(metrics, "rollout.step", "delivered") == 5
    assert sender.deliver_in_background("rollout.step", {}) is None, "closed senders send nothing"
    assert count(metrics, "rollout.step", "failed") == 1


async def test_aclose_cancels_deliveries_past_its_bound() -> None:
    metrics = GatewayMetrics()
    never = asyncio.Event()

    async def stuck(delay: float) -> None:
        await never.wait()

    sender = WebhookSender([f"http://127.0.0.1:{free_port()}/"], None, metrics, sleep=stuck)
    sender.deliver_in_background("rollout.step", {})
    await asyncio.sleep(0.05)
    await sender.aclose(timeout_s=0.05)
    assert sender.pending == 0
    assert count(metrics, "rollout.step", "failed") == 1


async def test_the_secret_never_shows_and_bad_config_is_refused() -> None:
    sender = WebhookSender(["https://hooks.example/x"], SECRET, None)
    assert "s3cret" not in repr(sender)
    await sender.aclose()
    with pytest.raises(ValueError, match="http"):
        WebhookSender(["ftp://example/x"], None, None)
    with pytest.raises(ValueError, match="empty"):
        WebhookSender(["https://example/x"], b"", None)
    with pytest.raises(ValueError, match="max_attempts"):
        WebhookSender(["https://example/x"], None, None, max_attempts=0)
