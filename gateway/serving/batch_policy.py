"""When does a batch close? A pure function of the queue, the clock and the runtime's slots.

Greedy by default: when no batch is in flight the queued requests run at once, so a lone
request never waits for company (MLServer's adaptive batching always waits, which is what
raises its p50 at one connection). While a batch runs, new requests pile up and the next
batch is as large as the load makes it. A second slot (max_concurrent_batches > 1) closes
at max_batch_size rows or max_queue_delay after its first request, as Triton's does.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = 32
    """Rows in one runtime call; 0 runs each request alone (models with no batch dimension)."""
    max_queue_delay_s: float = 0.002
    """Longest a queued request waits for company while a runtime slot is free."""
    queue_capacity: int = 1024
    """Queued requests beyond which new ones are refused at once (429 / UNAVAILABLE)."""
    max_concurrent_batches: int = 1
    """Batches of this version running at the same time."""
    greedy: bool = True
    """Run at once when nothing is in flight; False always waits max_queue_delay to fill."""
    default_timeout_s: float | None = 30.0
    """Per-request timeout when the caller sets none; None waits for ever."""


@dataclass(frozen=True)
class Decision:
    close: bool
    """Close a batch now."""
    wait_s: float | None = None
    """If not closing: how long until the decision may change by time alone; None: only an event changes it."""


CLOSE = Decision(close=True)
WAIT_FOR_EVENT = Decision(close=False)


def decide(
    *,
    queued_rows: int,
    first_arrival: float | None,
    now: float,
    in_flight: int,
    config: BatchingConfig,
) -> Decision:
    """Decide for the head of the queue. Times are seconds on one monotonic clock."""
    if queued_rows <= 0 or first_arrival is None:
        return WAIT_FOR_EVENT
    if in_flight >= config.max_concurrent_batches:
        return WAIT_FOR_EVENT  # the end of a running batch is the event
    if config.max_batch_size <= 0 or queued_rows >= config.max_batch_size:
        return CLOSE
    if config.greedy and in_flight == 0:
        return CLOSE
    waited = now - first_arrival
    if waited >= config.max_queue_delay_s:
        return CLOSE
    return Decision(close=False, wait_s=config.max_queue_delay_s - waited)


def fits(total_rows: int, taken: int, rows: int, max_batch_size: int) -> bool:
    """Whether the next queued request (`rows`) joins a batch that holds `taken` requests of `total_rows`:
    the first always does (a request over the limit runs alone); with no batching (`max_batch_size` 0) no
    second one does. One step at a time, for the batcher that walks its queue with a running total (asking
    about the whole taken list at each step cost 84 µs a batch of 64)."""
    if not taken:
        return True
    return max_batch_size > 0 and total_rows + rows <= max_batch_size


class InlineGate:
    """Whether a batch runs on the event loop's own thread instead of handing it to a runtime thread.

    Handing a batch over costs the loop a submit, a wake-up from another thread and a fight for the
    GIL when the answer comes back; for a small CPU model that is several times the model's own time
    (measured on the reference MLP at 64 connections: 15,687 req/s through a thread, 24,447 inline,
    with two workers on two cores). Inline, the loop is blocked while the model runs, so only models
    that are known to be quick run there: a version starts on threads, and runs inline once `warmup`
    batches in a row each took at most `max_s`. A batch that takes longer than `max_s` sends the
    version back to threads for another `warmup` batches. One that takes `stray` times `max_s` does the
    same, and `strays` of those within `stray_window` batches keep it there for good, as does a single batch
    of `stall` times `max_s` (100 ms by default): a model that can stall must not stall the loop.

    Not for good at the first stray: the machine's own pauses land in a batch's CPU time too (the
    hypervisor taking the CPU mid-call, a full collection, a burst of page faults), and the reference
    MLP, whose batches take about 0.2 ms, showed batches of 1.3 and 1.8 ms in five minutes on a 2-core
    box. A single pause of 5 ms used to send a quick model to threads for the rest of the process's
    life, about a tenth of its req/s (loadtests/README, sixteenth session); a model that stalls does so
    again within a few thousand batches.

    Pure: the batcher feeds it each batch's CPU time on the thread that ran it (immune to preemption and
    to the wait for the GIL), and asks before each.
    """

    def __init__(
        self,
        max_s: float,
        warmup: int = 32,
        stray: float = 5.0,
        strays: int = 3,
        stray_window: int = 10_000,
        stall: float = 100.0,
    ) -> None:
        self.max_s = max_s
        self.warmup = warmup
        self.stray = stray
        self.strays = strays
        self.stray_window = stray_window
        self.stall = stall
        self._quick = 0
        """Batches in a row that took at most max_s."""
        self._batches = 0
        self._stray_at: collections.deque[int] = collections.deque()
        """The batch numbers of the strays within the window."""
        self.disabled = max_s <= 0

    @property
    def inline(self) -> bool:
        return not self.disabled and self._quick >= self.warmup

    def observe(self, compute_s: float) -> bool:
        """Count one batch's CPU time; True when this batch closed the gate for good (for the caller to say so)."""
        self._batches += 1
        if compute_s <= self.max_s:
            self._quick += 1
            return False
        self._quick = 0
        if compute_s <= self.max_s * self.stray or self.disabled:
            return False
        strays = self._stray_at
        while strays and self._batches - strays[0] >= self.stray_window:
            strays.popleft()
        strays.append(self._batches)
        if len(strays) >= self.strays or compute_s > self.max_s * self.stall:
            self.disabled = True
            return True
        return False
