"""uvicorn's httptools protocol, writing each response's header block and body in one system call.

An ASGI application sends a response as two messages, start and body, and uvicorn writes each to
the socket at once: two `send` calls, two TCP segments. On a small inference response the second
system call costs as much as all of the gateway's own work on the request (measured: 12% of the
event loop's time at 64 connections). Here the transport a request writes through holds the first
write until the second arrives (then both go out as one) or until the loop's current pass ends
(`call_soon`), so nothing is delayed past the step that produced it; a streamed response still goes
out chunk by chunk.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Stands in for a connection's transport in its request cycles: merges back-to-back writes."""

    __slots__ = ("_loop", "_pending", "_scheduled", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None
        self._scheduled = False

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is None:
            self._pending = data
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush)
            return
        self._pending = None
        self._transport.write(pending + data)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, None
        if pending is not None and not self._transport.is_closing():
            self._transport.write(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._coalescing = CoalescingTransport(transport, self.loop)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.cycle.transport = self._coalescing  # type: ignore[assignment]
