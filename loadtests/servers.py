"""The servers a benchmark runs: a gateway or a floor subprocess in its own session (stopped on every exit path),
its model repository and seeded state, and the checks that it answers what the raw model answers."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.serving.traffic import TrafficPolicy
from loadtests.modes import (
    DRIFT,
    DRIFT_TOKEN,
    FLOORS,
    GATEWAY_VERSIONS,
    HOST,
    MODEL,
    POLICIES,
    PRIMARY_VERSION,
    RAY_MODES,
    REFERENCE_VERSIONS,
    ROOT,
    WORKER_ARGS,
    BenchError,
    mode_config,
)

READY_TIMEOUT_S = 240.0  # Ray mode starts Ray, Serve and a deployment per version first


STOP_TIMEOUT_S = 15.0


SHADOW_SETTLE_S = 0.5


"""Pause after a wrk run before /metrics is scraped, so the shadow copies still in flight are counted."""


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
    return 0.0 if gw.proc is None else tree_cpu_s(gw.proc.pid)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and all of its descendants (the gateway's own reading of its tree)."""
    from gateway.observability.process_group import ProcessGroupCollector

    for metric in ProcessGroupCollector(pid).collect():
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


def prepare_server(
    name: str, work: Path, port: int, provider: str, gateway_cmd: str, pg_url: str = ""
) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """Any mode ready to start, the floors included: the command (with its worker arguments), the extra
    environment and what to record about it."""
    if name in FLOORS:
        config = mode_config("batching_off", provider)
        model = write_model_repo(work / f"repo-{name}", config) / MODEL / "1" / "model.onnx"
        cmd = floor_cmd(port)
        extra_env = {"FLOOR_MODEL": str(model), "FLOOR_MODEL_NAME": MODEL, "FLOOR_PROVIDER": provider}
        info: dict[str, Any] = {"app": "loadtests/floor_app.py", "env": extra_env}
    else:
        cmd, extra_env, info = prepare_gateway(name, work, port, provider, gateway_cmd, pg_url)
    cmd += WORKER_ARGS.get(name, [])
    info.update(cmd=shlex.join(cmd), port=port)
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
