"""The composition root: one place wires settings, runtimes, registry, data plane, control plane and servers.

Lifecycle: bind the ports (live, not ready) -> load and warm every model -> follow the control
plane's state -> stand for the leader lease -> ready. On SIGTERM or SIGINT: readiness goes false,
the servers stop accepting and finish what they have (queued and running batches included) within
the drain timeout, the prediction log writes what is queued, the window statistics are published,
the lease is released, then the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import os
import secrets
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import uvicorn
from opentelemetry.sdk.trace import TracerProvider

from gateway.admin.api import build_admin_router
from gateway.admin.auth import AdminAuth, InferenceAuth
from gateway.admin.console import build_console_router
from gateway.admin.feedback_api import build_feedback_router
from gateway.admin.forward import LeaderForwarder
from gateway.admin.key_reload import KeyReloader
from gateway.admin.monitor_api import build_monitor_router
from gateway.admin.quotas import QuotaBook, open_buckets, parse_quotas
from gateway.admin.repository import RepositoryControl, build_repository_router
from gateway.admin.repository_api import build_repository_sync_router
from gateway.control.delivery import DeliveryController
from gateway.control.leader import LeaderElection
from gateway.control.monitor_service import MonitorService
from gateway.control.plane import ControlPlane
from gateway.control.repository_sync import RepositorySync
from gateway.control.webhooks import WebhookSender
from gateway.observability.gpu import register_gpu_collector
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import RequestSpans, get_tracer, make_tracer_provider
from gateway.serving.dataplane import DataPlane
from gateway.serving.device_hosts import DeviceHosts, plan
from gateway.serving.device_runtime import DevicePlacement
from gateway.serving.follower import PolicyFollower
from gateway.serving.grpc_app import GrpcLimits, build_grpc_server
from gateway.serving.http_app import HttpAdapter, build_api, inference_key_dependency
from gateway.serving.http_guard import ConnectionGuard, ConnectionLimits
from gateway.serving.model_supply import ModelSupply
from gateway.serving.placement import Hosts
from gateway.serving.policy_view import PolicyView
from gateway.serving.registry import ModelRegistry, RuntimeFactory
from gateway.serving.repository import ModelSource, VersionSource
from gateway.serving.repository_remote import open_repository
from gateway.serving.runtime_loader import load_runtime
from gateway.serving.shadow import ShadowDispatcher
from gateway.serving.window_publisher import WindowPublisher
from gateway.serving.window_stats import WindowRecorder
from gateway.settings import GatewaySettings
from gateway.storage.engine import Fence
from gateway.storage.log_writer import ProcessRowWriter, WriterProcessError
from gateway.storage.revision_probe import revision_probe
from gateway.storage.spool import Spool
from gateway.storage.store import Store
from gateway.tasks import cancel_and_wait, tick_forever
from monitors.prediction_log import LogCounters, PredictionLog, Retention
from runtimes.base import ModelRuntime

log = logging.getLogger(__name__)


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway drains HTTP and gRPC together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Gateway:
    """One replica: the data plane, always; the control plane too while it holds the leader lease.

    With one process (the default) it wins the lease at start and is the whole gateway. With workers
    (`gateway.workers`) or Ray Serve, every process is one of these: each serves requests, follows
    the control plane's state from the store, publishes its window statistics, and stands for the
    lease; the one that holds it also runs the rollouts, the monitors and the admin changes.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        tracer_provider: TracerProvider | None = None,
        runtime_factory: RuntimeFactory | None = None,
        clock: Callable[[], float] = time.time,
        run_controller: bool = True,
        reuse_port: bool = False,
        cohort_ready: Callable[[], bool] | None = None,
        fetch_artifacts: bool = True,
    ) -> None:
        """`fetch_artifacts` False: `runtime_factory` loads versions elsewhere and fetches their files there
        (Ray's version replicas, each on its own node), so this process keeps only the listing."""
        self._run_controller = run_controller
        self._reuse_port = reuse_port
        self.settings = settings
        self.metrics = GatewayMetrics()
        register_gpu_collector(  # no GPU or NVML: registers nothing
            self.metrics.register_machine_collector,
            lambda: self._placement.host_pids() if self._placement is not None else set(),
        )
        self.tracer_provider = tracer_provider or make_tracer_provider(
            settings.service_name, sample_ratio=settings.trace_sample_ratio
        )
        self._executor = ThreadPoolExecutor(max_workers=settings.runtime_threads, thread_name_prefix="runtime")
        self._own_factory = runtime_factory is None
        self._placement: DevicePlacement | None = None
        """Set at start when runtime processes run (`runtime.placement: device`): the versions placed there."""
        self.device_hosts: DeviceHosts | None = None
        """The runtime processes this gateway started itself (one process; with workers the supervisor does)."""
        tracer = get_tracer(self.tracer_provider)
        self.windows = WindowRecorder()
        factory = runtime_factory or self._make_runtime
        self.supply = ModelSupply(
            open_repository(
                settings.model_repo,
                settings.cache_dir,
                max_bytes=settings.model_cache_max_bytes,
                on_fetch=lambda outcome: self.metrics.repository_fetches.labels(outcome).inc(),
            ),
            self.metrics,
        )
        self.registry = ModelRegistry(
            self.supply.listing,
            self.metrics,
            self.supply.fetching(factory) if fetch_artifacts else factory,
            tracer,
            on_batch=self.windows.record_batch,
        )
        self.supply.attach(self.registry)
        url = settings.database_url.get_secret_value() if settings.database_url else None
        self.store = store = Store(url) if url else Store.for_state_dir(settings.state_dir)
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        """This replica's name in the leader lease and on its window summaries."""
        self.view = PolicyView()
        self._revision_probe = revision_probe(store.connect_url, store.connect_args)
        self.follower = PolicyFollower(
            store,
            self.view,
            self.registry,
            drain_timeout_s=settings.drain_timeout_s,
            probe=self._revision_probe.read if self._revision_probe is not None else None,
        )
        self.publisher = WindowPublisher(self.windows, store, self.replica_id)
        secret = settings.webhook_secret.get_secret_value().encode() if settings.webhook_secret else None
        webhooks = WebhookSender(settings.webhook_urls, secret, self.metrics) if settings.webhook_urls else None
        self.control = ControlPlane(
            self.registry,
            self.metrics,
            store,
            self.view,
            flush_windows=self.publisher.publish,
            webhooks=webhooks,
            clock=clock,
            tick_s=settings.rollout_tick_s,
            drain_timeout_s=settings.drain_timeout_s,
            follower=self.follower,
        )
        self.delivery = DeliveryController(self.control)
        self.repository_sync = RepositorySync(
            self.control,
            delivery=self.delivery,
            prefetch=self.supply.materialize,
            on_error=self.metrics.repository_sync_errors.inc,
            clock=clock,
            settle_s=settings.repository_settle_s,
        )
        self.monitor = MonitorService(
            self.control,
            store,
            self.metrics,
            reports_dir=settings.reports_dir or settings.state_dir / "reports",
            webhook_secret=secret,
            tick_s=settings.monitor_tick_s,
        )
        self.election = LeaderElection(
            store,
            self.replica_id,
            ttl_s=settings.leader_lease_s,
            renew_s=settings.leader_renew_s,
            on_elected=self._lead,
            on_deposed=self._follow,
        )
        days = settings.prediction_retention_days
        self._log_writer = ProcessRowWriter(store) if settings.prediction_log_writer == "process" else None
        self.spool = _open_spool(settings)
        self.predictions = PredictionLog(
            store,
            writer=self._log_writer,
            capacity=settings.prediction_log_capacity,
            retention=Retention(
                max_age_s=None if days is None else days * 86400.0,
                max_rows=settings.prediction_retention_rows,
                every_s=settings.prediction_prune_interval_s,
            ),
            spool=self.spool,
        )
        self.metrics.watch_prediction_log(self.predictions.counters.as_dict, lambda: self.predictions.depth)
        if self.spool is not None:
            _watch_spool(self.metrics, self.spool, self.predictions.counters)
        self.shadows = ShadowDispatcher(self.metrics, self.windows, predictions=self.predictions)
        self.dataplane = DataPlane(
            self.registry,
            RequestSpans(self.tracer_provider),
            self.metrics,
            self.view,
            self.windows,
            self.shadows,
            settings.service_name,
            predictions=self.predictions,
        )
        if cohort_ready is not None:
            self.dataplane.cohort_ready = cohort_ready
        self.view.on_change = self.dataplane.publish_weights
        self.registry.on_state_change = self.view.changed
        self.connections = ConnectionGuard(
            ConnectionLimits(
                max_connections=settings.max_connections,
                max_header_bytes=settings.max_header_bytes,
                header_timeout_s=settings.header_timeout_s,
                body_timeout_s=settings.body_timeout_s,
            ),
            self.metrics,
        )
        self.metrics.add_sampler(self.registry.sample_load)
        self.http_port = 0
        self.grpc_port = 0
        self.control_url = ""
        """Where this replica takes admin requests forwarded by the others (its private listener)."""
        self._forwarder: LeaderForwarder | None = None
        self.repository: RepositoryControl | None = None
        """Triton's repository load and unload, for both adapters (built with the HTTP application)."""
        self.quotas = QuotaBook(
            parse_quotas(settings.inference_quotas), self.metrics.key_requests, buckets=open_buckets()
        )
        """Per inference key name (buckets shared with the other workers under --workers); bad quota text stops
        start-up here, naming the entry."""
        self.keys: KeyReloader | None = None
        self._http: list[tuple[_UvicornServer, asyncio.Task[None]]] = []
        self._grpc: Any = None
        self._loops: list[asyncio.Task[None]] = []
        self._writer_starting: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._stopped = False
        self.stop_signal: int | None = None
        """The signal that stopped this gateway (SIGINT: a Ctrl-C, which the command line answers with 130)."""

    async def _make_runtime(self, source: ModelSource, version: VersionSource) -> ModelRuntime:
        if self._placement is not None:
            return await self._placement(source, version)
        return await self._load_here(source, version)

    async def _load_here(self, source: ModelSource, version: VersionSource) -> ModelRuntime:
        return await load_runtime(source, version, self._executor)

    async def _start_placement(self) -> None:
        """Reach the runtime processes of the device placement: the supervisor's (`--workers`), or with one
        process those this gateway starts itself when a model asks for them."""
        if not self._own_factory:
            return
        hosts = Hosts.from_env()
        if hosts is None:
            s = self.settings
            planned = await asyncio.to_thread(plan, self.supply.listing, 1)
            if not planned.devices:
                return
            self.device_hosts = DeviceHosts(planned.devices, 1, s.log_level, s.log_format, planned.gpus)
            self.device_hosts.start()
            hosts = self.device_hosts.hosts
        if hosts.sockets:
            self._placement = DevicePlacement(hosts, self._load_here)

    async def _tend_device_hosts(self) -> None:
        if self.device_hosts is not None:
            self.device_hosts.tend()

    def _http_app(self, admin_auth: AdminAuth, inference_auth: InferenceAuth) -> HttpAdapter:
        """The HTTP application: V2, /metrics, the admin, monitor and feedback APIs and the web console (the
        admin API and the console are forwarded by a replica that does not lead to the one that does)."""
        ready = self.dataplane.ready
        self.repository = RepositoryControl(self.control, admin_auth, self.election, ready=ready)
        poll_s = self.settings.repository_poll_s
        routers = [
            build_admin_router(self.control, admin_auth, ready=ready),
            build_repository_router(self.repository),
            build_repository_sync_router(
                self.repository_sync, lambda: self.supply.status(poll_s), admin_auth, ready=ready
            ),
            build_monitor_router(self.monitor, admin_auth, ready=ready),
            build_console_router(self.control, self.monitor, admin_auth, self.delivery),
            build_feedback_router(self.registry, lambda: self.predictions, [inference_key_dependency(inference_auth)]),
        ]
        api = build_api(self.dataplane, self.metrics.exposition, inference_auth, routers)
        self._forwarder = LeaderForwarder(api, self.election, wait_s=self.settings.leader_lease_s * 2)
        self.repository.forwarder = self._forwarder
        return HttpAdapter(self.dataplane, self._forwarder, self.settings.max_body_bytes, inference_auth, self.quotas)

    async def start(self) -> None:
        """Bind and serve at once (live), then load models and follow the control plane (ready).

        A worker sharing its ports with others (`reuse_port`) binds them only once it is ready: from the
        moment a socket is in the SO_REUSEPORT group the kernel hands it connections, and a worker still
        loading its models would answer them 503. Until then it serves its private listener alone.
        """
        s = self.settings
        admin_auth = AdminAuth.from_settings(s)  # a bad token list stops start-up before anything binds
        inference_auth = InferenceAuth.from_inference_settings(s)
        self.keys = KeyReloader(
            s, admin_auth, inference_auth, self.metrics.key_reloads, interval_s=s.key_reload_interval_s
        )
        self.keys.start()
        self._stopping = asyncio.Event()
        app = self._http_app(admin_auth, inference_auth)
        private = _listen(s.control_host, s.control_port)
        control_host = s.advertise_host or s.control_host
        self.control_url = f"http://{_url_host(control_host)}:{private.getsockname()[1]}"
        self.election.address = self.control_url
        self.connections.start()
        if self._reuse_port:
            await self._serve_http(app, [private], tls=False)
        else:
            await self._serve_public(app, inference_auth, private)
        if importlib.util.find_spec("onnxruntime") is None:
            log.error(
                "ONNX Runtime is not installed: ONNX models cannot load. Install exactly one of the extras "
                "'sluicegate[cpu]' (onnxruntime) or 'sluicegate[gpu]' (onnxruntime-gpu)"
            )
        if self._log_writer is not None:
            # The writer's interpreter takes most of a second to import and open the store: it does so while
            # the models load, and readiness does not wait for it (a batch logged before it is up waits for it).
            self._writer_starting = asyncio.get_running_loop().create_task(self._start_log_writer(self._log_writer))
        await asyncio.to_thread(self.store.upgrade)  # every replica may race here: migrations serialise
        await self._start_placement()
        await self.registry.load_all()
        await self.follower.sync()  # the policies in force and the versions' desired states
        await self.election.step()  # lead at once when nobody else does
        await self.election.wait_started()
        self.predictions.start()
        self._loops = [
            _loop(self.follower.sync, s.sync_interval_s, "policy follower"),
            _loop(self.publisher.publish, s.window_publish_s, "window publisher"),
            _loop(self.election.step, s.leader_renew_s, "leader election"),
            _loop(self._housekeeping, HOUSEKEEPING_S, "housekeeping"),
        ]
        if self.metrics.multiprocess_dir is not None:
            self._loops.append(_loop(self._sync_metrics, 1.0, "metrics sync"))
        if s.repository_poll_s is not None:
            self._loops.append(_loop(self.repository_sync.poll, s.repository_poll_s, "repository sync"))
        if self._run_controller:
            self._loops.append(_loop(self.delivery.tick, s.rollout_tick_s, "delivery"))
        self.supply.cache_changed()
        if self.device_hosts is not None:
            self._loops.append(_loop(self._tend_device_hosts, 0.5, "runtime processes"))
        if self._reuse_port:
            await self._serve_public(app, inference_auth)
        self.dataplane.started = True
        log.info("ready", extra={"models": sorted(self.registry.models), "leader": self.election.is_leader})

    async def _serve_public(self, app: HttpAdapter, auth: InferenceAuth, *also: socket.socket) -> None:
        """Listen on the public HTTP and gRPC ports (and on `also`, the private listener: with the same HTTP
        server, or with a plain one of its own when the public ports speak TLS)."""
        s = self.settings
        public = _listen(s.host, s.http_port, reuse_port=self._reuse_port)
        self.http_port = public.getsockname()[1]
        tls = s.tls_cert_file is not None
        if tls:
            await self._serve_http(app, [public], tls=True)
            if also:
                await self._serve_http(app, list(also), tls=False)
        else:
            await self._serve_http(app, [public, *also], tls=False)
        if s.grpc_port >= 0:
            self._grpc, self.grpc_port = build_grpc_server(
                self.dataplane,
                s.host,
                s.grpc_port,
                s.max_body_bytes,
                auth,
                reuse_port=self._reuse_port,
                limits=GrpcLimits(
                    max_metadata_bytes=s.max_header_bytes,
                    idle_timeout_s=s.keep_alive_timeout_s,
                    handshake_timeout_s=s.header_timeout_s,
                ),
                tls=tls_files(s),
                quotas=self.quotas,
                repository=self.repository,
            )
            await self._grpc.start()
        log.info(
            "listening",
            extra={"http_port": self.http_port, "grpc_port": self.grpc_port, "host": s.host, "admin": self.control_url},
        )

    async def _serve_http(self, app: HttpAdapter, sockets: list[socket.socket], *, tls: bool) -> None:
        """An HTTP server on `sockets`, guarded against slow and idle clients (`http_guard`); HTTPS when `tls`."""
        s = self.settings
        secure: dict[str, Any] = {}
        if tls:
            secure = {"ssl_certfile": s.tls_cert_file, "ssl_keyfile": s.tls_key_file}
            if s.tls_client_ca_file is not None:
                secure |= {"ssl_ca_certs": str(s.tls_client_ca_file), "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,
            http=self.connections.protocol_class(direct=app, listeners=sockets),
            loop="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(max(1, s.drain_timeout_s)),
            timeout_keep_alive=s.keep_alive_timeout_s,  # type: ignore[arg-type]  # a float works (call_later)
            backlog=2048,
            proxy_headers=False,  # nothing here reads the client address; the middleware cost every request
            **secure,
        )
        server = _UvicornServer(config)
        task = asyncio.get_running_loop().create_task(server.serve(sockets=sockets))
        self._http.append((server, task))
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("HTTP server exited during start-up")
            await asyncio.sleep(0.01)

    @property
    def serving(self) -> bool:
        """Whether the HTTP servers are up and the gateway is not stopping (a Ray replica's health check)."""
        return not self._stopped and bool(self._http) and all(not task.done() for _, task in self._http)

    async def _lead(self, fence: Fence) -> None:
        """Elected: run the control plane and the monitors here."""
        await self.control.start(run_loop=self._run_controller)
        self.delivery.reset()  # this term reads the deliveries under way from the store
        await self.monitor.restore(sorted(self.registry.models))
        self.monitor.start(run_loop=self._run_controller)

    async def _follow(self) -> None:
        """Deposed (or shutting down): stop taking changes; keep serving."""
        await self.monitor.stop()
        await self.control.stop()

    @staticmethod
    async def _start_log_writer(writer: ProcessRowWriter) -> None:
        try:
            await writer.start()
        except WriterProcessError as exc:  # the first batch tries again; until then nothing is lost
            log.error("prediction log: %s", exc)

    async def _housekeeping(self) -> None:
        if self.election.is_leader:
            cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.settings.window_retention_s)
            await asyncio.to_thread(self.store.prune_windows, cutoff)

    async def _sync_metrics(self) -> None:
        self.metrics.sync_watched()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload_keys)

    def _on_stop_signal(self, sig: int) -> None:
        self.stop_signal = self.stop_signal or sig
        self.request_stop()

    def reload_keys(self) -> None:
        """SIGHUP: re-read the admin tokens and inference keys (their files and the environment's)."""
        if self.keys is not None:
            self.keys.reload("SIGHUP")

    def request_stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def wait_stopped(self) -> None:
        assert self._stopping is not None
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        """Drain: not ready, stop accepting, finish in-flight and queued requests, then close."""
        if self._stopped:
            return
        self._stopped = True
        timeout = self.settings.drain_timeout_s
        self.dataplane.draining = True
        log.info("draining", extra={"timeout_s": timeout})
        waits: list[asyncio.Future[Any]] = []
        for server, serving in self._http:
            server.should_exit = True
            waits.append(serving)
        if self._grpc is not None:
            waits.append(asyncio.ensure_future(self._grpc.stop(grace=timeout)))
        if waits:
            _done, pending = await asyncio.wait(waits, timeout=timeout + 5)
            for waiting in pending:
                waiting.cancel()
        drained = await self.registry.drain(timeout)
        if not drained:
            log.warning("drain timeout passed with requests still queued")
        await self.shadows.aclose()
        for task in self._loops:
            await cancel_and_wait(task)
        # Every request has finished and every shadow copy has answered: flush their records and window
        # statistics before the store closes (SIGTERM loses no record that was queued).
        await self.predictions.close(timeout)
        if self._writer_starting is not None:
            await self._writer_starting
        if self._log_writer is not None:
            await self._log_writer.close()
        if self.spool is not None:
            self.spool.close()
        await self.publisher.publish()
        await self.election.resign()
        await self.monitor.stop()
        await self.control.aclose()
        if self._forwarder is not None:
            await self._forwarder.aclose()
        await self.registry.close()
        if self._placement is not None:
            await self._placement.close()
        if self.device_hosts is not None:
            await asyncio.to_thread(self.device_hosts.stop)
        await self.connections.stop()
        if self.keys is not None:
            await self.keys.stop()
        if self._revision_probe is not None:
            self._revision_probe.close()
        await asyncio.to_thread(self.store.close)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.tracer_provider.shutdown()
        log.info("stopped")


