"""The `sluice` command line."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from gateway.admin.auth import AdminTokenError
from gateway.cli import admin as cli_admin
from gateway.cli.labels import labels_app
from gateway.cli.monitor import monitor_app
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
    Path, typer.Option("--model-repo", "-m", help="Model repository: <repo>/<model>/<version>/model.onnx.")
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
    typer.Option("--trace-sample-ratio", help="Share of root traces recorded (unless OTEL_TRACES_SAMPLER is set)."),
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
WebhookUrls = Annotated[
    list[str] | None,
    typer.Option(
        "--webhook-url",
        help="URL told about every rollout transition (repeatable); bodies are signed with SLUICE_WEBHOOK_SECRET.",
    ),
]

_DEFAULTS = GatewaySettings()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvicorn[standard] brings uvloop on Linux
        asyncio.run(coro)


def _settings(**values: Any) -> GatewaySettings:
    return GatewaySettings(**{k: v for k, v in values.items() if v is not None})


def _start(settings: GatewaySettings, banner: bool) -> None:
    from gateway.server import Gateway, serve

    configure_logging(settings.log_level, settings.log_format)
    if not settings.model_repo.is_dir():
        console.print(f"[red]error:[/] model repository {settings.model_repo} is not a directory")
        raise typer.Exit(2)

    def on_ready(gateway: Gateway) -> None:
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        models = gateway.registry.models
        ready = sorted(n for n, m in models.items() if m.ready_versions())
        failed = sorted(n for n, m in models.items() if not m.ready_versions())
        lines = [
            f"Sluice is ready: HTTP http://{host}:{gateway.http_port}"
            + (f", gRPC {host}:{gateway.grpc_port}" if gateway.grpc_port else ""),
            f"models: {', '.join(ready) or 'none'}" + (f"; not ready: {', '.join(failed)}" if failed else ""),
        ]
        if banner and "mlp" in ready:
            row = ",".join(["0.5"] * 32)
            lines.append(
                f"try: curl -s -X POST http://{host}:{gateway.http_port}/v2/models/mlp/infer "
                f"-H 'Content-Type: application/json' "
                f'-d \'{{"inputs":[{{"name":"input","shape":[1,32],"datatype":"FP32","data":[{row}]}}]}}\''
            )
        lines.append(f"metrics: http://{host}:{gateway.http_port}/metrics   stop: Ctrl-C (drains in-flight requests)")
        print("\n".join(lines), flush=True)

    try:
        _run(serve(settings, on_ready))
    except AdminTokenError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]error:[/] cannot listen on {settings.host}: {exc.strerror or exc}")
        raise typer.Exit(1) from None


@app.command()
def serve(
    model_repo: ModelRepo = _DEFAULTS.model_repo,
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
    )
    _start(settings, banner=False)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write the demo model repository.")] = Path(
        "demo-models"
    ),
    host: Host = _DEFAULTS.host,
    http_port: HttpPort = _DEFAULTS.http_port,
    grpc_port: GrpcPort = _DEFAULTS.grpc_port,
    log_level: LogLevel = "warning",
    log_format: LogFormat = "text",
    build_only: Annotated[bool, typer.Option("--build-only", help="Write the demo repository and exit.")] = False,
) -> None:
    """Write a demo model repository (ONNX models built on the spot, no downloads) and serve it."""
    from gateway.cli.demo import build_demo_repository

    build_demo_repository(directory)
    console.print(f"demo model repository written to {directory.resolve()}")
    if build_only:
        return
    settings = _settings(
        model_repo=directory,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        log_level=log_level,
        log_format=log_format,
    )
    _start(settings, banner=True)


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
app.add_typer(labels_app, name="labels")
app.add_typer(monitor_app, name="monitor")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
