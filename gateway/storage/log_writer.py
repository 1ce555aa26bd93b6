"""The prediction log's database writes, in a process of their own.

The serving process is bound by one thread, the one that holds the GIL: its event loop. The
database's share of a logged record (binding parameters, building the statement, SQLAlchemy's
connection handling, the driver) is most of the log's cost, and any second Python thread costs
the loop more than its own work: GIL hand-offs, and a loop that waits while another thread runs.
So the serving process only queues each record (a request of a runtime batch as a small tuple on
the batch's entry, `monitors.log_batches`; any other as a `PredictionRow`, its tensors encoded) and
pickles each batch (a batch entry's arrays as their raw buffers), on the event loop, `HANDOVER_ITEMS`
entries at a time with a turn of the loop between, and
`ProcessRowWriter` hands it over a pipe to a child process that owns its own `Store` and does the
rest on another core: the database (a runtime batch's requests go in as one row,
`gateway.storage.prediction_batches`). The loop awaits the child's answer like any other I/O, so
`PredictionLog`'s guarantees hold unchanged: one batch in flight, a failed batch counted as failed,
`flush` and `close` wait for what was written.

The child is a fresh interpreter running this module's `main` (imported from where the serving process imported
it, `_CHILD_MAIN`), never a fork (the serving process
has threads a fork would copy mid-lock), and not multiprocessing's spawn either, which re-runs the
parent's main module. It talks length-prefixed frames on its stdin and stdout; the database URL
comes (with the store's extra driver arguments) as the first frame, never in argv or the
environment: it may hold a password. It ignores SIGINT and SIGTERM and runs in a session of its own
(the gateway flushes the log on shutdown, then closes the pipe), and it exits when the pipe closes,
so a gateway killed outright does not leave it behind. A child that dies or stops answering loses
the batch it held; the next batch starts a new one. A database the child cannot reach or write (or
open, when it starts) is not the batch's fault: that answer is `WriterUnavailable`, a `SinkUnavailable`,
and the log holds the batch, probes the database (`probe`: a `SELECT 1` from the child, no batch on the
pipe) until it answers, and tries again. Nor is a child that dies before it is ready (a broken install,
the OOM killer): that too is `WriterUnavailable`, and the next start waits `START_AGAIN_S`, doubling while
starts keep failing (up to `START_AGAIN_MAX_S`), instead of a new interpreter for every batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import logging
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from gateway.storage.store import Store
from monitors.log_batches import BatchEntry, BatchFrame
from monitors.prediction_log import batch_frame
from monitors.records import PredictionRow, SinkUnavailable

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
"""How long a new child may take to import the store and open the database."""
START_AGAIN_S = 2.0
"""After a child could not open an unreachable database, or died before it was ready, how long before
another is started: the log probes every fraction of a second while the database is away, and a child's
start costs a core for half a second."""
START_AGAIN_MAX_S = 30.0
"""The longest pause between starts of children that keep dying before they are ready (the pause doubles
with each): whatever kills them (a broken install, the OOM killer, no file descriptors left) is not
cured by the next batch."""
HANDOVER_ITEMS = 64
"""Items of a batch packed and pickled between two turns of the event loop. At one connection every runtime
batch is one request's and a log batch 500 of them: packed and pickled at once, they held the loop for 1.1 ms
(2.2 µs an entry) every 500 requests, and the requests that came meanwhile waited (one connection's p99 1.75
against 1.47 ms in pieces of 64, side by side, for no req/s that the run could tell; loadtests/README, tenth
session). Under load a runtime batch holds many requests, and a log batch fits in one piece."""
WRITE_PIECE_ITEMS = 16
"""Items of a batch the child writes before it gives its CPU away (`give_way`), about 0.25 ms of work at one
connection. A perf trace of one connection (`perf sched`, the writer's pieces of 64 at 6af4e9f) showed why the
writer's bursts cost the requests so much on a 2-core box: the gateway wakes the client (or a packet wakes the
gateway) onto the CPU the writer is running on while the other CPU goes idle, and the woken task waits in that
CPU's queue for the writer's whole burst, 1.0-1.8 ms, however low the writer's priority (nice and `SCHED_IDLE`
alike: this kernel placed the woken task beside the idle-policy writer and did not preempt it). One yield every
16 items hands the CPU over within a quarter of a millisecond and costs nothing when no task waits: one
connection's p99 0.83-0.90 against 1.32-1.53 ms, p98 0.56-0.61 against 1.00-1.17, side by side with 6af4e9f
three times each (loadtests/README, twentieth session). Earlier (6e914c0) a piece was a transaction of 64 with a
0.5 ms sleep between, which halved the p99 of a batch written at once; pieces as small as 16 as transactions of
their own doubled the child's CPU (each commit writes its pages to the WAL, about 0.45 ms), so the pieces now share
a transaction (`WRITE_TRANSACTION_ITEMS`)."""
WRITE_TRANSACTION_ITEMS = 128
"""Items of a batch committed in one transaction. A commit writes every page the transaction changed to the WAL:
per item it costs less the more items share it, but it is one burst (about 0.4 ms at 128 one-request items) and
holds the database's write lock (a second worker's writer waits for it). Under load a log batch is a few runtime
batches, one transaction and one piece."""
PROBE = "probe"
"""The frame that asks the child for a round trip to the database instead of a batch."""


class WriterProcessError(RuntimeError):
    """The writer process failed a batch, died, or did not answer in time."""


class WriterUnavailable(WriterProcessError, SinkUnavailable):
    """The writer process cannot reach or write the database now: the batch can be tried again."""


class ProcessRowWriter:
    """Hands encoded batches (`PredictionRow`s) to a writer process, from the event loop itself.

    No thread of the serving process takes part: the batch is pickled on the loop, written to the
    child's stdin and its answer read from its stdout through asyncio's pipe transports. (A writer
    thread doing the same Python work cost the loop far more than the work itself: on a 16-core
    machine, with no CPU to compete for, logging with a writer thread cost 10% of req/s, the loop
    waiting for the GIL 3-4% of the time and spending 5-9% more CPU per request.)
    """

    def __init__(self, store: Store, *, write_timeout_s: float = 120.0, start_again_s: float = START_AGAIN_S) -> None:
        """`store`: the serving process's store; the child opens its own on the same database.
        `write_timeout_s`: how long one batch may take before the child is taken to be hung.
        `start_again_s`: the pause before another start after one that failed (`START_AGAIN_S`)."""
        self.write_timeout_s = write_timeout_s
        self.start_again_s = start_again_s
        self._opening = pickle.dumps((store.connect_url, store.connect_args))
        """The child's first frame: how to open the same database (may hold a password: never logged)."""
        self._child: asyncio.subprocess.Process | None = None
        self._lock: asyncio.Lock | None = None
        self.starts = 0
        """Children started so far; each after the first replaced one that died or hung."""
        self.failed_starts = 0
        """Children that died or hung before they were ready, one after the other (0 again after a start)."""
        self._no_start_until = 0.0
        self._no_start_why = ""
        self._no_start_error: type[WriterProcessError] = WriterUnavailable

    @property
    def restarts(self) -> int:
        """Children started to replace one that died or hung."""
        return max(0, self.starts - 1)

    @property
    def pid(self) -> int | None:
        """The child's process id, while it runs."""
        child = self._child
        return child.pid if child is not None and child.returncode is None else None

    async def start(self) -> None:
        """Start the child now (it otherwise starts with the first batch), so the first batch does not
        wait for its imports."""
        async with self._locked():
            await self._ensure_child()

    async def write(self, items: Sequence[PredictionRow | BatchEntry | BatchFrame]) -> None:
        """Send one batch (rows, and runtime batches for the child to expand) and wait for the child to
        commit it; WriterProcessError if it cannot. The batch entries are packed (`batch_frame`) and
        pickled `HANDOVER_ITEMS` at a time, the event loop serving requests in between."""
        if not items:
            return
        await self._ask(*await pickled_in_turns(items))

    async def probe(self) -> None:
        """A round trip from the child to the database (`SELECT 1`): `WriterUnavailable` while it cannot be
        reached. Cheap: no batch crosses the pipe."""
        await self._ask(_PROBE_FRAME)

    async def _ask(self, *payload: bytes) -> None:
        async with self._locked():
            child = await self._ensure_child()
            try:
                answer = await asyncio.wait_for(_exchange(child, *payload), self.write_timeout_s)
            except (EOFError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                await self._stop_child(kill=True)
                raise WriterProcessError(f"the log writer process failed: {_describe(exc)}") from exc
        status, detail = pickle.loads(answer)
        if status == "unavailable":
            raise WriterUnavailable(detail)
        if status != "ok":
            raise WriterProcessError(detail)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child after the batch in flight (call after the log's `close`)."""
        async with self._locked():
            await self._stop_child(kill=False, timeout_s=timeout_s)

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:  # made on the loop that uses it
            self._lock = asyncio.Lock()
        return self._lock

    async def _ensure_child(self) -> asyncio.subprocess.Process:
        child = self._child
        if child is not None and child.returncode is None:
            return child
        if child is not None:
            await self._stop_child(kill=True)
        if time.monotonic() < self._no_start_until:
            raise self._no_start_error(self._no_start_why)
        if self.starts:
            log.warning("prediction log: starting a new writer process (restart %d)", self.starts)
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _CHILD_MAIN,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                close_fds=True,
                start_new_session=True,  # no Ctrl-C from the terminal: the gateway stops it after the last flush
                env={**os.environ, **_ONE_THREAD},
            )
        except OSError as exc:  # no file descriptors or memory left, or no interpreter
            raise self._failed_start(
                f"the log writer process could not be started: {_describe(exc)}", WriterUnavailable
            ) from exc
        _widen_pipe(child)
        try:
            # On the pipe, not argv or the environment: the URL may hold a password.
            answer = await asyncio.wait_for(_exchange(child, self._opening), START_TIMEOUT_S)
            status, detail = pickle.loads(answer)
        except (EOFError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            await _end(child, kill=True)
            # Not the batch's fault, and not cured by the next one: held like a database that is away.
            why = f"the log writer process did not start ({_exit_status(child.returncode)}): {_describe(exc)}"
            raise self._failed_start(why, WriterUnavailable) from exc
        if status != "ready":
            await _end(child, kill=True)
            why = f"the log writer process could not open the database: {detail}"
            if status == "unavailable":  # the log probes until it answers: no longer pause than usual
                raise self._pause_starts(why, WriterUnavailable, self.start_again_s)
            raise self._failed_start(why, WriterProcessError)
        self._child = child
        self.starts += 1
        self.failed_starts = 0
        return child

    def _failed_start(self, why: str, error: type[WriterProcessError]) -> WriterProcessError:
        """The error for a start that failed, and a pause before the next, doubling while starts keep failing."""
        self.failed_starts += 1
        pause = min(START_AGAIN_MAX_S, self.start_again_s * 2 ** (self.failed_starts - 1))
        log.error("prediction log: %s; the next start in %.1f s", why, pause)
        return self._pause_starts(why, error, pause)

    def _pause_starts(self, why: str, error: type[WriterProcessError], pause_s: float) -> WriterProcessError:
        """No start for `pause_s`: until then a write fails at once with `error(why)`, as the start did."""
        self._no_start_until, self._no_start_why, self._no_start_error = time.monotonic() + pause_s, why, error
        return error(why)

    async def _stop_child(self, *, kill: bool, timeout_s: float = 5.0) -> None:
        child, self._child = self._child, None
        if child is not None:
            await _end(child, kill=kill, timeout_s=timeout_s)


_PACKAGES = str(Path(__file__).resolve().parents[2])
"""The folder the serving process imported `gateway` from."""
_CHILD_MAIN = (
    f"import sys; r = {_PACKAGES!r}; del sys.path[0]; r in sys.path or sys.path.insert(0, r); "
    "from gateway.storage.log_writer import main; main()"
)
"""The child's program: this module's `main`, imported from where the serving process imported it. `python -m`
would put the working directory first on the child's path, and a `gateway` folder there (another checkout, a
benchmark run from an older one) would have the child run other code than the gateway's."""

_ONE_THREAD = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""The child does no arithmetic, but it imports numpy, whose BLAS would start a thread pool that
spins on a core for its first ~60 ms (and a thread per core for nothing after)."""


PIPE_BYTES = 1 << 20
"""Pipe buffer asked for (Linux F_SETPIPE_SZ; 1 MiB is the default cap for unprivileged users): a batch
of 500 reference records is ~140 KB, which through the default 64 KiB buffer takes several writes, each
a wake-up of the loop and of the child."""


def _widen_pipe(child: asyncio.subprocess.Process) -> None:
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    transport = getattr(child.stdin, "transport", None)
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if setsize is None or pipe is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fcntl.fcntl(pipe.fileno(), setsize, PIPE_BYTES)


async def _exchange(child: asyncio.subprocess.Process, *payload: bytes) -> bytes:
    """Write one frame (its bytes in one or more pieces, not joined first) to the child and read its one-frame
    answer."""
    assert child.stdin is not None and child.stdout is not None
    child.stdin.writelines([_LENGTH.pack(sum(map(len, payload))), *payload])
    await child.stdin.drain()
    (size,) = _LENGTH.unpack(await child.stdout.readexactly(_LENGTH.size))
    return await child.stdout.readexactly(size)


async def _end(child: asyncio.subprocess.Process, *, kill: bool, timeout_s: float = 5.0) -> None:
    """Close the pipe (the child's signal to finish and exit), or kill it; then reap it."""
    if kill and child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    if child.stdin is not None:
        with contextlib.suppress(OSError):
            child.stdin.close()
    try:
        await asyncio.wait_for(child.wait(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await asyncio.wait_for(child.wait(), timeout_s)


_LENGTH = struct.Struct("<Q")
_PROBE_FRAME = pickle.dumps(PROBE)


async def pickled_in_turns(items: Sequence[PredictionRow | BatchEntry | BatchFrame]) -> list[bytes]:
    """The batch as one frame's pieces: a pickle of each `HANDOVER_ITEMS` items, with a turn of the event loop
    after each (`batch_message` reads their concatenation back)."""
    parts: list[bytes] = []
    for start in range(0, len(items), HANDOVER_ITEMS):
        if start:
            await asyncio.sleep(0)
        chunk = [batch_frame(i) if isinstance(i, BatchEntry) else i for i in items[start : start + HANDOVER_ITEMS]]
        parts.append(pickle.dumps(chunk, protocol=pickle.HIGHEST_PROTOCOL))
    return parts


def batch_message(payload: bytes, between: Callable[[], None] | None = None) -> list[PredictionRow | BatchFrame] | str:
    """A frame from the serving process: a batch (the items of every pickle in it, in order) or `PROBE`;
    `between()` is called between two pickles (`HANDOVER_ITEMS` items each, about 0.15 ms to load at one
    connection: the child gives its CPU away there as between pieces it writes)."""
    stream = io.BytesIO(payload)
    first: list[PredictionRow | BatchFrame] | str = pickle.load(stream)
    if isinstance(first, str):
        return first
    while stream.tell() < len(payload):
        if between is not None:
            between()
        first.extend(pickle.load(stream))
    return first


def _send(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes]) -> bytes:
    """One frame; EOFError when the pipe closed."""
    head = _read_exactly(stream, _LENGTH.size)
    return _read_exactly(stream, _LENGTH.unpack(head)[0])


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise EOFError("the pipe closed")
    return data


def main() -> None:
    """The writer process (`_CHILD_MAIN`; `python -m gateway.storage.log_writer` by hand): open the store named
    by the first frame, then write each batch that arrives and answer for it, until the pipe closes."""
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the frames
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        url, connect_args = pickle.loads(_receive(inbox))
        store = Store(url, connect_args=connect_args)
        store.schema_version()  # connect now: a database that cannot be opened fails the start
    except EOFError:
        return
    except Exception as exc:
        _send(outbox, pickle.dumps((_status(exc), _describe(exc))))
        return
    try:
        _send(outbox, pickle.dumps(("ready", "")))
        while True:
            try:
                payload = _receive(inbox)
            except (EOFError, OSError):
                return  # the gateway closed the pipe, or is gone
            answer: tuple[str, Any]
            try:
                message = batch_message(payload, give_way)
                if isinstance(message, str):  # PROBE
                    store.ping()
                    answer = ("ok", 0)
                else:
                    answer = ("ok", write_in_pieces(store, message))
            except Exception as exc:
                answer = (_status(exc), _describe(exc))
            try:
                _send(outbox, pickle.dumps(answer))
            except OSError:
                return
    finally:
        store.close()


def give_way() -> None:
    """Let a task waiting for this CPU run now (`WRITE_PIECE_ITEMS`): a system call of a microsecond that returns
    at once when none waits."""
    os.sched_yield()


def write_in_pieces(
    store: Store,
    items: Sequence[PredictionRow | BatchFrame],
    piece: int = WRITE_PIECE_ITEMS,
    transaction: int = WRITE_TRANSACTION_ITEMS,
    between: Callable[[], None] = give_way,
) -> int:
    """Write a batch `transaction` items a transaction and `piece` items at a time, calling `between()` after each
    piece but the last (`WRITE_PIECE_ITEMS`); the requests stored. A failure part-way leaves the transactions
    before it committed: the log sends the batch again or counts it failed, and a batch sent again stores only
    what is not there yet (a stored request's key is not stored twice)."""
    stored = 0
    for start in range(0, len(items), transaction):
        if start:
            between()
        stored += store.write_log_items(items[start : start + transaction], piece=piece, between=between)
    return stored


def _exit_status(code: int | None) -> str:
    if code is None:
        return "still running, killed"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _status(exc: BaseException) -> str:
    """The answer for a failed batch: "unavailable" when the database may take it later, else "error"."""
    return "unavailable" if isinstance(exc, SinkUnavailable) else "error"


def _describe(exc: BaseException) -> str:
    """An error for the serving process's log: the first line only (a driver error's SQL and parameters
    follow on later lines, and the parameters are people's inputs)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


if __name__ == "__main__":
    main()