def _open_spool(settings: GatewaySettings) -> Spool | None:
    """This process's prediction spool (a directory of its own under the state directory), or None when it is
    off or cannot be opened (logged: the log then drops what memory cannot hold, as without one)."""
    if not settings.prediction_spool_bytes:
        return None
    root = settings.state_dir / "prediction-spool"
    try:
        spool = Spool.claim(root, max_bytes=settings.prediction_spool_bytes)
    except OSError as exc:
        log.error("prediction log: no spool (cannot open %s): %s", root, exc)
        return None
    if spool.pending:
        log.warning(
            "prediction log: the spool %s holds %d bytes from an earlier run: writing them first",
            spool.directory,
            spool.bytes,
        )
    return spool


def _watch_spool(metrics: GatewayMetrics, spool: Spool, counters: LogCounters) -> None:
    """The spool's metrics: its own counters, and the log's drops while it was in use."""
    c = spool.counters
    metrics.watch_prediction_spool(
        lambda: {
            "spooled": c.spooled_records,
            "replayed": c.replayed_records,
            "dropped": counters.dropped_beyond_spool,
        },
        lambda: {
            "spooled": c.spooled_bytes,
            "replayed": c.replayed_bytes,
            "dropped": counters.dropped_beyond_spool_bytes,
            "corrupt": c.corrupt_bytes,
        },
        lambda: spool.bytes,
        spool.max_bytes,
    )


