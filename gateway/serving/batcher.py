"""Dynamic batching for one served version, driven by events rather than polling.

Callers `submit` named arrays and await their own rows back. One loop task closes batches
by `batch_policy.decide`, concatenates inputs on dim 0, runs the runtime once and splits
the outputs. The guarantees that matter:

- a full queue refuses at once (`Overloaded`) instead of growing without bound;
- a request that is already late, or whose caller went away, is dropped before it runs;
- a result is set only on a future that is still waiting (a timeout never poisons a batch);
- a failing batch is split in halves and retried until the failing request is isolated, so
  one bad request never fails its batch-mates.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gateway.errors import DeadlineExceeded, InferenceFailed, ModelNotReady, Overloaded, ShuttingDown
from gateway.serving.batch_policy import BatchingConfig, InlineGate, decide, fits
from gateway.tasks import cancel_and_wait
from monitors.log_batches import BatchTensors
from runtimes.base import RuntimeTimeout, RuntimeUnavailable, SyncCall

log = logging.getLogger(__name__)

_COMPACT_MIN = 1024
"""Requests waiting for the shared timer (`Batcher._expiring`) beyond which the answered ones are let go of, even
behind an unanswered one."""

Arrays = Mapping[str, np.ndarray]
RunBatch = Callable[[Arrays, Sequence[str] | None], Awaitable[dict[str, np.ndarray]]]


class BatchObserver(Protocol):
    """Where the batcher reports what it does (metrics, traces); must not raise."""

    def batch_done(
        self, rows: int, requests: int, compute_s: float, ok: bool, phases_ns: tuple[int, int, int] | None = None
    ) -> None:
        """`phases_ns` (a successful batch): its time gathering the inputs, in the runtime, splitting the outputs."""

    def batch_span(self, members: Sequence[Any], rows: int) -> Any: ...


@dataclass(slots=True)
class Timing:
    """When this request was queued, and when its batch was gathered, started, finished and split (time.time_ns)."""

    enqueued_ns: int
    gathered_ns: int = 0
    """Its batch was taken from the queue: the inputs' concatenation starts."""
    started_ns: int = 0
    finished_ns: int = 0
    split_ns: int = 0
    """The batch's outputs were split back to its requests."""
    batch_rows: int = 0
    batch_requests: int = 0
    tensors: BatchTensors | None = None
    """Its batch's inputs and outputs (a successful batch): the prediction log keeps them once for the batch."""
    start: int = 0
    """Its rows in `tensors`: start:stop."""
    stop: int = 0


@dataclass(slots=True, eq=False)
class _Item:
    inputs: Arrays
    rows: int
    outputs: Sequence[str] | None
    future: asyncio.Future[dict[str, np.ndarray]]
    arrival: float
    deadline: float | None
    timing: Timing
    trace_context: Any = None
    timer: asyncio.TimerHandle | None = field(default=None)


