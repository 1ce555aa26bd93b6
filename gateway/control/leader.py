"""Who runs the control plane: the replica holding a lease in the state database.

Every replica runs an election loop. The holder renews its lease every `renew_s`; any other replica
takes it once it has expired (`ttl_s` after the holder's last renewal, by the database's clock), under
a new epoch. The epoch fences the control plane's writes: each one checks, in its own transaction,
that the lease still has this holder and epoch (`storage.engine.Database.fence`), so a leader that
was paused or cut off past its lease changes nothing once another has taken over. A leader that
cannot renew steps down by its own clock before its lease can have been taken. A clean shutdown
releases the lease, so the next replica takes over at its next attempt instead of waiting for expiry.

Killing the leader hands over within `ttl_s + renew_s`; the new leader reads the policies and
rollouts back from the store, so a rollout resumes at the step where it stood.

Starting the control plane (`on_elected`: policies, rollouts, the monitors' state, the artifacts' digests)
runs beside the loop, not inside it: under load it can take longer than the lease lives, and a lease not
renewed meanwhile would pass to another replica while this one still believed it led. The replica
leads (`is_leader`: takes changes) only once that start has finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import StoreUnavailable
from gateway.storage.control_state import Lease
from gateway.storage.engine import Fence
from gateway.tasks import cancel_and_wait

log = logging.getLogger(__name__)

LEASE = "control-plane"


class LeaseStore(Protocol):
    fence: Fence | None

    def acquire_lease(self, name: str, holder: str, ttl_s: float, address: str | None) -> Lease | None: ...

    def renew_lease(self, name: str, holder: str, epoch: int, ttl_s: float) -> Lease | None: ...

    def release_lease(self, name: str, holder: str, epoch: int) -> None: ...

    def lease(self, name: str) -> tuple[Lease | None, float]: ...


class LeaderElection:
    def __init__(
        self,
        store: LeaseStore,
        holder: str,
        *,
        address: str | None = None,
        ttl_s: float = 5.0,
        renew_s: float = 1.0,
        on_elected: Callable[[Fence], Awaitable[None]],
        on_deposed: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < renew_s < ttl_s:
            raise ValueError(f"the lease's renewal ({renew_s} s) must be shorter than its time to live ({ttl_s} s)")
        self._store = store
        self.holder = holder
        self.address = address
        """Where this replica takes forwarded admin requests (published in the lease while it leads)."""
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self._on_elected = on_elected
        self._on_deposed = on_deposed
        self._clock = clock
        self._lease: Lease | None = None
        """Ours, while we lead."""
        self._valid_until = 0.0
        """By our own clock: past this we cannot be sure the lease is still ours."""
        self.leader: Lease | None = None
        """The lease as last seen: ours or another replica's (its address is where admin requests go)."""
        self._lock = asyncio.Lock()
        self._starting: asyncio.Task[None] | None = None
        """The control plane's start, while it runs (beside the renewals)."""
        self._started = False
        self.unavailable: StoreUnavailable | None = None
        """Why the last round could not reach the state database (None when it could): while it cannot,
        nobody can lead, and an admin request is told so at once instead of waiting for a leader."""
        # Until elected, every control write from this replica is refused by the database (epochs start at 1).
        store.fence = Fence(LEASE, holder, 0)

    @property
    def is_leader(self) -> bool:
        """Holding the lease with the control plane started: this replica takes changes."""
        return self._lease is not None and self._started

    @property
    def holds_lease(self) -> bool:
        """Holding the lease, the control plane perhaps still starting (`wait_started`)."""
        return self._lease is not None

    async def wait_started(self) -> None:
        """Until the control plane's start (if one is under way) has finished or failed."""
        task = self._starting
        if task is not None:
            await asyncio.wait([task])  # never raises: a failed or cancelled start has been dealt with

    async def step(self) -> None:
        """One round: renew while leading (stepping down if that fails), else try to take the lease."""
        async with self._lock:
            try:
                if self._lease is not None:
                    await self._renew()
                else:
                    await self._try_acquire()
            finally:
                self._unavailable_seen, seen = None, self._unavailable_seen
                self.unavailable = seen

    _unavailable_seen: StoreUnavailable | None = None

    async def _renew(self) -> None:
        lease = self._lease
        assert lease is not None
        started = self._clock()
        try:
            renewed = await asyncio.to_thread(self._store.renew_lease, LEASE, self.holder, lease.epoch, self.ttl_s)
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                self._unavailable_seen = exc
            if self._clock() < self._valid_until:
                log.warning("could not renew the control plane's lease (still ours for now): %s", exc)
                return
            log.error("control plane's lease not renewed within its time to live: stepping down: %s", exc)
            renewed = None
        if renewed is None:
            await self._depose(f"lost the control plane's lease (epoch {lease.epoch})")
            return
        self._lease = self.leader = renewed
        self._valid_until = started + self.ttl_s - self.renew_s

    async def _try_acquire(self) -> None:
        started = self._clock()
        try:
            lease = await asyncio.to_thread(self._store.acquire_lease, LEASE, self.holder, self.ttl_s, self.address)
            if lease is None:
                self.leader, _ = await asyncio.to_thread(self._store.lease, LEASE)
                return
        except Exception as exc:
            if isinstance(exc, StoreUnavailable):
                self._unavailable_seen = exc
            log.warning("could not read or take the control plane's lease: %s", exc)
            return
        self._lease = self.leader = lease
        self._valid_until = started + self.ttl_s - self.renew_s
        self._store.fence = fence = Fence(LEASE, self.holder, lease.epoch)
        log.info("leading the control plane", extra={"holder": self.holder, "epoch": lease.epoch})
        self._starting = asyncio.get_running_loop().create_task(self._start(lease, fence), name="control-plane-start")

    async def _start(self, lease: Lease, fence: Fence) -> None:
        try:
            await self._on_elected(fence)
        except asyncio.CancelledError:
            raise  # deposed while starting: `_depose` stops what had started
        except Exception:
            log.exception("the control plane failed to start: giving the lease up")
            async with self._lock:
                if self._holds(lease):
                    self._starting = None  # this task: not to be cancelled by the depose below
                    await self._depose("the control plane failed to start")
                    await self._release(lease)
            return
        if self._holds(lease):
            self._started = True

    def _holds(self, lease: Lease) -> bool:
        return self._lease is not None and self._lease.epoch == lease.epoch

    async def _depose(self, why: str) -> None:
        self._lease = None
        self._started = False
        starting, self._starting = self._starting, None
        if starting is not None and starting is not asyncio.current_task():
            await cancel_and_wait(starting)
        log.warning("no longer leading the control plane: %s", why, extra={"holder": self.holder})
        try:
            await self._on_deposed()
        except Exception:
            log.exception("stopping the control plane failed")

    async def _release(self, lease: Lease) -> None:
        try:
            await asyncio.to_thread(self._store.release_lease, LEASE, self.holder, lease.epoch)
        except Exception as exc:
            log.warning("could not release the control plane's lease (it expires by itself): %s", exc)

    async def resign(self) -> None:
        """Stop leading and give the lease up at once (a clean shutdown)."""
        async with self._lock:
            lease = self._lease
            if lease is None:
                return
            await self._depose("shutting down")
            await self._release(lease)

    async def current_leader(self, refresh: bool = False) -> Lease | None:
        """The lease holder if its lease is current: for forwarding admin requests. `refresh` reads it anew."""
        if refresh or self.leader is None:
            try:
                self.leader, now = await asyncio.to_thread(self._store.lease, LEASE)
            except StoreUnavailable:
                raise  # the caller says so at once: waiting for a leader would not help
            except Exception as exc:
                log.warning("could not read the control plane's lease: %s", exc)
                return None
            if self.leader is not None and self.leader.expires_at < now:
                return None
        return self.leader
