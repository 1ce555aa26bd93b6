"""Take every connection waiting on a listening socket when one arrives, not one a turn of the event loop.

libuv, under uvloop, accepts one connection each time the loop polls its sockets, and relies on level-triggered
polling to bring the next one on the next turn (libuv#3696). On an idle gateway a turn lasts microseconds; on a
busy one a turn serves a batch of requests and lasts milliseconds, so a burst of new connections (a client pool
that reconnects, a load balancer that opens its pool) waits in the kernel's queue a turn each, and their first
requests wait with them: 256 connections opened at once on a gateway under load took about a second to be
accepted (`ss -lt`: the queue went down by one every 2.5 ms), and wrk's p99 over the next ten seconds read 400 to
540 ms against 30 ms when they came to an idle one (loadtests/README, twenty-second session). Here the first
connection of a burst takes the rest of the queue off the socket at once and hands each to the loop
(`connect_accepted_socket`) with the protocol the server would have made for it, so a burst costs one turn.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

MAX_PER_CALL = 512
"""Connections one call takes at most; the ones it hands over call it again (`connection_made`) for the rest."""

_HANDING_OVER: set[asyncio.Task[None]] = set()
"""The hand-overs under way: the loop keeps only weak references to its tasks (a TLS handshake can take a while)."""


def accept_waiting(
    listeners: Sequence[socket.socket],
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    ssl: ssl_module.SSLContext | None = None,
) -> int:
    """Accept what waits on `listeners` (non-blocking sockets) and serve each on `loop`; how many were taken.

    Never raises: a listener that is closed (the server is stopping) or an accept that fails (out of file
    descriptors) ends the call, and the server's own accept meets and reports the same condition."""
    taken = 0
    for listener in listeners:
        while taken < MAX_PER_CALL and listener.fileno() != -1:
            try:
                conn, _ = listener.accept()
            except OSError:  # nothing waits (EAGAIN), the listener is closed, or no descriptor is left
                break
            taken += 1
            try:
                conn.setblocking(False)
                if conn.family in (socket.AF_INET, socket.AF_INET6):
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the client is already gone
                conn.close()
                continue
            task = loop.create_task(_serve(loop, protocol_factory, conn, ssl))
            _HANDING_OVER.add(task)
            task.add_done_callback(_HANDING_OVER.discard)
    return taken


async def _serve(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.Protocol],
    conn: socket.socket,
    ssl: ssl_module.SSLContext | None,
) -> None:
    try:
        await loop.connect_accepted_socket(protocol_factory, conn, ssl=ssl)
    except (OSError, asyncio.TimeoutError) as exc:  # the client left, or its handshake failed (SSLError is an OSError)
        log.debug("an accepted connection ended before it was served: %r", exc)
        conn.close()
