"""The election loop around the lease (`control.leader`), on the real state store: a control plane that takes a
while to start must not cost its replica the lease, and nobody takes changes before the control plane is up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.control.leader import LEASE, LeaderElection
from gateway.storage.engine import Fence
from gateway.storage.store import Store


def _store(path: Path) -> Store:
    store = Store.for_state_dir(path)
    store.upgrade()
    return store


async def _nothing() -> None:
    return None


def test_a_slow_control_plane_start_keeps_the_lease_renewed_and_leads_only_once_started(tmp_path: Path) -> None:
    """Under load, starting the control plane (policies, rollouts, the monitors' state, artifact digests) can
    take longer than the lease lives. The renewals must go on meanwhile: before, the election loop waited for
    the start, the lease expired under it, another replica took it, and a change sent in that window was
    refused as fenced."""
    first, second = _store(tmp_path / "state"), _store(tmp_path / "state")
    may_finish = asyncio.Event()
    started: list[Fence] = []

    async def slow_start(fence: Fence) -> None:
        await may_finish.wait()
        started.append(fence)

    async def scenario() -> None:
        # The lease's time to live is long against the loop's 0.1 s rounds (a loaded box may stall one round for a
        # while), and the start below outlasts it twice over.
        a = LeaderElection(first, "a", ttl_s=1.5, renew_s=0.1, on_elected=slow_start, on_deposed=_nothing)
        b = LeaderElection(second, "b", ttl_s=1.5, renew_s=0.1, on_elected=slow_start, on_deposed=_nothing)
        await asyncio.wait_for(a.step(), 5)  # takes the lease; its control plane starts in the background
        assert not a.is_leader, "it leads before its control plane can take changes"
        for _ in range(30):  # over 3 s: twice the lease's time to live
            await asyncio.wait_for(a.step(), 5)
            await asyncio.wait_for(b.step(), 5)
            await asyncio.sleep(0.1)
        lease, _ = first.lease(LEASE)
        assert lease is not None and lease.holder == "a" and lease.epoch == 1, lease
        assert not b.is_leader
        may_finish.set()
        await asyncio.wait_for(a.wait_started(), 5)
        assert a.is_leader and started == [Fence(LEASE, "a", 1)]
        await a.resign()
        await b.step()
        await b.wait_started()
        assert b.is_leader and not a.is_leader

    asyncio.run(scenario())
    first.close()
    second.close()


def test_a_control_plane_that_fails_to_start_gives_the_lease_up(tmp_path: Path) -> None:
    store = _store(tmp_path / "state")

    async def broken(fence: Fence) -> None:
        raise RuntimeError("cannot start")

    async def scenario() -> None:
        a = LeaderElection(store, "a", ttl_s=5, renew_s=1, on_elected=broken, on_deposed=_nothing)
        await a.step()
        await a.wait_started()
        assert not a.is_leader
        lease, now = store.lease(LEASE)
        assert lease is None or lease.expires_at <= now, f"the lease was kept: {lease}"

    asyncio.run(scenario())
    store.close()
