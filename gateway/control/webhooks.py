"""Signed webhooks for control-plane events (rollout steps, promotions, rollbacks, monitor triggers).

Each event is one JSON body, the same bytes to every URL and on every retry:

    {"event": "rollout.promoted", "at": "2025-01-01T12:00:00.000Z", "id": "<uuid4>", "payload": {...}}

Headers: `Content-Type: application/json`, `X-Sluice-Event: <event>`, `X-Sluice-Delivery: <id>`,
and, when a secret is configured, `X-Sluice-Signature: sha256=<hex>`: the HMAC-SHA256 of the
exact body bytes under the shared secret.

How a receiver verifies: read the raw body bytes *before* parsing JSON (re-serialising changes
the bytes), compute `hmac.new(secret, body, hashlib.sha256).hexdigest()`, and compare it with
the header after `sha256=` using `hmac.compare_digest` (`verify_signature` does exactly that).
Then, to refuse replays, reject an `at` older than a few minutes and remember recent `id`s:
retries resend the same id, so a receiver that saw it already answers 2xx and does nothing.

Delivery is at least once, best effort: connection errors, 5xx and 429 are retried with
exponential backoff and jitter (a `Retry-After` in seconds is honoured, within the cap); other
answers are final. Sending never raises to the caller: webhooks are observers, and a receiver
that is down must not stop a rollback. Outcomes are counted in `sluice_webhook_deliveries`.
Logs name the receiver by scheme and host only: webhook URLs often carry tokens in their path
or query, and the secret is never logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import httpx

from gateway.observability.metrics import GatewayMetrics

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Sluice-Signature"
EVENT_HEADER = "X-Sluice-Event"
DELIVERY_HEADER = "X-Sluice-Delivery"
_PREFIX = "sha256="

Sleep = Callable[[float], Awaitable[None]]


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for `body`: `sha256=<hex HMAC-SHA256>`."""
    return _PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """Whether `header` (the X-Sluice-Signature value) signs exactly these body bytes.

    Compared in constant time, so a forger learns nothing from how long a refusal takes.
    """
    if not header or not header.startswith(_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, body).encode("ascii"), header.encode("ascii", "replace"))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class WebhookSender:
    """Posts events to every configured URL, retrying each on its own; never raises."""

    def __init__(
        self,
        urls: Sequence[str],
        secret: bytes | None,
        metrics: GatewayMetrics | None,
        *,
        max_attempts: int = 5,
        base_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
        timeout_s: float = 5.0,
        sleep: Sleep = asyncio.sleep,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """Bad URLs and limits are configuration errors: ValueError now, not silent failures later."""
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"webhook URL must be http(s)://host/..., got scheme {parts.scheme!r}")
        if secret is not None and not secret:
            raise ValueError("the webhook secret must not be empty (pass None to send unsigned)")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if base_delay_s < 0 or max_delay_s < 0 or timeout_s <= 0:
            raise ValueError("delays must not be negative and timeout_s must be positive")
        self._urls = tuple(urls)
        self._secret = secret
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._base_delay_s = base_delay_s
        self._max_delay_s = max_delay_s
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:  # never show the secret, even in a debugger or a traceback
        return f"WebhookSender(urls={len(self._urls)}, signed={self._secret is not None})"

    def backoff(self, retry: int) -> float:
        """Delay before retry number `retry` (1-based): base x 2^(retry-1), capped, with "equal jitter".

        Half the delay is fixed and half random, so delays still grow from one retry to the next
        (receivers get room to recover) while senders that failed together spread out.
        """
        ceiling = min(self._max_delay_s, self._base_delay_s * 2.0 ** (retry - 1))
        return ceiling / 2 + random.random() * ceiling / 2

    def _count(self, event: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.webhook_deliveries.labels(event, outcome).inc()

    def _encode(self, event: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        delivery_id = str(uuid.uuid4())
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        doc = {"event": event, "at": at, "id": delivery_id, "payload": payload}
        # default=str: a payload value JSON does not know (a datetime, an enum) must not stop the event.
        body = json.dumps(doc, separators=(",", ":"), default=str).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "sluice-webhooks",
            EVENT_HEADER: event,
            DELIVERY_HEADER: delivery_id,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        return body, headers

    async def send(self, event: str, payload: dict[str, Any]) -> None:
        """Deliver one event to every URL concurrently, each with its own retries. Never raises."""
        try:
            body, headers = self._encode(event, payload)
        except Exception:
            log.exception("webhook event %s could not be encoded; not sent", event)
            for _ in self._urls:
                self._count(event, "failed")
            return
        await asyncio.gather(*(self._deliver(url, event, body, headers) for url in self._urls))

    async def _deliver(self, url: str, event: str, body: bytes, headers: dict[str, str]) -> None:
        where = _redact(url)
        try:
            for attempt in range(1, self._max_attempts + 1):
                problem, retry_after = await self._attempt(url, body, headers)
                if problem is None:
                    self._count(event, "delivered")
                    return
                if retry_after is None or attempt == self._max_attempts:
                    log.warning("webhook %s to %s failed after %d attempt(s): %s", event, where, attempt, problem)
                    self._count(event, "failed")
                    return
                self._count(event, "retried")
                delay = min(self._max_delay_s, retry_after) if retry_after > 0 else self.backoff(attempt)
                log.info("webhook %s to %s: %s; retry %d in %.2fs", event, where, problem, attempt, delay)
                await self._sleep(delay)
        except asyncio.CancelledError:
            self._count(event, "failed")
            raise
        except Exception:  # a bug here must not reach the caller either
            log.exception("webhook %s to %s failed", event, where)
            self._count(event, "failed")

    async def _attempt(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[str | None, float | None]:
        """One POST. Returns (None, _) when delivered; else (problem, retry delay hint or None if final).

        A retry hint of 0 means "retry with our own backoff"; a positive one is the server's Retry-After.
        """
        try:
            response = await self._client.post(url, content=body, headers=headers, timeout=self._timeout_s)
        except httpx.TransportError as exc:  # refused, reset, timed out: the receiver may come back
            return f"{type(exc).__name__}", 0.0
        if response.is_success:
            return None, None
        problem = f"HTTP {response.status_code}"
        if response.status_code == 429 or response.status_code >= 500:
            return problem, _retry_after(response) or 0.0
        return problem, None  # 4xx (and 3xx): the receiver refuses this event; asking again won't help

    def deliver_in_background(self, event: str, payload: dict[str, Any]) -> asyncio.Task[None] | None:
        """Send without waiting (from a running event loop). Returns the task, or None once closed."""
        if self._closed:
            log.warning("webhook %s not sent: the sender is closed", event)
            for _ in self._urls:
                self._count(event, "failed")
            return None
        task = asyncio.get_running_loop().create_task(self.send(event, payload))
        self._tasks.add(task)  # the loop keeps only a weak reference to tasks
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def pending(self) -> int:
        """Deliveries scheduled in the background and not finished."""
        return len(self._tasks)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Wait up to `timeout_s` for background deliveries, cancel the rest (counted failed), close."""
        self._closed = True
        if self._tasks:
            tasks = set(self._tasks)
            _, late = await asyncio.wait(tasks, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                log.warning("%d webhook deliveries still pending at shutdown were cancelled", len(late))
                await asyncio.gather(*late, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()
