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
  filename: model.onnx
  # kind: remote only
  url: 127.0.0.1:8001
  protocol: grpc            # or http
  remote_model: name        # default: this model's name
logging:                    # the prediction log (monitors/prediction_log.py)
  enabled: true
  sample_rate: 1.0          # share of predictions logged, decided by a hash of the prediction id
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.batch_policy import BatchingConfig


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
    filename: str = "model.onnx"
    url: str | None = None
    protocol: Literal["http", "grpc"] = "grpc"
    remote_model: str | None = None
    versions: list[int] | None = None
    """remote only: versions to serve when there are no version folders."""

    @model_validator(mode="after")
    def _remote_needs_url(self) -> RuntimeSection:
        if self.kind == "remote" and not self.url:
            raise ValueError("runtime.kind 'remote' needs runtime.url")
        if "/" in self.filename or self.filename.startswith(".") or not self.filename.endswith(".onnx"):
            raise ValueError("runtime.filename must be a plain *.onnx file name")
        return self


class LoggingSection(_Strict):
    """Which of the model's predictions the prediction log keeps (its shadows' answers follow the same rule)."""

    enabled: bool = True
    sample_rate: float = Field(1.0, ge=0.0, le=1.0)

    @property
    def rate(self) -> float:
        """The effective sample rate: 0 when logging is off."""
        return self.sample_rate if self.enabled else 0.0


class ModelConfig(_Strict):
    batching: BatchingSection = Field(default_factory=lambda: BatchingSection())
    timeout_ms: float | None = Field(30_000, gt=0)
    version_policy: VersionPolicy = Field(default_factory=lambda: VersionPolicy())
    runtime: RuntimeSection = Field(default_factory=lambda: RuntimeSection())
    logging: LoggingSection = Field(default_factory=lambda: LoggingSection())

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
