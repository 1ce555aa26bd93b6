"""The state database goes away mid-load and comes back: PostgreSQL cut off through a TCP proxy, and a SQLite
file that can no longer grow (a full disk).

While it is away: every inference request is answered as before; the prediction log holds its records,
then spills them to its local spool (PostgreSQL cut off), or, when the disk is full too (SQLite's full
disk is the state directory's), drops new ones and counts them, never blocking a request; admin writes
answer 503 with a message that names the database, and change nothing; the rollout in progress holds (no
window is judged, so none is passed). When it is back, without a restart: admin writes work, the leader
is elected again, the rollout resumes and finishes, and every record held or spooled is stored. Every
answered request is accounted for: stored, or counted as dropped.

SQLite's "full disk" is RLIMIT_FSIZE, set on the running gateway and its log writer with prlimit(2): every
write past the first byte of a regular file then fails with EFBIG, which SQLite reports as a disk I/O
error, as it reports ENOSPC as "database or disk is full"; raising the limit again is the disk freed. It
needs no root (a tmpfs would), and the gateway's own log goes through a pipe, which the limit leaves alone.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.faults import Load, log_counts, lookup_body, postgres_behind_proxy, report, stored_ids
from tests.helpers import GatewayProcess, gateway_process, wait_until
from tests.models import build_lookup

pytestmark = pytest.mark.slow

FAST = {
    "SLUICE_LEADER_LEASE_S": "3",
    "SLUICE_LEADER_RENEW_S": "0.5",
    "SLUICE_ROLLOUT_TICK_S": "0.2",
    "SLUICE_WINDOW_PUBLISH_S": "0.5",
    "SLUICE_PREDICTION_LOG_CAPACITY": "1500",
}
OUTAGE_S = 6.0
"""Longer than the leader's lease (3 s): the leader steps down, and is elected again after."""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    build_lookup(root / "lookup" / "1" / "model.onnx", rows=10)
    build_lookup(root / "lookup" / "2" / "model.onnx", rows=10)
    (root / "lookup" / "config.yaml").write_text(
        "version_policy:\n  all: true\nruntime: {execution_providers: [cpu]}\n"
    )
    return root


@dataclass
class Outage:
    """How to take the database away and give it back, and how the test reads it meanwhile."""

    cut: Callable[[], None]
    restore: Callable[[], None]
    engine: sa.engine.Engine
    what: str


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it (the gateway and its log writer), from /proc."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            found += descendants(int(child))
    return found


def set_file_size_limit(pid: int, limit: int) -> None:
    for p in descendants(pid):
        _soft, hard = resource.prlimit(p, resource.RLIMIT_FSIZE)
        resource.prlimit(p, resource.RLIMIT_FSIZE, (limit, hard))


@pytest.fixture(params=["postgresql", "sqlite"])
def outage(request: pytest.FixtureRequest, repo: Path, tmp_path: Path) -> Iterator[tuple[GatewayProcess, Outage]]:
    if request.param == "postgresql":
        with postgres_behind_proxy(request.getfixturevalue("pg_url")) as pg:
            env = {**FAST, "SLUICE_DATABASE_URL": pg.through.render_as_string(hide_password=False)}
            with gateway_process(repo, tmp=tmp_path, env=env) as gw:
                yield gw, Outage(pg.proxy.cut, pg.proxy.restore, pg.direct, "PostgreSQL cut off (TCP proxy resets)")
        return
    with gateway_process(repo, tmp=tmp_path, env=FAST, pipe_logs=True) as gw:
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'state' / 'sluice.db'}")
        pid = gw.proc.pid
        try:
            yield (
                gw,
                Outage(
                    lambda: set_file_size_limit(pid, 1),
                    lambda: set_file_size_limit(pid, resource.RLIM_INFINITY),
                    engine,
                    "SQLite disk full (RLIMIT_FSIZE)",
                ),
            )
        finally:
            engine.dispose()


def analyses(admin: httpx.Client) -> list[datetime]:
    events = admin.get("/admin/audit", params={"model": "lookup", "limit": 500}).json()["events"]
    return [datetime.fromisoformat(e["at"]) for e in events if e["action"] == "rollout.analysis"]


