"""A burst of new connections to a busy gateway is accepted within a few turns of its event loop.

libuv (under uvloop, as `sluice serve` runs) accepts one connection a turn of the loop; a loaded gateway's turn
serves a batch of requests, so 256 connections opened at once waited about a second to be accepted
(`gateway.serving.http_accept`). Here a real gateway on uvloop is frozen while a burst of connections queues in
the kernel, then every turn of its loop is made to last 2 ms (as a turn of a busy gateway does) and the turns it
takes to accept them all are counted: a count of turns, not a time, so the test holds on a slow box.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import cast

import uvloop

from gateway.serving.http_accept import accept_waiting
from tests.certs import make_certs
from tests.helpers import ThreadedGateway, settings_for

BURST = 64
BUSY_TURN_S = 0.002


def test_a_burst_of_connections_to_a_busy_gateway_is_accepted_within_a_few_turns(demo_repo: Path) -> None:
    with ThreadedGateway(settings_for(demo_repo, grpc_port=-1), loop_factory=uvloop.new_event_loop) as gw:
        guard = gw.gateway.connections
        loop = gw.loop
        before = len(guard.connections)
        frozen, release, accepted = threading.Event(), threading.Event(), threading.Event()
        turns: list[int] = []

        def busy(turn: int) -> None:
            """One turn of a loaded gateway's loop: a batch of requests served."""
            time.sleep(BUSY_TURN_S)
            if len(guard.connections) >= before + BURST or turn >= 4 * BURST:
                turns.append(turn)
                accepted.set()
                return
            loop.call_soon(busy, turn + 1)

        def freeze_then_busy() -> None:
            frozen.set()
            release.wait(30)
            busy(1)

        loop.call_soon_threadsafe(freeze_then_busy)
        assert frozen.wait(10)
        # The kernel completes each handshake and queues the connection; the frozen gateway accepts none yet.
        clients = [socket.create_connection(("127.0.0.1", gw.gateway.http_port), timeout=10) for _ in range(BURST)]
        try:
            release.set()
            assert accepted.wait(30)
            # One accept a turn (libuv alone) took 66 turns. Taking the whole queue at the first takes five: libuv
            # accepts one, its connection_made takes the rest, their tasks hand them to the loop, which calls their
            # connection_made, and the next turn sees them all.
            assert turns[0] <= 6, f"{BURST} waiting connections took {turns[0]} turns of a busy loop to accept"
            # Every connection taken off the queue at once is served like one the server accepted itself.
            for client in clients:
                client.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            for client in clients:
                answer = b""
                while b'{"live":true}' not in answer and len(answer) < 4096:
                    chunk = client.recv(4096)
                    assert chunk, answer
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer
        finally:
            for client in clients:
                client.close()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


def test_connections_taken_off_the_queue_speak_tls_when_the_server_does(tmp_path: Path) -> None:
    """`accept_waiting` hands each connection to the loop with the server's TLS context (the HTTPS port's burst)."""
    certs = make_certs(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(str(certs.server_cert), str(certs.server_key))
    client_tls = ssl.create_default_context(cafile=str(certs.ca))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname(), timeout=10) for _ in range(8)]

    def talk(client: socket.socket, word: bytes) -> bytes:
        with client_tls.wrap_socket(client, server_hostname="127.0.0.1") as tls:
            tls.sendall(word)
            return tls.recv(64)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert accept_waiting([listener], loop, _Echo, server_tls) == len(clients)
        assert accept_waiting([listener], loop, _Echo, server_tls) == 0  # nothing left waiting
        words = [f"hello {i}".encode() for i in range(len(clients))]
        answers = await asyncio.gather(*(asyncio.to_thread(talk, c, w) for c, w in zip(clients, words, strict=True)))
        assert answers == words
        listener.close()
        assert accept_waiting([listener], loop, _Echo, server_tls) == 0  # a closed listener (a server stopping)

    try:
        asyncio.Runner(loop_factory=uvloop.new_event_loop).run(main())
    finally:
        listener.close()
        for client in clients:
            client.close()
