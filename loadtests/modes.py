"""What each benchmark mode is: its model repository's config.yaml, the traffic policy its state starts with, the
process arguments, and the floor it is read against. The one table the other loadtests modules read."""

from __future__ import annotations

from pathlib import Path

from gateway.serving.traffic import TrafficPolicy

ROOT = Path(__file__).resolve().parent.parent


MODEL = "mlp"


HOST = "127.0.0.1"


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


"""--provider choices -> the ONNX Runtime provider the gateway, the floor and the raw baseline all use."""


def runtime_yaml(provider: str) -> str:
    """The runtime section pins what the raw baseline uses (one intra-op thread, one provider, no fallback),
    so that the overhead ratio compares like with like; the batching section is the only thing that differs
    between the modes."""
    return f"runtime:\n  kind: onnx\n  execution_providers: [{provider}]\n  intra_op_threads: 1\n"


_VERSIONS_YAML = "version_policy:\n  all: true\n"


_BATCHING_ON_YAML = "batching:\n  max_batch_size: 64\n  max_queue_delay_ms: 2\n  queue_capacity: 2048\n"


_BATCHING_OFF_YAML = "batching:\n  max_batch_size: 0\n  max_queue_delay_ms: 2\n  queue_capacity: 2048\n"


_LOGGING_OFF_YAML = "logging:\n  enabled: false\n"


FLOOR = "floor"


"""The mode that runs loadtests/floor_app.py instead of the gateway."""


FLOOR2 = "floor2"


"""The same floor under `uvicorn --workers 2`: the two-process figure `workers2` is measured against."""


WORKERS2 = "workers2"


"""batching_on under `sluice serve --workers 2`."""


RAY = "ray"


"""batching_on under `sluice serve --ray` (a local Ray, one ingress replica, one replica per version)."""


RAY2 = "ray2"


"""`ray` with two replicas of the answering version."""


RAY_MODES = (RAY, RAY2)


FLOORS = (FLOOR, FLOOR2)


SHADOW = "shadow"


"""The gateway mode that copies every request to a shadow version."""


DRIFT = "drift"


"""batching_on with drift jobs running back to back through every wrk run: does p99 move?"""


DRIFT_TOKEN = "bench-drift-token-0123456789"


_DRIFT_YAML = (
    "monitoring:\n  drift:\n    schedule_s: 0\n    window_rows: 10000\n    min_rows: 100\n"
    "    reference_rows: 1000\n  accuracy:\n    schedule_s: 0\n"
)


LOGGING_OFF = "logging_off"


"""batching_on without the prediction log: the baseline its cost is read against."""


WORKERS2_LOGGING_OFF = "workers2_logging_off"


"""logging_off under `sluice serve --workers 2`: what `workers2` would be without its two log writer processes
(the figure that tells the log's share of `workers2`'s distance from floor2 from the rest)."""


PRIMARY_VERSION = "1"


SHADOW_VERSION = "2"


REFERENCE_VERSIONS: tuple[tuple[str, int], ...] = ((PRIMARY_VERSION, 1234),)


"""The reference MLP alone (weights from default_rng(1234)): the floor's and the raw baseline's model."""


GATEWAY_VERSIONS: tuple[tuple[str, int], ...] = (*REFERENCE_VERSIONS, (SHADOW_VERSION, 4321))


"""What every gateway mode's repository holds: the reference MLP as version 1, and a second MLP of the same
shape (seed 4321) as version 2, so the modes differ only by their batching settings and traffic policy."""


MODES: dict[str, str] = {
    "batching_on": _BATCHING_ON_YAML + _VERSIONS_YAML,
    WORKERS2: _BATCHING_ON_YAML + _VERSIONS_YAML,
    RAY: _BATCHING_ON_YAML + _VERSIONS_YAML + "ray:\n  num_cpus: 0.5\n  num_replicas: 1\n",
    # Reservations only (Ray does not cap a replica's CPU): 2 versions x 2 replicas x 0.25 + the ingress's 0.5
    # fit Ray's 2 CPUs; at 0.5 each the ingress could never be placed.
    RAY2: _BATCHING_ON_YAML + _VERSIONS_YAML + "ray:\n  num_cpus: 0.25\n  num_replicas: 2\n",
    LOGGING_OFF: _BATCHING_ON_YAML + _VERSIONS_YAML + _LOGGING_OFF_YAML,
    WORKERS2_LOGGING_OFF: _BATCHING_ON_YAML + _VERSIONS_YAML + _LOGGING_OFF_YAML,
    SHADOW: _BATCHING_ON_YAML + _VERSIONS_YAML,
    "batching_off": _BATCHING_OFF_YAML + _VERSIONS_YAML,
    DRIFT: _BATCHING_ON_YAML + _VERSIONS_YAML + _DRIFT_YAML,
}


"""Gateway modes: name -> mlp/config.yaml, less the runtime section (`mode_config`)."""


POLICIES: dict[str, TrafficPolicy] = {
    "batching_on": TrafficPolicy(stable=PRIMARY_VERSION),
    WORKERS2: TrafficPolicy(stable=PRIMARY_VERSION),
    RAY: TrafficPolicy(stable=PRIMARY_VERSION),
    RAY2: TrafficPolicy(stable=PRIMARY_VERSION),
    LOGGING_OFF: TrafficPolicy(stable=PRIMARY_VERSION),
    WORKERS2_LOGGING_OFF: TrafficPolicy(stable=PRIMARY_VERSION),
    SHADOW: TrafficPolicy(stable=PRIMARY_VERSION, shadows=(SHADOW_VERSION,), shadow_sample_rate=1.0),
    "batching_off": TrafficPolicy(stable=PRIMARY_VERSION),
    DRIFT: TrafficPolicy(stable=PRIMARY_VERSION),
}


"""The traffic policy each gateway mode's state database is seeded with before the gateway starts. Version 1
answers every request in every mode (without a policy the newest ready version, 2, would); `shadow` also sends
a copy of every request to version 2."""


ALL_MODES = (FLOOR, FLOOR2, *MODES)


DEFAULT_MODES = (FLOOR, FLOOR2, "batching_on", WORKERS2, LOGGING_OFF)


GATEWAY_VS_FLOOR = "batching_on"


"""The gateway mode compared with the floor, and held to the targets below."""


PAIRS = ((GATEWAY_VS_FLOOR, FLOOR), (WORKERS2, FLOOR2))


"""(gateway mode, the floor it is read against): one process each, two processes each."""


WORKER_ARGS = {
    FLOOR2: ["--workers", "2"],
    WORKERS2: ["--workers", "2"],
    WORKERS2_LOGGING_OFF: ["--workers", "2"],
    **{m: ["--ray", "--ray-num-cpus", "2", "--ray-ingress-replicas", "1"] for m in RAY_MODES},
}


class BenchError(RuntimeError):
    """A failure that ends one mode (or the run) with a message instead of a traceback."""


def mode_config(name: str, provider: str) -> str:
    """The whole mlp/config.yaml of a gateway mode on one execution provider."""
    return MODES[name] + runtime_yaml(provider)
