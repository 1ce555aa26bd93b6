"""A model's optional `config.yaml`, beside its version folders.

```yaml
batching:
  max_batch_size: 32        # rows per runtime call; 0 = run each request alone
  max_queue_delay_ms: 2
  queue_capacity: 1024
  max_concurrent_batches: 1
  greedy: true
timeout_ms: 30000           # default per-request timeout
version_policy:             # one of: latest: N | all: true | specific: [1, 3]
  latest: 2
runtime:
  kind: onnx                # or remote (a V2 server, e.g. Triton or another Sluice)
  execution_providers: [cuda, cpu]
  intra_op_threads: 1
  inline_max_ms: 1.0        # batches this quick (32 in a row) run on the event loop's thread; 0: never
  filename: model.onnx
  # kind: remote only
  url: 127.0.0.1:8001
  protocol: grpc            # or http
  remote_model: name        # default: this model's name
  sha256: {1: 9f86d08...}   # expected digest of each version's file: a file that differs is refused
  placement: auto           # worker: a session in every worker; device: one runtime process per device that
                            # every worker sends its batches to; auto: device on a GPU with several workers
  instances: 1              # placement device: sessions of each version per runtime process, each running
                            # one batch at a time (Triton's instance count: concurrent streams on one GPU)
  devices: [0]              # placement device: CUDA ordinals, one runtime process each, or all (every visible
                            # GPU); batches go to the least loaded. On the CPU each ordinal is a CPU runtime
                            # process of its own (0 is `cpu`, 1 is `cpu:1`), and all is the one `cpu`
watchdog:                   # a runtime call that never returns (gateway/serving/watchdog.py)
  call_timeout_ms: 60000    # a call running longer is cancelled (ONNX Runtime's terminate flag) and counted;
                            # default null: none (a watched version never runs inline on the event loop)
  unresponsive_after: 3     # that many such calls in a row mark the version not ready ...
  probe_interval_s: 5       # ... until a probe call (a row of zeros) answers in time again
guards:                     # tainted inputs (gateway/serving/guards.py)
  action: refuse            # refuse: 400 naming the feature; flag: serve it, count it
  inputs:
    input: {allow_nan: false, allow_inf: false}
  features:                 # by name: input[3], a width-1 input's name, or a monitoring.feature_names entry
    age: {min: 0, max: 130}
    input[5]: {allowed: [0, 1, 2]}
logging:                    # the prediction log (monitors/prediction_log.py)
  enabled: true
  sample_rate: 1.0          # share of predictions logged, decided by a hash of the prediction id
monitoring:                 # drift, accuracy and triggers (gateway/monitor_service.py)
  task: classification      # or regression: which accuracy figures labels give
  feature_names: [age, income, ...]   # names of the flattened input values, in order
  drift:
    schedule_s: 300         # run every 300 s for the stable and the canary; 0: on demand only
    window_rows: 1000       # the last N logged rows of the version ...
    window_s: null          # ... or those of the last T seconds
    min_rows: 100           # fewer rows: no verdict
    reference: reference.parquet   # CSV or Parquet beside config.yaml; else:
    reference_rows: 1000    # the first N logged rows of the stable version
    drift_share: 0.5        # share of drifted features that makes dataset drift
    num_method: null        # Evidently stat test (ks, wasserstein, psi, ...); null: its default
    threshold: null         # per-column threshold of that test; null: its default
    keep_reports: 20        # HTML reports kept per model
  accuracy:
    schedule_s: 300
    window_s: 3600          # labeled predictions of the last hour
    min_labels: 20
  triggers:
    - name: input-drift
      figure: drift_share   # drift_share, dataset_drift, feature:<column>, accuracy, accuracy_delta,
                            # precision, recall, f1, mae, rmse
      threshold: 0.3
      direction: above      # default: below for accuracy/precision/recall/f1, above otherwise
      windows: 2            # consecutive breaching runs
      cooldown_s: 3600      # one firing per episode
      roles: [stable, canary]  # canary: roll back; stable: call the retraining hook
  retrain:
    webhook_urls: [https://ci.example.com/hooks/retrain]   # signed with SLUICE_WEBHOOK_SECRET
    command: [./retrain.sh] # run with the event as JSON in SLUICE_EVENT; bounded by timeout_s
    timeout_s: 600
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.serving.batch_policy import BatchingConfig

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BatchingSection(_Strict):
    max_batch_size: int = Field(32, ge=0, le=65536)
    max_queue_delay_ms: float = Field(2.0, ge=0, le=60_000)
    queue_capacity: int = Field(1024, ge=1)
    max_concurrent_batches: int = Field(1, ge=1, le=64)
    greedy: bool = True


class VersionPolicy(_Strict):
    latest: int | None = Field(None, ge=1)
    all: bool | None = None
    specific: list[int] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) not in (None, False)]
        if len(chosen) > 1:
            raise ValueError(f"version_policy takes one of latest, all, specific; got {chosen}")
        return self

    def select(self, versions: list[int]) -> list[int]:
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in set(self.specific)]
        return ordered[-(self.latest or 1) :]


class RuntimeSection(_Strict):
    kind: Literal["onnx", "remote"] = "onnx"
    execution_providers: list[str] = Field(default_factory=lambda: ["cuda", "cpu"])
    intra_op_threads: int = Field(1, ge=0, le=256)
    inline_max_ms: float = Field(1.0, ge=0.0, le=1000.0)
    """A version whose batches each take at most this long (after 32 in a row) runs them on the event loop's
    thread, not a runtime thread: the hand-off costs a small model more than its run. 0: always a thread."""
    filename: str = "model.onnx"
    url: str | None = None
    protocol: Literal["http", "grpc"] = "grpc"
    remote_model: str | None = None
    versions: list[int] | None = None
    """remote only: versions to serve when there are no version folders."""
    sha256: dict[int, str] = Field(default_factory=dict)
    """Expected SHA-256 (hex) of each version's file: a file that differs is refused at load."""
    placement: Literal["worker", "device", "auto"] = "auto"
    """Where the session runs with `--workers` (`gateway.serving.placement`): in every worker, or in one runtime
    process per device fed by every worker over shared memory; auto picks device on a GPU with several workers."""
    instances: int = Field(1, ge=1, le=64)
    """Sessions of each version in its runtime process (the device placement; Triton's instance count): the
    version's one batcher runs up to this many batches at once, each on a session of its own. The worker
    placement ignores it (every worker holds one session)."""
    devices: list[int] | Literal["all"] = Field(default_factory=lambda: [0])
    """The device placement's runtime processes for the version: CUDA ordinals (one process per GPU), or all
    (every visible GPU; the one CPU process on the CPU). Each worker sends each batch to the least loaded of
    them (`gateway.serving.spread`). On the CPU each ordinal is a CPU runtime process of its own."""

    @field_validator("sha256")
    @classmethod
    def _hex_digests(cls, digests: dict[int, str]) -> dict[int, str]:
        for version, digest in digests.items():
            if not _SHA256.match(digest):
                raise ValueError(f"version {version}: expected 64 hexadecimal digits, got {digest!r}")
        return {v: d.lower() for v, d in digests.items()}

    @field_validator("devices")
    @classmethod
    def _ordinals(cls, devices: list[int] | str) -> list[int] | str:
        if isinstance(devices, list):
            if not devices:
                raise ValueError("runtime.devices needs at least one CUDA ordinal (or all)")
            if any(d < 0 for d in devices) or len(set(devices)) != len(devices):
                raise ValueError(f"runtime.devices must be distinct CUDA ordinals >= 0, got {devices}")
        return devices

    @model_validator(mode="after")
    def _remote_needs_url(self) -> RuntimeSection:
        if self.kind == "remote" and not self.url:
            raise ValueError("runtime.kind 'remote' needs runtime.url")
        if self.kind == "remote" and self.placement == "device":
            raise ValueError("runtime.placement 'device' hosts ONNX sessions: runtime.kind 'remote' takes worker")
        if "/" in self.filename or self.filename.startswith(".") or not self.filename.endswith(".onnx"):
            raise ValueError("runtime.filename must be a plain *.onnx file name")
        return self


