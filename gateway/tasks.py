"""Background-task lifecycle shared by the gateway's long-running loops (batchers, the rollout
controller, the monitor scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has finished unwinding, so whatever it holds (a
    batch in flight, a store connection) is released before the caller closes what it uses."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
