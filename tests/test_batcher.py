"""The batcher through its public interface. The runtime is an async function gated by events,
so every ordering is forced by the test and nothing sleeps."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from gateway.errors import DeadlineExceeded, InferenceFailed, Overloaded, ShuttingDown
from gateway.serving.batch_policy import BatchingConfig
from gateway.serving.batcher import Batcher
from runtimes.base import SyncCall


class GatedRuntime:
    """Doubles its input; each call blocks until the test opens the gate. Records batch sizes."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(int(x.shape[0]))
        self.entered.set()
        await self.gate.wait()
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise ValueError("poisoned row")
        return {"y": x * 2, "z": x + 1}


def rows(*values: float) -> dict[str, np.ndarray]:
    return {"x": np.array([[v] for v in values], dtype=np.float32)}


async def until(predicate: object, limit: int = 1000) -> None:
    """Yield to the loop until `predicate()` holds; bounded by iterations, not time."""
    for _ in range(limit):
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def make(runtime: GatedRuntime, **cfg: object) -> Batcher:
    config = BatchingConfig(**{"max_batch_size": 8, "default_timeout_s": None, **cfg})  # type: ignore[arg-type]
    b = Batcher(runtime, config, name="test/1")
    b.start()
    return b


async def test_lone_request_runs_at_once_and_gets_its_rows() -> None:
    rt = GatedRuntime()
    rt.gate.set()
    b = make(rt)
    out, timing = await b.submit(rows(1, 2), 2)
    np.testing.assert_array_equal(out["y"], [[2], [4]])
    assert rt.calls == [2]
    assert timing.batch_rows == 2 and timing.batch_requests == 1
    await b.close()


async def test_requests_of_one_turn_of_the_loop_join_an_idle_batchers_first_batch() -> None:
    # Under a closed-loop load the answers of a batch bring the next requests back a few at a time: the first to
    # reach an idle batcher used to run alone, and the rest of its turn waited behind a batch of one (at 64
    # connections more than half of all runtime batches were single requests).
    rt = GatedRuntime()
    rt.gate.set()
    b = make(rt, max_batch_size=4)
    results = await asyncio.gather(*(b.submit(rows(i), 1) for i in range(6)))
    assert rt.calls == [4, 2]  # as many as fit; the rest are the next batch
    for i, (out, timing) in enumerate(results):
        np.testing.assert_array_equal(out["y"], [[2 * i]])
        assert timing.batch_requests == (4 if i < 4 else 2) and timing.start == i % 4
    await b.close()


async def test_a_lone_request_runs_not_waits_while_its_batch_gathers() -> None:
    # Its batch has started: a shadow that sheds copies while a full batch waits must not count it as waiting.
    rt = GatedRuntime()
    b = make(rt, max_batch_size=1)
    first = asyncio.create_task(b.submit(rows(0), 1))
    await asyncio.sleep(0)  # submitted; its batch's task has not run yet
    assert b.in_flight == 1 and b.queued_rows == 0 and b.queue_depth == 0
    rt.gate.set()
    await first
    await b.close()


async def test_a_lone_request_cancelled_before_its_batch_starts_runs_nothing() -> None:
    rt = GatedRuntime()
    rt.gate.set()
    b = make(rt)
    gone = asyncio.create_task(b.submit(rows(1), 1))
    await asyncio.sleep(0)  # queued; its batch's task has not run yet
    gone.cancel()
    await until(lambda: b.in_flight == 0)
    assert gone.cancelled() and rt.calls == [] and b.queue_depth == 0
    out, _ = await b.submit(rows(2), 1)
    np.testing.assert_array_equal(out["y"], [[4]])
    assert rt.calls == [1]
    await b.close()


async def test_requests_arriving_during_a_run_form_the_next_batch_and_split_back() -> None:
    rt = GatedRuntime()
    b = make(rt)
    first = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    waiting = [asyncio.create_task(b.submit(rows(i, i + 0.5), 2)) for i in range(1, 4)]
    await until(lambda: b.queue_depth == 3)
    rt.gate.set()
    results = await asyncio.gather(first, *waiting)
    assert rt.calls == [1, 6]
    for i, (out, timing) in enumerate(results[1:], start=1):
        np.testing.assert_array_equal(out["y"], [[2 * i], [2 * i + 1]])
        assert timing.batch_requests == 3
    await b.close()


