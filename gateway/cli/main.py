"""The `sluice` command line."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from gateway.admin.auth import AdminAuth, AdminTokenError
from gateway.admin.quotas import QuotaError, parse_quotas
from gateway.cli import admin as cli_admin
from gateway.cli.labels import labels_app
from gateway.cli.monitor import monitor_app
from gateway.cli.repo import repo_app
from gateway.errors import RepositoryUnavailable
from gateway.observability.logs import configure_logging
from gateway.settings import GatewaySettings

app = typer.Typer(
    name="sluice",
    help="Sluice: a KServe V2 inference gateway with dynamic batching, traffic control and monitoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)

ModelRepo = Annotated[
    str,
    typer.Option(
        "--model-repo",
        "-m",
        help="Model repository: <repo>/<model>/<version>/model.onnx, a local path or s3://bucket/prefix, "
        "gs://bucket/prefix, az://container/prefix (credentials from the provider's environment and files, "
        "never in the URL; versions are cached under --state-dir).",
    ),
]
CacheMaxBytes = Annotated[
    int,
    typer.Option(
        "--model-cache-max-bytes",
        help="Bound of the local cache of an object-store repository: past it, versions not loaded are evicted.",
    ),
]
RepositoryPoll = Annotated[
    float | None,
    typer.Option(
        "--repository-poll-s",
        help="Sync the model repository every this many seconds (new and removed versions, as each "
        "version_policy says); default: only on `sluice repo sync` or POST /admin/repository/sync.",
        show_default=False,
    ),
]
RepositorySettle = Annotated[
    float,
    typer.Option(
        "--repository-settle-s",
        help="The poll loads a new version of a local repository only once its files have not changed for this "
        "many seconds (by their time, or as the polls saw them), never a file still being copied; 0: at once.",
    ),
]
Host = Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 listens on every interface.")]
HttpPort = Annotated[int, typer.Option("--http-port", help="HTTP port (V2 REST and /metrics); 0 picks a free one.")]
GrpcPort = Annotated[
    int,
    typer.Option("--grpc-port", help="gRPC port (V2 GRPCInferenceService); 0 picks a free one, -1 disables."),
]
MaxBody = Annotated[int, typer.Option("--max-body-bytes", help="Largest request body accepted; larger gets 413.")]
Drain = Annotated[
    float, typer.Option("--drain-timeout", help="Seconds SIGTERM waits for in-flight and queued requests.")
]
Threads = Annotated[
    int, typer.Option("--runtime-threads", help="Threads running model batches (default: one per core).")
]
SampleRatio = Annotated[
    float,
    typer.Option(
        "--trace-sample-ratio",
        help="Share of root traces recorded when an exporter is set (unless OTEL_TRACES_SAMPLER is set).",
    ),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
LogFormat = Annotated[str, typer.Option("--log-format", help="json or text.")]
StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        help="Directory of the SQLite state database (policies, rollouts, audit log); "
        "SLUICE_DATABASE_URL overrides it with PostgreSQL.",
    ),
]
AdminTokensFile = Annotated[
    Path | None,
    typer.Option(
        "--admin-tokens-file",
        help="File of admin API tokens, one name:token a line (also: SLUICE_ADMIN_TOKENS). None: admin API disabled.",
        show_default=False,
    ),
]
RayMode = Annotated[
    bool,
    typer.Option(
        "--ray",
        help="Serve on Ray Serve: each model version a deployment of its own, the gateway's replicas an ingress "
        "deployment; state in PostgreSQL (SLUICE_DATABASE_URL). Install the 'ray' extra.",
    ),
]
RayAddress = Annotated[
    str | None, typer.Option("--ray-address", help="Ray mode: join this cluster instead of starting a local Ray.")
]
RayIngress = Annotated[int, typer.Option("--ray-ingress-replicas", help="Ray mode: gateway replicas on the ports.")]
RayCpus = Annotated[
    int | None, typer.Option("--ray-num-cpus", help="Ray mode, local Ray: CPUs it may use (default: all).")
]
Workers = Annotated[
    str,
    typer.Option(
        "--workers",
        help="Worker processes sharing the ports (a number, or auto: one per core). One of them also runs the "
        "control plane; the others forward admin calls to it. Each keeps its own copy of every model.",
    ),
]
MaxHeader = Annotated[
    int, typer.Option("--max-header-bytes", help="Largest request line and headers (gRPC: metadata); larger: 431.")
]
MaxConnections = Annotated[
    int,
    typer.Option("--max-connections", help="Open HTTP connections per process; at it a new one evicts the idlest."),
]
HeaderTimeout = Annotated[
    float, typer.Option("--header-timeout", help="Seconds a connection has to send a request's headers; else 408.")
]
BodyTimeout = Annotated[
    float, typer.Option("--body-timeout", help="Seconds a request's body may take after its headers; else 408.")
]
KeepAlive = Annotated[
    float, typer.Option("--keep-alive-timeout", help="Seconds an idle keep-alive connection or gRPC channel stays.")
]
TlsCert = Annotated[
    Path | None,
    typer.Option(
        "--tls-cert", help="PEM certificate chain: HTTPS and gRPC over TLS (with --tls-key).", show_default=False
    ),
]
TlsKey = Annotated[Path | None, typer.Option("--tls-key", help="PEM private key of --tls-cert.", show_default=False)]
TlsClientCa = Annotated[
    Path | None,
    typer.Option(
        "--tls-client-ca",
        help="PEM CA bundle: clients must present a certificate it signed (mutual TLS).",
        show_default=False,
    ),
]
InferenceKeysFile = Annotated[
    Path | None,
    typer.Option(
        "--inference-keys-file",
        help="File of inference keys, one name:key a line (also: SLUICE_INFERENCE_KEYS); reloaded on SIGHUP or change.",
        show_default=False,
    ),
]
InferenceQuotas = Annotated[
    str | None,
    typer.Option(
        "--inference-quotas",
        help="Per key name: name=rate or name=rate/burst (requests a second), comma separated; * for others.",
        show_default=False,
    ),
]
WebhookUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--webhook-url",
        help="URL told about every rollout transition (repeatable); bodies are signed with SLUICE_WEBHOOK_SECRET.",
    ),
]

_DEFAULTS = GatewaySettings()


def _int_option(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        console.print(f"[red]error:[/] {name} must be a number or 'auto', got {escape(value)!r}")
        raise typer.Exit(2) from None


def _scan_models(settings: GatewaySettings) -> dict[str, bool]:
    """The repository's models and whether each has versions to serve (the supervisor loads none itself)."""
    from gateway.serving.repository import scan_repository
    from gateway.serving.repository_remote import open_repository

    try:
        sources = scan_repository(open_repository(settings.model_repo, settings.cache_dir))
    except RepositoryUnavailable:
        return {}
    return {m.name: not m.error and bool(m.versions) for m in sources}


