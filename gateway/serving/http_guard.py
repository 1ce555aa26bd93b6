"""Careless and hostile HTTP clients: bounded headers, read timeouts and a connection limit.

uvicorn's httptools protocol has no limit on header size, no timeout on reading a request's headers or
body (its keep-alive timeout only runs between requests), and its `limit_concurrency` answers 503 to every
newcomer once idle connections fill it. So a slow-loris client (headers a byte at a time), a slow body, or
a flood of idle connections could hold the gateway's connections and memory for ever. `GuardedHttpProtocol`
is uvicorn's protocol with:

- **a header budget**: a request line and headers over `max_header_bytes` get 431 and the connection is
  closed (counted while they arrive, so an endless header is cut off too);
- **a header timeout**: a connection must deliver a request's headers within `header_timeout_s` of its
  first byte (or, for a new connection, of being opened): else 408 and closed;
- **a body timeout**: the body must arrive within `body_timeout_s` of the headers: else 408 and closed
  (the handler waiting for it sees a disconnect);
- **a connection limit**: at `max_connections`, a new connection evicts the connection that has been idle
  longest (no request under way), one that never sent a request first, as nginx reuses idle keep-alive
  connections; when none is idle, the new one is closed at once. So idle connections can never lock out
  callers with work.

The timeouts are enforced by one sweep a second over the open connections (`ConnectionGuard.sweep`), not
by a timer per request: the hot path only stores a time and a phase at the start of a request and at the
end of its headers and body. Every closed connection is counted by reason in
`sluice_http_connections_closed_total`; `sluice_http_connections` is the number open.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httptools

from gateway.observability.metrics import GatewayMetrics
from gateway.serving.http_accept import accept_waiting
from gateway.serving.http_app import HttpAdapter
from gateway.serving.http_direct import DirectHttpProtocol

log = logging.getLogger(__name__)

_HEAD, _BODY, _BUSY, _IDLE = 0, 1, 2, 3
"""A connection's phase: reading a request's headers (or waiting for its first request), reading its body,
serving it, idle between requests (keep-alive)."""
SWEEP_S = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 4096
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0


def _refusal(status: int, reason: str, message: str) -> bytes:
    body = f'{{"error": "{message}"}}'.encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    return head + body


class ConnectionGuard:
    """The limits, the open connections' census, and the sweep that enforces the timeouts."""

    def __init__(self, limits: ConnectionLimits, metrics: GatewayMetrics) -> None:
        self.limits = limits
        self._metrics = metrics
        self.connections: set[GuardedHttpProtocol] = set()
        self._task: asyncio.Task[None] | None = None

    def protocol_class(
        self, direct: HttpAdapter | None = None, listeners: Sequence[socket.socket] = ()
    ) -> type[GuardedHttpProtocol]:
        """The protocol uvicorn instantiates per connection, bound to this guard; with `direct`, infer
        requests are served on the connection itself (`http_direct`), by that adapter; `listeners`: the server's
        listening sockets, whose waiting connections each new one takes (`http_accept`)."""
        guard = self

        class Bound(GuardedHttpProtocol):
            _guard = guard
            _direct = direct
            _listeners = tuple(listeners)

        return Bound

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep_forever(), name="http-connection-guard")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def closed(self, reason: str) -> None:
        self._metrics.http_connections_closed.labels(reason).inc()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                self.sweep(time.monotonic())
            except Exception:  # the guard must never stop guarding
                log.exception("HTTP connection sweep failed")

    def sweep(self, now: float) -> None:
        """Close every connection whose headers or body are late."""
        limits = self.limits
        for conn in list(self.connections):
            phase = conn._phase
            if phase == _HEAD and now - conn._since > limits.header_timeout_s:
                conn._refuse(408, "Request Timeout", "request headers not received in time", "header_timeout")
            elif phase == _BODY and now - conn._since > limits.body_timeout_s:
                conn._refuse(408, "Request Timeout", "request body not received in time", "body_timeout")
        self._metrics.http_connections.set(len(self.connections))

    def admit(self, newcomer: GuardedHttpProtocol) -> bool:
        """Make room for a new connection at the limit by evicting the longest idle one; False: no room."""
        if len(self.connections) < self.limits.max_connections:
            return True
        idle = [c for c in self.connections if c._idle_since is not None]
        if not idle:
            self.closed("connection_limit")
            return False
        # A connection that never sent a request goes first: a flood of idle connections evicts itself, and a
        # client's keep-alive connection between two requests is closed only when no such one is left.
        unused = [c for c in idle if not c._served]
        oldest = min(unused or idle, key=lambda c: c._idle_since or 0.0)
        oldest._drop("evicted_idle")
        return True