class Batcher:
    def __init__(
        self,
        run: RunBatch,
        config: BatchingConfig,
        *,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
        synchronous: SyncCall | None = None,
        inline_max_s: float = 0.0,
    ) -> None:
        """`synchronous`: the runtime's blocking call; the batcher then runs each batch itself, on the
        runtime's thread pool or, when the `InlineGate` (`inline_max_s`) finds the model quick enough, on
        the loop's own thread. None: every batch goes through `run`."""
        self._run = run
        self._sync = synchronous
        self._gate = InlineGate(inline_max_s if synchronous is not None and synchronous.inline else 0.0)
        self.config = config
        self._observer = observer
        self._clock = clock
        self._name = name
        self._queue: collections.deque[_Item] = collections.deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._running = 0
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()
        self._expiring: collections.deque[_Item] = collections.deque()
        """Requests with the default timeout, in the order they came: their deadlines come in the same order."""
        self._expiry: asyncio.TimerHandle | None = None
        """The one timer for `_expiring`: set for its oldest request's deadline."""
        self._compact_at = _COMPACT_MIN

    # -- public interface -------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher:{self._name}")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queue (a shadow's copies are dropped while a full batch of them waits)."""
        return self._queued_rows

    @property
    def in_flight(self) -> int:
        """Batches running now."""
        return self._in_flight

    @property
    def running(self) -> int:
        """Requests in the batches running now (read by the metrics sampler, not on the hot path)."""
        return self._running

    @property
    def accepting(self) -> bool:
        """False once draining or closed: `submit` refuses with ShuttingDown."""
        return not self._closing

    async def submit(
        self,
        inputs: Arrays,
        rows: int,
        outputs: Sequence[str] | None = None,
        timeout_s: float | None = None,
        trace_context: Any = None,
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """Queue one request and wait for its rows of the batch's outputs."""
        if self._closing:
            raise ShuttingDown(f"{self._name}: draining, not accepting new requests")
        if len(self._queue) >= self.config.queue_capacity:
            raise Overloaded(f"{self._name}: queue is full ({self.config.queue_capacity} requests)")
        loop = asyncio.get_running_loop()
        now = self._clock()
        timeout = timeout_s if timeout_s is not None else self.config.default_timeout_s
        item = _Item(
            inputs=inputs,
            rows=rows,
            outputs=outputs,
            future=loop.create_future(),
            arrival=now,
            deadline=None if timeout is None else now + timeout,
            timing=Timing(enqueued_ns=time.time_ns()),
            trace_context=trace_context,
        )
        if timeout is not None:
            if timeout == self.config.default_timeout_s:
                self._expire_with_the_others(item, loop)
            else:
                item.timer = loop.call_later(timeout, _expire, item.future, timeout)
        self._idle.clear()
        if not self._queue and self._in_flight == 0 and self.config.greedy and self._task is not None:
            # What the loop would decide (an idle runtime runs what is queued at once), without waking it. The
            # requests that reach the batcher in the rest of this turn of the event loop join this one's batch
            # when its task first runs (`gather`) instead of waiting for a batch of one to finish.
            self._start_batch([item], gather=True)
        else:
            self._queue.append(item)
            self._queued_rows += rows
            self._wakeup.set()
        try:
            outputs_of_item = await item.future
        except BaseException:
            self._forget(item)  # a caller that gave up (cancelled, timed out) leaves the queue at once
            raise
        finally:
            if item.timer is not None:
                item.timer.cancel()
        return outputs_of_item, item.timing

    def _expire_with_the_others(self, item: _Item, loop: asyncio.AbstractEventLoop) -> None:
        """Queue a request with the default timeout for the shared timer: a timer a request (`call_later`, then its
        cancel) made `submit` cost 5.2 instead of 4.7 µs of the event loop's CPU a request (64 at a time, on uvloop,
        measured). Requests answered at the head are let go on the way, so the line holds about the requests in
        flight."""
        expiring = self._expiring
        while expiring and expiring[0].future.done():
            expiring.popleft()
        if len(expiring) >= self._compact_at:  # a request that runs long at the head: let go of those answered since
            expiring = self._expiring = collections.deque(i for i in expiring if not i.future.done())
            self._compact_at = max(_COMPACT_MIN, 2 * len(expiring))
        expiring.append(item)
        if self._expiry is None:
            self._expiry = loop.call_later(self.config.default_timeout_s or 0.0, self._expire_due)

    def _expire_due(self) -> None:
        """Fail every request of `_expiring` past its deadline (queued or running, as its own timer would), then
        set the timer again for the oldest one left."""
        self._expiry = None
        expiring = self._expiring
        timeout = self.config.default_timeout_s or 0.0
        now = self._clock()
        while expiring:
            head = expiring[0]
            if not head.future.done():
                if head.deadline is not None and head.deadline > now:
                    self._expiry = asyncio.get_running_loop().call_later(head.deadline - now, self._expire_due)
                    return
                _expire(head.future, timeout)
            expiring.popleft()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests, let queued and running ones finish; True if all did in time."""
        self._closing = True
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False

    def fail_queued(self, exc: Exception) -> int:
        """Refuse every queued request with `exc` (the version stopped answering); how many were refused."""
        refused = 0
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                refused += 1
            _fail(item, exc)
        self._queued_rows = 0
        self._check_idle()
        return refused

    async def close(self) -> None:
        """Stop the loop; anything still queued fails with ShuttingDown."""
        self._closing = True
        await cancel_and_wait(self._task)
        self._task = None
        while self._queue:
            item = self._queue.popleft()
            _fail(item, ShuttingDown(f"{self._name}: closed before this request ran"))
        self._queued_rows = 0
        if self._expiry is not None and all(i.future.done() for i in self._expiring):
            self._expiry.cancel()  # else it still fails a running request at its deadline
            self._expiry = None
            self._expiring.clear()

    # -- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug here must not strand every queued caller until its timeout.
                log.exception("%s: batcher loop error; failing the queued requests", self._name)
                while self._queue:
                    item = self._queue.popleft()
                    _fail(item, InferenceFailed(f"{self._name}: internal batching error"))
                self._queued_rows = 0
                self._check_idle()

    async def _step(self) -> None:
        """Close one batch, or wait for the event (or time) that may let one close."""
        self._drop_dead_head()
        first = self._queue[0].arrival if self._queue else None
        decision = decide(
            queued_rows=self._queued_rows,
            first_arrival=first,
            now=self._clock(),
            in_flight=self._in_flight,
            config=self.config,
        )
        if decision.close:
            batch = self._take()
            if batch:
                self._start_batch(batch)
            return
        self._wakeup.clear()
        if decision.wait_s is None:
            await self._wakeup.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), decision.wait_s)

    def _drop_dead_head(self) -> None:
        """Remove requests whose caller gave up (cancelled or timed out) from the queue's head."""
        now = self._clock()
        while self._queue:
            head = self._queue[0]
            if head.future.done():
                pass
            elif head.deadline is not None and head.deadline <= now:
                _fail(head, DeadlineExceeded("request timed out while queued"))
            else:
                return
            self._queue.popleft()
            self._queued_rows -= head.rows
        self._check_idle()

    def _forget(self, item: _Item) -> None:
        """Take a request its caller gave up on out of the queue (it may already be running: then nothing)."""
        try:
            self._queue.remove(item)
        except ValueError:
            return
        self._queued_rows -= item.rows
        self._check_idle()

    def _take(self, taken: Sequence[_Item] = ()) -> list[_Item]:
        """The queued requests that join a batch holding `taken` (none: a new batch), in order, as many as fit."""
        now = self._clock()
        live: list[_Item] = []
        rows = sum(item.rows for item in taken)
        count = len(taken)
        limit = self.config.max_batch_size
        # Skip requests that died while queued, then take as many as fit.
        while self._queue:
            item = self._queue[0]
            if item.future.done() or (item.deadline is not None and item.deadline <= now):
                self._queue.popleft()
                self._queued_rows -= item.rows
                if not item.future.done():
                    _fail(item, DeadlineExceeded("request timed out while queued"))
                continue
            if not fits(rows, count + len(live), item.rows, limit):
                break
            self._queue.popleft()
            self._queued_rows -= item.rows
            live.append(item)
            rows += item.rows
        return live

    async def _call(self, inputs: Arrays, wanted: Sequence[str] | None) -> dict[str, np.ndarray]:
        """One runtime call: inline, on a runtime thread, or through the runtime's own `infer`. Timed in the
        CPU time of the thread that runs it (see `_timed`)."""
        sync = self._sync
        if sync is None:
            return await self._run(inputs, wanted)
        if self._gate.inline:
            started = time.thread_time()
            try:
                return sync.run(inputs, wanted)
            finally:
                self._observe_run(time.thread_time() - started)
        outputs, took = await asyncio.get_running_loop().run_in_executor(
            sync.executor, _timed, sync.run, inputs, wanted
        )
        self._observe_run(took)
        return outputs

    def _observe_run(self, took_s: float) -> None:
        if self._gate.observe(took_s):
            log.warning(
                "batcher %s: a batch took %.1f ms of CPU, and the model stalls (one batch over %g times "
                "runtime.inline_max_ms, or %d over %g times within %d batches): its batches run on runtime threads "
                "from now on, never on the event loop",
                self._name,
                took_s * 1000.0,
                self._gate.stall,
                self._gate.strays,
                self._gate.stray,
                self._gate.stray_window,
            )

    def _start_batch(self, items: list[_Item], gather: bool = False) -> None:
        """Run a batch in a task of its own; `gather`: with what fits of the queue when the task first runs."""
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._run_batch(items, gather))
        self._batch_tasks.add(task)
        task.add_done_callback(self._batch_tasks.discard)

    async def _run_batch(self, items: list[_Item], gather: bool = False) -> None:
        if gather and self._queue:
            items += self._take(items)
        self._running += len(items)
        try:
            await self._run_isolating(items)
        finally:
            self._running -= len(items)
            self._in_flight -= 1
            self._check_idle()
            self._wakeup.set()

    async def _run_isolating(self, items: list[_Item]) -> None:
        """Run the batch; on failure split it in halves until each failing request stands alone."""
        items = [i for i in items if not i.future.done()]
        if not items:
            return
        try:
            await self._run_once(items)
        except RuntimeUnavailable as exc:
            # The runtime's process is gone: no half would fare better.
            for item in items:
                _fail(item, ModelNotReady(f"{self._name}: {exc}"))
        except RuntimeTimeout as exc:
            # Slowness is not any one request's fault: retrying halves would only multiply the wait.
            for item in items:
                _fail(item, DeadlineExceeded(f"{self._name}: {exc}"))
        except Exception as exc:
            if len(items) == 1:
                _fail(items[0], InferenceFailed(f"{self._name}: {exc}"))
                return
            mid = len(items) // 2
            log.info("%s: batch of %d failed (%s); splitting to isolate", self._name, len(items), exc)
            await self._run_isolating(items[:mid])
            await self._run_isolating(items[mid:])

    async def _run_once(self, items: list[_Item]) -> None:
        total_rows = sum(i.rows for i in items)
        wanted = _union_outputs(items)
        gathered_ns = time.time_ns()
        if len(items) == 1:
            inputs: Arrays = items[0].inputs
        else:
            names = items[0].inputs.keys()
            inputs = {n: np.concatenate([i.inputs[n] for i in items], axis=0) for n in names}
        started_ns = time.time_ns()
        started = time.perf_counter()
        span = self._observer.batch_span([i.trace_context for i in items], total_rows) if self._observer else None
        ok = False
        compute_s = 0.0
        try:
            outputs = await self._call(inputs, wanted)
            if len(items) > 1:
                for name, array in outputs.items():
                    if array.ndim == 0 or array.shape[0] != total_rows:
                        raise InferenceFailed(
                            f"output '{name}' has {array.shape[0] if array.ndim else 0} rows "
                            f"for a batch of {total_rows}"
                        )
            ok = True
        finally:
            compute_s = time.perf_counter() - started
            if span is not None:
                span.end()
            if not ok and self._observer is not None:
                self._observer.batch_done(total_rows, len(items), compute_s, False)
        finished_ns = time.time_ns()
        offset = 0
        answers: list[dict[str, np.ndarray]] = []
        for item in items:
            if len(items) == 1:
                mine = outputs
            else:
                end = offset + item.rows
                mine = {name: array[offset:end] for name, array in outputs.items()}
                offset = end
            if item.outputs is not None:
                mine = {name: mine[name] for name in item.outputs}
            answers.append(mine)
        split_ns = time.time_ns()
        tensors = BatchTensors(inputs, outputs, total_rows, len(items) == 1)
        if self._observer is not None:
            phases = (started_ns - gathered_ns, finished_ns - started_ns, split_ns - finished_ns)
            self._observer.batch_done(total_rows, len(items), compute_s, True, phases)
        offset = 0
        for item, mine in zip(items, answers, strict=True):
            timing = item.timing
            timing.tensors = tensors
            timing.start = offset
            offset = timing.stop = offset + item.rows
            timing.gathered_ns = gathered_ns
            timing.started_ns = started_ns
            timing.finished_ns = finished_ns
            timing.split_ns = split_ns
            timing.batch_rows = total_rows
            timing.batch_requests = len(items)
            if not item.future.done():
                item.future.set_result(mine)

    def _check_idle(self) -> None:
        if not self._queue and self._in_flight == 0:
            self._idle.set()


def _timed(
    run: Callable[[Arrays, Sequence[str] | None], dict[str, np.ndarray]], inputs: Arrays, wanted: Sequence[str] | None
) -> tuple[dict[str, np.ndarray], float]:
    """Run on a runtime thread; the thread's CPU time, not wall time: getting the GIL back after the call
    can take milliseconds when the loop is busy, and a preempted thread waits too, and neither says anything
    about the model (`SyncCall.inline` is only set where the call's time is this thread's CPU time)."""
    started = time.thread_time()
    return run(inputs, wanted), time.thread_time() - started


def _union_outputs(items: list[_Item]) -> Sequence[str] | None:
    wanted: dict[str, None] = {}
    for item in items:
        if item.outputs is None:
            return None
        wanted.update(dict.fromkeys(item.outputs))
    return list(wanted)


def _fail(item: _Item, exc: Exception) -> None:
    if not item.future.done():
        item.future.set_exception(exc)


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded(f"request timed out after {timeout * 1000:.0f} ms"))