def test_inference_goes_on_records_wait_then_drop_counted_admin_503_rollout_holds_and_all_resumes(
    outage: tuple[GatewayProcess, Outage],
) -> None:
    gw, db = outage
    admin = httpx.Client(base_url=gw.http_url, headers=gw.admin_headers, timeout=30)
    assert admin.put("/admin/models/lookup/traffic", json={"stable": "1"}).status_code == 200
    spec: dict[str, Any] = {
        "canary": "2",
        "steps": [20, 50, 100],
        "interval_s": 1.5,
        "failure_threshold": 1,
        "max_no_data_windows": 1,
        "checks": [{"name": "error_ratio", "threshold": 1.5, "min_requests": 10}],
    }
    with Load(f"{gw.http_url}/v2/models/lookup/infer", lookup_body, clients=4, prefix="req") as load:
        assert admin.post("/admin/models/lookup/rollout", json=spec).status_code == 201
        wait_until(lambda: admin.get("/admin/models/lookup/rollout").json()["step"] >= 1, timeout=30, interval=0.1)
        step_before = admin.get("/admin/models/lookup/rollout").json()["step"]

        db.cut()
        cut_at, cut_wall = time.monotonic(), datetime.now(timezone.utc)
        # An admin write is refused, at once and plainly, and changes nothing.
        t0 = time.monotonic()
        refused = admin.patch("/admin/models/lookup/traffic", json={"sticky_header": "x-during-outage"})
        refused_in = time.monotonic() - t0
        assert refused.status_code == 503, refused.text
        assert "state database" in refused.json()["error"], refused.text
        assert refused_in < 8.0, refused_in
        # The log holds records, then spools or drops new ones (counted); inference answers throughout.
        wait_until(
            lambda: log_counts(gw)["dropped"] + log_counts(gw)["spool_spooled"] > 0,
            timeout=60,
            what="the prediction log to spool or drop",
        )
        wait_until(lambda: time.monotonic() - cut_at >= OUTAGE_S, timeout=OUTAGE_S + 1)
        during = [a for a in load.snapshot() if a.sent >= cut_at]
        assert httpx.get(f"{gw.http_url}/v2/health/ready", timeout=5).status_code == 200
        late = admin.patch("/admin/models/lookup/traffic", json={"sticky_header": "x-during-outage"})
        assert late.status_code == 503 and "state database" in late.json()["error"], late.text

        db.restore()
        restored_at, restored_wall = time.monotonic(), datetime.now(timezone.utc)
        # Back without a restart: admin writes go through again once a leader is elected.
        wait_until(
            lambda: admin.patch("/admin/models/lookup/traffic", json={"sticky_header": "x-after"}).status_code == 200,
            timeout=30,
            interval=0.2,
            what="admin writes to work again",
        )
        writable_s = time.monotonic() - restored_at
        wait_until(
            lambda: log_counts(gw)["depth"] < 500 and log_counts(gw)["spool_usage"] == 0,
            timeout=30,
            what="the held and spooled records to be written",
        )
        drained_s = time.monotonic() - restored_at
        wait_until(
            lambda: admin.get("/admin/models/lookup/rollout").json()["phase"] != "progressing",
            timeout=60,
            interval=0.2,
            what="the rollout to finish",
        )
    rollout = admin.get("/admin/models/lookup/rollout").json()
    assert rollout["phase"] == "promoted", rollout  # the outage was neither a failure nor a pass
    judged = analyses(admin)
    assert not [at for at in judged if cut_wall < at < restored_wall], "a window was judged during the outage"
    assert step_before < 2, "the rollout finished before the outage: nothing was held"
    policy = admin.get("/admin/models/lookup/traffic").json()
    assert policy["sticky_header"] == "x-after", policy
    events = admin.get("/admin/audit", params={"model": "lookup", "limit": 500}).json()["events"]
    assert not [e for e in events if "x-during-outage" in str(e["after"])], "a refused change was recorded"

    # Every request was answered; every answered one is stored or counted as dropped.
    statuses = load.statuses()
    assert set(statuses) == {200}, statuses
    wait_until(
        lambda: log_counts(gw)["depth"] == 0 and log_counts(gw)["spool_usage"] == 0,
        timeout=30,
        what="the log to drain",
    )
    counts = log_counts(gw)
    assert gw.terminate() == 0
    stored = stored_ids(db.engine, "lookup")
    answered = {a.id for a in load.snapshot()}
    missing = answered - set(stored)
    assert counts["failed"] == 0, counts
    assert len(missing) == counts["dropped"], (len(missing), counts)
    assert answered <= set(stored) | missing
    report(
        db.what,
        load=f"{load.rate():.0f} req/s, 4 clients, a rollout in progress",
        outage_s=round(restored_at - cut_at, 1),
        requests=len(answered),
        requests_lost=0,
        requests_during_outage=len(during),
        p99_ms_during_outage=round(sorted(a.latency_s for a in during)[int(len(during) * 0.99)] * 1000, 1),
        records_spooled=int(counts["spool_spooled"]),
        records_dropped_counted=int(counts["dropped"]),
        records_lost_uncounted=len(missing) - int(counts["dropped"]),
        admin_refused_in_s=round(refused_in, 2),
        admin_writable_after_s=round(writable_s, 2),
        log_drained_after_s=round(drained_s, 2),
    )
