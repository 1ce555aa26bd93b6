"""The workers' shared quota buckets: one table in shared memory for every worker of `--workers N`.

Each worker enforcing a key's quota alone let a key make N times its rate. The supervisor
(gateway.workers) creates one small file in /dev/shm (`create_table`), hands its path to the workers
(`SLUICE_QUOTA_TABLE`) and removes it at exit; each worker maps it and keeps every key name's bucket
there. No database and no lock server on the request path: a request takes the table's lock, finds its
name's slot, runs `quotas.refill_and_take` (the same arithmetic as one process's buckets) and writes
the slot back.

A slot is 32 bytes: the name's 64-bit hash (0: never used), the tokens, the time of the last refill and
the time the bucket will be full again, as doubles on the monotonic clock (CLOCK_MONOTONIC is one clock
for every process of the machine). Slots are found by the name's hash (linear probing), so they follow
key reloads (gateway.admin.key_reload) with nothing to rebuild: a new name takes a free slot, and a slot
whose bucket is full again may be taken over by another name, since a full bucket is exactly what a new
name starts with. A name whose probe finds no slot (the table is sized for far more names than a keys
file holds) keeps a bucket of its own process, with a warning.

The lock is `fcntl.flock` on the file (plus a thread lock: flock excludes other open files, not other
threads of this one). The kernel releases it when a worker dies, even by SIGKILL in the middle of a
request, so a crashed worker (which the supervisor restarts) can never wedge its siblings' quotas, as a
semaphore it held would (a `multiprocessing.Lock` costs 0.6 µs to flock's 1 µs, but is not freed).
Measured on the development box, busy (2 cores, load average 15; best of 600 runs of 1,000, printed by
tests/test_quotas.py -s): 1.7 µs a request for one process's buckets, 7 µs for the shared table, of which
flock's two system calls are 1 µs and the rest is Python (the slot's struct, the lock, the arithmetic).
Another worker holding the lock adds the few microseconds it holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import struct
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from gateway.admin.quotas import LocalBuckets, Quota, refill_and_take

log = logging.getLogger(__name__)

_SLOT = struct.Struct("<Qddd")  # name hash, tokens, last refill, full again at
SLOTS = 4096
PROBES = 64
"""Slots a name's lookup tries before it gives up on the table."""


def create_table(slots: int = SLOTS) -> str:
    """A zeroed table file (in /dev/shm where there is one: memory, never written to a disk); its path."""
    shm = "/dev/shm"
    fd, path = tempfile.mkstemp(prefix="sluice-quotas-", dir=shm if os.path.isdir(shm) else None)
    try:
        os.ftruncate(fd, slots * _SLOT.size)
    finally:
        os.close(fd)
    return path


def remove_table(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") or 1


class SharedBuckets:
    """The buckets of every worker of this machine, in the table at `path` (made by `create_table`)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        if size < _SLOT.size or size % _SLOT.size:
            os.close(self._fd)
            raise ValueError(f"quota table {path}: {size} bytes is not a whole number of slots")
        self._map = mmap.mmap(self._fd, size)
        self._slots = size // _SLOT.size
        self._thread_lock = threading.Lock()
        self._hashes: dict[str, int] = {}
        self._offsets: dict[int, int] = {}
        """Where each name's slot was last found (checked against the slot's owner at each request)."""
        self._overflow = LocalBuckets()
        self._warned: set[str] = set()

    def take(self, name: str, quota: Quota, clock: Callable[[], float]) -> float:
        key = self._hashes.get(name)
        if key is None:
            key = self._hashes[name] = _name_hash(name)
        with self._thread_lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                now = clock()  # under the lock: the refill times written to a slot never go back
                offset: int | None = self._offsets.get(key, 0)
                owner, tokens, at, _ = _SLOT.unpack_from(self._map, offset or 0)
                if owner != key:  # not seen here yet, or its slot was taken over meanwhile
                    offset = self._find(key, now)
                    if offset is not None:
                        self._offsets[key] = offset
                        owner, tokens, at, _ = _SLOT.unpack_from(self._map, offset)
                        if owner != key:  # a free slot, or a full bucket another name left: a new bucket
                            tokens, at = quota.burst, now
                if offset is not None:
                    tokens, wait = refill_and_take(quota, tokens, at, now)
                    full_at = now + (quota.burst - tokens) / quota.rate
                    _SLOT.pack_into(self._map, offset, key, tokens, max(at, now), full_at)
                    return wait
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        if name not in self._warned:
            self._warned.add(name)
            log.warning("quota table full: key name '%s' has a bucket in each worker", name)
        return self._overflow.take(name, quota, clock)

    def _find(self, key: int, now: float) -> int | None:
        """The offset of `key`'s slot; else of the first never used one on its probe; else of the first one
        whose bucket is full again; else None."""
        reusable = None
        for i in range(min(PROBES, self._slots)):
            offset = (key + i) % self._slots * _SLOT.size
            owner, _, _, full_at = _SLOT.unpack_from(self._map, offset)
            if owner == key or owner == 0:
                return offset
            if reusable is None and full_at <= now:
                reusable = offset
        return reusable

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
