"""The infer route served on the connection itself (`gateway.serving.http_direct`), byte by byte on a raw socket:
what HTTP/1.1 allows a client to do with a request must still work there, and what that path leaves to ASGI
(a request pipelined behind another, `Expect: 100-continue`) must still be answered, in order."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest

from tests.helpers import GatewayProcess

PATH = "/v2/models/mlp/infer"


def body(seed: int) -> bytes:
    data = np.random.default_rng(seed).standard_normal(32).astype(np.float32).tolist()
    return json.dumps({"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": data}]}).encode()


def post(body_bytes: bytes, *, extra: str = "", version: str = "1.1", path: str = PATH) -> bytes:
    head = f"POST {path} HTTP/{version}\r\nhost: x\r\ncontent-type: application/json\r\n"
    return f"{head}content-length: {len(body_bytes)}\r\n{extra}\r\n".encode() + body_bytes


class Reader:
    """Reads HTTP/1.1 responses off a socket one at a time (content-length framed, as the gateway answers)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-response: {self.buffer!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        status = int(status_line.split()[1])
        if status == 100:  # an interim answer: the real one follows
            return self.response()
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            assert self._fill(), "connection closed mid-body"
        payload, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, payload

    def closed(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False


@pytest.fixture
def conn(demo_gateway: GatewayProcess) -> Reader:
    sock = socket.create_connection(("127.0.0.1", demo_gateway.http_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Reader(sock)


def answer_of(payload: bytes) -> list[float]:
    doc = json.loads(payload)
    return doc["outputs"][0]["data"]


def test_pipelined_requests_are_answered_in_order(conn: Reader) -> None:
    """Three infers and a health check in one write: the second infer waits behind the first (on ASGI), and
    every answer comes back in the order asked, each the same as asked alone."""
    alone = []
    for seed in (1, 2, 3):
        conn.sock.sendall(post(body(seed)))
        status, _, payload = conn.response()
        assert status == 200
        alone.append(answer_of(payload))
    health = b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n"
    conn.sock.sendall(post(body(1)) + post(body(2)) + health + post(body(3)))
    answers = [conn.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert [answer_of(answers[i][2]) for i in (0, 1, 3)] == alone
    assert json.loads(answers[2][2]) == {"ready": True}


def test_a_body_that_arrives_in_pieces(conn: Reader) -> None:
    whole = post(body(4))
    cut = whole.index(b"\r\n\r\n") + 4
    for piece in (whole[:20], whole[20:cut], whole[cut : cut + 7], whole[cut + 7 : cut + 300], whole[cut + 300 :]):
        conn.sock.sendall(piece)
        time.sleep(0.02)
    status, _, payload = conn.response()
    assert status == 200 and len(answer_of(payload)) == 8


def test_a_chunked_body(conn: Reader) -> None:
    data = body(5)
    chunks = [data[:50], data[50:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    head = f"POST {PATH} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    conn.sock.sendall(head.encode() + encoded)
    status, _, payload = conn.response()
    conn.sock.sendall(post(data))
    assert status == 200 and answer_of(payload) == answer_of(conn.response()[2])


def test_expect_100_continue_is_answered(conn: Reader) -> None:
    data = body(6)
    head = post(data, extra="expect: 100-continue\r\n")[: -len(data)]
    conn.sock.sendall(head)
    conn.sock.settimeout(5)
    interim = conn.sock.recv(65536)
    assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
    conn.buffer = interim.split(b"\r\n\r\n", 1)[1]
    conn.sock.sendall(data)
    status, _, payload = conn.response()
    assert status == 200 and len(answer_of(payload)) == 8


@pytest.mark.parametrize(("version", "extra"), [("1.0", ""), ("1.1", "connection: close\r\n")])
def test_a_connection_the_client_ends_is_closed_after_the_answer(conn: Reader, version: str, extra: str) -> None:
    conn.sock.sendall(post(body(7), version=version, extra=extra))
    status, headers, payload = conn.response()
    assert status == 200 and len(answer_of(payload)) == 8
    assert headers["connection"] == "close"
    assert conn.closed()


def test_answers_carry_the_same_server_headers_as_other_routes(conn: Reader) -> None:
    conn.sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n" + post(body(8)))
    _, health, _ = conn.response()
    status, infer, _ = conn.response()
    assert status == 200
    assert infer["content-type"] == "application/json"
    assert {"date", "server"} <= health.keys() and {"date", "server"} <= infer.keys()
    assert infer["server"] == health["server"]


def test_a_bad_request_keeps_the_connection_for_the_next(conn: Reader) -> None:
    bad = b'{"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [1, 2'
    conn.sock.sendall(post(bad) + post(body(9), path="/v2/models/nope/infer") + post(body(9)))
    status, _, payload = conn.response()
    assert status == 400 and "malformed JSON" in json.loads(payload)["error"]
    status, _, payload = conn.response()
    assert status == 404 and "nope" in json.loads(payload)["error"]
    status, _, payload = conn.response()
    assert status == 200 and len(answer_of(payload)) == 8


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(conn: Reader) -> None:
    conn.sock.sendall(post(b"")[: -len(b"content-length: 0\r\n\r\n")] + b"content-length: %d\r\n\r\n" % (65 << 20))
    status, _, payload = conn.response()
    assert status == 413 and "over the limit" in json.loads(payload)["error"]
