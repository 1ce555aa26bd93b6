"""wrk, as the reference test drives it: the request body, the Lua script, one run parsed, medians of runs."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.modes import BenchError

SHARED_LUA = Path("/work/shared/bench/v2_b1.lua")


LOCAL_LUA = Path(__file__).resolve().parent / "v2_b1.lua"


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


def lua_script() -> Path:
    """The shared script when this machine has it (the source of truth), else the committed copy."""
    return SHARED_LUA if SHARED_LUA.is_file() else LOCAL_LUA


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