def _repository_problem(settings: GatewaySettings) -> str | None:
    """Why --model-repo cannot be served (naming it), or None."""
    from gateway.storage.object_store import RepositoryUrlError, open_store, parse_repository_url

    if isinstance(settings.model_repo, Path):
        return None if settings.model_repo.is_dir() else f"model repository {settings.model_repo} is not a directory"
    try:
        open_store(parse_repository_url(settings.model_repo))  # its configuration is checked, nothing is sent
    except RepositoryUrlError as exc:
        return str(exc)
    return None


def _settings(**values: Any) -> GatewaySettings:
    return GatewaySettings(**{k: v for k, v in values.items() if v is not None})


def _banner(
    settings: GatewaySettings,
    http_port: int,
    grpc_port: int,
    models: dict[str, bool],
    demo: bool,
    notes: tuple[str, ...] = (),
) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    ready = sorted(n for n, ok in models.items() if ok)
    failed = sorted(n for n, ok in models.items() if not ok)
    lines = [
        f"Sluice is ready: HTTP http://{host}:{http_port}" + (f", gRPC {host}:{grpc_port}" if grpc_port > 0 else ""),
        f"models: {', '.join(ready) or 'none'}" + (f"; not ready: {', '.join(failed)}" if failed else ""),
    ]
    if demo and "mlp" in ready:
        row = ",".join(["0.5"] * 32)
        lines.append(
            f"try: curl -s -X POST http://{host}:{http_port}/v2/models/mlp/infer "
            f"-H 'Content-Type: application/json' "
            f'-d \'{{"inputs":[{{"name":"input","shape":[1,32],"datatype":"FP32","data":[{row}]}}]}}\''
        )
    lines.append(f"console: http://{host}:{http_port}/console/")
    lines += notes
    lines.append(f"metrics: http://{host}:{http_port}/metrics   stop: Ctrl-C (drains in-flight requests)")
    print("\n".join(lines), flush=True)