async def test_batch_never_exceeds_max_rows() -> None:
    rt = GatedRuntime()
    b = make(rt, max_batch_size=4)
    blocker = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    tasks = [asyncio.create_task(b.submit(rows(i, i), 2)) for i in range(5)]
    await until(lambda: b.queue_depth == 5)
    rt.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert rt.calls[0] == 1 and all(c <= 4 for c in rt.calls) and sum(rt.calls) == 11
    await b.close()


async def test_requested_outputs_narrow_each_callers_answer() -> None:
    rt = GatedRuntime()
    rt.gate.set()
    b = make(rt)
    out, _ = await b.submit(rows(3), 1, outputs=["z"])
    assert list(out) == ["z"] and out["z"][0, 0] == 4
    await b.close()


async def test_full_queue_refuses_at_once() -> None:
    rt = GatedRuntime()
    b = make(rt, queue_capacity=2)
    running = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    queued = [asyncio.create_task(b.submit(rows(1), 1)) for _ in range(2)]
    await until(lambda: b.queue_depth == 2)
    with pytest.raises(Overloaded, match="queue is full"):
        await b.submit(rows(9), 1)
    rt.gate.set()
    await asyncio.gather(running, *queued)
    await b.close()


async def test_request_past_its_deadline_is_dropped_before_it_runs() -> None:
    rt = GatedRuntime()
    b = make(rt)
    running = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    # timeout 0: already late when the batch closes; its row must never reach the runtime
    late = asyncio.create_task(b.submit(rows(7), 1, timeout_s=0.0))
    on_time = asyncio.create_task(b.submit(rows(1), 1))
    with pytest.raises(DeadlineExceeded):
        await late
    rt.gate.set()
    await asyncio.gather(running, on_time)
    assert rt.calls == [1, 1]
    await b.close()