class WatchdogSection(_Strict):
    """A runtime call that never returns must not hold its batch slot for ever (`gateway.serving.watchdog`)."""

    call_timeout_ms: float | None = Field(None, gt=0)
    """A runtime call running longer is cancelled and counted as a hang; null (the default): no watchdog.
    A version with a watchdog runs every batch on a runtime thread, where ONNX Runtime can be told to stop,
    never inline on the event loop (`runtime.inline_max_ms`), where nothing could interrupt a hang."""
    unresponsive_after: int = Field(3, ge=1, le=1000)
    """Hangs in a row that mark the version not ready (the router and rollouts then see it)."""
    probe_interval_s: float = Field(5.0, gt=0, le=3600)
    """While not ready, how often a probe call (a row of zeros) checks whether it answers again."""


class InputGuard(_Strict):
    """Per input tensor: whether NaN and infinities may reach the model."""

    allow_nan: bool = True
    allow_inf: bool = True


class FeatureGuard(_Strict):
    """Per feature (one column of an input): a value range and/or the allowed categories."""

    min: float | None = None
    max: float | None = None
    allowed: list[float] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _something(self) -> FeatureGuard:
        if self.min is None and self.max is None and self.allowed is None:
            raise ValueError("a feature guard needs min, max or allowed")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class GuardsSection(_Strict):
    """Input guards, checked on every request before it is queued (`gateway.serving.guards`)."""

    action: Literal["refuse", "flag"] = "refuse"
    """refuse: answer 400 naming the feature; flag: serve the request and count the violation."""
    inputs: dict[str, InputGuard] = Field(default_factory=dict)
    features: dict[str, FeatureGuard] = Field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return bool(self.inputs or self.features)


