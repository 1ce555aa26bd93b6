"""A runtime process: the one process on a device that holds the sessions of every version placed there.

Started by the supervisor (`gateway.serving.device_hosts`) before the workers load their models; every worker
connects to its unix socket and sends whole batches (`gateway.serving.device_runtime`). A version is loaded
here once, through the same `load_runtime` as every placement, when the first worker asks for it, and closed
when the last worker that holds it lets it go (or goes away). With `runtime.instances: N` it is loaded N times
into a `RuntimePool`, and its one batcher runs up to N batches at once, each on a session of its own. On a GPU
the sessions are placed on this process's CUDA ordinal (`cuda:1` is `device_id` 1).

Each version runs behind its own `Batcher`, the same code as in a worker and in a Ray version replica: the
batches of several workers that arrive together become one runtime call up to `max_batch_size`, and a failing
call is split until the failing worker batch stands alone, so it never fails another worker's rows.

A version with a watchdog gets one here too, so a hung call is stopped in this process where the session runs
(ONNX Runtime's terminate flag); a call that does not come back even then makes the process exit, and the
supervisor starts a fresh one (`_StuckCalls`). The process ignores SIGINT (the supervisor drains the workers
first, then stops it with SIGTERM).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import DeadlineExceeded, Overloaded, ShuttingDown
from gateway.observability.metrics import DeviceMetrics
from gateway.serving.batcher import Batcher
from gateway.serving.placement import ordinal_of
from gateway.serving.registry import version_batcher
from gateway.serving.repository import ModelSource, VersionSource
from gateway.serving.runtime_loader import load_runtime
from gateway.serving.shm_transport import Layout, Segment, frame, needed_bytes, read_message
from gateway.serving.watchdog import RuntimeWatchdog
from runtimes.base import ModelRuntime
from runtimes.onnx import TERMINATE_GRACE_S
from runtimes.pool import RuntimePool

log = logging.getLogger(__name__)

STUCK_AFTER_GRACE_S = 3.0
"""A watched call still running this long after its limit and ONNX Runtime's terminate grace: the process exits."""
_NEVER = 10**9


class _StuckCalls(ThreadPoolExecutor):
    """A version's runtime threads, watched: `stuck()` says whether a call has outlived any chance of stopping."""

    def __init__(self, limit_s: float | None, instances: int = 1) -> None:
        super().__init__(max_workers=max(instances, len(os.sched_getaffinity(0))), thread_name_prefix="rt")
        self.limit_s = limit_s
        self._started: dict[int, float] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        key = next(self._ids)

        def tracked() -> Any:
            with self._lock:
                self._started[key] = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self._started.pop(key, None)

        return super().submit(tracked)

    def stuck(self, now: float) -> bool:
        if self.limit_s is None:
            return False
        with self._lock:
            oldest = min(self._started.values(), default=now)
        return now - oldest > self.limit_s + TERMINATE_GRACE_S + STUCK_AFTER_GRACE_S


class _Observer:
    """The batcher's report of each runtime call, as this device's metrics; `members` are the workers' ids."""

    def __init__(self, metrics: DeviceMetrics, model: str, version: str) -> None:
        labels = (metrics.device, model, version)
        self._size = metrics.batch_size.labels(*labels)
        self._workers = metrics.batch_workers.labels(*labels)
        self._compute = metrics.compute.labels(*labels)
        self.queue_wait = metrics.queue_wait.labels(*labels)
        self.labels = labels
        self._gauges = (metrics.instances, metrics.running)

    def publish(self, instances: int, running: int = 0) -> None:
        self._gauges[0].labels(*self.labels).set(instances)
        self._gauges[1].labels(*self.labels).set(running)

    def close(self) -> None:
        """The version left this process: its gauges go (the histograms keep their counts)."""
        for gauge in self._gauges:
            with contextlib.suppress(KeyError):
                gauge.remove(*self.labels)

    def batch_done(
        self, rows: int, requests: int, compute_s: float, ok: bool, phases_ns: tuple[int, int, int] | None = None
    ) -> None:
        self._size.observe(rows)
        self._compute.observe(compute_s)

    def batch_span(self, members: Sequence[Any], rows: int) -> Any:
        self._workers.observe(len(set(members)))
        return None


@dataclass
class _Hosted:
    key: str
    runtime: ModelRuntime
    batcher: Batcher
    executor: _StuckCalls
    observer: _Observer
    watchdog: RuntimeWatchdog | None
    holders: set[int] = field(default_factory=set)


