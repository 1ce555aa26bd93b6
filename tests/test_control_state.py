"""The state the replicas share, on SQLite and the real PostgreSQL: the leader lease and its fence, the
control revision replicas follow, and the window summaries they publish for the leader to take."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from gateway.control import delivery_engine as engine
from gateway.control.delivery_engine import DeliveryPhase
from gateway.control.rollout_model import RolloutSpec, RolloutState
from gateway.errors import Conflict, NotLeader
from gateway.serving.model_config import DeliverySection
from gateway.serving.traffic import TrafficPolicy
from gateway.serving.window_stats import WindowRecorder, WindowSummary
from gateway.storage.engine import Fence
from gateway.storage.store import Store
from tests.databases import Backend

LEASE = "control-plane"


@pytest.fixture
def store(backend: Backend) -> Store:
    s = backend.open()
    s.upgrade()
    return s


def test_the_lease_goes_to_one_holder_until_it_expires_then_to_the_next_under_a_new_epoch(store: Store) -> None:
    first = store.acquire_lease(LEASE, "a", 0.6, "http://127.0.0.1:1")
    assert first is not None and first.epoch == 1
    assert store.acquire_lease(LEASE, "b", 0.6, "http://127.0.0.1:2") is None, "held: b must wait"
    again = store.acquire_lease(LEASE, "a", 0.6, "http://127.0.0.1:1")
    assert again is not None and again.epoch == 1, "the holder extends its own lease, same epoch"
    lease, now = store.lease(LEASE)
    assert (
        lease is not None and lease.holder == "a" and lease.address == "http://127.0.0.1:1" and lease.expires_at > now
    )
    deadline = time.monotonic() + 10
    taken = None
    while taken is None and time.monotonic() < deadline:
        taken = store.acquire_lease(LEASE, "b", 5.0, "http://127.0.0.1:2")
        time.sleep(0.05)
    assert taken is not None and taken.holder == "b" and taken.epoch == 2
    assert store.renew_lease(LEASE, "a", 1, 5.0) is None, "the old holder cannot renew a lease it lost"
    assert store.renew_lease(LEASE, "b", 2, 5.0) is not None


def test_a_released_lease_is_taken_at_once(store: Store) -> None:
    lease = store.acquire_lease(LEASE, "a", 60.0, None)
    assert lease is not None
    store.release_lease(LEASE, "a", lease.epoch)
    taken = store.acquire_lease(LEASE, "b", 60.0, None)
    assert taken is not None and taken.epoch == 2


def test_only_one_of_many_racing_candidates_gets_the_lease(backend: Backend) -> None:
    stores = [backend.open() for _ in range(6)]
    stores[0].upgrade()
    won: list[str] = []
    barrier = threading.Barrier(len(stores))

    def run(i: int) -> None:
        barrier.wait()
        if stores[i].acquire_lease(LEASE, f"r{i}", 30.0, None) is not None:
            won.append(f"r{i}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1, won


def test_a_stale_leaders_writes_are_refused_and_change_nothing(backend: Backend) -> None:
    old, new = backend.open(), backend.open()
    old.upgrade()
    lease = old.acquire_lease(LEASE, "old", 0.3, None)
    assert lease is not None
    old.fence = Fence(LEASE, "old", lease.epoch)
    assert old.put_policy("m", TrafficPolicy(stable="1")) > 0, "a current leader writes"
    deadline = time.monotonic() + 10
    taken = None
    while taken is None and time.monotonic() < deadline:
        taken = new.acquire_lease(LEASE, "new", 30.0, None)
        time.sleep(0.05)
    assert taken is not None
    revision = new.control_revision()
    with pytest.raises(NotLeader, match="new"):
        old.put_policy("m", TrafficPolicy(stable="2"))
    state = RolloutState(model="m", stable="1", spec=RolloutSpec(canary="2"))
    with pytest.raises(NotLeader), old.change():
        old.save_rollout(state)
        old.audit("old", "rollout.start", "m", None, {})
    assert new.get_policy("m") == TrafficPolicy(stable="1")
    assert new.rollout("m") is None and new.audit_events(model="m") == []
    assert new.control_revision() == revision, "a refused change raises nothing"
    new.fence = Fence(LEASE, "new", taken.epoch)
    assert new.put_policy("m", TrafficPolicy(stable="2")) == revision + 1


def test_one_change_is_all_or_nothing(store: Store) -> None:
    revision = store.control_revision()
    with pytest.raises(RuntimeError, match="midway"), store.change():
        store.put_policy("m", TrafficPolicy(stable="1"))
        store.audit("alice", "policy.set", "m", None, {})
        raise RuntimeError("midway")
    assert store.get_policy("m") is None and store.audit_events(model="m") == []
    assert store.control_revision() == revision


def test_every_policy_and_version_change_raises_the_revision_and_a_policy_keeps_its_own(store: Store) -> None:
    start = store.control_revision()
    r1 = store.put_policy("m", TrafficPolicy(stable="1"))
    store.put_version("m", "2", artifact="m/2/model.onnx", runtime="onnx", batching={}, desired="loaded")
    r3 = store.put_policy("n", TrafficPolicy(stable="4"))
    assert (r1, r3, store.control_revision()) == (start + 1, start + 3, start + 3)
    assert store.policies_with_revisions() == {
        "m": (TrafficPolicy(stable="1"), r1),
        "n": (TrafficPolicy(stable="4"), r3),
    }


def _summary(requests: int, errors: int = 0, latency: float = 0.01, revision: int = 1) -> WindowRecorder:
    rec = WindowRecorder()
    for i in range(requests):
        rec.record("m", "1", revision, ok=i >= errors, latency_s=latency)
    return rec


def test_window_summaries_from_replicas_are_merged_and_taken_once(store: Store) -> None:
    a = WindowRecorder()
    b = WindowRecorder()
    for i in range(30):
        (a if i % 2 else b).record("m", "1", 5, ok=i != 7, latency_s=0.001 * (i + 1))
    a.record("m", "1", 4, ok=True, latency_s=9.0)  # routed by the previous revision: another window
    a.record_shadow("m", "2", 5, agreed=True)
    store.publish_windows("replica-a", a.drain())
    store.publish_windows("replica-b", b.drain())
    taken = store.take_windows("m", "1", min_revision=5)
    assert (taken.requests, taken.errors) == (30, 1)
    assert taken.percentile(1.0) == pytest.approx(0.030, rel=0.05), "the slow request of revision 4 is not in it"
    assert store.take_windows("m", "1", min_revision=5) == WindowSummary(), "each row is taken once"
    late = WindowRecorder()
    late.record("m", "1", 6, ok=True, latency_s=0.002)  # a later publish of the same window
    store.publish_windows("replica-a", late.drain())
    assert store.take_windows("m", "1", min_revision=5).requests == 1
    shadow = store.take_windows("m", "2", min_revision=0)
    assert (shadow.shadow_compared, shadow.shadow_agreed) == (1, 1)


def test_window_series_buckets_by_time_and_version_and_old_rows_are_pruned(store: Store) -> None:
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    for offset, n in ((0, 3), (4, 2), (12, 5)):
        store.publish_windows("r", _summary(n).drain(), at=t0 + timedelta(seconds=offset))
    series = store.window_series("m", since=t0, bucket_s=10.0)
    assert [(at - t0).total_seconds() for at, _, _ in series] == [0.0, 10.0]
    assert [s.requests for _, _, s in series] == [5, 5]
    assert store.window_series("m", since=t0, bucket_s=10.0, version="9") == []
    assert store.prune_windows(t0 + timedelta(seconds=10)) == 2
    assert [s.requests for _, _, s in store.window_series("m", since=t0, bucket_s=60.0)] == [5]
    with pytest.raises(ValueError, match="naive"):
        store.window_series("m", since=datetime(2026, 1, 1), bucket_s=10.0)


def test_a_delivery_is_kept_for_the_next_leader_one_under_way_per_model_and_its_history_newest_first(
    store: Store,
) -> None:
    policy = DeliverySection.model_validate({"on_new_version": "rollout", "shadow": {"min_requests": 10}})
    two = engine.begin("m", "2", "1", policy, 100.0)
    store.save_delivery(two)
    counted = engine.judge_shadow(two, 4, 4, 101.0)
    store.save_delivery(counted)  # the same delivery: updated in place
    assert store.active_deliveries() == [counted]  # what a new leader reads at the start of its term
    with pytest.raises(Conflict):
        store.save_delivery(engine.begin("m", "3", "1", policy, 102.0))  # one under way per model
    superseded = engine.finish(counted, DeliveryPhase.SUPERSEDED, "superseded by version 3", 103.0)
    store.save_delivery(superseded)
    three = engine.begin("m", "3", "1", policy, 103.0)
    store.save_delivery(three)
    store.save_delivery(engine.begin("other", "5", "4", policy, 103.0))
    assert [(d.model, d.version) for d in store.active_deliveries()] == [("m", "3"), ("other", "5")]
    assert [(d.version, d.phase) for d in store.deliveries("m")] == [
        ("3", DeliveryPhase.SHADOW),
        ("2", DeliveryPhase.SUPERSEDED),
    ]
