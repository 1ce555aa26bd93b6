"""The reference throughput test, in one command, with its baseline measured in the same run.

    python -m loadtests.bench [--out bench-results] [--duration 15] [--warmup 3] \
        [--connections 1,16,64] [--repeats 3] [--skip-raw] [--modes floor,batching_on,logging_off,shadow,batching_off]

Why this exists: the peer figures the project is compared with (Triton, MLServer, KServe, Ray Serve,
BentoML) were all taken the way /work/shared/bench/README.md describes: wrk with one thread, closed loop,
the same MLP, the same one-row V2 JSON body, on a 2-core machine where client and server share the cores.
Numbers taken any other way do not compare, so this script reproduces that recipe exactly and adds what
makes a single run interpretable on a noisy shared box:

- the bare floor (`loadtests/floor_app.py`: a bare ASGI handler under uvicorn with httptools and uvloop,
  orjson, the same ONNX Runtime call, no framework, no batching), the figure the gateway is measured
  against: "gateway / floor" req/s and "p50 above floor" are read off within one run;
- two modes of the same gateway, dynamic batching on (max_batch_size 64, max_queue_delay_ms 2) and off
  (max_batch_size 0), so the effect of batching is a difference inside one run, not across runs;
- `logging_off`: batching on with the model's prediction log switched off (`logging: {enabled: false}`),
  so the cost of logging every prediction (every gateway mode logs, as the default config does) is the
  req/s difference against batching_on, run right after it; the log's counters (written, dropped, failed)
  are scraped from /metrics to show it kept up;
- `shadow`: batching on, with every request also copied to a second version of the model, so the
  cost of shadow traffic to the primary's answers (req/s, p50, p99) is read off against batching_on, with
  the gateway's shadow counters (compared, errored, dropped) scraped from /metrics to show the shadow ran;
- raw ONNX Runtime in-process on the same model (intra_op_num_threads=1), at batch 1 and batch 32, plus
  the in-process cost of decoding and encoding one V2 JSON request, so the gateway's own overhead can be
  read off ("overhead ratio" = gateway p50 at 1 connection / one raw ORT batch-1 call);
- medians of repeated runs, because wrk and the server fight over the same two cores.

Everything is bounded in time, binds only 127.0.0.1, and the server subprocesses are killed on every exit
path (normal end, error, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.serving.traffic import TrafficPolicy

ROOT = Path(__file__).resolve().parent.parent
SHARED_LUA = Path("/work/shared/bench/v2_b1.lua")
LOCAL_LUA = Path(__file__).resolve().parent / "v2_b1.lua"
MODEL = "mlp"
HOST = "127.0.0.1"
READY_TIMEOUT_S = 240.0  # Ray mode starts Ray, Serve and a deployment per version first
STOP_TIMEOUT_S = 15.0
WRK_SLACK_S = 30.0
"""wrk gets duration + this before it is killed: startup, the --timeout 10s tail, and a loaded box."""

WRK_FIELDS = (
    "requests",
    "duration_us",
    "rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "mean_ms",
    "non2xx",
    "connect",
    "read",
    "write",
    "timeout",
    "cpu_cores",
)

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
    **{m: ["--ray", "--ray-num-cpus", "2", "--ray-ingress-replicas", "1"] for m in RAY_MODES},
}
SHADOW_SETTLE_S = 0.5
"""Pause after a wrk run before /metrics is scraped, so the shadow copies still in flight are counted."""

# The project's targets (issue 12), checked in the report.
TARGET_RATIO_C64 = 0.8
"""req/s at 64 connections at least this share of the floor's, one process and two processes alike."""
TARGET_P50_ABOVE_FLOOR_C1_MS = 0.3
TARGET_P99_C1_MS = 2.0


class BenchError(RuntimeError):
    """A failure that ends one mode (or the run) with a message instead of a traceback."""


# --------------------------------------------------------------------------------------------------------
# Inputs: model repositories, the request body, the wrk script


def mode_config(name: str, provider: str) -> str:
    """The whole mlp/config.yaml of a gateway mode on one execution provider."""
    return MODES[name] + runtime_yaml(provider)


def request_body() -> bytes:
    """The reference request: one row of 32 float32 from default_rng(42), as V2 JSON.

    orjson writes float32 in its shortest round-tripping form, so the server decodes exactly the
    float32 values the raw baseline runs on (checked in `check_gateway`).
    """
    row = np.random.default_rng(42).standard_normal((1, 32)).astype(np.float32)
    payload = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": row.ravel()}]}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_row(body: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The [1, 32] float32 array a V2 server builds from `body`."""
    tensor = orjson.loads(body)["inputs"][0]
    return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])


def write_model_repo(root: Path, config_yaml: str, versions: Sequence[tuple[str, int]] = REFERENCE_VERSIONS) -> Path:
    """A one-model repository: mlp/<version>/model.onnx for each (version, seed), and mlp/config.yaml.

    The default is the reference MLP alone, mlp/1/model.onnx with weights from default_rng(1234).
    """
    from gateway.cli.demo import build_reference_mlp

    for version, seed in versions:
        build_reference_mlp(root / MODEL / version / "model.onnx", seed=seed)
    (root / MODEL / "config.yaml").write_text(config_yaml)
    return root


def seed_state(state: Path | str, policy: TrafficPolicy) -> None:
    """Write `policy` for the model into a fresh state database (a state directory, or a database URL); the
    gateway loads it at start-up."""
    from gateway.storage.store import Store

    store = Store.for_state_dir(state) if isinstance(state, Path) else Store(state)
    try:
        store.upgrade()
        store.put_policy(MODEL, policy)
    finally:
        store.close()


def lua_script() -> Path:
    """The shared script when this machine has it (the source of truth), else the committed copy."""
    return SHARED_LUA if SHARED_LUA.is_file() else LOCAL_LUA


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1; the tiny race is acceptable for a benchmark."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------------------
# The gateway subprocess


@dataclass
class Gateway:
    """One gateway process in its own session, so it (and any workers it forks) can be ended as a group
    and the terminal's Ctrl-C does not reach it before the benchmark decides how to stop it."""

    cmd: list[str]
    log_path: Path
    port: int
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        env["PYTHONUNBUFFERED"] = "1"
        # Each mode keeps its state (policies) in its own fresh --state-dir; a database URL in this
        # environment would override it and share state between runs.
        env.pop("SLUICE_DATABASE_URL", None)
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            self.cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Poll /v2/health/ready until 200; returns seconds taken. Bounded, and fails fast if it died."""
        assert self.proc is not None
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        url = f"{self.base_url}/v2/health/ready"
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise BenchError(f"server exited with {code} before ready; log tail:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1.0) as resp,
            ):
                if resp.status == 200:
                    return time.monotonic() - t0
            time.sleep(0.2)
        raise BenchError(f"server not ready after {timeout_s:.0f} s; log tail:\n{self.log_tail()}")

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the group, wait (bounded), then SIGKILL. Safe to call twice or before start."""
        proc, self.proc = self.proc, None
        code: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    # The main process only: a supervisor passes it on to its workers, and a Ray driver stops
                    # the Ray it started (SIGTERM to its whole group would take Ray down under it).
                    proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    code = proc.wait(timeout=5)
            else:
                code = proc.returncode
            # Workers the gateway forked may outlive it; they share its process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


