"""Console sessions without a browser: what a cookie proves, and what ends it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from gateway.admin.auth import AdminAuth
from gateway.admin.console import figures
from gateway.admin.console.session import Sessions
from gateway.serving.window_stats import WindowSummary
from gateway.storage.store import Store
from tests.databases import Backend
from tests.helpers import FakeClock, gateway_process, wait_until
from tests.models import build_lookup
from tests.test_console import console_client
from tests.test_workers import leader, worker_urls

TOKENS = [("alice", "alice-token-0123456789abcdef"), ("bob", "bob-token-0123456789abcdef")]


def test_a_session_is_verified_by_any_replica_with_the_same_tokens_and_by_no_other() -> None:
    cookie, session = Sessions(AdminAuth(TOKENS)).issue("alice")
    other_replica = Sessions(AdminAuth(TOKENS))
    verified = other_replica.verify(cookie)
    assert verified == session and verified.actor == "alice"
    forged = ("y" if session.csrf[0] == "x" else "x") + session.csrf[1:]  # one character changed, whatever it was
    assert Sessions.csrf_ok(verified, session.csrf) and not Sessions.csrf_ok(verified, forged)
    assert TOKENS[0][1] not in cookie
    rotated = Sessions(AdminAuth([("alice", "a-new-token-0123456789abcdef"), TOKENS[1]]))
    assert rotated.verify(cookie) is None  # a replaced token ends its sessions
    assert Sessions(AdminAuth(TOKENS[1:])).verify(cookie) is None  # and so does a removed one


def test_a_tampered_forged_or_expired_cookie_is_no_session() -> None:
    clock = FakeClock()
    sessions = Sessions(AdminAuth(TOKENS), ttl_s=60, clock=clock)
    cookie, session = sessions.issue("alice")
    payload, mac = cookie.split(".")
    bob_cookie, _ = sessions.issue("bob")
    bob_payload, _ = bob_cookie.split(".")
    for bad in (None, "", "x", payload, f"{payload}.{mac}x", f"{bob_payload}.{mac}", f"{payload}.", "a.b.c", "%%.%%"):
        assert sessions.verify(bad) is None, bad
    assert sessions.verify(cookie) == session
    clock.now += 61
    assert sessions.verify(cookie) is None
    # Two sessions of one token are told apart (their CSRF tokens differ).
    assert sessions.issue("alice")[1].csrf != sessions.issue("alice")[1].csrf


def test_charts_start_at_the_first_data_and_leave_gaps_where_there_is_no_figure() -> None:
    bucket = 5.0
    now = 10_000.0
    since = figures.aligned_since(now, 900.0, bucket)
    at = datetime.fromtimestamp(since + 170 * bucket, timezone.utc)
    busy = WindowSummary(requests=50, errors=5, buckets={200: 50}, min_s=0.001, max_s=0.002, batches=10, batch_rows=40)
    charts = figures.traffic_charts([(at, "2", busy)], ["1", "2"], since=since, now=now, bucket_s=bucket)
    rate = charts["rate"]
    assert len(rate["x"]) == figures.MIN_POINTS and rate["x"][-1] == since + 179 * bucket
    by_label = {line["label"]: line["values"] for line in rate["series"]}
    assert by_label["v2"][rate["x"].index(since + 170 * bucket)] == 10.0 and by_label["v1"] == [0.0] * 24
    errors = {line["label"]: line["values"] for line in charts["errors"]["series"]}
    assert errors["v2"].count(None) == 23 and 0.1 in errors["v2"] and set(errors["v1"]) == {None}
    batch = {line["label"]: line["values"] for line in charts["batch"]["series"]}
    assert 4.0 in batch["v2"]
    live = figures.live_figures([(at, "2", busy)], now=since + 172 * bucket, bucket_s=bucket)
    assert live["2"]["rate"] == 5.0 and live["2"]["errors"] == 0.1 and live["2"]["batch"] == 4.0


def test_a_rollouts_timeline_marks_where_a_rollback_stopped_it() -> None:
    rollout = {"spec": {"steps": [10, 50, 100]}, "phase": "rolled_back", "step": 1}
    assert [s["state"] for s in figures.timeline(rollout)] == ["done", "failed", "pending"]
    rollout = {"spec": {"steps": [10, 50, 100]}, "phase": "promoted", "step": 2}
    assert [s["state"] for s in figures.timeline(rollout)] == ["done", "done", "done"]


# -- logging out: revoked on every replica ------------------------------------------------------------


def test_a_logged_out_session_is_refused_by_every_replica_on_the_same_database(backend: Backend) -> None:
    """Two replicas (two stores on one SQLite file or one PostgreSQL schema): a logout on one ends the session
    on the other too; the same token's other sessions go on."""
    clock = FakeClock()
    first, second = backend.open(), backend.open()
    first.upgrade()
    here = Sessions(AdminAuth(TOKENS), first, ttl_s=60, clock=clock)
    there = Sessions(AdminAuth(TOKENS), second, ttl_s=60, clock=clock)
    cookie, session = here.issue("alice")
    other_cookie, other = here.issue("alice")
    assert asyncio.run(there.check(cookie)) == session  # the signature alone holds on any replica

    asyncio.run(here.revoke(session))
    assert asyncio.run(here.check(cookie)) is None
    assert asyncio.run(there.check(cookie)) is None
    assert asyncio.run(there.check(other_cookie)) == other
    assert asyncio.run(Sessions(AdminAuth(TOKENS), backend.open(), ttl_s=60, clock=clock).check(cookie)) is None
    asyncio.run(there.revoke(session))  # twice is no error