class LoggingSection(_Strict):
    """Which of the model's predictions the prediction log keeps (its shadows' answers follow the same rule)."""

    enabled: bool = True
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)

    @property
    def rate(self) -> float:
        """The effective sample rate: 0 when logging is off."""
        return self.sample_rate if self.enabled else 0.0


class DriftSection(_Strict):
    schedule_s: float = Field(300.0, ge=0)
    window_rows: int = Field(1000, ge=1, le=1_000_000)
    window_s: float | None = Field(None, gt=0)
    min_rows: int = Field(100, ge=1)
    reference: str | None = None
    reference_rows: int = Field(1000, ge=1, le=1_000_000)
    drift_share: float = Field(0.5, gt=0, le=1)
    num_method: str | None = None
    cat_method: str | None = None
    threshold: float | None = Field(None, gt=0)
    keep_reports: int = Field(20, ge=1, le=10_000)

    @model_validator(mode="after")
    def _plain_reference(self) -> DriftSection:
        ref = self.reference
        if ref is not None and ("/" in ref or ref.startswith(".") or not ref.endswith((".csv", ".parquet"))):
            raise ValueError("drift.reference must be a plain *.csv or *.parquet file name beside config.yaml")
        return self


class AccuracySection(_Strict):
    schedule_s: float = Field(300.0, ge=0)
    window_s: float = Field(3600.0, gt=0)
    min_labels: int = Field(20, ge=1)


TRIGGER_FIGURES = (
    "drift_share",
    "dataset_drift",
    "accuracy",
    "accuracy_delta",
    "precision",
    "recall",
    "f1",
    "mae",
    "rmse",
)


Role = Literal["stable", "canary"]
ROLES: tuple[Role, ...] = ("stable", "canary")


class TriggerSection(_Strict):
    name: str = Field(min_length=1, max_length=100)
    figure: str
    threshold: float
    direction: Literal["above", "below"] | None = None
    windows: int = Field(1, ge=1, le=1000)
    cooldown_s: float = Field(3600.0, ge=0)
    roles: list[Role] = Field(default_factory=lambda: list(ROLES), min_length=1)

    @model_validator(mode="after")
    def _known_figure(self) -> TriggerSection:
        if self.figure not in TRIGGER_FIGURES and not (self.figure.startswith("feature:") and len(self.figure) > 8):
            raise ValueError(f"trigger figure must be one of {', '.join(TRIGGER_FIGURES)} or feature:<column>")
        return self


class RetrainSection(_Strict):
    webhook_urls: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)
    timeout_s: float = Field(600.0, gt=0)


class MonitoringSection(_Strict):
    task: Literal["classification", "regression"] = "classification"
    feature_names: list[str] = Field(default_factory=list)
    drift: DriftSection = Field(default_factory=lambda: DriftSection())
    accuracy: AccuracySection = Field(default_factory=lambda: AccuracySection())
    triggers: list[TriggerSection] = Field(default_factory=list)
    retrain: RetrainSection = Field(default_factory=lambda: RetrainSection())

    @model_validator(mode="after")
    def _unique_triggers(self) -> MonitoringSection:
        names = [t.name for t in self.triggers]
        if len(names) != len(set(names)):
            raise ValueError(f"trigger names must be unique, got {names}")
        return self


