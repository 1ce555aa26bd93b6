"""Which of a version's runtime processes takes the next batch: the least loaded, ties in turn.

A version placed on several devices (`runtime.devices: [0, 1]` or `all`) has one runtime process per device;
each worker sends each batch to the one where this worker has the fewest rows in flight, then the fewest
batches, and among equals to the next one after the last it chose (round robin), so an idle gateway still
uses every device. Only what this worker sends is counted: no worker waits to ask the others (the runtime
processes' own batchers merge whatever arrives). A process that is not available (restarting) is skipped.

Pure: `Spread` holds counters and is told of each batch's start and end; it never sleeps nor reads a clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Load:
    """What one worker has in flight on one runtime process."""

    rows: int = 0
    batches: int = 0


def least_loaded(loads: Sequence[Load], available: Sequence[bool], after: int) -> int | None:
    """The index of the member to send the next batch to: among the available ones, the fewest rows in flight,
    then the fewest batches, then the first after `after` in turn; None when none is available."""
    n = len(loads)
    best: int | None = None
    best_key: tuple[int, int, int] = (0, 0, 0)
    for step in range(1, n + 1):
        i = (after + step) % n
        if not available[i]:
            continue
        key = (loads[i].rows, loads[i].batches, step)
        if best is None or key < best_key:
            best, best_key = i, key
    return best


class Spread:
    """The in-flight counts of one version's members in this worker, and the choice among them."""

    def __init__(self, members: int) -> None:
        self.loads = [Load() for _ in range(members)]
        self._last = members - 1  # the first choice among equals is member 0

    def choose(self, available: Sequence[bool]) -> int | None:
        """Pick a member (see `least_loaded`); the caller then calls `started` and, when done, `finished`."""
        chosen = least_loaded(self.loads, available, self._last)
        if chosen is not None:
            self._last = chosen
        return chosen

    def started(self, member: int, rows: int) -> None:
        load = self.loads[member]
        load.rows += rows
        load.batches += 1

    def finished(self, member: int, rows: int) -> None:
        load = self.loads[member]
        load.rows -= rows
        load.batches -= 1