HOUSEKEEPING_S = 300.0


def _loop(tick: Callable[[], Awaitable[None]], every_s: float, what: str) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(tick_forever(tick, every_s, what), name=what)


def _listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket. `reuse_port`: shared with the other workers of this machine (SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def tls_files(settings: GatewaySettings) -> tuple[bytes, bytes, bytes | None] | None:
    """(certificate chain, key, client CA or None) as PEM bytes, when TLS is configured."""
    if settings.tls_cert_file is None:
        return None
    if settings.tls_key_file is None:
        raise ValueError("--tls-cert needs --tls-key")
    ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file is not None else None
    return settings.tls_cert_file.read_bytes(), settings.tls_key_file.read_bytes(), ca


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def tune_gc(gen0_threshold: int) -> None:
    """Keep the collector off the tail latency of a long-running server.

    The gateway holds a large, long-lived heap from start-up (FastAPI, pydantic, onnx, grpc);
    a full collection walking it stalls the event loop for tens of milliseconds. Freezing it
    after start-up moves it out of the collector's view, and a larger first generation makes
    collections rarer. Measured at 64 connections: p99 from about 90 ms to under 30 ms.
    """
    gc.collect()
    gc.freeze()
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


async def serve(
    settings: GatewaySettings,
    on_ready: Callable[[Gateway], None] | None = None,
    *,
    reuse_port: bool = False,
    cohort_ready: Callable[[], bool] | None = None,
) -> int | None:
    """Run one gateway as this process: signals, start-up, GC tuning, drain on SIGTERM; the signal that stopped it."""
    gateway = Gateway(settings, reuse_port=reuse_port, cohort_ready=cohort_ready)
    gateway.install_signal_handlers()
    await gateway.start()
    tune_gc(settings.gc_gen0_threshold)
    if on_ready is not None:
        on_ready(gateway)
    await gateway.wait_stopped()
    return gateway.stop_signal


def run_replica(
    settings: GatewaySettings,
    *,
    on_ready: Callable[[Gateway], None] | None = None,
    reuse_port: bool = False,
    cohort_ready: Callable[[], bool] | None = None,
) -> int | None:
    """`serve` on uvloop (uvicorn[standard] brings it on Linux), until SIGTERM or SIGINT (returned)."""
    coro = serve(settings, on_ready, reuse_port=reuse_port, cohort_ready=cohort_ready)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)
