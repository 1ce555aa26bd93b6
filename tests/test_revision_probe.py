"""A replica follows the control revision of a SQLite state store on its event loop, without a worker thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from gateway.cli.demo import build_reference_mlp
from gateway.serving.follower import PolicyFollower
from gateway.serving.policy_view import PolicyView
from gateway.serving.traffic import TrafficPolicy
from gateway.storage.revision_probe import SqliteRevisionProbe
from gateway.storage.store import Store
from tests.helpers import ThreadedGateway, settings_for, wait_until


def test_the_probe_reads_every_commit_and_never_waits_for_a_writer(tmp_path: Path) -> None:
    with Store.for_state_dir(tmp_path) as store:
        store.upgrade()
        probe = SqliteRevisionProbe.for_url(store.connect_url)
        assert probe is not None
        first = probe.read()
        assert first == store.control_revision()
        store.put_policy("mlp", TrafficPolicy(stable="1"))
        assert probe.read() == first + 1
        # A writer holding the write lock with the next change uncommitted: the probe, which has no busy
        # timeout, still reads the last commit at once (WAL readers do not wait for writers).
        writer = sqlite3.connect(tmp_path / "sluice.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE control_revision SET revision = revision + 1 WHERE id = 1")
        assert probe.read() == first + 1
        writer.execute("COMMIT")
        assert probe.read() == first + 2
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
    assert probe.read() is None  # the follower asks the store instead
    assert not missing.exists()


def test_a_replica_follows_another_writer_without_reading_through_the_store(tmp_path: Path) -> None:
    """Every sync of a gateway on SQLite reads the revision on its loop: the store's pooled read (a worker
    thread's turn at the GIL, five times a second) is not called at all while the probe answers."""
    repo = tmp_path / "models"
    for version in (1, 2):
        build_reference_mlp(repo / "mlp" / str(version) / "model.onnx", version)
    (repo / "mlp" / "config.yaml").write_text("version_policy:\n  specific: [1, 2]\n")
    settings = settings_for(repo, tmp=tmp_path, grpc_port=-1, sync_interval_s=0.05)
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

        store.control_revision = control_revision  # type: ignore[method-assign]
        # Another writer of the same state store (a second replica, a tool) changes the policy.
        with Store.for_state_dir(settings.state_dir) as other:
            revision = other.put_policy("mlp", TrafficPolicy(stable="1", canary="2", canary_weight=0.25))
        wait_until(lambda: gw.gateway.view.revision("mlp") == revision, timeout=10)
        assert gw.gateway.view.policy("mlp").canary == "2"
        assert reads == 0, "the revision was read through the store's pool in a worker thread"

        # A probe that cannot answer (the file locked or gone) hands the read to the store, in a thread.
        follower = PolicyFollower(store, PolicyView(), gw.gateway.registry, probe=lambda: None)
        changed = asyncio.run_coroutine_threadsafe(follower.sync_changed(), gw.loop).result(30)
        assert changed and follower.revision == revision and reads == 1
