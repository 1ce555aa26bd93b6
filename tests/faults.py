"""What the fault tests share: load that counts every request, the stored records, and the figures.

`Load` sends V2 requests from a few threads, each with its own id, until stopped, and keeps every
answer (status, time) so a test can account for each request. `stored_ids` reads which of them the
prediction log stored; `log_counts` reads the log's and its spool's figures from a gateway's /metrics.
`postgres_behind_proxy` gives a test a schema of its own in the real PostgreSQL, reached through a
`TcpProxy` it can cut. `report` prints one line per fault (`FAULT {...}`) with the figures the README's
fault table shows: run the fault tests with `-s` to see them.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from tests.helpers import GatewayProcess, metric_value
from tests.tcp_proxy import TcpProxy


@dataclass
class Answer:
    id: str
    status: int
    """HTTP status; 0 when the connection failed (no answer at all)."""
    sent: float
    latency_s: float
    error: str = ""


Body = Callable[[str, int], dict[str, Any]]
"""(request id, sequence number) -> V2 JSON body."""


@dataclass
class Load:
    """`clients` threads posting `body` to `url` until `stop` (or `count` requests), counting every answer."""

    url: str
    body: Body
    clients: int = 4
    prefix: str = "load"
    count: int | None = None
    timeout_s: float = 30.0
    pause_s: float = 0.0
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sent: int = 0
    _threads: list[threading.Thread] = field(default_factory=list)

    def _next(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or (self.count is not None and self._sent >= self.count):
                return None
            self._sent += 1
            return self._sent

    def _run(self) -> None:
        client = httpx.Client(timeout=self.timeout_s)
        try:
            while (n := self._next()) is not None:
                rid = f"{self.prefix}-{n}"
                sent = time.monotonic()
                try:
                    r = client.post(self.url, json=self.body(rid, n))
                    answer = Answer(rid, r.status_code, sent, time.monotonic() - sent, "" if r.is_success else r.text)
                except httpx.HTTPError as exc:
                    answer = Answer(rid, 0, sent, time.monotonic() - sent, repr(exc))
                    client.close()
                    client = httpx.Client(timeout=self.timeout_s)
                with self._lock:
                    self.answers.append(answer)
                if self.pause_s:
                    time.sleep(self.pause_s)
        finally:
            client.close()

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 10)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.snapshot())

    def rate(self) -> float:
        """Requests answered per second over the run."""
        answers = self.snapshot()
        if len(answers) < 2:
            return 0.0
        span = max(a.sent + a.latency_s for a in answers) - min(a.sent for a in answers)
        return len(answers) / span if span > 0 else 0.0

    def p99_ms(self, since: float = 0.0) -> float:
        latencies = sorted(a.latency_s for a in self.snapshot() if a.sent >= since)
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000


def row_body(value: float = 1.0, name: str = "x") -> Body:
    """A one-row FP32 [1, 1] request with the given id."""

    def body(rid: str, n: int) -> dict[str, Any]:
        return {"id": rid, "inputs": [{"name": name, "shape": [1, 1], "datatype": "FP32", "data": [value]}]}

    return body


def lookup_body(rid: str, n: int) -> dict[str, Any]:
    """A request to `tests.models.build_lookup`'s model (rows >= 10), index from the sequence number."""
    return {"id": rid, "inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [n % 10]}]}


def stored_ids(engine: sa.engine.Engine, model: str) -> dict[str, str]:
    """id -> outcome of the model's stored prediction records."""
    query = sa.text("select slots from prediction_batches where model = :m")
    with engine.connect() as conn:
        batches = conn.execute(query, {"m": model}).all()
    # A slot: id, route, latency_s, start, stop, wanted, and its outcome where it is not ok.
    return {slot[0]: slot[6] if len(slot) > 6 else "ok" for (slots,) in batches for slot in orjson.loads(slots)}


def report(fault: str, **figures: Any) -> None:
    """One line for the README's fault table (pytest -s shows it)."""
    print("FAULT " + json.dumps({"fault": fault, **figures}, sort_keys=False), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def log_counts(gw: GatewayProcess) -> dict[str, float]:
    """The prediction log's records by fate, its depth in memory, and its spool's figures, from /metrics."""
    text = gw.metrics()
    counts = {
        o: metric_value(text, "sluice_prediction_log_records_total", 0.0, outcome=o)
        for o in ("written", "dropped", "failed")
    }
    counts["depth"] = metric_value(text, "sluice_prediction_log_queue_depth", 0.0)
    for o in ("spooled", "replayed", "dropped"):
        counts[f"spool_{o}"] = metric_value(text, "sluice_prediction_spool_records_total", 0.0, outcome=o)
    counts["spool_bytes_spooled"] = metric_value(text, "sluice_prediction_spool_bytes_total", 0.0, outcome="spooled")
    counts["spool_usage"] = metric_value(text, "sluice_prediction_spool_usage_bytes", 0.0)
    return counts


@dataclass
class ProxiedPostgres:
    through: sa.URL
    """The schema's URL through the proxy (what the gateway gets)."""
    direct: sa.engine.Engine
    """The same schema, not through the proxy (what the test reads with while the proxy is cut)."""
    proxy: TcpProxy


@contextlib.contextmanager
def postgres_behind_proxy(pg_url: str) -> Iterator[ProxiedPostgres]:
    """A schema of its own in the real PostgreSQL, behind a TCP proxy the test cuts and restores; dropped after."""
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    target = sa.make_url(pg_url)
    direct = sa.create_engine(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as proxy:
            through = target.set(host="127.0.0.1", port=proxy.port).update_query_dict(
                {"options": f"-csearch_path={schema}"}
            )
            yield ProxiedPostgres(through, direct, proxy)
    finally:
        direct.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
