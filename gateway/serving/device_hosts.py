"""Starting and restarting the runtime processes of the device placement (`gateway.serving.device_host`).

The supervisor of `--workers` owns them (and a one-process gateway, when one of its models asks for
`placement: device`). Which devices get one is decided once, at start, from the repository's config.yaml files
(`placement.devices_needed`): a version loaded later through the admin API onto a device that has none is
refused, naming the device. Each process listens on a unix socket in a private directory; the workers learn
the sockets from `HOSTS_ENV`. A process that dies is started again on the same socket (the workers reconnect
and load their versions again); its metrics' live gauges and its shared memory segments are removed.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path

from gateway.observability.metrics import MULTIPROCESS_ENV
from gateway.serving.model_config import RuntimeSection
from gateway.serving.placement import Hosts, devices_needed, visible_gpus, wants_all, wants_device
from gateway.serving.repository import RepositoryListing, scan_repository
from gateway.serving.shm_transport import unlink_segments_of

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
_RESTART_PAUSE_S = (0.0, 0.5, 1.0, 2.0, 5.0)
"""Pauses before restarting a runtime process that keeps dying soon after it started."""
_FAST_DEATH_S = 10.0


@dataclass(frozen=True)
class Plan:
    devices: list[str]
    """The runtime processes to start, by device name (`placement.device_name`)."""
    gpus: int = 1
    """The GPUs `devices: all` meant (`placement.visible_gpus`), passed on to the workers with the sockets."""


def plan(repository: Path | RepositoryListing, workers: int) -> Plan:
    """The devices whose runtime process this gateway needs, from the repository's config.yaml files (a local
    folder, or an object store's listing: its config files are in the model cache once listed)."""
    try:
        runtimes: list[RuntimeSection] = [s.config.runtime for s in scan_repository(repository)]
    except Exception as exc:  # the repository unreadable now: the workers report it per model, as at any start
        log.warning("cannot read the model repository to place runtimes on devices: %s", exc)
        return Plan([])
    if not wants_device(runtimes):
        return Plan([])
    gpus = visible_gpus() if wants_all(runtimes) else 1
    return Plan(devices_needed(runtimes, workers, _available_providers(), gpus), gpus)


def _available_providers() -> list[str]:
    """ONNX Runtime's execution providers here; without onnxruntime-gpu installed, the CPU's alone, known without
    importing ONNX Runtime into the supervisor (which runs no model)."""
    try:
        importlib.metadata.distribution("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return ["CPUExecutionProvider"]
    from runtimes.onnx import import_onnxruntime

    try:
        return list(import_onnxruntime().get_available_providers())
    except Exception:  # ONNX Runtime broken: nothing loads anyway, and the workers say so
        return ["CPUExecutionProvider"]


@dataclass
class _Host:
    device: str
    socket: str
    process: BaseProcess | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    restart_at: float = 0.0


class DeviceHosts:
    def __init__(
        self, devices: Iterable[str], workers: int, log_level: str = "info", log_format: str = "json", gpus: int = 1
    ) -> None:
        self.workers = workers
        self.gpus = gpus
        self._dir = tempfile.mkdtemp(prefix="sluice-devices-")
        self._hosts = [_Host(d, os.path.join(self._dir, f"{d.replace(':', '')}.sock")) for d in devices]
        self._log = (log_level, log_format)

    @property
    def hosts(self) -> Hosts:
        return Hosts(self.workers, {h.device: h.socket for h in self._hosts}, self.gpus)

    def __bool__(self) -> bool:
        return bool(self._hosts)

    def start(self) -> None:
        for host in self._hosts:
            self._start(host)

    def sentinels(self) -> list[int]:
        return [h.process.sentinel for h in self._hosts if h.process is not None and h.process.is_alive()]

    def pids(self) -> dict[str, int | None]:
        return {h.device: h.process.pid if h.process is not None else None for h in self._hosts}

    def _start(self, host: _Host) -> None:
        from gateway.serving.device_host import host_main

        process = _SPAWN.Process(
            target=host_main,
            args=(host.device, host.socket, host.restarts, os.getpid(), *self._log),
            name=f"sluice-device-{host.device}",
            daemon=False,
        )
        process.start()
        host.process = process
        host.started_at = time.monotonic()
        log.info("runtime process for %s started", host.device, extra={"device_pid": process.pid})

    def tend(self) -> None:
        """Restart a runtime process that died (after a pause when it keeps dying at start)."""
        now = time.monotonic()
        for host in self._hosts:
            process = host.process
            if process is not None and process.exitcode is not None:
                self._reap(process)
                lived = now - host.started_at
                host.quick_deaths = host.quick_deaths + 1 if lived < _FAST_DEATH_S else 0
                pause = _RESTART_PAUSE_S[min(host.quick_deaths, len(_RESTART_PAUSE_S) - 1)]
                log.error(
                    "runtime process for %s (pid %s) exited with %s after %.1f s; restarting in %.1f s",
                    host.device,
                    process.pid,
                    process.exitcode,
                    lived,
                    pause,
                )
                process.close()
                host.process = None
                host.restarts += 1
                host.restart_at = now + pause
            if host.process is None and now >= host.restart_at:
                self._start(host)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every runtime process (after the workers drained), wait, kill what overstays."""
        live = [h.process for h in self._hosts if h.process is not None and h.process.exitcode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.kill()
                process.join(5)
            self._reap(process)
        shutil.rmtree(self._dir, ignore_errors=True)

    @staticmethod
    def _reap(process: BaseProcess) -> None:
        if process.pid is None:
            return
        unlink_segments_of(process.pid)
        directory = os.environ.get(MULTIPROCESS_ENV)
        if directory:
            from prometheus_client import multiprocess

            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(process.pid, directory)  # type: ignore[no-untyped-call]