@contextlib.contextmanager
def running_gateway(
    cmd: list[str], log_path: Path, port: int, extra_env: dict[str, str] | None = None
) -> Iterator[Gateway]:
    """Start, yield, and always stop: the try/finally every exit path (Ctrl-C included) goes through."""
    gw = Gateway(cmd=cmd, log_path=log_path, port=port, extra_env=dict(extra_env or {}))
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def server_cpu_s(gw: Gateway) -> float:
    """CPU seconds used so far by the server's whole process tree (workers and their helpers included)."""
    from gateway.observability.process_group import ProcessGroupCollector

    if gw.proc is None:
        return 0.0
    for metric in ProcessGroupCollector(gw.proc.pid).collect():
        if metric.name == "process_cpu_seconds":
            return float(metric.samples[0].value)
    return 0.0


def http_post(url: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


class DriftLoop:
    """Asks the gateway for a drift run of version 1, again as soon as one answers, until stopped."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/admin/models/{MODEL}/monitor/drift"
        self.runs: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        body = orjson.dumps({"version": PRIMARY_VERSION})
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {DRIFT_TOKEN}"}
        while not self._stop.is_set():
            req = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    run = orjson.loads(resp.read())["runs"][0]
            except (OSError, ValueError) as exc:
                self.runs.append({"status": f"failed: {exc}", "s": time.monotonic() - t0})
                self._stop.wait(1.0)
                continue
            self.runs.append({"status": run["status"], "rows": run["rows"], "s": round(time.monotonic() - t0, 2)})

    def __enter__(self) -> DriftLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(130)


def check_gateway(
    gw: Gateway, body: bytes, expected: np.ndarray[Any, Any] | None, expected_version: str | None = None
) -> dict[str, Any]:
    """One request before the load: a server that answers 4xx fast would otherwise post a great req/s.

    `expected` is raw ONNX Runtime's output on version 1 (None with --skip-raw); `expected_version`, when
    given, is the version that must have answered (the seeded policy's stable version).
    """
    status, raw = http_post(f"{gw.base_url}/v2/models/{MODEL}/infer", body)
    if status != 200:
        raise BenchError(f"infer answered {status}: {raw[:300]!r}")
    doc = orjson.loads(raw)
    answered = doc.get("model_version")
    if expected_version is not None and answered is not None and str(answered) != expected_version:
        raise BenchError(f"version {answered} answered; the seeded policy routes to version {expected_version}")
    out = doc["outputs"][0]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    result: dict[str, Any] = {
        "status": status,
        "model_version": answered,
        "output_shape": list(got.shape),
        "response_bytes": len(raw),
    }
    if expected is not None:
        diff = float(np.max(np.abs(got - expected)))
        result["max_abs_diff_vs_raw_ort"] = diff
        if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
            raise BenchError(f"server output differs from raw ONNX Runtime (max abs diff {diff:g})")
    return result


SHADOW_COUNTERS = ("compared", "agreed", "disagreed", "errored", "dropped", "latency_count", "latency_sum_s")


def scrape_shadow(gw: Gateway, settle_s: float = SHADOW_SETTLE_S) -> dict[str, float]:
    """The gateway's shadow counters for the model, summed over shadow versions, from its /metrics.

    compared = agreed + disagreed (copies the shadow answered and that were checked against the primary);
    errored (the copy failed); dropped (shed before it was sent: the shadow already had a full batch waiting or too
    many copies were in flight); latency_count / latency_sum_s (the shadow's own inference time).
    """
    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(settle_s)
    try:
        with urllib.request.urlopen(f"{gw.base_url}/metrics", timeout=5.0) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        raise BenchError(f"cannot scrape {gw.base_url}/metrics: {exc}") from exc
    out = dict.fromkeys(SHADOW_COUNTERS, 0.0)
    outcomes = {"agreed": "agreed", "disagreed": "disagreed", "error": "errored"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != MODEL:
                continue
            if sample.name == "sluice_shadow_requests_total" and sample.labels.get("outcome") in outcomes:
                out[outcomes[sample.labels["outcome"]]] += sample.value
            elif sample.name == "sluice_shadow_dropped_total":
                out["dropped"] += sample.value
            elif sample.name == "sluice_shadow_latency_seconds_count":
                out["latency_count"] += sample.value
            elif sample.name == "sluice_shadow_latency_seconds_sum":
                out["latency_sum_s"] += sample.value
    out["compared"] = out["agreed"] + out["disagreed"]
    return out


LOG_OUTCOMES = ("written", "dropped", "failed", "sampled_out")


def scrape_prediction_log(gw: Gateway) -> dict[str, float]:
    """The gateway's prediction log counters since start-up (records by fate, and the queue depth now)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{gw.base_url}/metrics", timeout=5.0) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        raise BenchError(f"cannot scrape {gw.base_url}/metrics: {exc}") from exc
    out = dict.fromkeys((*LOG_OUTCOMES, "queue_depth"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluice_prediction_log_records_total" and sample.labels.get("outcome") in out:
                out[sample.labels["outcome"]] += sample.value
            elif sample.name == "sluice_prediction_log_queue_depth":
                out["queue_depth"] = sample.value
    return out


def counter_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


# --------------------------------------------------------------------------------------------------------
# wrk


def run_wrk(url: str, lua: Path, body_file: Path, connections: int, duration_s: int, cwd: Path) -> dict[str, float]:
    """One wrk run with the reference flags; returns the script's WRKJSON summary."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    env = {**os.environ, "BODY_FILE": str(body_file)}
    try:
        done = subprocess.run(
            cmd,
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=duration_s + WRK_SLACK_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {duration_s + WRK_SLACK_S:.0f} s") from exc
    for line in done.stdout.splitlines():
        if line.startswith("WRKJSON "):
            parsed: dict[str, float] = json.loads(line[len("WRKJSON ") :])
            return parsed
    raise BenchError(f"wrk printed no WRKJSON line (rc={done.returncode}):\n{done.stdout}\n{done.stderr}")


def median_summary(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Field-wise medians: each percentile is the median of that percentile across runs."""
    return {k: float(statistics.median(r[k] for r in runs)) for k in WRK_FIELDS if all(k in r for r in runs)}


# --------------------------------------------------------------------------------------------------------
# The in-process baseline


def _calibrate(fn: Callable[[], object], loop_s: float) -> int:
    """Calls per timing loop so that one loop lasts about `loop_s`."""
    for _ in range(50):
        fn()
    n = 1
    while True:
        t0 = time.perf_counter_ns()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter_ns() - t0
        if elapsed >= loop_s * 1e9 / 4 or n >= 1 << 22:
            break
        n *= 2
    return max(1, int(n * (loop_s * 1e9) / max(elapsed, 1)))


def time_interleaved(
    fns: dict[str, Callable[[], object]], loops: int = 9, loop_s: float = 0.15
) -> dict[str, dict[str, float]]:
    """Median and min ns per call of each function, timed round-robin with time.perf_counter_ns.

    Round-robin, because this box is shared (another core, other processes, frequency changes): each
    function sees the same background in every round, so differences between them stay meaningful even
    when the absolute figures drift. The median is the headline; min is the "quiet machine" figure.
    """
    counts = {name: _calibrate(fn, loop_s) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(loops):
        for name, fn in fns.items():
            n = counts[name]
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter_ns() - t0) / n)
    return {
        name: {
            "median_ns": statistics.median(xs),
            "min_ns": min(xs),
            "calls_per_loop": counts[name],
            "loops": loops,
        }
        for name, xs in samples.items()
    }


def measure_raw(model_path: Path, body: bytes, provider: str = "cpu") -> dict[str, Any]:
    """Raw ONNX Runtime and JSON costs in this process, on the model and body the gateway serves."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(model_path), sess_options=so, providers=[PROVIDERS[provider]])
    if sess.get_providers()[0] != PROVIDERS[provider]:
        raise BenchError(f"ONNX Runtime runs {sess.get_providers()[0]}, not {PROVIDERS[provider]}")

    x1 = decode_row(body)
    x32 = np.random.default_rng(7).standard_normal((32, 32)).astype(np.float32)
    out1 = sess.run(["output"], {"input": x1})[0]

    def decode() -> object:
        t = orjson.loads(body)["inputs"][0]
        return np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])

    def encode() -> bytes:
        doc = {
            "model_name": MODEL,
            "model_version": "1",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [1, 8], "data": out1.ravel()}],
        }
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    def full() -> bytes:
        t = orjson.loads(body)["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        y = sess.run(["output"], {"input": x})[0]
        doc = {
            "model_name": MODEL,
            "model_version": "1",
            "outputs": [{"name": "output", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel()}],
        }
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    timing = time_interleaved(
        {
            "b1": lambda: sess.run(["output"], {"input": x1}),
            "b32": lambda: sess.run(["output"], {"input": x32}),
            "decode": decode,
            "encode": encode,
            "inproc_request": full,
        }
    )
    b1, b32, dec, enc, end_to_end = (timing[k] for k in ("b1", "b32", "decode", "encode", "inproc_request"))
    b1_us = b1["median_ns"] / 1e3
    full_us = end_to_end["median_ns"] / 1e3
    return {
        "ort_b1_us": b1_us,
        "ort_b1_min_us": b1["min_ns"] / 1e3,
        "ort_b1_calls_per_s": 1e6 / b1_us,
        "ort_b32_us": b32["median_ns"] / 1e3,
        "ort_b32_rows_per_s": 32 * 1e9 / b32["median_ns"],
        "json_decode_us": dec["median_ns"] / 1e3,
        "json_encode_us": enc["median_ns"] / 1e3,
        "json_codec_us": (dec["median_ns"] + enc["median_ns"]) / 1e3,
        "inproc_request_us": full_us,
        "inproc_request_per_s": 1e6 / full_us,
        "expected_output": out1.tolist(),
        "timing": timing,
    }


# --------------------------------------------------------------------------------------------------------
# Machine facts and reporting


def _cmd_output(cmd: list[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False, cwd=ROOT)
        text = (done.stdout or done.stderr).strip()
        return text.splitlines()[0] if text else None
    return None


def machine_facts() -> dict[str, Any]:
    """What a reader needs to judge whether two bench.json files compare."""
    import onnxruntime as ort

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "nproc": affinity or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "orjson": orjson.__version__,
        "wrk": _cmd_output(["wrk", "-v"]),
        "gpu": _cmd_output(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]),
        "git_commit": _cmd_output(["git", "rev-parse", "--short", "HEAD"]),
        "hostname": platform.node(),
    }


@dataclass
class Row:
    """One line of the results table."""

    mode: str
    connections: int
    median: dict[str, float]
    runs: list[dict[str, float]] = field(default_factory=list)
    overhead_ratio: float | None = None
    shadow: dict[str, float] | None = None
    """Shadow counters over this row's wrk runs (the shadow mode only)."""

    @property
    def us_per_req(self) -> float | None:
        rps = self.median.get("rps", 0.0)
        return 1e6 / rps if rps > 0 else None

    def as_dict(self, nproc: int) -> dict[str, Any]:
        rps = [r["rps"] for r in self.runs]
        us = self.us_per_req
        return {
            "mode": self.mode,
            "connections": self.connections,
            "median": self.median,
            "rps_min": min(rps) if rps else None,
            "rps_max": max(rps) if rps else None,
            "errors": self.errors,
            "us_per_req": us,
            "core_us_per_req": us * nproc if us is not None else None,
            "overhead_ratio": self.overhead_ratio,
            "shadow": self.shadow,
            "runs": self.runs,
        }

    @property
    def errors(self) -> int:
        """Socket-level errors summed over runs (connect, read, write, timeout)."""
        return int(sum(r.get(k, 0) for r in self.runs for k in ("connect", "read", "write", "timeout")))

    @property
    def non2xx(self) -> int:
        return int(sum(r.get("non2xx", 0) for r in self.runs))


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


TABLE_HEADER = [
    "mode",
    "conns",
    "req/s",
    "req/s range",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "non-2xx",
    "errors",
    "µs/req (1/rps)",
    "overhead ratio",
]


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        rps = [x["rps"] for x in r.runs]
        out.append(
            [
                r.mode,
                str(r.connections),
                _fmt(r.median.get("rps"), ",.0f"),
                f"{min(rps):,.0f}–{max(rps):,.0f}" if rps else "—",
                _fmt(r.median.get("p50_ms"), ".2f"),
                _fmt(r.median.get("p90_ms"), ".2f"),
                _fmt(r.median.get("p99_ms"), ".2f"),
                str(r.non2xx),
                str(r.errors),
                _fmt(r.us_per_req, ",.0f"),
                _fmt(r.overhead_ratio, ".1f") + ("×" if r.overhead_ratio is not None else ""),
            ]
        )
    return out


def raw_lines(raw: dict[str, Any] | None) -> list[tuple[str, str]]:
    if raw is None:
        return [("raw ONNX Runtime", "skipped (--skip-raw)")]
    return [
        ("ORT batch 1, µs/call (median; min)", f"{raw['ort_b1_us']:.1f}; {raw['ort_b1_min_us']:.1f}"),
        ("ORT batch 1, calls/s", f"{raw['ort_b1_calls_per_s']:,.0f}"),
        ("ORT batch 32, µs/call", f"{raw['ort_b32_us']:.1f}"),
        ("ORT batch 32, rows/s", f"{raw['ort_b32_rows_per_s']:,.0f}"),
        ("JSON decode (orjson.loads + np.asarray), µs", f"{raw['json_decode_us']:.1f}"),
        ("JSON encode (orjson.dumps of outputs), µs", f"{raw['json_encode_us']:.1f}"),
        ("decode + ORT b1 + encode in-process, µs", f"{raw['inproc_request_us']:.1f}"),
        ("  → in-process ceiling on one core, req/s", f"{raw['inproc_request_per_s']:,.0f}"),
    ]


def vs_floor(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per pair (PAIRS) and connection count: the gateway mode against its floor, from the medians."""
    out = []
    for gateway_mode, floor_mode in PAIRS:
        out += _vs_floor(rows, gateway_mode, floor_mode)
    return out


def _vs_floor(rows: Sequence[Row], gateway_mode: str, floor_mode: str) -> list[dict[str, Any]]:
    floor = {r.connections: r.median for r in rows if r.mode == floor_mode}
    gw = {r.connections: r.median for r in rows if r.mode == gateway_mode}
    out = []
    for c in sorted(set(floor) & set(gw)):
        f, g = floor[c], gw[c]
        out.append(
            {
                "gateway_mode": gateway_mode,
                "floor_mode": floor_mode,
                "connections": c,
                "floor_rps": f.get("rps"),
                "gateway_rps": g.get("rps"),
                "rps_ratio": g["rps"] / f["rps"] if f.get("rps") and "rps" in g else None,
                "floor_p50_ms": f.get("p50_ms"),
                "gateway_p50_ms": g.get("p50_ms"),
                "p50_above_floor_ms": g["p50_ms"] - f["p50_ms"] if "p50_ms" in f and "p50_ms" in g else None,
                "floor_p99_ms": f.get("p99_ms"),
                "gateway_p99_ms": g.get("p99_ms"),
                "floor_cpu_cores": f.get("cpu_cores"),
                "gateway_cpu_cores": g.get("cpu_cores"),
            }
        )
    return out


def shadow_cost(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per connection count the shadow mode ran at: batching_on (no shadow) against the shadow mode, from the
    medians, with the shadow counters over the shadow mode's runs at that count."""
    on = {r.connections: r for r in rows if r.mode == GATEWAY_VS_FLOOR}
    sh = {r.connections: r for r in rows if r.mode == SHADOW}
    out = []
    for c in sorted(sh):
        a = on[c].median if c in on else {}
        b = sh[c].median
        counters = sh[c].shadow or {}
        requests = sum(r.get("requests", 0.0) for r in sh[c].runs)
        dropped = counters.get("dropped")
        out.append(
            {
                "connections": c,
                "on_rps": a.get("rps"),
                "shadow_rps": b.get("rps"),
                "rps_ratio": b["rps"] / a["rps"] if a.get("rps") and "rps" in b else None,
                "on_p50_ms": a.get("p50_ms"),
                "shadow_p50_ms": b.get("p50_ms"),
                "on_p99_ms": a.get("p99_ms"),
                "shadow_p99_ms": b.get("p99_ms"),
                "p99_ratio": b["p99_ms"] / a["p99_ms"] if a.get("p99_ms") and "p99_ms" in b else None,
                "requests": requests,
                "shadow_compared": counters.get("compared"),
                "shadow_disagreed": counters.get("disagreed"),
                "shadow_errored": counters.get("errored"),
                "shadow_dropped": dropped,
                "dropped_share": dropped / requests if dropped is not None and requests else None,
            }
        )
    return out


def log_cost(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per connection count both ran at: batching_on (every prediction logged) against logging_off."""
    on = {r.connections: r for r in rows if r.mode == GATEWAY_VS_FLOOR}
    off = {r.connections: r for r in rows if r.mode == LOGGING_OFF}
    out = []
    for c in sorted(set(on) & set(off)):
        a, b = on[c].median, off[c].median
        out.append(
            {
                "connections": c,
                "on_rps": a.get("rps"),
                "off_rps": b.get("rps"),
                "rps_loss": 1.0 - a["rps"] / b["rps"] if a.get("rps") and b.get("rps") else None,
                "on_rps_range": (min(r["rps"] for r in on[c].runs), max(r["rps"] for r in on[c].runs)),
                "off_rps_range": (min(r["rps"] for r in off[c].runs), max(r["rps"] for r in off[c].runs)),
                "on_p50_ms": a.get("p50_ms"),
                "off_p50_ms": b.get("p50_ms"),
                "on_p99_ms": a.get("p99_ms"),
                "off_p99_ms": b.get("p99_ms"),
            }
        )
    return out


LOG_COST_TARGET = 0.05
"""The issue's target: logging every prediction costs at most 5% of req/s at 64 connections."""
LOG_COST_HEADER = [
    "conns",
    f"{GATEWAY_VS_FLOOR} req/s (logging on)",
    f"{LOGGING_OFF} req/s",
    "req/s loss",
    "on p50 ms",
    "off p50 ms",
    "on p99 ms",
    "off p99 ms",
]


def log_cost_rows(rows: Sequence[Row]) -> list[list[str]]:
    return [
        [
            str(v["connections"]),
            f"{_fmt(v['on_rps'], ',.0f')} ({v['on_rps_range'][0]:,.0f}–{v['on_rps_range'][1]:,.0f})",
            f"{_fmt(v['off_rps'], ',.0f')} ({v['off_rps_range'][0]:,.0f}–{v['off_rps_range'][1]:,.0f})",
            _fmt(None if v["rps_loss"] is None else v["rps_loss"] * 100, ".1f") + " %",
            _fmt(v["on_p50_ms"], ".2f"),
            _fmt(v["off_p50_ms"], ".2f"),
            _fmt(v["on_p99_ms"], ".2f"),
            _fmt(v["off_p99_ms"], ".2f"),
        ]
        for v in log_cost(rows)
    ]


def log_totals_line(totals: dict[str, float] | None) -> str | None:
    if not totals:
        return None
    return (
        f"{GATEWAY_VS_FLOOR}'s prediction log since start-up (check request and warm-up included): "
        f"{totals['written']:,.0f} records written, {totals['dropped']:,.0f} dropped (queue full), "
        f"{totals['failed']:,.0f} failed, {totals['queue_depth']:,.0f} still queued when scraped"
    )


SHADOW_COST_HEADER = [
    "conns",
    f"{GATEWAY_VS_FLOOR} req/s",
    f"{SHADOW} req/s",
    f"{GATEWAY_VS_FLOOR} p50 ms",
    f"{SHADOW} p50 ms",
    f"{GATEWAY_VS_FLOOR} p99 ms",
    f"{SHADOW} p99 ms",
    "p99 ratio (shadow / on)",
    "wrk requests",
    "shadow compared",
    "errored",
    "dropped",
]


def shadow_cost_rows(rows: Sequence[Row]) -> list[list[str]]:
    return [
        [
            str(v["connections"]),
            _fmt(v["on_rps"], ",.0f"),
            _fmt(v["shadow_rps"], ",.0f"),
            _fmt(v["on_p50_ms"], ".2f"),
            _fmt(v["shadow_p50_ms"], ".2f"),
            _fmt(v["on_p99_ms"], ".2f"),
            _fmt(v["shadow_p99_ms"], ".2f"),
            _fmt(v["p99_ratio"], ".2f"),
            _fmt(v["requests"], ",.0f"),
            _fmt(v["shadow_compared"], ",.0f"),
            _fmt(v["shadow_errored"], ",.0f"),
            _fmt(v["shadow_dropped"], ",.0f")
            + (f" ({v['dropped_share']:.0%})" if v["dropped_share"] is not None else ""),
        ]
        for v in shadow_cost(rows)
    ]


def shadow_totals_line(totals: dict[str, float] | None) -> str | None:
    """The shadow mode's counters since start-up (check request and warm-up included), in one sentence."""
    if not totals:
        return None
    offered = totals["compared"] + totals["errored"] + totals["dropped"]
    mean_ms = totals["latency_sum_s"] * 1e3 / totals["latency_count"] if totals["latency_count"] else None
    return (
        f"shadow totals since start-up (check request and warm-up included): {offered:,.0f} copies offered to "
        f"version {SHADOW_VERSION}; {totals['compared']:,.0f} compared ({totals['agreed']:,.0f} agreed, "
        f"{totals['disagreed']:,.0f} disagreed), {totals['errored']:,.0f} errored, {totals['dropped']:,.0f} "
        f"dropped; mean shadow inference time {_fmt(mean_ms, '.2f')} ms"
    )


def target_checks(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The project's targets (issue 12); `met` is None when not measured in this run.

    A row with non-2xx answers or socket errors never meets a target, whatever its figures.
    """
    by = {(r.mode, r.connections): r for r in rows}

    def clean(*rs: Row | None) -> bool:
        return all(r is not None and r.non2xx == 0 and r.errors == 0 for r in rs)

    def fig(mode: str, c: int, key: str) -> float | None:
        r = by.get((mode, c))
        return None if r is None else r.median.get(key)

    checks: list[dict[str, Any]] = []
    for gateway_mode, floor_mode in PAIRS:
        g, f = fig(gateway_mode, 64, "rps"), fig(floor_mode, 64, "rps")
        ratio = g / f if g is not None and f else None
        checks.append(
            {
                "target": f"64 connections: {gateway_mode} req/s ≥ {TARGET_RATIO_C64:g} × {floor_mode}",
                "value": ratio,
                "shown": _fmt(ratio, ".2f") + ("×" if ratio is not None else ""),
                "met": None
                if ratio is None
                else ratio >= TARGET_RATIO_C64 and clean(by.get((gateway_mode, 64)), by.get((floor_mode, 64))),
            }
        )
    g99, f99 = fig(WORKERS2, 64, "p99_ms"), fig(FLOOR2, 64, "p99_ms")
    checks.append(
        {
            "target": f"64 connections: {WORKERS2} p99 ≤ {FLOOR2} p99",
            "value": g99,
            "shown": f"{_fmt(g99, '.2f')} vs {_fmt(f99, '.2f')} ms",
            "met": None if g99 is None or f99 is None else g99 <= f99 and clean(by.get((WORKERS2, 64))),
        }
    )
    g50, f50 = fig(GATEWAY_VS_FLOOR, 1, "p50_ms"), fig(FLOOR, 1, "p50_ms")
    above = g50 - f50 if g50 is not None and f50 is not None else None
    checks.append(
        {
            "target": f"1 connection: {GATEWAY_VS_FLOOR} p50 ≤ {FLOOR} + {TARGET_P50_ABOVE_FLOOR_C1_MS:g} ms",
            "value": above,
            "shown": _fmt(above, "+.2f") + (" ms" if above is not None else ""),
            "met": None
            if above is None
            else above <= TARGET_P50_ABOVE_FLOOR_C1_MS and clean(by.get((GATEWAY_VS_FLOOR, 1))),
        }
    )
    p99 = fig(GATEWAY_VS_FLOOR, 1, "p99_ms")
    checks.append(
        {
            "target": f"1 connection: {GATEWAY_VS_FLOOR} p99 ≤ {TARGET_P99_C1_MS:g} ms",
            "value": p99,
            "shown": _fmt(p99, ".2f") + (" ms" if p99 is not None else ""),
            "met": None if p99 is None else p99 <= TARGET_P99_C1_MS and clean(by.get((GATEWAY_VS_FLOOR, 1))),
        }
    )
    loss = next((v["rps_loss"] for v in log_cost(rows) if v["connections"] == 64), None)
    checks.append(
        {
            "target": f"64 connections: the prediction log costs ≤ {LOG_COST_TARGET:.0%} of req/s",
            "value": loss,
            "shown": _fmt(None if loss is None else loss * 100, ".1f") + (" %" if loss is not None else ""),
            "met": None if loss is None else loss <= LOG_COST_TARGET,
        }
    )
    return checks


def _met(x: bool | None) -> str:
    return "not measured" if x is None else ("yes" if x else "NO")


VS_FLOOR_HEADER = [
    "gateway vs floor",
    "conns",
    "floor req/s",
    "gateway req/s",
    "gateway / floor",
    "p50 above floor, ms",
    "p99 ms (floor / gateway)",
    "server cores (floor / gateway)",
]


def vs_floor_rows(rows: Sequence[Row]) -> list[list[str]]:
    return [
        [
            f"{v['gateway_mode']} vs {v['floor_mode']}",
            str(v["connections"]),
            _fmt(v["floor_rps"], ",.0f"),
            _fmt(v["gateway_rps"], ",.0f"),
            _fmt(v["rps_ratio"], ".2f"),
            _fmt(v["p50_above_floor_ms"], "+.2f"),
            f"{_fmt(v['floor_p99_ms'], '.2f')} / {_fmt(v['gateway_p99_ms'], '.2f')}",
            f"{_fmt(v['floor_cpu_cores'], '.2f')} / {_fmt(v['gateway_cpu_cores'], '.2f')}",
        ]
        for v in vs_floor(rows)
    ]


def print_report(rows: Sequence[Row], raw: dict[str, Any] | None, shadow_totals: dict[str, float] | None) -> None:
    """rich when installed (it is a project dependency), plain text otherwise."""
    totals_line = shadow_totals_line(shadow_totals)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        for k, v in raw_lines(raw):
            print(f"{k:<48} {v}")
        body = [TABLE_HEADER, *table_rows(rows)]
        widths = [max(len(line[i]) for line in body) for i in range(len(TABLE_HEADER))]
        for line in body:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
        for line in vs_floor_rows(rows):
            print(f"vs floor, c={line[0]}: gateway / floor {line[3]}, p50 above floor {line[4]} ms")
        for line in shadow_cost_rows(rows):
            print("shadow cost, " + ", ".join(f"{h}: {c}" for h, c in zip(SHADOW_COST_HEADER, line, strict=True)))
        if totals_line:
            print(totals_line)
        for line in log_cost_rows(rows):
            print("log cost, " + ", ".join(f"{h}: {c}" for h, c in zip(LOG_COST_HEADER, line, strict=True)))
        for t in target_checks(rows):
            print(f"target {t['target']}: {t['shown']} -> {_met(t['met'])}")
        return
    console = Console()
    if not console.is_terminal:  # piped or logged: do not squeeze the table into rich's 80-column default
        console = Console(width=160)
    base = Table(title="In-process baseline (same model, same machine, same run)")
    base.add_column("measure")
    base.add_column("value", justify="right")
    for k, v in raw_lines(raw):
        base.add_row(k, v)
    console.print(base)
    table = Table(title="Under wrk (medians of repeats)")
    for i, h in enumerate(TABLE_HEADER):
        table.add_column(h, justify="left" if i == 0 else "right")
    for line in table_rows(rows):
        table.add_row(*line)
    console.print(table)
    cmp_rows = vs_floor_rows(rows)
    if cmp_rows:
        cmp = Table(title="The gateway vs the bare floor (one process each; two processes each)")
        for h in VS_FLOOR_HEADER:
            cmp.add_column(h, justify="right")
        for line in cmp_rows:
            cmp.add_row(*line)
        console.print(cmp)
    cost_rows = shadow_cost_rows(rows)
    if cost_rows:
        cost = Table(title=f"Shadow cost: {GATEWAY_VS_FLOOR} vs {SHADOW} (every request copied to version 2)")
        for h in SHADOW_COST_HEADER:
            cost.add_column(h, justify="right")
        for line in cost_rows:
            cost.add_row(*line)
        console.print(cost)
    if totals_line:
        console.print(totals_line)
    log_rows = log_cost_rows(rows)
    if log_rows:
        logc = Table(title=f"Prediction log cost: {GATEWAY_VS_FLOOR} (logging on) vs {LOGGING_OFF}")
        for h in LOG_COST_HEADER:
            logc.add_column(h, justify="right")
        for line in log_rows:
            logc.add_row(*line)
        console.print(logc)
    targets = Table(title="Targets")
    for h in ("target", "measured", "met"):
        targets.add_column(h, justify="left" if h == "target" else "right")
    for t in target_checks(rows):
        targets.add_row(t["target"], t["shown"], _met(t["met"]))
    console.print(targets)


def markdown_report(
    command: str,
    facts: dict[str, Any],
    args: argparse.Namespace,
    raw: dict[str, Any] | None,
    rows: list[Row],
    modes: dict[str, Any],
) -> str:
    lines = [
        "# Sluice reference throughput test",
        "",
        f"Command: `{command}`  ",
        f"Started: {facts.get('started_at')}",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in facts.items() if k != "started_at"),
        "",
        f"Load: wrk -t1, closed loop, {args.warmup} s warm-up at 16 connections per mode, then "
        f"{args.duration} s per connection count, {args.repeats} repeat(s), medians reported.",
        "",
        "## In-process baseline",
        "",
        "| measure | value |",
        "|---|---:|",
        *(f"| {k.strip()} | {v} |" for k, v in raw_lines(raw)),
        "",
        "## Under wrk",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(TABLE_HEADER) - 1)) + "|",
        *("| " + " | ".join(line) + " |" for line in table_rows(rows)),
        "",
        "- µs/req is 1/rps: the wall-clock budget per request. Client and server share "
        f"{facts.get('nproc')} core(s), so the CPU time per request is at most nproc × that.",
        "- overhead ratio = p50 at 1 connection / one raw ORT batch-1 call (µs).",
        f"- {FLOOR}: the bare floor, loadtests/floor_app.py (bare ASGI, uvicorn + httptools + uvloop, orjson, "
        "the same ONNX Runtime call in the handler; no framework, no batching, no thread pool).",
    ]
    for name, info in modes.items():
        if info.get("error"):
            lines.append(f"- **{name} failed**: {info['error'].splitlines()[0]}")
    on = {r.connections: r for r in rows if r.mode == "batching_on"}
    off = {r.connections: r for r in rows if r.mode == "batching_off"}
    common = sorted(set(on) & set(off))
    if common:
        lines += ["", "## Batching on / off", "", "| conns | req/s ratio | p50 ratio |", "|---:|---:|---:|"]
        for c in common:
            a, b = on[c].median, off[c].median
            rr = a["rps"] / b["rps"] if b.get("rps") else None
            pr = a["p50_ms"] / b["p50_ms"] if b.get("p50_ms") else None
            lines.append(f"| {c} | {_fmt(rr, '.2f')} | {_fmt(pr, '.2f')} |")
    cmp_rows = vs_floor_rows(rows)
    if cmp_rows:
        lines += [
            "",
            "## The gateway vs the bare floor",
            "",
            "| " + " | ".join(VS_FLOOR_HEADER) + " |",
            "|" + "|".join(["---:"] * len(VS_FLOOR_HEADER)) + "|",
            *("| " + " | ".join(line) + " |" for line in cmp_rows),
            "",
            "- gateway / floor = req/s ratio; p50 above floor = gateway p50 − floor p50 (medians); server cores = CPU "
            "seconds of the server's whole process tree per second of load (wrk uses the rest of the box).",
        ]
    cost_rows = shadow_cost_rows(rows)
    if cost_rows:
        totals_line = shadow_totals_line(modes.get(SHADOW, {}).get("shadow_totals"))
        lines += [
            "",
            "## Shadow cost",
            "",
            "| " + " | ".join(SHADOW_COST_HEADER) + " |",
            "|" + "|".join(["---:"] * len(SHADOW_COST_HEADER)) + "|",
            *("| " + " | ".join(line) + " |" for line in cost_rows),
            "",
            f"- Both modes serve the same two-version repository with version {PRIMARY_VERSION} answering every "
            f"request; `{SHADOW}` also sends a copy of every request (sample rate 1.0) to version {SHADOW_VERSION} "
            "(a second MLP, seed 4321), after the primary answered. The two modes differ only by the shadow.",
            "- p99 ratio = shadow p99 / batching_on p99 (medians). wrk requests = the requests wrk completed over "
            "the shadow mode's runs at that count (copies of requests still in flight when a run ended are "
            "counted with it too, so the shadow figures can be a little higher); shadow compared = agreed + "
            "disagreed; dropped = copies shed because the shadow already had a full batch waiting or too many "
            "copies were in flight (share of wrk requests).",
            "- On a box where wrk and the gateway share the cores, the shadow's inference competes with the "
            "primary's for CPU: req/s can drop even though no response waits for its shadow.",
        ]
        if totals_line:
            lines.append(f"- {totals_line[0].upper()}{totals_line[1:]}.")
    log_rows = log_cost_rows(rows)
    if log_rows:
        lines += [
            "",
            "## Prediction log cost",
            "",
            "| " + " | ".join(LOG_COST_HEADER) + " |",
            "|" + "|".join(["---:"] * len(LOG_COST_HEADER)) + "|",
            *("| " + " | ".join(line) + " |" for line in log_rows),
            "",
            f"- {GATEWAY_VS_FLOOR} logs every prediction (the default: `logging: {{enabled: true, sample_rate: "
            f"1.0}}`); {LOGGING_OFF} is the same configuration with `logging: {{enabled: false}}`. req/s loss = "
            f"1 − on / off (medians; ranges over the repeats in brackets). Target: at most "
            f"{LOG_COST_TARGET:.0%} at 64 connections.",
            "- Each record keeps the request's input and output arrays; a writer thread encodes them to JSON and "
            "inserts batches of up to 500 into the state database (SQLite here) every 0.5 s or when a batch "
            "fills. On a box where wrk and the gateway share the cores, that thread's CPU is taken from them.",
        ]
        line = log_totals_line(modes.get(GATEWAY_VS_FLOOR, {}).get("prediction_log"))
        if line:
            lines.append(f"- {line}.")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {t['target']} | {t['shown']} | {_met(t['met'])} |" for t in target_checks(rows)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="results folder")
    p.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    p.add_argument("--warmup", type=int, default=3, help="warm-up seconds at 16 connections, per mode")
    p.add_argument(
        "--connections",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[1, 16, 64, 256],
        help="comma-separated connection counts",
    )
    p.add_argument("--repeats", type=int, default=3, help="wrk runs per connection count (median)")
    p.add_argument(
        "--provider",
        choices=sorted(PROVIDERS),
        default="cpu",
        help="execution provider for the gateway, the floor and the raw baseline alike (cuda needs onnxruntime-gpu)",
    )
    p.add_argument("--skip-raw", action="store_true", help="skip the in-process ONNX Runtime baseline")
    p.add_argument(
        "--modes",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(DEFAULT_MODES),
        help=f"comma-separated subset of {','.join(ALL_MODES)} (run in the order given)",
    )
    p.add_argument(
        "--pg-url",
        default=os.environ.get("SLUICE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="PostgreSQL the Ray modes keep their state in (each in a schema of its own, dropped after)",
    )
    p.add_argument(
        "--gateway-cmd",
        default=f"{shlex.quote(sys.executable)} -m gateway",
        help="gateway command prefix; `serve --model-repo ... --http-port ...` is appended (to bench another "
        "build); the floor always runs this Python's uvicorn",
    )
    args = p.parse_args(argv)
    if args.duration < 1 or args.warmup < 0 or args.repeats < 1 or not args.connections:
        p.error("need --duration >= 1, --warmup >= 0, --repeats >= 1 and at least one connection count")
    unknown = [m for m in args.modes if m not in ALL_MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {list(ALL_MODES)}")
    return args


def _raise_on_sigterm(signum: int, frame: object) -> None:
    """Turn SIGTERM into an exception so the finally blocks stop the gateway before we exit."""
    raise SystemExit(128 + signum)


def floor_cmd(port: int) -> list[str]:
    """The bare floor: uvicorn with httptools and uvloop, no access log, serving loadtests/floor_app.py."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "loadtests.floor_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def prepare_gateway(
    name: str, work: Path, port: int, provider: str, gateway_cmd: str, pg_url: str = ""
) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """A gateway mode ready to start: its repository and seeded state under `work`; returns the command,
    the extra environment and what to record about it."""
    repo = write_model_repo(work / f"repo-{name}", mode_config(name, provider), GATEWAY_VERSIONS)
    policy = POLICIES[name]
    # A fresh state directory per mode (the gateway's default, ./.sluice, would be shared between runs),
    # seeded with the mode's traffic policy before the gateway starts and loads it.
    state_dir = work / f"state-{name}"
    extra_env = {"SLUICE_ADMIN_TOKENS": f"bench:{DRIFT_TOKEN}"} if name == DRIFT else {}
    schema = None
    if name in RAY_MODES:  # Ray mode keeps its state in PostgreSQL: a fresh schema of its own
        schema = f"bench_{name}_{os.getpid()}_{int(time.time())}"
        url = pg_schema(pg_url, schema)
        seed_state(url, policy)
        extra_env.update(SLUICE_DATABASE_URL=url, SLUICE_RAY_INGRESS_CPUS="0.5", RAY_USAGE_STATS_ENABLED="0")
    else:
        seed_state(state_dir, policy)
    cmd = [
        *shlex.split(gateway_cmd),
        "serve",
        "--model-repo",
        str(repo),
        "--state-dir",
        str(state_dir),
        "--host",
        HOST,
        "--http-port",
        str(port),
        "--grpc-port",
        "-1",
    ]
    info = {
        "config_yaml": mode_config(name, provider),
        "versions": {v: {"seed": seed} for v, seed in GATEWAY_VERSIONS},
        "policy": {
            "stable": policy.stable,
            "shadows": list(policy.shadows),
            "shadow_sample_rate": policy.shadow_sample_rate,
        },
        "pg_schema": schema,
    }
    return cmd, extra_env, info


def pg_schema(pg_url: str, schema: str, drop: bool = False) -> str:
    """Create (or drop) a schema in the benchmark's PostgreSQL; returns a URL whose search path is it."""
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE' if drop else f'CREATE SCHEMA "{schema}"'))
    finally:
        engine.dispose()
    return sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)


def bench_mode(
    name: str,
    args: argparse.Namespace,
    work: Path,
    body_file: Path,
    lua: Path,
    expected: np.ndarray[Any, Any] | None,
    raw_b1_us: float | None,
) -> tuple[list[Row], dict[str, Any]]:
    """Start the server for one mode (the gateway, or the bare floor), warm it, sweep the connection counts,
    stop it."""
    port = free_port()
    info: dict[str, Any]
    extra_env: dict[str, str] = {}
    if name in FLOORS:
        config = mode_config("batching_off", args.provider)
        model = write_model_repo(work / f"repo-{name}", config) / MODEL / "1" / "model.onnx"
        cmd = floor_cmd(port) + WORKER_ARGS.get(name, [])
        extra_env = {"FLOOR_MODEL": str(model), "FLOOR_MODEL_NAME": MODEL, "FLOOR_PROVIDER": args.provider}
        info = {"app": "loadtests/floor_app.py", "env": extra_env}
        log_path = args.out / f"{name}.log"
    else:
        cmd, extra_env, info = prepare_gateway(name, work, port, args.provider, args.gateway_cmd, args.pg_url)
        cmd += WORKER_ARGS.get(name, [])
        log_path = args.out / f"gateway-{name}.log"
    info.update(cmd=shlex.join(cmd), port=port)
    shadowed = name not in FLOORS and bool(POLICIES[name].shadows)
    rows: list[Row] = []
    url = f"http://{HOST}:{port}/v2/models/{MODEL}/infer"
    print(f"[{name}] starting: {shlex.join(cmd)}", flush=True)
    with running_gateway(cmd, log_path, port, extra_env) as gw:
        info["ready_s"] = round(gw.wait_ready(), 2)
        info["check"] = check_gateway(
            gw, body_file.read_bytes(), expected, None if name in FLOORS else POLICIES[name].stable
        )
        print(f"[{name}] ready in {info['ready_s']} s; warm-up {args.warmup} s at 16 connections", flush=True)
        if args.warmup > 0:
            info["warmup"] = run_wrk(url, lua, body_file, 16, args.warmup, work)
        before = scrape_shadow(gw) if shadowed else None
        drift_loop = DriftLoop(gw.base_url).__enter__() if name == DRIFT else None
        for c in args.connections:
            runs = []
            for i in range(args.repeats):
                cpu_before = server_cpu_s(gw)
                res = run_wrk(url, lua, body_file, c, args.duration, work)
                res["cpu_cores"] = (server_cpu_s(gw) - cpu_before) / max(res.get("duration_us", 1.0) / 1e6, 1e-3)
                print(
                    f"[{name}] c={c} run {i + 1}/{args.repeats}: {res['rps']:,.0f} req/s, "
                    f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, non-2xx {res['non2xx']:.0f}",
                    flush=True,
                )
                runs.append(res)
            med = median_summary(runs)
            ratio = med["p50_ms"] * 1e3 / raw_b1_us if c == 1 and raw_b1_us else None
            counters = None
            if before is not None:
                after = scrape_shadow(gw)
                counters = counter_delta(after, before)
                before = after
                print(
                    f"[{name}] c={c} shadow copies: {counters['compared']:,.0f} compared "
                    f"({counters['disagreed']:,.0f} disagreed), {counters['errored']:,.0f} errored, "
                    f"{counters['dropped']:,.0f} dropped",
                    flush=True,
                )
            rows.append(Row(mode=name, connections=c, median=med, runs=runs, overhead_ratio=ratio, shadow=counters))
        if drift_loop is not None:
            drift_loop.__exit__()
            info["drift_runs"] = drift_loop.runs
            ok = [r for r in drift_loop.runs if r["status"] == "ok"]
            print(f"[{name}] drift runs during the load: {len(ok)} ok of {len(drift_loop.runs)}: {drift_loop.runs}")
        if before is not None:
            # Everything since start-up: the check request and the warm-up included.
            info["shadow_totals"] = before
        if name not in FLOORS:
            time.sleep(1.0)  # the log's writer runs every 0.5 s: let it write the last runs' records
            info["prediction_log"] = scrape_prediction_log(gw)
            print(f"[{name}] prediction log since start-up: {info['prediction_log']}", flush=True)
        code = gw.stop()
        info["exit_code"] = code
        info["log_tail"] = gw.log_tail(10)
    if info.get("pg_schema"):
        pg_schema(args.pg_url, info["pg_schema"], drop=True)
    return rows, info


def main(argv: Sequence[str] | None = None) -> int:
    command = shlex.join([Path(sys.executable).name, "-m", "loadtests.bench", *(argv or sys.argv[1:])])
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed; the reference test needs Debian's wrk. Install it with:\n"
            "    sudo apt-get update && sudo apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    facts: dict[str, Any] = {"started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    facts.update(machine_facts())
    rows: list[Row] = []
    modes: dict[str, Any] = {}
    raw: dict[str, Any] | None = None
    failed = False
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        work = Path(tmp)
        body = request_body()
        body_file = work / "request_b1.json"
        body_file.write_bytes(body)
        (args.out / "request_b1.json").write_bytes(body)
        lua = work / "v2_b1.lua"
        shutil.copyfile(lua_script(), lua)

        expected = None
        if not args.skip_raw:
            print("measuring raw ONNX Runtime in-process ...", flush=True)
            config = mode_config("batching_off", args.provider)
            model = write_model_repo(work / "repo-raw", config) / MODEL / "1" / "model.onnx"
            raw = measure_raw(model, body, args.provider)
            expected = np.asarray(raw["expected_output"], dtype=np.float32)
        raw_b1 = raw["ort_b1_us"] if raw else None

        for name in args.modes:
            try:
                mode_rows, info = bench_mode(name, args, work, body_file, lua, expected, raw_b1)
            except BenchError as exc:
                print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
                modes[name] = {"error": str(exc)}
                failed = True
                continue
            rows += mode_rows
            modes[name] = info

    nproc = int(facts.get("nproc") or 1)
    facts["elapsed_s"] = round(time.monotonic() - t_start, 1)
    result = {
        "command": command,
        "argv": sys.argv,
        "machine": facts,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "repeats": args.repeats,
            "lua": str(lua_script()),
            "request_bytes": len(body),
            "provider": args.provider,
        },
        "raw": raw,
        "modes": modes,
        "results": [r.as_dict(nproc) for r in rows],
        "vs_floor": {"gateway_mode": GATEWAY_VS_FLOOR, "by_connections": vs_floor(rows)},
        "shadow_cost": {
            "baseline_mode": GATEWAY_VS_FLOOR,
            "shadow_mode": SHADOW,
            "by_connections": shadow_cost(rows),
            "totals": modes.get(SHADOW, {}).get("shadow_totals"),
        },
        "log_cost": {
            "logging_on_mode": GATEWAY_VS_FLOOR,
            "logging_off_mode": LOGGING_OFF,
            "by_connections": log_cost(rows),
            "target_loss": LOG_COST_TARGET,
            "prediction_log": modes.get(GATEWAY_VS_FLOOR, {}).get("prediction_log"),
        },
        "targets": [{k: v for k, v in t.items() if k != "shown"} for t in target_checks(rows)],
    }
    (args.out / "bench.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    (args.out / "bench.md").write_text(markdown_report(command, facts, args, raw, rows, modes))
    print_report(rows, raw, modes.get(SHADOW, {}).get("shadow_totals"))
    print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)
