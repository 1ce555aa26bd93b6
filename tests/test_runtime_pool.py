"""`runtimes.pool.RuntimePool`: several real ONNX Runtime sessions of one version, one batch each at a time.

The hang model (`tests.models.build_hang`) holds a session until its call is cancelled (ONNX Runtime's
terminate flag), so what runs at once is seen directly, without timing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from runtimes.onnx import OnnxRuntime
from runtimes.pool import RuntimePool
from tests.models import build_hang

HUNG = {"x": np.array([[5000.0]], np.float32)}
QUICK = {"x": np.array([[1.0], [2.0]], np.float32)}


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[list[OnnxRuntime]]:
    path = build_hang(tmp_path / "hang" / "1" / "model.onnx")
    with ThreadPoolExecutor(4) as executor:
        yield [OnnxRuntime.load(path, providers=["cpu"], executor=executor) for _ in range(2)]


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_second_session_answers_while_the_first_is_held(sessions: list[OnnxRuntime]) -> None:
    pool = RuntimePool(sessions)
    assert pool.concurrency == 2 and pool.info.parameters["instances"] == "2"
    assert pool.signature == sessions[0].signature
    hung = asyncio.create_task(pool.infer(HUNG))
    await _until(lambda: pool.busy == 1, "the hung call to take a session")
    answer = await asyncio.wait_for(pool.infer(QUICK), 30)
    np.testing.assert_array_equal(answer["y"], QUICK["x"])
    assert not hung.done() and pool.busy == 1
    hung.cancel()  # the terminate flag: the session comes back once ONNX Runtime has stopped
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(hung, 30)
    assert pool.busy == 0
    await pool.close()


async def test_with_every_session_held_a_call_waits_and_a_cancelled_wait_takes_none(
    sessions: list[OnnxRuntime],
) -> None:
    pool = RuntimePool(sessions[:1])
    hung = asyncio.create_task(pool.infer(HUNG))
    await _until(lambda: pool.busy == 1, "the hung call to take the session")
    waiting = asyncio.create_task(pool.infer(QUICK))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # one session, held: the quick call waits for it
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    hung.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(hung, 30)
    assert pool.busy == 0  # the cancelled waiter took nothing: the session is free for the next call
    answer = await asyncio.wait_for(pool.infer(QUICK), 30)
    np.testing.assert_array_equal(answer["y"], QUICK["x"])


def test_a_pool_needs_a_session() -> None:
    with pytest.raises(ValueError, match="at least one"):
        RuntimePool([])
