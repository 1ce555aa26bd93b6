"""Careless and hostile HTTP clients against a real gateway: slow-loris headers, slow bodies, a flood of idle
connections, oversized headers. Each time, other callers under load keep getting answers, and the bad
connections are closed within the configured bounds and counted by reason.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults import Load, lookup_body, report
from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until
from tests.models import build_lookup

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 120
MAX_HEADER_BYTES = 8192


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("hostile")
    build_lookup(tmp / "models" / "lookup" / "1" / "model.onnx", rows=10)
    args = (
        "--header-timeout",
        str(HEADER_TIMEOUT_S),
        "--body-timeout",
        str(BODY_TIMEOUT_S),
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--max-header-bytes",
        str(MAX_HEADER_BYTES),
        "--keep-alive-timeout",
        "5",
    )
    with gateway_process(tmp / "models", *args, tmp=tmp) as g:
        yield g


def closed(gw: GatewayProcess, reason: str) -> float:
    return metric_value(gw.metrics(), "sluice_http_connections_closed_total", 0.0, reason=reason)


def connect(gw: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.http_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout`)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


HEAD = b"POST /v2/models/lookup/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
BODY = b'{"inputs":[{"name":"idx","shape":[1,1],"datatype":"INT64","data":[3]}]}'


def trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    """Send `data` a byte at a time until it is all sent, the server closes, or `stop`."""
    for i in range(len(data)):
        if stop.is_set():
            return
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return
        time.sleep(every_s)


@contextlib.contextmanager
def under_load(gw: GatewayProcess) -> Iterator[Load]:
    with Load(f"{gw.http_url}/v2/models/lookup/infer", lookup_body, clients=2, prefix="bystander") as load:
        wait_until(lambda: len(load.snapshot()) >= 20, timeout=30, what="bystander load")
        yield load
    statuses = load.statuses()
    assert set(statuses) == {200}, statuses


def test_slow_loris_headers_are_cut_off_while_others_are_answered(gw: GatewayProcess) -> None:
    before = closed(gw, "header_timeout")
    stop = threading.Event()
    with under_load(gw) as load:
        socks = [connect(gw) for _ in range(40)]
        started = time.monotonic()
        threads = [
            threading.Thread(target=trickle, args=(s, HEAD + b"X-Slow: " + b"a" * 200, 0.2, stop), daemon=True)
            for s in socks
        ]
        for t in threads:
            t.start()
        answers = [read_answer(s, HEADER_TIMEOUT_S + 5) for s in socks]
        cut_after = time.monotonic() - started
        stop.set()
        p99 = load.p99_ms(since=started)
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    assert cut_after < HEADER_TIMEOUT_S + 3.0, cut_after
    assert closed(gw, "header_timeout") - before >= 40
    report(
        "40 slow-loris connections (a header byte every 200 ms)",
        load=f"{load.rate():.0f} req/s bystanders",
        requests_lost=0,
        records_lost=0,
        all_cut_within_s=round(cut_after, 2),
        bystander_p99_ms=round(p99, 1),
    )


def test_a_slow_body_is_cut_off_and_its_handler_let_go(gw: GatewayProcess) -> None:
    before = closed(gw, "body_timeout")
    stop = threading.Event()
    with under_load(gw):
        socks = [connect(gw) for _ in range(10)]
        started = time.monotonic()
        for s in socks:
            s.sendall(HEAD + f"Content-Length: {len(BODY)}\r\n\r\n".encode())
        threads = [threading.Thread(target=trickle, args=(s, BODY, 0.2, stop), daemon=True) for s in socks]
        for t in threads:
            t.start()
        answers = [read_answer(s, BODY_TIMEOUT_S + 5) for s in socks]
        cut_after = time.monotonic() - started
        stop.set()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    assert cut_after < BODY_TIMEOUT_S + 3.0
    assert closed(gw, "body_timeout") - before >= 10
    text = gw.metrics()
    assert metric_value(text, "sluice_inflight_requests", 0.0, model="lookup") == 0


def test_a_flood_of_idle_connections_never_locks_out_callers(gw: GatewayProcess) -> None:
    evicted = closed(gw, "evicted_idle")
    with under_load(gw) as load:
        started = time.monotonic()
        flood = [connect(gw) for _ in range(3 * MAX_CONNECTIONS)]
        # A newcomer with work is served even now: idle connections make room.
        probe = connect(gw)
        probe.sendall(HEAD + f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
        answer = read_answer(probe, 5)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:80]
        wait_until(lambda: closed(gw, "evicted_idle") - evicted >= MAX_CONNECTIONS, timeout=10)
        # What is left of the flood is closed by the header timeout.
        wait_until(
            lambda: metric_value(gw.metrics(), "sluice_http_connections") < 20,
            timeout=HEADER_TIMEOUT_S + 5,
            what="the idle connections to be closed",
        )
        reaped_s = time.monotonic() - started
        for s in flood:
            s.close()
        p99 = load.p99_ms(since=started)
    report(
        f"{3 * MAX_CONNECTIONS} idle connections against --max-connections {MAX_CONNECTIONS}",
        load=f"{load.rate():.0f} req/s bystanders",
        requests_lost=0,
        records_lost=0,
        reaped_within_s=round(reaped_s, 2),
        bystander_p99_ms=round(p99, 1),
    )


def test_oversized_headers_get_431_whole_or_endless(gw: GatewayProcess) -> None:
    before = closed(gw, "header_too_large")
    whole = connect(gw)
    whole.sendall(HEAD + b"X-Big: " + b"b" * (MAX_HEADER_BYTES * 2) + b"\r\nContent-Length: 0\r\n\r\n")
    assert read_answer(whole, 5).startswith(b"HTTP/1.1 431")
    endless = connect(gw)
    with contextlib.suppress(OSError):
        endless.sendall(HEAD + b"X-Endless: ")
        for _ in range(64):
            endless.sendall(b"e" * 1024)
    assert read_answer(endless, 5).startswith(b"HTTP/1.1 431")
    assert closed(gw, "header_too_large") - before == 2
    # A request whose headers fit is served as ever.
    fine = connect(gw)
    fine.sendall(HEAD + b"X-Fine: " + b"f" * 1000 + f"\r\nContent-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
    assert read_answer(fine, 2).startswith(b"HTTP/1.1 200")
