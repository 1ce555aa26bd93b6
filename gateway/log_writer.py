"""The prediction log's database writes, in a process of their own.

The serving process is bound by one thread, the one that holds the GIL: its event loop. Every
microsecond of Python the log's writer thread runs comes out of that budget, and the database's
share of a logged record (binding parameters, building the statement, SQLAlchemy's connection
handling, the driver) is most of it. So `ProcessPredictionSink` keeps only the encoding in the
serving process (`PredictionLog` turns its queue into `PredictionRow`s: raw tensor bytes and plain
values, about 1.5 µs a record), pickles the batch (about 0.2 µs a record) and hands it over a pipe
to a child process that owns its own `Store` and does the rest on another core. The writer thread in
the serving process waits for the child's answer with the GIL released, so `PredictionLog`'s
guarantees hold unchanged: one batch in flight, a failed batch counted as failed, `flush` and
`close` wait for what was written.

The child is a fresh interpreter (`python -m gateway.log_writer`), never a fork (the serving process
has threads a fork would copy mid-lock), and not multiprocessing's spawn either, which re-runs the
parent's main module. It talks length-prefixed frames on its stdin and stdout; the database URL
comes (with the store's extra driver arguments) as the first frame, never in argv or the
environment: it may hold a password. It ignores SIGINT and SIGTERM and runs in a session of its own
(the gateway flushes the log on shutdown, then closes the pipe), and it exits when the pipe closes,
so a gateway killed outright does not leave it behind. A child that dies or stops answering loses
the batch it held; the next batch starts a new one.

Only `write_prediction_rows` crosses; the rest of the sink (labels, pruning, reads) is rare and runs
on the serving process's own store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

from gateway.store import Store
from monitors.records import Label, LabeledPrediction, LabelResult, PredictionRow

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
"""How long a new child may take to import the store and open the database."""


class WriterProcessError(RuntimeError):
    """The writer process failed a batch, died, or did not answer in time."""


class ProcessPredictionSink:
    """A `monitors.records.PredictionSink` whose prediction writes run in a child process.

    Thread-safe; `write_prediction_rows` blocks its caller (the log's writer thread) until the child has
    committed the batch or failed it.
    """

    def __init__(self, store: Store, *, write_timeout_s: float = 120.0) -> None:
        """`store`: the serving process's store; the child opens its own on the same database.
        `write_timeout_s`: how long one batch may take before the child is taken to be hung."""
        self.store = store
        self.write_timeout_s = write_timeout_s
        self._opening = pickle.dumps((store.connect_url, store.connect_args))
        """The child's first frame: how to open the same database (may hold a password: never logged)."""
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self.starts = 0
        """Children started so far; each after the first replaced one that died or hung."""

    # -- the writes that cross ----------------------------------------------------------------

    def start(self) -> None:
        """Start the child now (it otherwise starts with the first batch), so the first batch does not
        wait for its imports."""
        with self._lock:
            self._ensure_child()

    def write_prediction_rows(self, rows: Sequence[PredictionRow]) -> None:
        if not rows:
            return
        payload = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            child = self._ensure_child()
            try:
                inbox, outbox = _pipes(child)
                _send(inbox, payload)
                answer = _receive(outbox, self.write_timeout_s)
            except (EOFError, OSError, TimeoutError) as exc:
                self._stop_child(kill=True)
                raise WriterProcessError(f"the log writer process failed: {_describe(exc)}") from exc
        status, detail = pickle.loads(answer)
        if status != "ok":
            raise WriterProcessError(detail)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the child after the batch in flight (call after the log's `close`)."""
        with self._lock:
            self._stop_child(kill=False, timeout_s=timeout_s)

    @property
    def restarts(self) -> int:
        """Children started to replace one that died or hung."""
        return max(0, self.starts - 1)

    @property
    def pid(self) -> int | None:
        """The child's process id, while there is one."""
        child = self._child
        return child.pid if child is not None and child.poll() is None else None

    def _ensure_child(self) -> subprocess.Popen[bytes]:
        child = self._child
        if child is not None and child.poll() is None:
            return child
        if child is not None:
            self._stop_child(kill=True)
        if self.starts:
            log.warning("prediction log: starting a new writer process (restart %d)", self.starts)
        child = subprocess.Popen(
            [sys.executable, "-m", "gateway.log_writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            start_new_session=True,  # no Ctrl-C from the terminal: the gateway stops it after the last flush
        )
        try:
            inbox, outbox = _pipes(child)
            _send(inbox, self._opening)  # on the pipe, not argv or the environment: it may hold a password
            status, detail = pickle.loads(_receive(outbox, START_TIMEOUT_S))
        except (EOFError, OSError, TimeoutError) as exc:
            _end(child, kill=True)
            raise WriterProcessError(f"the log writer process did not start: {_describe(exc)}") from exc
        if status != "ready":
            _end(child, kill=True)
            raise WriterProcessError(f"the log writer process could not open the database: {detail}")
        self._child = child
        self.starts += 1
        return child

    def _stop_child(self, *, kill: bool, timeout_s: float = 5.0) -> None:
        child, self._child = self._child, None
        if child is not None:
            _end(child, kill=kill, timeout_s=timeout_s)

    # -- the rest of the sink, on the serving process's store -----------------------------------

    def prune_predictions(self, *, older_than: datetime | None, keep_rows: int | None) -> int:
        return self.store.prune_predictions(older_than=older_than, keep_rows=keep_rows)

    def write_labels(self, model: str, labels: Sequence[Label]) -> LabelResult:
        return self.store.write_labels(model, labels)

    def labeled_predictions(
        self, model: str, version: str, *, since: datetime | None = None, limit: int = 10_000
    ) -> list[LabeledPrediction]:
        return self.store.labeled_predictions(model, version, since=since, limit=limit)


def _pipes(child: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    """The child's stdin and stdout (always both: it is started with both piped)."""
    assert child.stdin is not None and child.stdout is not None
    return child.stdin, child.stdout


def _end(child: subprocess.Popen[bytes], *, kill: bool, timeout_s: float = 5.0) -> None:
    """Close the pipe (the child's signal to finish and exit), or kill it; then reap it."""
    if kill:
        child.kill()
    for stream in _pipes(child):
        with contextlib.suppress(OSError):
            stream.close()
    try:
        child.wait(timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout_s)


_LENGTH = struct.Struct("<Q")


def _send(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_LENGTH.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def _receive(stream: IO[bytes], timeout_s: float | None) -> bytes:
    """One frame; TimeoutError when none begins within `timeout_s`, EOFError when the pipe closed."""
    if timeout_s is not None:
        ready, _, _ = select.select([stream], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"no answer within {timeout_s:g} s")
    head = _read_exactly(stream, _LENGTH.size)
    return _read_exactly(stream, _LENGTH.unpack(head)[0])


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise EOFError("the pipe closed")
    return data


def main() -> None:
    """The writer process (`python -m gateway.log_writer`): open the store named by the first frame,
    then write each batch that arrives and answer for it, until the pipe closes."""
    inbox = sys.stdin.buffer
    outbox = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the frames
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        url, connect_args = pickle.loads(_receive(inbox, None))
        store = Store(url, connect_args=connect_args)
        store.schema_version()  # connect now: a database that cannot be opened fails the start
    except EOFError:
        return
    except Exception as exc:
        _send(outbox, pickle.dumps(("error", _describe(exc))))
        return
    try:
        _send(outbox, pickle.dumps(("ready", "")))
        while True:
            try:
                payload = _receive(inbox, None)
            except (EOFError, OSError):
                return  # the gateway closed the pipe, or is gone
            answer: tuple[str, Any]
            try:
                rows: list[PredictionRow] = pickle.loads(payload)
                store.write_prediction_rows(rows)
                answer = ("ok", len(rows))
            except Exception as exc:
                answer = ("error", _describe(exc))
            try:
                _send(outbox, pickle.dumps(answer))
            except OSError:
                return
    finally:
        store.close()


def _describe(exc: BaseException) -> str:
    """An error for the serving process's log: the first line only (a driver error's SQL and parameters
    follow on later lines, and the parameters are people's inputs)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


if __name__ == "__main__":
    main()