class AutoscalingSection(_Strict):
    """Ray Serve's autoscaling of a version's replicas (`sluice serve --ray` only)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    """Batches in flight per replica that Serve aims for (each call from an ingress replica is one batch)."""
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _range(self) -> AutoscalingSection:
        if self.min_replicas > self.max_replicas:
            raise ValueError("ray.autoscaling.min_replicas must not exceed max_replicas")
        return self


class RaySection(_Strict):
    """How `sluice serve --ray` deploys each version of this model: a Ray Serve deployment of its own."""

    num_replicas: int = Field(1, ge=1)
    """Replicas when `autoscaling` is not set."""
    autoscaling: AutoscalingSection | None = None
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each replica reserves: a node given `--resources '{"big_memory": 1}'` at `ray start`
    hosts the versions that ask for some of it."""
    max_replicas_per_node: int | None = Field(None, ge=1)
    """Spread the replicas: at most this many on one node (1: each on a node of its own)."""

    @field_validator("resources")
    @classmethod
    def _custom(cls, resources: dict[str, float]) -> dict[str, float]:
        for name, amount in resources.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory") or amount <= 0:
                raise ValueError(
                    f"ray.resources.{name}: custom resources only, each a positive amount (CPUs and GPUs are "
                    "ray.num_cpus and ray.num_gpus)"
                )
        return resources


class DeliveryShadow(_Strict):
    """The shadow gate: the new version gets a copy of live traffic (never an answer to a caller) until enough
    comparisons with the serving version agree, or too few agree, or `timeout_s` passes without enough."""

    sample_rate: float = Field(1.0, gt=0.0, le=1.0)
    min_requests: int = Field(2000, ge=1)
    """Comparisons needed before the gate decides."""
    min_agreement: float = Field(0.98, ge=0.0, le=1.0)
    timeout_s: float = Field(3600.0, gt=0)
    """A shadow that has not seen `min_requests` comparisons by then fails the gate (nobody calls the model)."""


class DeliveryRollout(_Strict):
    """The progressive rollout after the shadow gate: the rollout controller's own spec and checks."""

    steps: list[float] = Field(default_factory=lambda: [5.0, 25.0, 50.0, 100.0])
    interval_s: float = Field(300.0, gt=0)
    checks: list[str] = Field(default_factory=lambda: ["error_ratio", "latency_p99_ratio"])
    """Check names (error_ratio, latency_p99_ratio, shadow_agreement, drift, accuracy), each at its default
    threshold unless `thresholds` names it."""
    thresholds: dict[str, float] = Field(default_factory=dict)
    min_requests: int = Field(20, ge=0)
    """Canary requests a window needs before its checks judge it (fewer: no data)."""
    failure_threshold: int = Field(2, ge=1)
    max_no_data_windows: int = Field(5, ge=1)


class DeliverySection(_Strict):
    """What happens to a version that a repository sync finds and loads (`gateway.control.delivery`)."""

    on_new_version: Literal["none", "shadow", "rollout"] = "none"
    """none: load it (the newest ready version serves, as without a policy); shadow: shadow it behind the gate
    and stop there (an operator starts the rollout); rollout: shadow, then roll out, then promote or roll back."""
    shadow: DeliveryShadow = Field(default_factory=lambda: DeliveryShadow())
    rollout: DeliveryRollout = Field(default_factory=lambda: DeliveryRollout())


class ModelConfig(_Strict):
    batching: BatchingSection = Field(default_factory=lambda: BatchingSection())
    timeout_ms: float | None = Field(30_000, gt=0)
    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy())
    runtime: RuntimeSection = Field(default_factory=lambda: RuntimeSection())
    logging: LoggingSection = Field(default_factory=lambda: LoggingSection())
    monitoring: MonitoringSection = Field(default_factory=lambda: MonitoringSection())
    watchdog: WatchdogSection = Field(default_factory=lambda: WatchdogSection())
    guards: GuardsSection = Field(default_factory=lambda: GuardsSection())
    ray: RaySection = Field(default_factory=lambda: RaySection())
    delivery: DeliverySection = Field(default_factory=lambda: DeliverySection())

    def batching_config(self) -> BatchingConfig:
        b = self.batching
        return BatchingConfig(
            max_batch_size=b.max_batch_size,
            max_queue_delay_s=b.max_queue_delay_ms / 1000.0,
            queue_capacity=b.queue_capacity,
            max_concurrent_batches=b.max_concurrent_batches,
            greedy=b.greedy,
            default_timeout_s=None if self.timeout_ms is None else self.timeout_ms / 1000.0,
        )


class ConfigError(Exception):
    """A config.yaml that cannot be used; the message names the file."""


def load_model_config(path: Path) -> ModelConfig:
    if not path.exists():
        return ModelConfig()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from exc
