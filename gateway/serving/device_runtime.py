"""The worker's side of the device placement: a version whose session lives in its device's runtime process.

To the worker's registry and batcher a `DeviceRuntime` is a runtime like any other: it answers a batch. The
batch goes whole to the runtime process (`gateway.serving.device_host`) through shared memory, with one small
message on the worker's connection to that process (`gateway.serving.shm_transport`); the connection is read by
the worker's event loop like any socket, so waiting for an answer blocks nothing.

When the runtime process dies, every batch in flight fails at once with `RuntimeUnavailable` (503 /
UNAVAILABLE: none of them is any request's fault), the versions it hosted turn not ready, and the connection
is made again as soon as the supervisor has restarted the process (whatever a try fails with meanwhile: the
socket may be missing, refuse, or reset while the new process starts listening); each version is then loaded
again and is ready once it answers, a load that fails being tried again with a growing pause. No worker dies
with it.

`DevicePlacement` is the registry's runtime factory: it resolves each model's placement
(`gateway.serving.placement`) and hands `worker` versions to the ordinary loader. A version on several devices
is a `SpreadRuntime` over one `DeviceRuntime` per runtime process, each batch sent to the least loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.serving.placement import Hosts, resolve
from gateway.serving.registry import RuntimeFactory
from gateway.serving.repository import ModelSource, VersionSource
from gateway.serving.shm_transport import Segment, frame, needed_bytes, read_message
from gateway.serving.spread import Spread
from runtimes.base import (
    ModelRuntime,
    RuntimeError_,
    RuntimeInfo,
    RuntimeLoadError,
    RuntimeTimeout,
    RuntimeUnavailable,
)
from runtimes.tensors import ModelSignature

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 120.0
"""How long a worker waits for its runtime process to listen at start (it imports ONNX Runtime first)."""
RECONNECT_EVERY_S = 0.2
RELOAD_PAUSE_MAX_S = 30.0
"""The longest pause between tries to load a version again on a restarted runtime process."""


@dataclass(eq=False)
class _Slot:
    """One batch's place in shared memory: the input segment (ours) and the last output segment (the host's)."""

    index: int
    inputs: Segment
    outputs: Segment | None = None

    def output(self, name: str) -> Segment:
        if self.outputs is None or self.outputs.name != name:
            if self.outputs is not None:
                self.outputs.close()
            self.outputs = Segment.attach(name)
        return self.outputs

    def close(self) -> None:
        self.inputs.close()
        if self.outputs is not None:
            self.outputs.close()


_Pending = tuple["asyncio.Future[tuple[Any, ...]]", _Slot | None]


class HostClient:
    """This worker's connection to one device's runtime process, and the shared memory slots it writes into."""

    def __init__(self, device: str, path: str) -> None:
        self.device = device
        self.path = path
        self.host_pid = 0
        self.connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._slot_ids = itertools.count()
        self._free: list[_Slot] = []
        self._slots: list[_Slot] = []
        self.runtimes: set[DeviceRuntime] = set()
        self._closed = False

    async def connect(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
                break
            except OSError as exc:  # not there yet, refused, reset while it (re)starts listening, ...
                if loop.time() >= deadline:
                    raise RuntimeLoadError(
                        f"the runtime process for {self.device} does not listen at {self.path}: {exc}"
                    ) from None
                log.debug("connecting to the runtime process for %s failed (%s); trying again", self.device, exc)
                await asyncio.sleep(RECONNECT_EVERY_S)
        self._writer = writer
        self._reader_task = loop.create_task(self._read(reader), name=f"device:{self.device}")
        self.connected.set()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                self._answer(await read_message(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:  # a message that cannot be read: the stream is out of step, start it again
            log.exception("the connection to the runtime process for %s broke", self.device)
        self._lost()

    def _answer(self, message: tuple[Any, ...]) -> None:
        entry = self._pending.pop(message[1], None)
        if entry is None:
            return
        future, slot = entry
        if future.done():  # the caller gave up (cancelled): the slot is free now that the host is done with it
            if slot is not None:
                self._free.append(slot)
        else:
            future.set_result(message)

    def _lost(self) -> None:
        """The runtime process went away: fail what was in flight, make its versions not ready, reconnect."""
        self.connected.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        reason = f"the runtime process for {self.device} (pid {self.host_pid}) exited; waiting for its restart"
        pending, self._pending = self._pending, {}
        for future, slot in pending.values():
            if not future.done():
                future.set_exception(RuntimeUnavailable(reason))
            if slot is not None:
                self._free.append(slot)
        if self._closed:
            return
        log.error(reason)
        self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect(), name="device-reconnect")
        for runtime in list(self.runtimes):
            runtime.lost(reason)

    async def _reconnect(self) -> None:
        """Connect again, then load every version again; a version whose load fails is tried again (with a
        growing pause) for as long as this connection lasts: a lost connection starts a reconnect of its own."""
        while not self._closed:
            try:
                await self.connect(CONNECT_TIMEOUT_S)
                break
            except Exception as exc:  # never give up on the device while the worker runs
                log.error("%s", exc)
                await asyncio.sleep(RECONNECT_EVERY_S)
        connection = self._writer
        pending, pause = list(self.runtimes), RECONNECT_EVERY_S
        while pending:
            failed = []
            for runtime in pending:
                if self._writer is not connection or connection is None:
                    return
                if runtime not in self.runtimes:  # closed meanwhile
                    continue
                try:
                    await runtime.reload()
                except Exception as exc:  # not ready meanwhile, and says why
                    log.error("%s: reload on the restarted runtime process failed: %s", runtime.key, exc)
                    failed.append(runtime)
            pending = failed
            if pending:
                await asyncio.sleep(pause)
                pause = min(pause * 2, RELOAD_PAUSE_MAX_S)

    def send(self, kind: str, *args: Any, slot: _Slot | None = None) -> tuple[int, asyncio.Future[tuple[Any, ...]]]:
        writer = self._writer
        # A closing writer: the process hung up and the reader has not seen the end yet (uvloop would raise
        # RuntimeError on the write, a 500); the batch fails as those in flight do.
        if writer is None or not self.connected.is_set() or writer.is_closing():
            raise RuntimeUnavailable(f"the runtime process for {self.device} is restarting")
        call = next(self._ids)
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
        self._pending[call] = (future, slot)
        writer.write(frame((kind, call, *args)))
        return call, future

    async def request(self, kind: str, *args: Any) -> tuple[Any, ...]:
        _, future = self.send(kind, *args)
        return await future

    def _acquire(self, size: int) -> _Slot:
        for i, slot in enumerate(self._free):
            if slot.inputs.size >= size:
                return self._free.pop(i)
        if self._free:
            slot = self._free.pop()
            slot.inputs.close()
            slot.inputs = Segment.create(size * 2, "w")
            return slot
        slot = _Slot(next(self._slot_ids), Segment.create(max(size * 2, 1 << 16), "w"))
        self._slots.append(slot)
        return slot

    async def infer(
        self, key: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        slot = self._acquire(needed_bytes(inputs))
        try:
            layout = slot.inputs.write(inputs)
            wanted = list(outputs) if outputs is not None else None
            call, future = self.send("infer", key, slot.index, slot.inputs.name, layout, wanted, slot=slot)
        except BaseException:
            self._free.append(slot)
            raise
        try:
            reply = await future
        except asyncio.CancelledError:
            if call in self._pending and self._writer is not None:
                self._writer.write(frame(("cancel", call)))  # the watchdog's cancel, passed on to the session
            raise
        try:
            if reply[0] == "ok":
                return slot.output(reply[2]).copies(reply[3])
            raise _error(self.device, reply)
        finally:
            self._free.append(slot)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        for task in (self._reconnect_task, self._reader_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for slot in self._slots:
            slot.close()
        self._slots.clear()
        self._free.clear()


def _error(device: str, reply: tuple[Any, ...]) -> Exception:
    kind, message = reply[2], reply[3]
    if kind == "timeout":
        return RuntimeTimeout(message)
    if kind == "unavailable":
        return RuntimeUnavailable(f"{device}: {message}")
    return RuntimeError_(message)


class DeviceRuntime(ModelRuntime):
    def __init__(self, client: HostClient, key: str, source: ModelSource, version: VersionSource) -> None:
        self.client = client
        self.key = key
        self._source = source
        self._version = version
        self._signature: ModelSignature | None = None
        self._info: RuntimeInfo | None = None
        self._loaded = False
        self._on_lost: Callable[[str], None] = lambda _reason: None
        self._on_back: Callable[[], None] = lambda: None

    async def reload(self) -> None:
        """Ask the runtime process to load the version (it loads it once for every worker that asks)."""
        reply = await self.client.request("load", self.key, self._source, self._version)
        if reply[0] != "loaded":
            raise RuntimeLoadError(f"{self._source.name}/{self._version.version} on {self.client.device}: {reply[3]}")
        _, _, signature, info, pid = reply
        again = self._info is not None and not self._loaded
        self.client.host_pid = pid
        self._signature = signature
        where = {"placement": "device", "device": self.client.device, "device_pid": str(pid)}
        self._info = dataclasses.replace(info, parameters={**info.parameters, **where})  # the digest comes along
        self._loaded = True
        if again:
            self._on_back()

    def lost(self, reason: str) -> None:
        self._loaded = False
        self._on_lost(reason)

    def on_availability(self, lost: Callable[[str], None], back: Callable[[], None]) -> None:
        self._on_lost, self._on_back = lost, back

    @property
    def loaded(self) -> bool:
        """Whether the runtime process holds the version now (not while it restarts)."""
        return self._loaded

    @property
    def signature(self) -> ModelSignature:
        assert self._signature is not None
        return self._signature

    @property
    def info(self) -> RuntimeInfo:
        assert self._info is not None
        return self._info

    @property
    def concurrency(self) -> int:
        """The sessions the runtime process holds (`runtime.instances`): this worker keeps each one busy."""
        count = self.info.parameters.get("instances", "1")
        return int(count) if count.isdigit() else 1

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        if not self._loaded:
            raise RuntimeUnavailable(f"the runtime process for {self.client.device} is restarting")
        return await self.client.infer(self.key, inputs, outputs)

    async def warmup(self) -> None:
        """A row of zeros through the hop: the first real request pays for nothing (and the watchdog's probe)."""
        feed = {}
        for spec in self.signature.inputs:
            shape = tuple(1 if d < 0 else d for d in spec.shape)
            feed[spec.name] = np.zeros(shape, dtype=spec.datatype.numpy)
        await self.infer(feed)

    async def close(self) -> None:
        self.client.runtimes.discard(self)
        if self.client.connected.is_set():
            with contextlib.suppress(RuntimeUnavailable):
                await self.client.request("release", self.key)


class SpreadRuntime(ModelRuntime):
    """A version on several runtime processes (`runtime.devices: [0, 1]` or `all`): each batch goes to the least
    loaded of them as this worker sees it (`gateway.serving.spread`). The version is ready while any of them
    holds it: a process that dies fails its own batches in flight (503) and takes no new ones until it is back,
    while the others go on serving."""

    def __init__(self, members: Sequence[DeviceRuntime]) -> None:
        self.members = list(members)
        self._spread = Spread(len(self.members))
        self._on_lost: Callable[[str], None] = lambda _reason: None
        self._on_back: Callable[[], None] = lambda: None
        self._down = False
        for member in self.members:
            member.on_availability(self._member_lost, self._member_back)
        first = self.members[0].info
        where = {
            "devices": ",".join(m.client.device for m in self.members),
            "device_pids": ",".join(m.info.parameters.get("device_pid", "") for m in self.members),
        }
        self._info = dataclasses.replace(first, parameters={**first.parameters, **where})

    def _member_lost(self, reason: str) -> None:
        if not self._down and not any(m.loaded for m in self.members):
            self._down = True
            self._on_lost(reason)

    def _member_back(self) -> None:
        if self._down:
            self._down = False
            self._on_back()

    def on_availability(self, lost: Callable[[str], None], back: Callable[[], None]) -> None:
        self._on_lost, self._on_back = lost, back

    @property
    def signature(self) -> ModelSignature:
        return self.members[0].signature

    @property
    def info(self) -> RuntimeInfo:
        pids = ",".join(m.info.parameters.get("device_pid", "") for m in self.members)
        if self._info.parameters.get("device_pids") != pids:  # a member restarted: name its new process
            self._info = dataclasses.replace(self._info, parameters={**self._info.parameters, "device_pids": pids})
        return self._info

    @property
    def concurrency(self) -> int:
        return sum(m.concurrency for m in self.members)

    async def infer(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        member = self._spread.choose([m.loaded for m in self.members])
        if member is None:
            raise RuntimeUnavailable("every runtime process of this version is restarting")
        first = next(iter(inputs.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 1
        self._spread.started(member, rows)
        try:
            return await self.members[member].infer(inputs, outputs)
        finally:
            self._spread.finished(member, rows)

    async def warmup(self) -> None:
        """Through every runtime process: the first real batch on any of them pays for nothing."""
        for member in self.members:
            await member.warmup()

    async def close(self) -> None:
        for member in self.members:
            await member.close()


def version_key(source: ModelSource, version: VersionSource) -> str:
    """The name a version is hosted under: a reload with a changed config.yaml gets a session of its own."""
    digest = hashlib.sha256(f"{source.config.model_dump_json()}|{version.artifact}".encode()).hexdigest()[:12]
    return f"{source.name}/{version.version}@{digest}"


class DevicePlacement:
    """The registry's runtime factory where runtime processes run: `device` versions through them, the rest
    through `fallback` (the worker's own loader)."""

    def __init__(self, hosts: Hosts, fallback: RuntimeFactory) -> None:
        self.hosts = hosts
        self._fallback = fallback
        self._clients: dict[str, HostClient] = {}
        self._available: list[str] | None = None

    def _providers(self) -> list[str]:
        if self._available is None:
            from runtimes.onnx import import_onnxruntime

            self._available = list(import_onnxruntime().get_available_providers())
        return self._available

    async def __call__(self, source: ModelSource, version: VersionSource) -> ModelRuntime:
        choice = resolve(source.config.runtime, self.hosts.workers, self._providers(), self.hosts.gpus)
        if choice.placement == "worker":
            return await self._fallback(source, version)
        members: list[DeviceRuntime] = []
        try:
            for device in choice.devices:
                members.append(await self._on(device, source, version))
        except BaseException:
            for member in members:
                await member.close()
            raise
        return members[0] if len(members) == 1 else SpreadRuntime(members)

    async def _on(self, device: str, source: ModelSource, version: VersionSource) -> DeviceRuntime:
        """The version loaded in `device`'s runtime process (connecting to it first if this worker has not)."""
        path = (self.hosts.sockets or {}).get(device)
        if path is None:
            raise RuntimeLoadError(
                f"model '{source.name}': placement device on {device}, but no runtime process runs for "
                f"{device} (the devices are chosen from config.yaml when the gateway starts: restart it)"
            )
        client = self._clients.get(device)
        if client is None or client.closed:
            client = self._clients[device] = HostClient(device, path)
            await client.connect(CONNECT_TIMEOUT_S)
        await client.connected.wait()
        runtime = DeviceRuntime(client, version_key(source, version), source, version)
        await runtime.reload()
        client.runtimes.add(runtime)
        return runtime

    def host_pids(self) -> set[int]:
        """The runtime processes this worker is connected to now (the GPU metrics' `placement` label)."""
        return {c.host_pid for c in self._clients.values() if c.host_pid and c.connected.is_set()}

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