def test_revocations_are_kept_until_their_session_would_have_expired(backend: Backend) -> None:
    store = backend.open()
    store.upgrade()
    now = time.time()
    store.revoke_console_session("gone", now - 1.0)
    assert store.console_session_revoked("gone")
    store.revoke_console_session("live", now + 3600.0)  # each revocation prunes those already expired
    assert not store.console_session_revoked("gone")
    assert store.console_session_revoked("live")
    assert not store.console_session_revoked("never")


WORKERS_ENV = {
    "SLUICE_LEADER_LEASE_S": "3",
    "SLUICE_LEADER_RENEW_S": "0.5",
    "SLUICE_KEY_RELOAD_INTERVAL_S": "0.5",
}


def test_with_workers_a_logout_holds_across_a_new_leader_and_a_removed_token_ends_its_sessions(
    tmp_path: Path, backend: Backend
) -> None:
    """`sluice serve --workers 2` on the backend's database. The console runs in the leader: log out there,
    kill it, and the worker that takes the lease refuses the logged-out cookie (it has only the shared
    revocations to go by). Removing a token from the tokens file ends its sessions on every worker.
    A login forwarded by the worker that does not lead logs in nobody else."""
    build_lookup(tmp_path / "models" / "lookup" / "1" / "model.onnx", rows=10)
    tokens = tmp_path / "admin-tokens"
    ops_token = "ops-token-" + "x" * 24
    tokens.write_text(f"ops:{ops_token}\n", encoding="utf-8")
    env = dict(WORKERS_ENV)
    if backend.name == "postgresql":
        env["SLUICE_DATABASE_URL"] = backend.url_with_search_path()
    args = ("--workers", "2", "--admin-tokens-file", str(tokens))
    with gateway_process(tmp_path / "models", *args, tmp=tmp_path, env=env) as gw:
        store = backend.open() if backend.name == "postgresql" else Store.for_state_dir(tmp_path / "state")
        wait_until(lambda: len(worker_urls(gw)) == 2, timeout=30, what="both workers listening")
        # Log in through the worker that does not lead: it forwards the console to the one that does.
        old_pid, old_epoch = leader(store)
        follower = next(url for pid, url in worker_urls(gw).items() if pid != old_pid)
        with (
            console_client(gw, url=follower) as gone,
            console_client(gw, url=follower) as kept,
            console_client(gw, ops_token, url=follower) as ops,
            httpx.Client(base_url=follower, cookies=dict(gone.cookies), timeout=30) as copy,
        ):
            assert all(c.get("/console/").status_code == 200 for c in (gone, kept, ops, copy))
            # Nobody else is logged in by those logins (the forwarder kept the leader's cookies and sent
            # them with the next caller's requests).
            for url in worker_urls(gw).values():
                assert httpx.get(f"{url}/console/", timeout=30).status_code == 303, url
            assert gone.post("/console/logout").status_code == 303
            assert copy.get("/console/").status_code == 303

            os.kill(old_pid, signal.SIGKILL)
            wait_until(lambda: leader(store)[1] > old_epoch, timeout=30, interval=0.1, what="a new leader")
            assert leader(store)[0] != old_pid
            wait_until(lambda: kept.get("/console/").status_code == 200, timeout=30, interval=0.2, what="a console")
            assert copy.get("/console/").status_code == 303
            assert ops.get("/console/").status_code == 200

            tokens.write_text("# ops left\n", encoding="utf-8")
            wait_until(lambda: ops.get("/console/").status_code == 303, timeout=30, interval=0.2, what="ops refused")
            assert kept.get("/console/").status_code == 200
        store.close()
