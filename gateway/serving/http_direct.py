"""The V2 infer route answered by the connection protocol itself, without ASGI.

Under uvicorn, every request is an ASGI cycle: a scope dict, a task that awaits `receive()` for the body
as a message dict, two `send()` messages whose headers uvicorn checks one by one against regular
expressions, and a timer that watches for the client going away. On the infer route, the gateway's hot
path, that machinery cost about a third of the event loop's time a request (`loadtests.stage_budget`: the
handler, write and event-loop rows against the bare floor's).

Here the protocol (uvicorn's httptools protocol, one subclass down) recognises `POST .../infer` when its
headers are complete and gives the request a `DirectCycle` instead of uvicorn's cycle: the body's chunks
are kept as they arrive, the request's task starts once the body is whole (it never waits for a message),
and the answer goes out in one `write` of a header block built from bytes. The work itself is the ASGI
path's: `HttpAdapter.admit` reads the headers (key, quota, declared size, encodings), `HttpAdapter.respond`
decodes, infers and encodes; only the way bytes come in and go out differs.

A client that goes away cancels its request at once (uvicorn tells the cycle on `connection_lost`), so its
batch slot is skipped with no timer per request. Everything else stays on ASGI: other routes, and the infer
requests this path leaves there: one pipelined behind a request not yet answered (uvicorn's queue keeps
them in order), `Expect: 100-continue`, an upgrade.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from gateway.serving.http_app import INFER_PATH, Answer, HttpAdapter, InferHead
from gateway.serving.http_protocol import CoalescingHttpToolsProtocol


class DirectCycle:
    """One infer request served on the connection: the attributes uvicorn's protocol reads of its cycle
    (`response_complete`, `keep_alive`, `disconnected`, `message_event`), and the request's own work."""

    __slots__ = (
        "_chunks",
        "_protocol",
        "_size",
        "_task",
        "disconnected",
        "head",
        "keep_alive",
        "more_body",
        "response_complete",
        "response_started",
    )

    def __init__(self, protocol: DirectHttpProtocol, head: InferHead | None, keep_alive: bool) -> None:
        self._protocol = protocol
        self.head = head
        self.keep_alive = keep_alive
        self._chunks: list[bytes] = []
        self._size = 0
        self._task: asyncio.Task[None] | None = None
        self.disconnected = False
        self.more_body = True
        self.response_started = False
        self.response_complete = False

    @property
    def message_event(self) -> DirectCycle:
        """uvicorn sets its cycle's event when the connection is lost; here that cancels the request."""
        return self

    def set(self) -> None:
        task = self._task
        if self.disconnected and task is not None and not task.done():
            task.cancel()

    def take(self, chunk: bytes) -> None:
        """A piece of the body: kept, unless it takes the body over the limit (then 413, and the rest of the
        body is read and let go, as on the ASGI path)."""
        if self.response_complete:
            return
        self._size += len(chunk)
        adapter = self._protocol._direct
        assert adapter is not None
        if self._size > adapter.max_body_bytes:
            self._chunks.clear()
            self.answer(adapter.too_large())
            return
        self._chunks.append(chunk)

    def complete(self) -> None:
        """The body is whole: start the request's task."""
        self.more_body = False
        if self.response_complete or self.head is None:
            return
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        protocol = self._protocol
        task = protocol.loop.create_task(self._run(self.head, body))
        self._task = task
        tasks = protocol.tasks  # the server's: a graceful shutdown waits for them
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _run(self, head: InferHead, body: bytes) -> None:
        adapter = self._protocol._direct
        assert adapter is not None
        try:
            answer = await adapter.respond(head, body)
        except asyncio.CancelledError:
            if self.disconnected:
                return  # the client went away: nobody to answer
            raise
        if self.disconnected:
            return
        flow = self._protocol.flow
        if flow.write_paused:  # the client is not reading its answers: wait, as uvicorn's send does
            await flow.drain()
        self.answer(answer)

    def answer(self, answer: Answer) -> None:
        """Write the whole response in one call, then hand the connection back to the protocol."""
        status, body, content_type, extra = answer
        protocol = self._protocol
        parts = [
            STATUS_LINE[status],
            protocol.default_header_block(),
            b"content-type: ",
            content_type,
            b"\r\ncontent-length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        if extra:
            for name, value in extra:
                parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts += (b"\r\n", body)
        self.response_started = True
        transport = protocol.transport
        if not transport.is_closing():
            transport.write(b"".join(parts))
        self.response_complete = True
        if not self.keep_alive:
            transport.close()
        protocol.on_response_complete()


class DirectHttpProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's protocol that serves `POST .../infer` itself (`DirectCycle`) when `_direct` is set."""

    _direct: HttpAdapter | None = None
    """Bound by the server (`ConnectionGuard.protocol_class`); None: every request goes to ASGI."""
    _defaults: Any = None
    _default_block = b""

    def default_header_block(self) -> bytes:
        """uvicorn's default headers (date, server) as bytes, made again when uvicorn renews them (each second)."""
        defaults = self.server_state.default_headers
        if defaults is not self._defaults:
            self._defaults = defaults
            self._default_block = b"".join(b"%s: %s\r\n" % pair for pair in defaults)
        return self._default_block

    def on_headers_complete(self) -> None:
        if not self._begin_direct():
            super().on_headers_complete()

    def _begin_direct(self) -> bool:
        adapter = self._direct
        parser = self.parser
        if adapter is None or parser.get_method() != b"POST" or self.expect_100_continue or parser.should_upgrade():
            return False
        current = self.cycle
        if current is not None and not current.response_complete:
            return False  # pipelined behind a request not yet answered: uvicorn's queue keeps the order
        path = httptools.parse_url(self.url).path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        match = INFER_PATH.match(self.root_path + path)
        if match is None:
            return False
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        head = adapter.admit(self.headers, match.group(1), match.group(2))
        if isinstance(head, InferHead):
            self.cycle = DirectCycle(self, head, keep_alive)  # type: ignore[assignment]
        else:
            cycle = DirectCycle(self, None, keep_alive)
            self.cycle = cycle  # type: ignore[assignment]
            cycle.answer(head)  # refused on its headers: the body that follows is read and let go
        return True

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if type(cycle) is DirectCycle:
            cycle.take(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        cycle: Any = self.cycle
        if type(cycle) is DirectCycle:
            cycle.complete()
        else:
            super().on_message_complete()
