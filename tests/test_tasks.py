"""The background-loop helpers every controller uses: a failing tick does not end the loop, and
cancelling waits for it to unwind."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.tasks import cancel_and_wait, tick_forever


async def test_a_failed_tick_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    third = asyncio.Event()

    async def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("database hiccup")
        if calls == 3:
            third.set()

    with caplog.at_level(logging.ERROR, logger="gateway.tasks"):
        task = asyncio.get_running_loop().create_task(tick_forever(tick, 0.001, "test loop"))
        await asyncio.wait_for(third.wait(), 5)
        await cancel_and_wait(task)
    assert task.cancelled() and calls >= 3
    failures = [r for r in caplog.records if "test loop tick failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


async def test_cancel_and_wait_lets_the_task_unwind_first() -> None:
    released = asyncio.Event()
    started = asyncio.Event()

    async def holder() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            released.set()

    task = asyncio.get_running_loop().create_task(holder())
    await started.wait()
    await cancel_and_wait(task)
    assert released.is_set() and task.done()
    await cancel_and_wait(None)  # nothing to cancel: no error