def _start_ray(settings: GatewaySettings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    if (problem := _repository_problem(settings)) is not None:
        console.print(f"[red]error:[/] {escape(problem)}")
        raise typer.Exit(2)
    try:
        from gateway.ray.driver import RayModeError, check_settings, run_ray
    except ImportError:
        console.print("[red]error:[/] Ray mode needs Ray Serve: pip install 'sluicegate[ray]'")
        raise typer.Exit(2) from None
    try:
        check_settings(settings)
        AdminAuth.from_settings(settings)
    except (RayModeError, AdminTokenError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    def on_ready(deployed: dict[str, object]) -> None:
        print(
            f"Ray Serve: {settings.ray_ingress_replicas} ingress replicas, versions {deployed['versions']}", flush=True
        )
        print(f"Ray cluster: {deployed['ray_address']}", flush=True)
        models = _scan_models(settings)
        _banner(settings, settings.http_port, settings.grpc_port, models, False)

    try:
        status = run_ray(
            settings,
            address=settings.ray_address,
            ingress_replicas=settings.ray_ingress_replicas,
            num_cpus=settings.ray_num_cpus,
            ingress_cpus=settings.ray_ingress_cpus,
            object_store_mb=settings.ray_object_store_mb,
            on_ready=on_ready,
        )
    except RayModeError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if status:
        raise typer.Exit(status)


INTERRUPTED = 128 + signal.SIGINT
"""The exit status after a Ctrl-C (and a clean drain)."""


def _no_grpc_fork_handlers() -> None:
    """Turn off gRPC's fork support (unless the environment sets it) before gRPC starts.

    Its handlers (pthread_atfork) exist for a child that goes on using gRPC after a fork without exec. Sluice
    never makes one: its workers and the monitor's pool are spawned, and the prediction log's writer is a new
    interpreter, exec'd straight after the fork (uvloop's spawn forks). Left on, each such fork logs
    `fork_posix.cc:71 Other threads are currently calling into gRPC, skipping fork() handlers` to the
    terminal. The setting reaches the spawned workers through the environment.
    """
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")


def _start(
    settings: GatewaySettings,
    banner: bool,
    notes: tuple[str, ...] = (),
    on_serving: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGTERM or Ctrl-C (then exit 130, as a shell expects of an interrupted command). `notes`: more
    banner lines; `on_serving(http_url)`: told once ready."""
    _no_grpc_fork_handlers()
    from gateway.server import Gateway, run_replica
    from gateway.workers import Supervisor, WorkerStartFailed, worker_count

    configure_logging(settings.log_level, settings.log_format)
    if (problem := _repository_problem(settings)) is not None:
        console.print(f"[red]error:[/] {escape(problem)}")
        raise typer.Exit(2)
    try:
        workers = worker_count(settings.workers)
    except ValueError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None

    def on_ready(gateway: Gateway) -> None:
        models = {n: bool(m.ready_versions()) for n, m in gateway.registry.models.items()}
        _banner(settings, gateway.http_port, gateway.grpc_port, models, banner, notes)
        if on_serving is not None:
            on_serving(f"http://127.0.0.1:{gateway.http_port}")

    def on_workers_ready(resolved: GatewaySettings) -> None:
        print(f"{workers} workers serving", flush=True)
        _banner(resolved, resolved.http_port, resolved.grpc_port, _scan_models(resolved), banner, notes)

    try:
        parse_quotas(settings.inference_quotas)
        if workers == 1:
            if run_replica(settings, on_ready=on_ready) == signal.SIGINT:
                raise typer.Exit(INTERRUPTED)
        else:
            AdminAuth.from_settings(settings)  # a bad token list stops start-up before any worker starts
            try:
                status = Supervisor(settings, workers, on_ready=on_workers_ready).run()
            except WorkerStartFailed as exc:
                console.print(f"[red]error:[/] {escape(str(exc))}")
                raise typer.Exit(1) from None
            if status:
                raise typer.Exit(status)
    except (AdminTokenError, QuotaError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except RepositoryUnavailable as exc:  # an object store away at start, with no listing in the cache yet
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except OSError as exc:
        console.print(f"[red]error:[/] cannot listen on {settings.host}: {exc.strerror or exc}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    model_repo: ModelRepo = str(_DEFAULTS.model_repo),
    host: Host = _DEFAULTS.host,
    http_port: HttpPort = _DEFAULTS.http_port,
    grpc_port: GrpcPort = _DEFAULTS.grpc_port,
    max_body_bytes: MaxBody = _DEFAULTS.max_body_bytes,
    drain_timeout: Drain = _DEFAULTS.drain_timeout_s,
    runtime_threads: Threads = _DEFAULTS.runtime_threads,
    trace_sample_ratio: SampleRatio = _DEFAULTS.trace_sample_ratio,
    log_level: LogLevel = _DEFAULTS.log_level,
    log_format: LogFormat = _DEFAULTS.log_format,
    state_dir: StateDir = _DEFAULTS.state_dir,
    admin_tokens_file: AdminTokensFile = None,
    webhook_url: WebhookUrls = None,
    workers: Workers = str(_DEFAULTS.workers),
    max_header_bytes: MaxHeader = _DEFAULTS.max_header_bytes,
    max_connections: MaxConnections = _DEFAULTS.max_connections,
    header_timeout: HeaderTimeout = _DEFAULTS.header_timeout_s,
    body_timeout: BodyTimeout = _DEFAULTS.body_timeout_s,
    keep_alive_timeout: KeepAlive = _DEFAULTS.keep_alive_timeout_s,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_client_ca: TlsClientCa = None,
    inference_keys_file: InferenceKeysFile = None,
    inference_quotas: InferenceQuotas = None,
    ray: RayMode = False,
    ray_address: RayAddress = _DEFAULTS.ray_address,
    ray_ingress_replicas: RayIngress = _DEFAULTS.ray_ingress_replicas,
    ray_num_cpus: RayCpus = _DEFAULTS.ray_num_cpus,
    model_cache_max_bytes: CacheMaxBytes = _DEFAULTS.model_cache_max_bytes or 0,
    repository_poll_s: RepositoryPoll = None,
    repository_settle_s: RepositorySettle = _DEFAULTS.repository_settle_s,
) -> None:
    """Serve a model repository over V2 HTTP and gRPC until SIGTERM or Ctrl-C."""
    settings = _settings(
        model_repo=model_repo,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        max_body_bytes=max_body_bytes,
        drain_timeout_s=drain_timeout,
        runtime_threads=runtime_threads,
        trace_sample_ratio=trace_sample_ratio,
        log_level=log_level,
        log_format=log_format,
        state_dir=state_dir,
        admin_tokens_file=admin_tokens_file,
        webhook_urls=webhook_url or None,
        workers=workers if workers == "auto" else _int_option(workers, "--workers"),
        max_header_bytes=max_header_bytes,
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        keep_alive_timeout_s=keep_alive_timeout,
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        tls_client_ca_file=tls_client_ca,
        inference_keys_file=inference_keys_file,
        inference_quotas=inference_quotas,
        ray_address=ray_address,
        ray_ingress_replicas=ray_ingress_replicas,
        ray_num_cpus=ray_num_cpus,
        model_cache_max_bytes=model_cache_max_bytes,
        repository_poll_s=repository_poll_s,
        repository_settle_s=repository_settle_s,
    )
    if (settings.tls_cert_file is None) != (settings.tls_key_file is None):
        console.print("[red]error:[/] --tls-cert and --tls-key go together")
        raise typer.Exit(2)
    if ray:
        _start_ray(settings)
        return
    _start(settings, banner=False)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the demo model repository.")] = Path(
        "demo-models"
    ),
    http_port: HttpPort = _DEFAULTS.http_port,
    grpc_port: GrpcPort = _DEFAULTS.grpc_port,
    log_level: LogLevel = "error",
    log_format: LogFormat = "text",
    build_only: Annotated[bool, typer.Option("--build-only", help="Write the demo repository and exit.")] = False,
    tour: Annotated[
        bool,
        typer.Option(
            "--tour/--no-tour",
            help="Drive the demo model churn through a shadow, a canary rolled back, one promoted, labels, a "
            "drift episode and a new version delivered by policy (bounded: a few minutes), so the console has "
            "something to show.",
        ),
    ] = True,
    monitor_every: Annotated[
        float, typer.Option("--monitor-every", help="Seconds between churn's scheduled drift and accuracy runs.")
    ] = 20.0,
) -> None:
    """Write a demo model repository (ONNX models built on the spot, no downloads) and serve it, with the web
    console, on 127.0.0.1 only: the demo's admin token is printed once."""
    import secrets

    from gateway.cli.demo import build_demo_repository

    build_demo_repository(directory, monitor_schedule_s=monitor_every)
    console.print(f"demo model repository written to {directory.resolve()}")
    if build_only:
        return
    token = secrets.token_urlsafe(24)
    configured = _DEFAULTS.admin_tokens.get_secret_value().strip() if _DEFAULTS.admin_tokens else ""
    settings = _settings(
        model_repo=directory,
        host="127.0.0.1",  # the demo prints an admin token: it never listens beyond this machine
        http_port=http_port,
        grpc_port=grpc_port,
        log_level=log_level,
        log_format=log_format,
        admin_tokens=",".join(t for t in (configured, f"demo:{token}") if t),
    )
    notes = (
        f"admin token for the console and the admin API (name 'demo', shown only now): {token}",
        "tour: on (sluice demo --no-tour for none); it takes a few minutes" if tour else "tour: off",
    )

    with contextlib.suppress(ImportError):  # the tour's failing canary would fill the terminal with ORT's errors
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)

    def serving(url: str) -> None:
        if tour:
            from gateway.cli.tour import start_tour

            start_tour(url, token, repo=directory)

    _start(settings, banner=True, notes=notes, on_serving=serving)


# Admin commands: they talk to a running gateway's /admin API (see gateway.cli.admin).
app.command("models")(cli_admin.models)
app.add_typer(cli_admin.traffic_app, name="traffic")
app.add_typer(cli_admin.canary_app, name="canary")
app.command("shadow")(cli_admin.shadow)
app.command("rollback")(cli_admin.rollback)
app.command("load")(cli_admin.load)
app.command("unload")(cli_admin.unload)
app.command("audit")(cli_admin.audit)
app.add_typer(cli_admin.db_app, name="db")
app.add_typer(repo_app, name="repo")
app.add_typer(labels_app, name="labels")
app.add_typer(monitor_app, name="monitor")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