async def test_requests_with_the_default_timeout_share_one_timer_and_expire_at_their_deadline() -> None:
    """A timer a request (`call_later`, then its cancel) was a tenth of the batcher's CPU a request. The requests that
    take the version's default timeout come in the order of their deadlines, so one timer, for the oldest of them,
    serves them all; each still fails at its own deadline, queued or running, as before."""
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_later = loop.call_later

    def counted(delay: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(delay)
        return call_later(delay, callback, *args, **kwargs)

    loop.call_later = counted  # type: ignore[method-assign]
    try:
        rt = GatedRuntime()
        b = make(rt, default_timeout_s=0.1)
        running = asyncio.create_task(b.submit(rows(0), 1))
        await rt.entered.wait()
        queued = [asyncio.create_task(b.submit(rows(i), 1)) for i in range(1, 41)]
        await until(lambda: b.queue_depth == 40)
        assert [d for d in timers if d > 0.05] == [pytest.approx(0.1, abs=0.05)]  # one for 41 requests
        started = loop.time()
        for task in [running, *queued]:  # the running one too: a deadline holds while its batch runs
            with pytest.raises(DeadlineExceeded, match="timed out after 100 ms"):
                await task
        assert loop.time() - started < 1.0
        assert b.queue_depth == 0
        rt.gate.set()
        out, _ = await b.submit(rows(5), 1)
        np.testing.assert_array_equal(out["y"], [[10]])
        short = b.submit(rows(6), 1, timeout_s=0.01)  # a timeout of its own: a timer of its own
        rt.gate.clear()
        with pytest.raises(DeadlineExceeded, match="timed out after 10 ms"):
            await short
        rt.gate.set()
        await b.close()
    finally:
        del loop.call_later


async def test_requests_answered_behind_one_that_runs_long_are_let_go_of() -> None:
    """The shared timer's line holds a request until the ones before it are answered; with one running long (a
    second batch slot serving the rest meanwhile), the answered ones behind it are still let go of."""
    release = asyncio.Event()

    async def holds_minus_one(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        if np.any(inputs["x"] == -1):
            await release.wait()
        return {"y": inputs["x"] * 2}

    config = BatchingConfig(max_batch_size=1, max_concurrent_batches=2, default_timeout_s=30.0)
    b = Batcher(holds_minus_one, config, name="test/1")
    b.start()
    held = asyncio.create_task(b.submit(rows(-1), 1))
    await until(lambda: b.in_flight == 1)
    first = rows(0)
    answered = weakref.ref(first["x"])
    await b.submit(first, 1)
    del first
    for i in range(1, 3000):
        await b.submit(rows(i), 1)
    gc.collect()
    assert answered() is None
    release.set()
    out, _ = await held
    np.testing.assert_array_equal(out["y"], [[-2]])
    await b.close()


async def test_cancelled_caller_takes_no_slot_in_the_batch() -> None:
    rt = GatedRuntime()
    b = make(rt)
    running = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    gone = asyncio.create_task(b.submit(rows(5, 5, 5), 3))
    stays = asyncio.create_task(b.submit(rows(1), 1))
    await until(lambda: b.queue_depth == 2)
    gone.cancel()
    rt.gate.set()
    await asyncio.gather(running, stays)
    assert gone.cancelled()
    assert rt.calls == [1, 1]
    await b.close()


async def test_failing_request_is_isolated_and_batch_mates_get_answers() -> None:
    rt = GatedRuntime(fail_on=666.0)
    b = make(rt)
    blocker = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    values = [1.0, 2.0, 666.0, 3.0, 4.0]
    tasks = [asyncio.create_task(b.submit(rows(v), 1)) for v in values]
    await until(lambda: b.queue_depth == 5)
    rt.gate.set()
    await blocker
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for value, result in zip(values, results, strict=True):
        if value == 666.0:
            assert isinstance(result, InferenceFailed) and "poisoned row" in str(result)
        else:
            assert not isinstance(result, BaseException)
            assert result[0]["y"][0, 0] == 2 * value
    assert rt.calls[1] == 5  # tried together first, then split
    await b.close()


async def test_runtime_returning_wrong_row_count_fails_cleanly() -> None:
    async def broken(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        await asyncio.sleep(0)
        return {"y": np.zeros((1, 1), np.float32)}

    b = Batcher(broken, BatchingConfig(max_batch_size=8, default_timeout_s=None), name="broken/1")
    b.start()
    results = await asyncio.gather(*(b.submit(rows(i), 1) for i in range(4)), return_exceptions=True)
    # The first ran alone (fine); the rest were batched, failed the row check, and were split until alone.
    assert all(not isinstance(r, BaseException) for r in results)
    await b.close()


async def test_drain_finishes_queued_work_and_then_refuses() -> None:
    rt = GatedRuntime()
    b = make(rt)
    running = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    queued = asyncio.create_task(b.submit(rows(1), 1))
    await until(lambda: b.queue_depth == 1)
    drain = asyncio.create_task(b.drain(timeout_s=30))
    await until(lambda: not b.accepting)
    assert not drain.done() and b.queue_depth == 1
    with pytest.raises(ShuttingDown):
        await b.submit(rows(2), 1)
    rt.gate.set()
    assert await drain
    await asyncio.gather(running, queued)
    await b.close()


async def test_unbatched_runs_each_request_alone() -> None:
    rt = GatedRuntime()
    b = make(rt, max_batch_size=0)
    first = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    rest = [asyncio.create_task(b.submit(rows(i), 1)) for i in range(3)]
    await until(lambda: b.queue_depth == 3)
    rt.gate.set()
    await asyncio.gather(first, *rest)
    assert rt.calls == [1, 1, 1, 1]
    await b.close()


async def test_a_caller_that_gives_up_leaves_the_queue_at_once_and_frees_its_place() -> None:
    rt = GatedRuntime()
    b = make(rt, queue_capacity=2)
    running = asyncio.create_task(b.submit(rows(0), 1))
    await rt.entered.wait()
    gone = asyncio.create_task(b.submit(rows(1), 1))
    stays = asyncio.create_task(b.submit(rows(2), 1))
    await until(lambda: b.queue_depth == 2)
    assert (b.running, b.queue_depth) == (1, 2)
    gone.cancel()
    await until(lambda: b.queue_depth == 1)  # not when the next batch closes: now
    late = asyncio.create_task(b.submit(rows(3), 1))  # the place it freed is free
    await until(lambda: b.queue_depth == 2)
    rt.gate.set()
    await asyncio.gather(running, stays, late)
    assert rt.calls == [1, 2], "the cancelled request never ran"
    assert b.running == 0
    await b.close()


async def test_a_quick_synchronous_runtime_moves_onto_the_loop_thread_after_its_warm_up() -> None:
    """Batches of a model that has proved quick run on the loop's own thread (no hand-off); until then,
    and for a model that is not quick, they run on the runtime's pool."""

    threads: list[int] = []

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return {"y": inputs["x"] * 2, "z": inputs["x"] + 1}

    async def never(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        raise AssertionError("a runtime with a synchronous call is run by the batcher itself")

    loop_thread = threading.get_ident()
    with ThreadPoolExecutor(1) as pool:
        config = BatchingConfig(max_batch_size=8, default_timeout_s=None)
        b = Batcher(never, config, name="quick/1", synchronous=SyncCall(run, pool, inline=True), inline_max_s=1.0)
        b.start()
        for i in range(40):
            out, _ = await b.submit(rows(i), 1)
            np.testing.assert_array_equal(out["y"], [[2 * i]])
        await b.close()
        assert all(t != loop_thread for t in threads[:32]), "the warm-up runs on the pool"
        assert all(t == loop_thread for t in threads[32:]), "then on the loop"

        slow = Batcher(never, config, name="slow/1", synchronous=SyncCall(run, pool, inline=True), inline_max_s=0.0)
        slow.start()
        threads.clear()
        for i in range(40):
            await slow.submit(rows(i), 1)
        await slow.close()
        assert loop_thread not in threads


async def test_a_model_that_stalls_on_the_loop_goes_to_threads_for_good_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A batch that burns 100 times `inline_max_s` of CPU on the loop's thread: the model is never run inline
    again, and the warning names the batcher. (One batch a little slower, or a stray, only costs a warm-up:
    tests/test_batch_policy.py.)"""
    threads: list[int] = []
    loop_thread = threading.get_ident()

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        if threads.count(loop_thread) == 1 and threads[-1] == loop_thread:  # its first batch on the loop
            until = time.thread_time() + 0.25
            while time.thread_time() < until:
                pass
        return {"y": inputs["x"] * 2, "z": inputs["x"] + 1}

    async def never(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        raise AssertionError("a runtime with a synchronous call is run by the batcher itself")

    with ThreadPoolExecutor(1) as pool, caplog.at_level(logging.WARNING, logger="gateway.serving.batcher"):
        config = BatchingConfig(max_batch_size=8, default_timeout_s=None)
        b = Batcher(never, config, name="stalls/3", synchronous=SyncCall(run, pool, inline=True), inline_max_s=0.002)
        b.start()
        for i in range(80):
            await b.submit(rows(i), 1)
        await b.close()
    assert threads.count(loop_thread) == 1, "the stalling batch ran inline, after the warm-up, and nothing after it"
    assert threads[-1] != loop_thread
    assert any("stalls/3" in r.getMessage() and "never on the event loop" in r.getMessage() for r in caplog.records)


async def test_a_failing_batch_run_inline_is_split_and_only_the_poisoned_request_fails() -> None:
    calls: list[list[float]] = []

    def run(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        x = inputs["x"]
        calls.append([float(v) for v in x[:, 0]])
        if np.any(x == 13.0):
            raise ValueError("poisoned row")
        return {"y": x * 2, "z": x + 1}

    async def never(inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None) -> dict[str, np.ndarray]:
        raise AssertionError("unused")

    with ThreadPoolExecutor(1) as pool:
        config = BatchingConfig(max_batch_size=8, default_timeout_s=None)
        b = Batcher(never, config, name="q/1", synchronous=SyncCall(run, pool, inline=True), inline_max_s=1.0)
        b.start()
        for i in range(32):
            await b.submit(rows(100 + i), 1)  # the warm-up: from now on, batches run on the loop's thread
        calls.clear()
        # Submitted in one turn of the loop to an idle batcher: one batch, split in halves until 13 stands alone.
        results = await asyncio.gather(*(b.submit(rows(v), 1) for v in (1.0, 2.0, 13.0, 3.0)), return_exceptions=True)
        await b.close()
    assert calls == [[1.0, 2.0, 13.0, 3.0], [1.0, 2.0], [13.0, 3.0], [13.0], [3.0]], calls
    assert isinstance(results[2], InferenceFailed)
    for value, result in zip((1.0, 2.0, 3.0), (results[0], results[1], results[3]), strict=True):
        assert not isinstance(result, BaseException)
        np.testing.assert_array_equal(result[0]["y"], [[2 * value]])