class GuardedHttpProtocol(DirectHttpProtocol):
    """uvicorn's httptools protocol (infer served on the connection, `http_direct`; each other response in one
    write, `http_protocol`) under a `ConnectionGuard` (see the module's note)."""

    _guard: ConnectionGuard
    _listeners: tuple[socket.socket, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = _HEAD
        self._since = time.monotonic()
        self._idle_since: float | None = self._since
        """Set while no request is under way (a new connection, or keep-alive between requests)."""
        self._head_bytes = 0
        self._refused = False
        self._served = False
        """True once a response went out on this connection (it is a client's, not an idle flood's)."""

    # -- connection lifecycle -----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        if not self._guard.admit(self):
            transport.close()
            return
        self._guard.connections.add(self)
        super().connection_made(transport)
        if self._listeners:
            factory = functools.partial(
                type(self),
                config=self.config,
                server_state=self.server_state,
                app_state=self.app_state,
                _loop=self.loop,
            )
            accept_waiting(self._listeners, self.loop, factory, self.config.ssl)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.connections.discard(self)
        if self.transport is None:  # refused at the door: uvicorn never saw it
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase in (_HEAD, _IDLE):
            if self._phase == _IDLE:  # the next request's first bytes: its headers' clock starts now
                self._phase, self._since, self._head_bytes = _HEAD, time.monotonic(), 0
            self._idle_since = None
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._head_bytes > self._guard.limits.max_header_bytes and self._phase == _HEAD:
                self._too_large()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self._phase == _HEAD and self._head_bytes > self._guard.limits.max_header_bytes:
            self._too_large()

    # -- parser callbacks -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        limit = self._guard.limits.max_header_bytes
        # Headers that came whole in one large read were not cut off on the way: measure them (only then).
        if self._head_bytes > limit and len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers) > limit:
            self._too_large()
            return
        self._phase, self._since = _BODY, time.monotonic()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self._phase == _BODY:
            self._phase = _BUSY
            if self.cycle is not None and self.cycle.response_complete:  # answered before its body ended
                self._phase, self._idle_since = _IDLE, time.monotonic()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._served = True
        if self._phase != _BODY:  # a response sent before the body ended (413): the body's clock keeps running
            self._phase = _IDLE
            self._idle_since = time.monotonic()

    # -- refusals ---------------------------------------------------------------------------

    def _too_large(self) -> None:
        limit = self._guard.limits.max_header_bytes
        message = f"request headers are over {limit} bytes"
        self._refuse(431, "Request Header Fields Too Large", message, "header_too_large")

    def _refuse(self, status: int, reason: str, message: str, why: str) -> None:
        """Answer `status` and close, unless a response already started (then just close)."""
        if self._refused or self.transport is None or self.transport.is_closing():
            return
        self._refused = True
        started = self.cycle is not None and getattr(self.cycle, "response_started", False)
        if not started:
            self.transport.write(_refusal(status, reason, message))
        self._guard.closed(why)
        self.transport.close()

    def _drop(self, why: str) -> None:
        self._refused = True
        self._guard.connections.discard(self)
        self._guard.closed(why)
        if self.transport is not None:
            self.transport.close()
