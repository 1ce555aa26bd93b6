"""Real gateways for tests: a subprocess (`python -m gateway serve`) or one in a background thread.

Both listen on 127.0.0.1 with ports picked free, and both are torn down by the fixture that
started them, so no test leaves a server behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from gateway.server import Gateway
from gateway.settings import GatewaySettings
from gateway.storage.prediction_batches import slot_ids
from gateway.storage.store import Store
from loadtests.ports import free_port
from monitors.log_batches import BatchFrame
from monitors.prediction_log import expand_items
from monitors.records import PredictionRow

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock a test moves by hand (`now`), injected where the code takes one: no sleeping."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_until(
    predicate: Any,
    timeout: float = 60.0,
    interval: float = 0.05,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> None:
    """Poll `predicate` (its exceptions count as "not yet"); on timeout, the last exception and what `explain`
    says (a gateway's log tail: a failure in CI can only be read from its message)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:
            last = exc
        time.sleep(interval)
    detail = f" (last error: {last!r})" if last is not None else ""
    if explain is not None:
        with contextlib.suppress(Exception):
            detail += "\n" + explain()
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")


async def until(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.01) -> None:
    """`wait_until` for a test on the event loop whose work (a log's writer task) runs on the same loop: it yields
    between polls instead of blocking the loop."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class GatewayProcess:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log_path: Path
    admin_token: str = ""
    """The token of the admin named "ci" (SLUICE_ADMIN_TOKENS), unless the caller's env replaced it."""
    state_dir: Path | None = None
    scheme: str = "http"

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of its log, for a failure's message."""
        return "the gateway's log ends:\n" + "\n".join(self.logs().splitlines()[-lines:])

    def metrics(self) -> str:
        return httpx.get(f"{self.http_url}/metrics", timeout=10).text

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@contextlib.contextmanager
def gateway_process(
    repo: Path | str,
    *args: str,
    tmp: Path,
    env: dict[str, str] | None = None,
    admin_token: str | None = None,
    state_dir: Path | None = None,
    pipe_logs: bool = False,
    ready_path: str = "/v2/health/ready",
    probe: dict[str, Any] | None = None,
    ready_timeout: float = 90.0,
) -> Iterator[GatewayProcess]:
    """A `sluice serve` subprocess with its own state directory (default `tmp/state`) and an admin token
    for the name "ci" (random unless given; both are on the result). `pipe_logs`: the gateway writes its
    log to a pipe that a thread copies to the log file (a test that limits the size of the files the
    gateway may write must not limit its log). `probe`: httpx arguments for the readiness probe (`verify`,
    `cert`); with `verify`, the gateway is taken to speak HTTPS. `ready_timeout`: seconds it may take to be
    ready. A start whose port another process took first is tried again on new ports."""
    admin_token = admin_token or secrets.token_urlsafe(24)
    state_dir = state_dir or tmp / "state"
    for attempt in range(_BIND_ATTEMPTS):
        gw = _start_gateway(repo, args, tmp, env, admin_token, state_dir, pipe_logs, bool(probe))
        try:
            up = functools.partial(_up_or_gone, gw, ready_path, probe or {})
            wait_until(up, timeout=ready_timeout, what=f"gateway on {gw.http_url} to be ready", explain=gw.log_tail)
            if gw.proc.poll() is not None:
                if attempt + 1 < _BIND_ATTEMPTS and _lost_its_port(gw.logs()):
                    continue
                raise RuntimeError(f"gateway exited with {gw.proc.returncode}:\n{gw.logs()}")
            yield gw
            return
        finally:
            _stop(gw.proc)


_BIND_ATTEMPTS = 3
"""Starts to try when another process took a picked port first (free_port's race, rare but real in CI)."""


def _up_or_gone(gw: GatewayProcess, path: str, probe: dict[str, Any]) -> bool:
    """Ready, or exited (it will not become ready: the caller says why at once instead of waiting it out)."""
    if gw.proc.poll() is not None:
        return True
    return httpx.get(f"{gw.http_url}{path}", timeout=2, **probe).status_code == 200


def _lost_its_port(log: str) -> bool:
    lowered = log.lower()  # uvicorn: "address already in use"; gRPC: "Address already in use", "Failed to bind"
    return "address already in use" in lowered or "failed to bind" in lowered


def _start_gateway(
    repo: Path | str,
    args: tuple[str, ...],
    tmp: Path,
    env: dict[str, str] | None,
    admin_token: str,
    state_dir: Path,
    pipe_logs: bool,
    https: bool,
) -> GatewayProcess:
    http_port, grpc_port = free_port(), free_port()
    log_path = tmp / f"gateway-{http_port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--model-repo",
                str(repo),
                "--host",
                "127.0.0.1",
                "--http-port",
                str(http_port),
                "--grpc-port",
                str(grpc_port),
                "--state-dir",
                str(state_dir),
                *args,
            ],
            stdout=subprocess.PIPE if pipe_logs else log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "SLUICE_ADMIN_TOKENS": f"ci:{admin_token}", **(env or {})},
        )
    if pipe_logs:
        assert proc.stdout is not None
        threading.Thread(target=_copy_log, args=(proc.stdout, log_path), daemon=True).start()
    return GatewayProcess(proc, http_port, grpc_port, log_path, admin_token, state_dir, "https" if https else "http")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _copy_log(pipe: Any, path: Path) -> None:
    with path.open("ab") as out:
        for line in iter(pipe.readline, b""):
            out.write(line)
            out.flush()


