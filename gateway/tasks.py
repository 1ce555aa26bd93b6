"""Background-task lifecycle shared by the gateway's long-running loops (batchers, the rollout
controller, the monitor scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has finished unwinding, so whatever it holds (a
    batch in flight, a store connection) is released before the caller closes what it uses."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def tick_forever(tick: Callable[[], Awaitable[None]], every_s: float, what: str) -> None:
    """Call `tick` every `every_s` seconds until cancelled. A failed tick is logged and the loop
    goes on: one bad pass (a database hiccup, a bug on one model) must not stop the controller."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await tick()
        except Exception:
            log.exception("%s tick failed", what)
