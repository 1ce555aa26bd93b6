"""`sluice serve --workers N`: N worker processes serve the same ports; a supervisor keeps them running.

Every worker is a whole replica (`server.Gateway`): its own event loop, runtimes, batchers and
prediction log writer. They share the HTTP and gRPC ports through SO_REUSEPORT (as gRPC servers do;
uvicorn's and gunicorn's workers share one listening socket instead), so the kernel spreads connections
over them and no process hands requests on. One of them holds the control plane's lease; the others
forward admin calls to it and follow its changes through the state store (so the state database is
shared: SQLite on one machine works, as every worker opens the same file).

The supervisor (this module) binds nothing it serves. It picks the ports when asked for free ones
(holding a SO_REUSEPORT socket on each so nobody else takes them), gives the workers one directory
for prometheus_client's multiprocess mode (so any worker's /metrics shows every worker's
figures) and, with quotas, one table of key buckets (gateway.admin.quota_table, so a key's quota
holds for all the workers together), starts the workers (spawned: fresh interpreters, never forks
of a process with threads), restarts one that dies (with a backoff when one keeps dying at start),
and on SIGTERM or SIGINT passes the signal on, waits for every worker to drain, and exits 0 (130
after a SIGINT: a Ctrl-C).

Readiness is shared: a worker answers ready only when every worker is ready, so a load balancer
never sees the gateway as ready while part of it is still loading (or being restarted).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from gateway.admin.quota_table import create_table, remove_table
from gateway.admin.quotas import SHARED_ENV
from gateway.cpus import usable_cpus
from gateway.observability.metrics import MULTIPROCESS_ENV, SUPERVISOR_ENV
from gateway.serving.device_hosts import DeviceHosts, plan
from gateway.serving.placement import HOSTS_ENV
from gateway.serving.repository_remote import open_repository
from gateway.serving.shm_transport import unlink_segments_of
from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_SPAWN = multiprocessing.get_context("spawn")
_FAST_DEATH_S = 10.0
"""A worker that dies sooner than this after starting is restarted after a growing pause."""
_MAX_BACKOFF_S = 30.0
START_ATTEMPTS = 3
DRAIN_MARGIN_S = 15.0
"""On SIGTERM a worker still running this long after the drain timeout is killed (then waited KILL_WAIT_S):
whatever stops the supervisor from outside (Kubernetes' terminationGracePeriodSeconds) must allow for both."""
KILL_WAIT_S = 5.0


def worker_count(value: int | str) -> int:
    """`--workers`: a positive number, or "auto" for one per CPU this process may use (its container's CPU
    limit included: `gateway.cpus`)."""
    if value == "auto":
        return usable_cpus()
    count = int(value)
    if count < 1:
        raise ValueError(f"--workers must be at least 1 or 'auto', got {value}")
    return count


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0
    was_ready: bool = False
    start_failures: int = 0
    """Exits in a row before ever being ready: a worker that cannot start (a port taken, a bad config)."""


class WorkerStartFailed(RuntimeError):
    """A worker exited before it was ready, several times in a row: restarting it will not help."""


@dataclass
class Supervisor:
    settings: GatewaySettings
    workers: int
    on_ready: Callable[[GatewaySettings], None] | None = None
    """Called once, in the supervisor, when every worker first reports ready (the CLI prints its banner)."""
    _slots: list[_Slot] = field(default_factory=list)
    _reserved: list[socket.socket] = field(default_factory=list)
    _stopping: bool = False
    _interrupted: bool = False
    devices: DeviceHosts | None = None
    """The device placement's runtime processes, started before the workers (`gateway.serving.device_hosts`)."""

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; the exit status (0 after a clean drain, 130 after a Ctrl-C's)."""
        settings = self._resolve_ports(self.settings)
        metrics_dir = os.environ.get(MULTIPROCESS_ENV) or tempfile.mkdtemp(prefix="sluice-metrics-")
        owns_metrics_dir = MULTIPROCESS_ENV not in os.environ
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
        quota_table = create_table() if settings.inference_quotas else None
        if quota_table is not None:  # one bucket per key name for all the workers, not one in each
            os.environ[SHARED_ENV] = quota_table
        ready = _SPAWN.Array("b", self.workers, lock=False)
        self._slots = [_Slot(i) for i in range(self.workers)]
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
        announced = False
        repository = open_repository(settings.model_repo, settings.cache_dir, max_bytes=settings.model_cache_max_bytes)
        planned = plan(repository, self.workers)
        self.devices = DeviceHosts(planned.devices, self.workers, settings.log_level, settings.log_format, planned.gpus)
        os.environ[HOSTS_ENV] = self.devices.hosts.to_env()  # the workers reach the runtime processes there
        try:
            self.devices.start()
            for slot in self._slots:
                self._start(slot, settings, ready)
            while not self._stopping:
                self._wait(0.2)
                for slot in self._slots:
                    slot.was_ready = slot.was_ready or bool(ready[slot.index])
                    if not self._stopping:
                        self._tend(slot, settings, ready, metrics_dir)
                if not self._stopping:
                    self.devices.tend()
                if not announced and all(ready) and self.on_ready is not None:
                    announced = True
                    self.on_ready(settings)
            status = self._drain(metrics_dir)
            return status or (128 + signal.SIGINT if self._interrupted else 0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for sock in self._reserved:
                sock.close()
            os.environ.pop(HOSTS_ENV, None)
            if owns_metrics_dir:
                os.environ.pop(MULTIPROCESS_ENV, None)
                shutil.rmtree(metrics_dir, ignore_errors=True)
            if quota_table is not None:
                os.environ.pop(SHARED_ENV, None)
                remove_table(quota_table)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._interrupted = self._interrupted or (signum == signal.SIGINT and not self._stopping)
        self._stopping = True

    def _on_hangup(self, signum: int, _frame: Any) -> None:
        """SIGHUP: every worker reloads its admin tokens and inference keys."""
        for slot in self._slots:
            if slot.process is not None and slot.process.pid is not None and slot.process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, signal.SIGHUP)

    def _resolve_ports(self, settings: GatewaySettings) -> GatewaySettings:
        """Free ports are picked here, once, and held (SO_REUSEPORT, not listening) so that every worker binds
        the same one and nothing else takes it meanwhile."""
        values: dict[str, Any] = {"control_port": 0}  # each worker's private admin listener: its own port
        if settings.http_port == 0:
            values["http_port"] = self._reserve(settings.host)
        if settings.grpc_port == 0:
            values["grpc_port"] = self._reserve(settings.host)
        if settings.control_port:
            log.warning(
                "--workers: each worker takes a free port for its private listener, not %d", settings.control_port
            )
        return settings.model_copy(update=values)

    def _reserve(self, host: str) -> int:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        self._reserved.append(sock)
        return int(sock.getsockname()[1])

    def _start(self, slot: _Slot, settings: GatewaySettings, ready: Any) -> None:
        ready[slot.index] = 0
        process = _SPAWN.Process(
            target=_worker_main,
            args=(settings, slot.index, ready, os.getpid()),  # pickled whole: secrets stay secrets, not "****"
            name=f"sluice-worker-{slot.index}",
            daemon=False,
        )
        process.start()
        slot.process = process
        slot.started_at = time.monotonic()
        log.info("worker %d started", slot.index, extra={"worker_pid": process.pid})

    def _wait(self, timeout: float) -> None:
        sentinels = [s.process.sentinel for s in self._slots if s.process is not None and s.process.is_alive()]
        if self.devices is not None:
            sentinels += self.devices.sentinels()
        if sentinels:
            multiprocessing.connection.wait(sentinels, timeout)
        else:
            time.sleep(timeout)

    def _tend(self, slot: _Slot, settings: GatewaySettings, ready: Any, metrics_dir: str) -> None:
        """Restart a worker that died, after a pause that grows while it keeps dying early."""
        process = slot.process
        now = time.monotonic()
        if process is not None and process.exitcode is not None:
            ready[slot.index] = 0
            _mark_dead(process.pid, metrics_dir)
            lived = now - slot.started_at
            slot.start_failures = 0 if slot.was_ready else slot.start_failures + 1
            if slot.start_failures >= START_ATTEMPTS:
                self._stopping = True
                self._drain(metrics_dir)
                raise WorkerStartFailed(
                    f"worker {slot.index} exited {slot.start_failures} times before it was ready "
                    f"(last exit status {process.exitcode}); see the log above"
                )
            slot.was_ready = False
            slot.failures = slot.failures + 1 if lived < _FAST_DEATH_S else 0
            pause = 0.0 if not slot.failures else min(_MAX_BACKOFF_S, 0.5 * 2 ** (slot.failures - 1))
            log.error(
                "worker %d (pid %s) exited with %s after %.1f s; restarting in %.1f s",
                slot.index,
                process.pid,
                process.exitcode,
                lived,
                pause,
            )
            process.close()
            slot.process = None
            slot.restart_at = now + pause
        if slot.process is None and now >= slot.restart_at:
            self._start(slot, settings, ready)

    def _drain(self, metrics_dir: str) -> int:
        """Pass SIGTERM on, wait for the workers to drain (they flush their logs), kill what overstays."""
        live = [s.process for s in self._slots if s.process is not None and s.process.exitcode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.drain_timeout_s + DRAIN_MARGIN_S
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker pid %s did not stop in time: killing it", process.pid)
                process.kill()
                process.join(KILL_WAIT_S)
            _mark_dead(process.pid, metrics_dir)
        if self.devices is not None:
            self.devices.stop()  # after the workers: their last batches ran there
        failed = [p.exitcode for p in live if p.exitcode not in (0, -signal.SIGTERM)]
        return 0 if not failed else 1


def _mark_dead(pid: int | None, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go back), and the shared memory it
    wrote batches into for a runtime process (a worker killed could not remove it)."""
    if pid is None:
        return
    unlink_segments_of(pid)
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the supervisor dies without passing a signal on (SIGKILL)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker_main(settings: GatewaySettings, index: int, ready: Any, parent: int) -> None:
    """A worker: one replica on the shared ports, its readiness in `ready[index]`."""
    _die_with_parent()
    if os.getppid() != parent:  # the supervisor died before the death signal was armed
        sys.exit(1)
    from gateway.observability.logs import configure_logging
    from gateway.server import run_replica

    configure_logging(settings.log_level, settings.log_format)
    slots: Sequence[int] = ready

    def mark(value: int) -> None:
        ready[index] = value

    run_replica(settings, reuse_port=True, cohort_ready=lambda: all(slots), on_ready=lambda _g: mark(1))
    mark(0)
