"""A replica knows the control revision on its event loop, without a worker thread: SQLite's file read on a
connection of its own, PostgreSQL's notifications taken off a listening one."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.cli.demo import build_reference_mlp
from gateway.serving.follower import PolicyFollower
from gateway.serving.policy_view import PolicyView
from gateway.serving.traffic import TrafficPolicy
from gateway.storage.revision_probe import CONFIRM_S, RECONNECT_S, PostgresRevisionProbe, SqliteRevisionProbe
from gateway.storage.store import Store
from tests.databases import Backend
from tests.helpers import ThreadedGateway, settings_for, wait_until


def test_the_probe_reads_every_commit_and_never_waits_for_a_writer(tmp_path: Path) -> None:
    with Store.for_state_dir(tmp_path) as store:
        store.upgrade()
        probe = SqliteRevisionProbe.for_url(store.connect_url)
        assert probe is not None
        first = probe.read_now()
        assert first == store.control_revision()
        store.put_policy("mlp", TrafficPolicy(stable="1"))
        assert probe.read_now() == first + 1
        # A writer holding the write lock with the next change uncommitted: the probe, which has no busy
        # timeout, still reads the last commit at once (WAL readers do not wait for writers).
        writer = sqlite3.connect(tmp_path / "sluice.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE control_revision SET revision = revision + 1 WHERE id = 1")
        assert probe.read_now() == first + 1
        writer.execute("COMMIT")
        assert probe.read_now() == first + 2
        # It holds no snapshot between reads: a full checkpoint is not kept waiting by it.
        busy, _, _ = writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0
        writer.close()
        probe.close()


def test_no_probe_for_postgresql_or_memory_and_a_missing_file_is_not_created(tmp_path: Path) -> None:
    assert SqliteRevisionProbe.for_url("postgresql+psycopg://u@127.0.0.1:5432/test") is None
    assert SqliteRevisionProbe.for_url("sqlite://") is None
    missing = tmp_path / "gone" / "sluice.db"
    probe = SqliteRevisionProbe.for_url(f"sqlite:///{missing}")
    assert probe is not None
    assert probe.read_now() is None  # the follower asks the store instead
    assert not missing.exists()


def test_a_replica_follows_another_writer_without_reading_through_the_store(tmp_path: Path, backend: Backend) -> None:
    """A gateway's syncs take the revision from its probe: the store's pooled read (a worker thread's turn at the
    GIL, five times a second before) is not called while the probe answers (on PostgreSQL at most once in a
    second of syncs: the probe steps aside every `CONFIRM_S`, and answers nothing until it listens)."""
    repo = tmp_path / "models"
    for version in (1, 2):
        build_reference_mlp(repo / "mlp" / str(version) / "model.onnx", version)
    (repo / "mlp" / "config.yaml").write_text("version_policy:\n  specific: [1, 2]\n")
    url = backend.url_with_search_path()
    settings = settings_for(repo, tmp=tmp_path, grpc_port=-1, sync_interval_s=0.05, database_url=url)
    with ThreadedGateway(settings, run_controller=False) as gw:
        store = gw.gateway.store
        reads = 0
        lock = threading.Lock()
        store_read = store.control_revision

        def control_revision() -> int:
            nonlocal reads
            with lock:
                reads += 1
            return store_read()

        other = backend.open()  # another writer of the same state store (a second replica, a tool)
        revision = other.put_policy("mlp", TrafficPolicy(stable="1", canary="2", canary_weight=0.1))
        wait_until(lambda: gw.gateway.view.revision("mlp") == revision, timeout=10)  # PostgreSQL: listening now
        store.control_revision = control_revision  # type: ignore[method-assign]
        revision = other.put_policy("mlp", TrafficPolicy(stable="1", canary="2", canary_weight=0.25))
        wait_until(lambda: gw.gateway.view.revision("mlp") == revision, timeout=10)
        assert gw.gateway.view.policy("mlp").canary_weight == 0.25
        # Twenty syncs more, counted as they run (the follower's loop calls `sync`, which looks `sync_changed` up).
        follower, syncs = gw.gateway.follower, [0]
        sync_changed = follower.sync_changed

        async def counted() -> bool:
            syncs[0] += 1
            return await sync_changed()

        follower.sync_changed = counted  # type: ignore[method-assign]
        wait_until(lambda: syncs[0] >= 20, timeout=30, what="twenty syncs")
        assert reads <= (0 if backend.name == "sqlite" else 1), f"{reads} reads through the store's pool"

        # A probe that cannot answer (the file locked or gone, no connection yet) hands the read to the store.
        reads = 0

        async def silent() -> None:
            return None

        follower = PolicyFollower(store, PolicyView(), gw.gateway.registry, probe=silent)
        changed = asyncio.run_coroutine_threadsafe(follower.sync_changed(), gw.loop).result(30)
        assert changed and follower.revision == revision and reads == 1


def pg_store(pg_url: str, schema: str) -> Store:
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    store = Store(pg_url, connect_args={"options": f"-csearch_path={schema}"})
    store.upgrade()
    return store


@pytest.fixture
def two_schemas(pg_url: str) -> Iterator[tuple[Store, Store]]:
    names = [f"probe_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    stores = [pg_store(pg_url, name) for name in names]
    yield stores[0], stores[1]
    for store in stores:
        store.close()
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
    admin.dispose()


async def answer(probe: PostgresRevisionProbe, wanted: int) -> None:
    """Read until the probe answers `wanted` (a notification crosses a socket), for at most ten seconds."""
    for _ in range(500):
        if await probe.read() == wanted:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the probe never answered {wanted}: {await probe.read()}")


def test_the_postgresql_probe_hears_its_own_schema_and_steps_aside_when_deaf(two_schemas: tuple[Store, Store]) -> None:
    ours, theirs = two_schemas
    now = [0.0]
    probe = PostgresRevisionProbe(ours.connect_url, ours.connect_args, clock=lambda: now[0])

    async def scenario() -> None:
        assert await probe.read() is None  # listening starts in a worker thread: the store is asked meanwhile
        first = ours.control_revision()
        await answer(probe, first)
        for weight in (0.1, 0.2, 0.3):  # another schema's changes, each with a revision above ours
            theirs.put_policy("mlp", TrafficPolicy(stable="1", canary="2", canary_weight=weight))
        revision = ours.put_policy("mlp", TrafficPolicy(stable="1"))
        assert revision == first + 1
        await answer(probe, revision)  # ours, not theirs (first + 3)
        assert await probe.read() == revision

        now[0] += CONFIRM_S  # a deaf listener delays a change by CONFIRM_S at most: the store is asked once
        assert await probe.read() is None
        assert await probe.read() == revision

        # The server ends the probe's session: it says so (None), and listens again.
        ended = ours.engine.connect()
        ended.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT revision FROM%' "
                "AND pid <> pg_backend_pid() AND datname = current_database()"
            )
        )
        ended.commit()
        ended.close()
        for _ in range(500):
            if await probe.read() is None:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the probe did not notice that its session ended")
        revision = ours.put_policy("mlp", TrafficPolicy(stable="2"))  # made while nobody listened
        now[0] += RECONNECT_S
        await answer(probe, revision)  # listening again, it read the revision afresh

    try:
        asyncio.run(scenario())
    finally:
        probe.close()