class ThreadedGateway:
    """A Gateway on its own event loop in a thread: for tests that inject a tracer or a runtime."""

    def __init__(
        self,
        settings: GatewaySettings,
        loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
        **kwargs: Any,
    ) -> None:
        """`loop_factory`: uvloop's for what depends on the loop `sluice serve` runs (`gateway.server.serve`)."""
        self.gateway = Gateway(settings, **kwargs)
        self.loop = loop_factory()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            try:
                await self.gateway.start()
            except BaseException as exc:
                self._error = exc
                self._started.set()
                raise
            self._started.set()
            await self.gateway.wait_stopped()

        with contextlib.suppress(BaseException):
            self.loop.run_until_complete(main())

    def __enter__(self) -> ThreadedGateway:
        self._thread.start()
        if not self._started.wait(90):
            raise TimeoutError("gateway did not start")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.gateway.request_stop)
        self._thread.join(60)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.http_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.gateway.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"

    def metrics(self) -> str:
        return httpx.get(f"{self.http_url}/metrics", timeout=10).text


def settings_for(repo: Path, tmp: Path | None = None, **overrides: Any) -> GatewaySettings:
    """Settings for a test gateway; its state directory is `tmp/state` (a fresh temporary one by default)."""
    state_dir = (tmp or Path(tempfile.mkdtemp(prefix="sluice-test-"))) / "state"
    values: dict[str, Any] = {
        "model_repo": repo,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "state_dir": state_dir,
    }
    return GatewaySettings(**{**values, **overrides})


def metric_value(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (Prometheus text format); `default`
    when there is none yet (else KeyError)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
            found = True
    if not found:
        if default is not None:
            return default  # a labelled series appears only after its first sample
        raise KeyError(f"no sample of {name} with {labels}")
    return total


class HookReceiver:
    """A real HTTP/1.1 receiver on 127.0.0.1 in a thread: records every POST (headers, raw body) and
    answers `status` with a body of `{}`, on a connection it keeps open."""

    def __init__(self, status: int = 200) -> None:
        import http.server

        hits: list[tuple[dict[str, str], bytes]] = []
        self.hits = hits
        # One write: headers and body in separate segments would meet Nagle and the client's delayed
        # ACK, and stall every answer by tens of milliseconds (a load generator would notice).
        answer = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            "content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        ).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/retrain"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class Paced:
    """Requests to one model at exactly `rate` a second, on a monotonic schedule (a late one is sent at once,
    so the count over any long span is exact), until stopped."""

    def __init__(self, url: str, model: str, body: dict[str, Any], rate: float) -> None:
        self.url, self.model, self.body, self.rate = url, model, body, rate
        self.stop = threading.Event()
        self.sent = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set() and time.monotonic() - start < 600:
                due = start + self.sent / self.rate
                if (wait := due - time.monotonic()) > 0 and self.stop.wait(wait):
                    return
                try:
                    ok = http.post(f"/v2/models/{self.model}/infer", json=self.body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.sent += 1
                self.failed += not ok

    def __enter__(self) -> Paced:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)


@dataclass
class Load:
    """Traffic from `clients` threads, each on connections of its own, until stopped or `count` is reached."""

    base_url: str
    clients: int = 16
    count: int | None = None
    model: str = "lookup"
    body: dict[str, Any] | None = None
    """None: lookup's body, with an index that cycles through 0..99."""
    results: list[tuple[int, str, str]] = field(default_factory=list)
    """(status or 0 for a transport error, version, prediction id)"""
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0

    def _take(self) -> bool:
        with self._lock:
            if self._stop.is_set() or (self.count is not None and self._sent >= self.count):
                return False
            self._sent += 1
            return True

    def _run(self, seed: int) -> None:
        client = httpx.Client(base_url=self.base_url, timeout=30)
        i = seed
        try:
            while self._take():
                i = (i * 31 + 7) % 100
                body = self.body or {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [i]}]}
                try:
                    r = client.post(f"/v2/models/{self.model}/infer", json=body)
                    doc = r.json()
                    with self._lock:
                        self.results.append((r.status_code, doc.get("model_version", ""), doc.get("id", "")))
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.results.append((0, "", ""))
                        self.errors.append(repr(exc))
                    client.close()
                    client = httpx.Client(base_url=self.base_url, timeout=30)
        finally:
            client.close()

    def __enter__(self) -> Load:
        self._pool = ThreadPoolExecutor(self.clients)
        self._futures = [self._pool.submit(self._run, seed) for seed in range(self.clients)]
        return self

    def wait(self) -> None:
        for f in self._futures:
            f.result(300)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.wait()
        self._pool.shutdown()


def stored_ids_in_write_order(store: Store) -> list[str]:
    """The prediction log's ids as the store took them: batch after batch, each batch's requests in order."""
    with store.engine.connect() as conn:
        batches = conn.execute(sa.text("select slots from prediction_batches order by seq"))
        return [id_ for (slots,) in batches for id_ in slot_ids(slots)]


class Rows:
    """A sink that keeps the rows it is handed (the thread writer's path: expanded in the worker thread)."""

    def __init__(self) -> None:
        self.rows: list[PredictionRow] = []

    def write_log_items(self, items: list[PredictionRow | BatchFrame]) -> None:
        self.rows.extend(expand_items(items))

    def ping(self) -> None:
        pass
