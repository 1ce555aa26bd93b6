"""Background-task lifecycle shared by the gateway's long-running loops (batchers, the rollout
controller, the monitor scheduler)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import StoreUnavailable

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
    quiet_until = 0.0
    while True:
        await asyncio.sleep(every_s)
        try:
            await tick()
        except StoreUnavailable as exc:
            # An outage fails every tick: one line every UNAVAILABLE_LOG_EVERY_S, not a traceback per tick.
            now = time.monotonic()
            if now >= quiet_until:
                log.warning("%s: %s", what, exc)
                quiet_until = now + UNAVAILABLE_LOG_EVERY_S
        except Exception:
            log.exception("%s tick failed", what)


UNAVAILABLE_LOG_EVERY_S = 10.0
