"""Gateway settings: typed, documented, read from `SLUICE_*` environment variables or CLI options.

Per-model settings (batching, version policy, providers) live in each model's config.yaml
(see `gateway.serving.model_config`), not here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    model_repo: Path | str = Field(
        Path("models"),
        description=(
            "Model repository: <repo>/<model>/<version>/model.onnx, a local path or s3://bucket/prefix, "
            "gs://bucket/prefix, az://container/prefix (credentials from the provider's environment and files)."
        ),
    )
    model_cache_dir: Path | None = Field(
        None, description="Where versions fetched from object storage are kept (default: <state_dir>/model-cache)."
    )
    model_cache_max_bytes: int | None = Field(
        10 * 1024**3,
        ge=0,
        description="Bound of the model cache: past it, versions not loaded are evicted, least recently used first.",
    )
    repository_poll_s: float | None = Field(
        None,
        gt=0,
        description="How often the control plane syncs the model repository (new and removed versions); None: only "
        "on POST /admin/repository/sync or `sluice repo sync`.",
    )
    repository_settle_s: float = Field(
        2.0,
        ge=0,
        description="The periodic sync loads a new version of a local repository only once its files have not "
        "changed for this many seconds (by their time, or as the polls saw them): a file still being copied is not "
        "loaded half. 0: at once.",
    )

    @field_validator("model_repo", mode="before")
    @classmethod
    def _repo_location(cls, value: object) -> object:
        """A URL stays text (a Path would fold its '//'); anything else is a local path."""
        if isinstance(value, str) and "://" not in value:
            return Path(value)
        return value

    @property
    def cache_dir(self) -> Path:
        return self.model_cache_dir or self.state_dir / "model-cache"

    host: str = Field("127.0.0.1", description="Address both servers bind to; 0.0.0.0 to listen on every interface.")
    http_port: int = Field(8000, description="HTTP port (V2 REST, /metrics); 0 picks a free port.")
    grpc_port: int = Field(
        8001, description="gRPC port (V2 GRPCInferenceService); 0 picks a free port, -1 disables gRPC."
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, description="Largest accepted request body; larger ones get 413.")
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="Largest request line and headers (HTTP) and metadata (gRPC); larger: 431."
    )
    max_connections: int = Field(
        4096,
        ge=1,
        description="Open HTTP connections per process; at the limit a new one evicts the longest idle one.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time a connection has to send a request's headers (slow-loris defence); else 408."
    )
    body_timeout_s: float = Field(60.0, gt=0, description="Time a request's body may take after its headers; else 408.")
    keep_alive_timeout_s: float = Field(
        30.0, gt=0, description="An idle keep-alive connection (HTTP) or channel (gRPC) is closed after this."
    )
    tls_cert_file: Path | None = Field(
        None, description="PEM certificate chain: with tls_key_file, HTTPS and gRPC over TLS (default: plain)."
    )
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA bundle: clients must present a certificate it signed (mutual TLS)."
    )
    inference_quotas: str | None = Field(
        None,
        description=(
            "Per inference key name: name=rate[/burst] (requests per second, burst) comma separated; "
            "'*' for every key not named. Over it: 429 with Retry-After. Per process."
        ),
    )
    drain_timeout_s: float = Field(
        30.0, description="On SIGTERM, how long in-flight and queued requests may take to finish."
    )
    runtime_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        description="Threads that run model batches (ONNX Runtime releases the GIL).",
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: str = Field("json", description="json (one object a line) or text.")
    state_dir: Path = Field(Path(".sluice"), description="Where the SQLite state database lives (default engine).")
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL of the state database, e.g. postgresql+psycopg://u@host/db (wins over state_dir).",
    )
    admin_tokens: SecretStr | None = Field(
        None,
        description="Admin API bearer tokens as name:token pairs, comma separated; the name goes to the audit log.",
    )
    admin_tokens_file: Path | None = Field(
        None, description="File with one name:token pair a line (# comments allowed)."
    )
    inference_keys: SecretStr | None = Field(
        None, description="Optional inference keys (name:key pairs, comma separated); when set, infer needs one."
    )
    inference_keys_file: Path | None = Field(None, description="File with one inference name:key pair a line.")
    key_reload_interval_s: float = Field(
        2.0, gt=0, description="How often the admin tokens and inference keys files are checked for changes."
    )
    webhook_urls: list[str] = Field(default_factory=list, description="URLs told about every rollout transition.")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key that signs webhook bodies.")
    rollout_tick_s: float = Field(1.0, gt=0, description="How often the rollout controller checks for due analyses.")
    gc_gen0_threshold: int = Field(
        10_000, description="Python GC first-generation threshold for the serving process; 0 keeps Python's default."
    )
    trace_sample_ratio: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description=(
            "Share of root traces recorded when an exporter is set, unless OTEL_TRACES_SAMPLER is set (sampled "
            "callers: always)."
        ),
    )
    service_name: str = Field("sluice", description="OpenTelemetry service.name and server metadata name.")
    prediction_log_capacity: int = Field(
        10_000,
        ge=1,
        description=(
            "Prediction records held in memory for writing (the batch being written included); beyond it they "
            "go to the spool, then are dropped and counted."
        ),
    )
    prediction_spool_bytes: int = Field(
        1024**3,
        ge=0,
        description=(
            "Local disk for prediction records the database cannot take now (an outage), beyond the memory "
            "capacity: append-only segments in <state_dir>/prediction-spool/<n>, one directory per process, "
            "written back in order when the database is back (after a restart too). 0: no spool."
        ),
    )
    prediction_log_writer: Literal["process", "thread"] = Field(
        "process",
        description=(
            "Where the prediction log's database writes run: a child process (the serving process only encodes "
            "and hands batches over, keeping its GIL for requests) or a thread of the serving process."
        ),
    )
    prediction_retention_days: float | None = Field(
        30.0, gt=0, description="Prediction log records older than this are deleted (None: kept by age)."
    )
    prediction_retention_rows: int | None = Field(
        None, ge=0, description="At most this many prediction records are kept, newest first, across models."
    )
    monitor_tick_s: float = Field(
        5.0, gt=0, description="How often the monitor checks which drift and accuracy runs are due."
    )
    reports_dir: Path | None = Field(
        None, description="Where Evidently HTML drift reports are written (default: <state_dir>/reports)."
    )
    prediction_prune_interval_s: float = Field(
        300.0, gt=0, description="How often the prediction log is pruned to its retention."
    )
    workers: int | Literal["auto"] = Field(
        1,
        description=(
            "Worker processes serving the HTTP and gRPC ports together (SO_REUSEPORT); auto: one per core. "
            "Each has its own runtimes and batchers; one of them also runs the control plane."
        ),
    )
    leader_lease_s: float = Field(
        5.0, gt=0, description="Time to live of the control plane's leader lease: a dead leader is replaced within it."
    )
    leader_renew_s: float = Field(1.0, gt=0, description="How often the leader renews its lease and others try for it.")
    sync_interval_s: float = Field(
        0.2, gt=0, description="How often a replica checks the state store for control-plane changes to follow."
    )
    window_publish_s: float = Field(
        1.0, gt=0, description="How often a replica publishes its per-version window statistics to the state store."
    )
    window_retention_s: float = Field(
        2 * 86400.0, gt=0, description="Window statistics older than this are deleted (the console charts them)."
    )
    control_host: str = Field(
        "127.0.0.1", description="Address of the replica's private listener, where other replicas forward admin calls."
    )
    control_port: int = Field(0, ge=0, description="Port of that private listener; 0 picks a free one.")
    advertise_host: str | None = Field(
        None, description="Host other replicas use to reach this one's private listener (default: control_host)."
    )
    ray_address: str | None = Field(
        None, description="Ray mode: the cluster to join (ray://host:10001 or auto); none starts a local Ray."
    )
    ray_ingress_replicas: int = Field(2, ge=1, description="Ray mode: gateway replicas serving the ports.")
    ray_ingress_cpus: float = Field(1.0, ge=0, description="Ray mode: CPUs Ray reserves for each ingress replica.")
    ray_num_cpus: int | None = Field(None, ge=1, description="Ray mode, local Ray only: the CPUs it may use (all).")
    ray_object_store_mb: int = Field(
        200, ge=75, description="Ray mode, local Ray only: object store size (batches go through it)."
    )
