"""A runtime that kills its process (a native crash) under `--workers 2`: the supervisor restarts the worker,
the gateway keeps serving, and only the requests in flight on the dead worker are lost.

The crash is delivered as the signal a native crash raises, SIGSEGV, to the worker serving the requests,
while a slow model keeps requests in flight on it. (Making ONNX Runtime itself segfault would need a bug
in it or a custom-op library, neither of which this suite has.) From the outside, which is all the
supervisor and the clients see, it is the same event: the process is gone without running one more line.
Its core dump is switched off first (RLIMIT_CORE 0) so nothing is written into the working tree.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.faults import Load, report, row_body, stored_ids
from tests.helpers import GatewayProcess, gateway_process, wait_until
from tests.models import build_slow
from tests.test_workers import worker_urls

pytestmark = pytest.mark.slow


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    build_slow(tmp_path / "models" / "slow" / "1" / "model.onnx", matmuls=4, n=256)
    (tmp_path / "models" / "slow" / "config.yaml").write_text("runtime: {execution_providers: [cpu]}\n")
    env = {"SLUICE_LEADER_LEASE_S": "3", "SLUICE_LEADER_RENEW_S": "0.5"}
    with gateway_process(tmp_path / "models", "--workers", "2", "--drain-timeout", "10", tmp=tmp_path, env=env) as gw:
        wait_until(lambda: len(worker_urls(gw)) == 2, timeout=30, what="both workers listening")
        yield gw


def test_a_worker_that_crashes_is_replaced_and_only_its_in_flight_requests_are_lost(gateway: GatewayProcess) -> None:
    gw = gateway
    clients = 8
    with Load(f"{gw.http_url}/v2/models/slow/infer", row_body(1.0), clients=clients, prefix="crash") as load:
        wait_until(lambda: len(load.snapshot()) >= 300, timeout=60, what="load on both workers")
        victim = next(iter(worker_urls(gw)))
        resource.prlimit(victim, resource.RLIMIT_CORE, (0, 0))
        answered_before = len(load.snapshot())
        crashed_at = time.monotonic()
        os.kill(victim, signal.SIGSEGV)
        wait_until(lambda: victim not in worker_urls(gw) and len(worker_urls(gw)) == 2, timeout=60, what="restart")
        wait_until(lambda: httpx.get(f"{gw.http_url}/v2/health/ready", timeout=5).status_code == 200, timeout=60)
        recovered_s = time.monotonic() - crashed_at
        settled = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) >= settled + 300, timeout=60, what="load after the restart")
    answers = load.snapshot()
    failed = [a for a in answers if a.status != 200]
    # Only what was in flight on the dead worker: at most one request per client, each a dropped connection.
    assert len(failed) <= clients, [(a.status, a.error[:80]) for a in failed]
    assert all(a.status == 0 for a in failed), [(a.status, a.error[:80]) for a in failed]
    assert "exited with -11" in gw.logs()

    assert gw.terminate(90) == 0
    engine = sa.create_engine(f"sqlite:///{gw.state_dir / 'sluice.db'}")
    try:
        stored = stored_ids(engine, "slow")
    finally:
        engine.dispose()
    answered = {a.id for a in answers if a.status == 200}
    unstored = answered - set(stored)
    # Records the dead worker had queued but not yet handed to its writer die with it: at most its queue,
    # which a writer empties every half second.
    window = [a for a in answers if crashed_at - 1.0 <= a.sent + a.latency_s <= crashed_at]
    assert len(unstored) <= len(window), (len(unstored), len(window))
    report(
        "a worker killed by SIGSEGV (--workers 2)",
        load=f"{load.rate():.0f} req/s, {clients} clients, {answered_before} answered before",
        requests_lost=len(failed),
        records_lost=len(unstored),
        recover_s=round(recovered_s, 2),
    )