@dataclass
class _Client:
    """One worker's connection: the input segments of its slots (attached) and the output segments (ours)."""

    id: int
    writer: asyncio.StreamWriter
    inputs: dict[int, Segment] = field(default_factory=dict)
    outputs: dict[int, Segment] = field(default_factory=dict)
    calls: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    keys: collections.Counter[str] = field(default_factory=collections.Counter)
    """The versions this worker holds, each with how many of its runtimes hold it (a reload overlaps)."""

    def send(self, message: tuple[Any, ...]) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(message))

    def input_segment(self, slot: int, name: str) -> Segment:
        segment = self.inputs.get(slot)
        if segment is None or segment.name != name:
            if segment is not None:
                segment.close()
            segment = self.inputs[slot] = Segment.attach(name)
        return segment

    def output_segment(self, slot: int, size: int) -> Segment:
        segment = self.outputs.get(slot)
        if segment is None or segment.size < size:
            if segment is not None:
                segment.close()
            segment = self.outputs[slot] = Segment.create(max(size * 2, 1 << 16), "h")
        return segment

    def close(self) -> None:
        for segment in (*self.inputs.values(), *self.outputs.values()):
            segment.close()
        self.inputs.clear()
        self.outputs.clear()


class DeviceHost:
    def __init__(self, device: str, socket_path: str, restarts: int) -> None:
        self.device = device
        self.socket_path = socket_path
        self.metrics = DeviceMetrics(device)
        self.metrics.restarts.set(restarts)
        self._versions: dict[str, _Hosted] = {}
        self._loading: dict[str, asyncio.Task[_Hosted]] = {}
        self._ids = itertools.count(1)
        self._stop = asyncio.Event()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        server = await asyncio.start_unix_server(self._client, self.socket_path)
        os.chmod(self.socket_path, 0o600)
        log.info("runtime process listening", extra={"device": self.device, "socket": self.socket_path})
        watch = loop.create_task(self._watch())
        try:
            await self._stop.wait()
        finally:
            watch.cancel()
            server.close()
            for hosted in list(self._versions.values()):
                await self._close(hosted)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    async def _watch(self) -> None:
        """Once a second: this process's memory, each version's batches running; and exit when a call will never
        come back (the supervisor restarts the process: the only way to get a device back from a session stuck in
        native code)."""
        while True:
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.metrics.memory.set(resident_bytes())  # /proc: no disk behind it
            now = time.monotonic()
            for hosted in self._versions.values():
                hosted.observer.publish(hosted.runtime.concurrency, hosted.batcher.in_flight)
                if hosted.executor.stuck(now):
                    log.critical(
                        "%s: a runtime call did not stop after its terminate flag: restarting the runtime process",
                        hosted.key,
                    )
                    logging.shutdown()
                    os._exit(70)
            await asyncio.sleep(1.0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(next(self._ids), writer)
        try:
            while True:
                message = await read_message(reader)
                self._dispatch(client, message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for task in list(client.calls.values()):
                task.cancel()
            for key in list(client.keys):
                client.keys[key] = 1
                await self._release(client, key)
            client.close()
            writer.close()

    def _dispatch(self, client: _Client, message: tuple[Any, ...]) -> None:
        kind, call = message[0], message[1]
        if kind == "infer":
            task = asyncio.get_running_loop().create_task(self._infer(client, *message[1:]))
        elif kind == "cancel":
            running = client.calls.get(call)
            if running is not None:
                running.cancel()
            return
        elif kind == "load":
            task = asyncio.get_running_loop().create_task(self._load(client, call, *message[2:]))
        elif kind == "release":
            task = asyncio.get_running_loop().create_task(self._release(client, message[2], call))
        else:
            client.send(("error", call, "failed", f"unknown message {kind!r}"))
            return
        client.calls[call] = task
        task.add_done_callback(lambda _t: client.calls.pop(call, None))

    async def _load(self, client: _Client, call: int, key: str, source: ModelSource, version: VersionSource) -> None:
        try:
            hosted = self._versions.get(key)
            if hosted is None:
                loading = self._loading.get(key)
                if loading is None:
                    loading = self._loading[key] = asyncio.get_running_loop().create_task(
                        self._open(key, source, version)
                    )
                    loading.add_done_callback(lambda _t: self._loading.pop(key, None))
                hosted = await asyncio.shield(loading)
        except Exception as exc:
            client.send(("error", call, "load", str(exc)))
            return
        hosted.holders.add(client.id)
        client.keys[key] += 1
        runtime = hosted.runtime
        client.send(("loaded", call, runtime.signature, runtime.info, os.getpid()))

    async def _open(self, key: str, source: ModelSource, version: VersionSource) -> _Hosted:
        limit_ms = source.config.watchdog.call_timeout_ms
        instances = source.config.runtime.instances
        executor = _StuckCalls(None if limit_ms is None else limit_ms / 1000.0, instances)
        sessions: list[ModelRuntime] = []
        try:
            for _ in range(instances):  # one at a time: one load's peak memory, not N
                sessions.append(await load_runtime(source, version, executor, ordinal_of(self.device)))
            runtime = sessions[0] if instances == 1 else RuntimePool(sessions)
            await runtime.warmup()
        except BaseException:
            for session in sessions:
                await session.close()
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        watchdog = None
        if executor.limit_s is not None:
            # Stops the session here; the workers' watchdogs count the hang and decide readiness.
            watchdog = RuntimeWatchdog(runtime, executor.limit_s, unresponsive_after=_NEVER, name=key)
        observer = _Observer(self.metrics, source.name, version.version)
        observer.publish(instances)
        batcher = version_batcher(runtime, source.config, key, observer, watchdog)
        hosted = self._versions[key] = _Hosted(key, runtime, batcher, executor, observer, watchdog)
        log.info(
            "%s loaded on %s (%s, %d instance%s)",
            key,
            self.device,
            runtime.info.execution_provider,
            instances,
            "" if instances == 1 else "s",
        )
        return hosted

    async def _release(self, client: _Client, key: str, call: int | None = None) -> None:
        client.keys[key] -= 1
        if client.keys[key] > 0:
            if call is not None:
                client.send(("released", call))
            return
        del client.keys[key]
        hosted = self._versions.get(key)
        if hosted is not None:
            hosted.holders.discard(client.id)
            if not hosted.holders:
                await self._close(hosted)
        if call is not None:
            client.send(("released", call))

    async def _close(self, hosted: _Hosted) -> None:
        if self._versions.get(hosted.key) is hosted:
            del self._versions[hosted.key]
        await hosted.batcher.drain(5.0)
        await hosted.batcher.close()
        if hosted.watchdog is not None:
            await hosted.watchdog.close()
        await hosted.runtime.close()
        hosted.observer.close()
        for other in self._versions.values():  # a reload of the same version (another config) still here
            if other.observer.labels == hosted.observer.labels:
                other.observer.publish(other.runtime.concurrency)
        hosted.executor.shutdown(wait=False, cancel_futures=True)
        log.info("%s unloaded from %s", hosted.key, self.device)

    async def _infer(
        self, client: _Client, call: int, key: str, slot: int, name: str, layout: Layout, outputs: list[str] | None
    ) -> None:
        try:
            hosted = self._versions.get(key)
            if hosted is None:
                client.send(("error", call, "unavailable", f"{key} is not loaded on {self.device}"))
                return
            inputs = client.input_segment(slot, name).views(layout)
            rows = int(layout[0][2][0]) if layout and layout[0][2] else 0
            answer, timing = await hosted.batcher.submit(inputs, rows, outputs, None, client.id)
            del inputs
            hosted.observer.queue_wait.observe(max(0, timing.started_ns - timing.enqueued_ns) / 1e9)
            segment = client.output_segment(slot, needed_bytes(answer))
            client.send(("ok", call, segment.name, segment.write(answer), timing.batch_requests))
        except asyncio.CancelledError:
            client.send(("error", call, "cancelled", "cancelled by the worker"))
        except DeadlineExceeded as exc:
            client.send(("error", call, "timeout", str(exc)))
        except (Overloaded, ShuttingDown) as exc:
            client.send(("error", call, "unavailable", str(exc)))
        except Exception as exc:
            client.send(("error", call, "failed", str(exc)))


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident memory (RSS), from /proc."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def host_main(device: str, socket_path: str, restarts: int, parent: int, log_level: str, log_format: str) -> None:
    """The runtime process's entry point (spawned by `gateway.serving.device_hosts`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent drains first
    from gateway.workers import _die_with_parent

    _die_with_parent()
    if os.getppid() != parent:
        sys.exit(1)
    from gateway.observability.logs import configure_logging

    configure_logging(log_level, log_format)
    host = DeviceHost(device, socket_path, restarts)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(host.serve())
        return
    uvloop.run(host.serve())
