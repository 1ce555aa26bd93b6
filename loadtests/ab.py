"""Two gateway modes side by side, wrk alternating between them: a small cost measured on a noisy box.

    python -m loadtests.ab --a batching_on --b logging_off [--connections 64] [--duration 10] \
        [--pairs 8] [--warmup 3] [--out bench-results/ab]
    python -m loadtests.ab --a drift --b batching_on      # p99 while drift jobs run in mode a
    python -m loadtests.ab --a drift --b batching_on --rate 4000   # the same below capacity
    python -m loadtests.ab --a batching_on --a-env SLUICE_PREDICTION_LOG_WRITER=thread \
        --b batching_on                                   # the log's writer thread against its process

Why not `loadtests.bench`: it runs one mode after the other, each with its own gateway, so a 5% effect
(the prediction log's target) drowns in what the shared 2-core box does between the two: one bench run
here read the same build's log cost as 3.6%, 7.3% and 13.1%. This script starts both gateways first
and keeps both up (the idle one costs nothing), then runs wrk against a and b in turn, swapping the
order every pair (ab, ba, ab, ...) so a drift of the machine's speed during the run falls on both
alike. Each pair gives a ratio of two runs a few seconds apart; the median of those ratios is the
figure, with the medians of each side's req/s, p50 and p99 beside it, and an interval the true median
ratio lies in at 90% confidence or more (`median_interval`: from 5 pairs; 8 pairs give the 2nd to 7th
smallest ratio, 93%): a target inside it is one this run cannot decide.

Mode `drift` gets a loop of on-demand drift runs (10,000 rows against a 1,000-row reference, the
issue's 10k x 32 window shape on the reference MLP's inputs) going during its runs only, started once
before the pairs so the first one (the worker process's start and Evidently's import) is done before
anything is measured.

`--rate R` paces the load instead of the closed loop at full speed: each of the connections waits
connections/R seconds before each request (wrk's delay hook), so the offered load is a little under
R req/s whatever the gateway does. At full speed on 2 shared cores, any CPU a background job takes
comes out of req/s and p99 by construction; paced below capacity, the question is the one a service
with headroom asks: does its latency move while the job runs?

The reference test's recipe otherwise (loadtests/bench.py, /work/shared/bench/README.md): wrk with one
thread, closed loop, the reference MLP and one-row body, 127.0.0.1 only, bounded in time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from loadtests.modes import DRIFT, MODEL, MODES, RAY_MODES, BenchError
from loadtests.ports import free_port
from loadtests.report import machine_facts
from loadtests.scrape import scrape_prediction_log
from loadtests.servers import DriftLoop, Gateway, check_gateway, prepare_server, running_gateway, tree_cpu_s
from loadtests.wrk import lua_script, request_body, run_wrk

DRIFT_WARM_TIMEOUT_S = 180.0


SIDE_MODES = sorted(set(MODES) - set(RAY_MODES))
"""The gateway modes a side can be: Ray's need a PostgreSQL and a Ray of their own each (`bench --pg-url`)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.ab", description=__doc__.splitlines()[0])
    p.add_argument("--a", default="batching_on", choices=SIDE_MODES, help="the mode whose cost is measured")
    p.add_argument("--b", default="logging_off", choices=SIDE_MODES, help="the baseline mode")
    p.add_argument(
        "--a-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for a's gateway (repeatable), e.g. SLUICE_PREDICTION_LOG_WRITER=thread",
    )
    p.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE", help="the same for b")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--pairs", type=int, default=8, help="a and b runs, alternating order")
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered req/s in all, paced per connection (default: closed loop at full speed, as the reference test)",
    )
    p.add_argument("--warmup", type=int, default=3, help="warm-up seconds at 16 connections, each side")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", type=Path, default=Path("bench-results/ab"), help="results folder")
    p.add_argument(
        "--gateway-cmd",
        default=f"{shlex.quote(sys.executable)} -m gateway",
        help="gateway command prefix, both sides (another build: `env PYTHONPATH=/its/checkout python -P -m gateway`)",
    )
    args = p.parse_args(argv)
    for side in ("a", "b"):
        env = {}
        for item in getattr(args, f"{side}_env"):
            name, sep, value = item.partition("=")
            if not sep or not name:
                p.error(f"--{side}-env takes NAME=VALUE, not {item!r}")
            env[name] = value
        setattr(args, f"{side}_env", env)
    if args.a == args.b and args.a_env == args.b_env:
        p.error("a and b are the same: give another mode or another environment")
    if args.pairs < 1 or args.duration < 1 or args.connections < 1:
        p.error("need --pairs, --duration and --connections >= 1")
    if args.rate < 0:
        p.error("--rate must be above 0 (or 0: full speed)")
    return args


@contextlib.contextmanager
def two_gateways(args: argparse.Namespace, work: Path, body: bytes) -> Iterator[dict[str, Gateway]]:
    with contextlib.ExitStack() as stack:
        gateways: dict[str, Gateway] = {}
        for side in ("a", "b"):
            port = free_port()
            cmd, env = side_command(args, side, work, port)
            print(f"[{side}: {label(args, side)}] starting: {shlex.join(cmd)}", flush=True)
            log_path = args.out / f"gateway-{side}-{getattr(args, side)}.log"
            gw = stack.enter_context(running_gateway(cmd, log_path, port, env))
            gw.wait_ready()
            check_gateway(gw, body, None)
            gateways[side] = gw
        yield gateways


def side_command(args: argparse.Namespace, side: str, work: Path, port: int) -> tuple[list[str], dict[str, str]]:
    """A side's command and environment, as `bench` starts the same mode: its worker arguments included (a
    `workers2` side without them was one process before 2026-12-07)."""
    cmd, extra_env, _info = prepare_server(getattr(args, side), work / side, port, args.provider, args.gateway_cmd)
    return cmd, {**extra_env, **getattr(args, f"{side}_env")}


def label(args: argparse.Namespace, side: str) -> str:
    """A side's mode, with its environment when it has one."""
    env = getattr(args, f"{side}_env")
    extra = " ".join(f"{k}={v}" for k, v in env.items())
    return f"{getattr(args, side)} {extra}".strip()


def warm_drift(gw: Gateway) -> float:
    """One drift run to completion (starts the worker, imports Evidently); seconds it took."""
    loop = DriftLoop(gw.base_url).__enter__()
    t0 = time.monotonic()
    try:
        while not loop.runs:
            if time.monotonic() - t0 > DRIFT_WARM_TIMEOUT_S:
                raise BenchError("the first drift run did not finish")
            time.sleep(0.2)
    finally:
        loop.__exit__()
    return time.monotonic() - t0


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(stat_path: str) -> float:
    """utime + stime of one /proc stat file, in seconds (fields 14 and 15, after the command's parens)."""
    with open(stat_path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_times(pid: int) -> dict[str, float]:
    """CPU seconds so far: the gateway's main thread (the event loop, which bounds its req/s), the whole
    process, and the rest of its process tree (the log writer, the monitor worker; under `--workers` the
    workers and their writers, the main process then only their supervisor, whose loop says nothing about
    req/s). Read from /proc (Linux)."""
    out = {"main_thread": _cpu_s(f"/proc/{pid}/task/{pid}/stat"), "process": _cpu_s(f"/proc/{pid}/stat")}
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/task/{pid}/schedstat") as f:
        # The loop's time runnable but waiting for a CPU (not for the GIL: that is a sleep).
        out["main_thread_runqueue"] = int(f.read().split()[1]) / 1e9
    out["children"] = max(0.0, tree_cpu_s(pid) - out["process"])
    return out


def measured_run(
    gw: Gateway, lua: Path, body_file: Path, connections: int, duration_s: int, work: Path
) -> dict[str, float]:
    """One wrk run, with the gateway's CPU per request beside wrk's figures: CPU time is what a noisy
    shared box disturbs least (its req/s moves ±10% between runs seconds apart, its CPU per request
    a few %)."""
    assert gw.proc is not None
    before = cpu_times(gw.proc.pid)
    result = run_wrk(f"{gw.base_url}/v2/models/{MODEL}/infer", lua, body_file, connections, duration_s, work)
    after = cpu_times(gw.proc.pid)
    requests = max(1.0, result["requests"])
    for key in before:
        result[f"cpu_us_per_req_{key}"] = (after[key] - before[key]) * 1e6 / requests
    seconds = max(1e-9, result["duration_us"] / 1e6)
    if "main_thread" in before:
        # Share of the run the event loop was on a CPU; what is left it waited: for the GIL, for a
        # CPU (main_thread_runqueue_share), or for work (epoll).
        result["main_thread_busy_share"] = (after["main_thread"] - before["main_thread"]) / seconds
    if "main_thread_runqueue" in before and "main_thread_runqueue" in after:
        result["main_thread_runqueue_share"] = (
            after["main_thread_runqueue"] - before["main_thread_runqueue"]
        ) / seconds
    return result


def paced(lua: str, connections: int, rate: float) -> str:
    """The reference script with wrk's delay hook added: each connection waits connections/rate seconds
    before each request, so the offered load is a little under `rate` req/s in all. wrk takes whole
    milliseconds (it truncates), so the wait is rounded here, where the figure is written down."""
    wait_ms = max(1, round(connections / rate * 1000.0))
    return (
        f"{lua}\n-- loadtests.ab --rate {rate:g}: paced, not a closed loop at full speed\n"
        f"function delay()\n  return {wait_ms}\nend\n"
    )


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


CONFIDENCE = 0.9
"""Coverage asked of the interval around a median ratio."""


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float] | None:
    """A distribution-free interval for the median of what `values` were drawn from: (low, high, coverage).

    Why: on this box one run of 8 pairs read the log's cost as 19% and the next as 6%; a median alone
    cannot say whether a target near it is met, missed, or beyond what the run can tell. The interval is
    the k-th smallest to the k-th largest value, k as large as keeps its coverage at least `confidence`:
    each pair's ratio falls below the true median with probability 1/2 whatever the box's noise looks
    like (the sign test's binomial, no normality assumed), so the coverage is 1 - 2 P(Binomial(n, 1/2) < k).
    None when there are too few values for any k to reach `confidence` (fewer than 5 at 90%)."""
    n = len(values)
    ordered = sorted(values)
    best: tuple[float, float, float] | None = None
    below = 0  # P(Binomial(n, 1/2) <= k - 1), k = 1, 2, ...
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1)
        coverage = 1.0 - 2.0 * below / 2**n
        if coverage < confidence:
            break
        best = (ordered[k - 1], ordered[n - k], coverage)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args.out.mkdir(parents=True, exist_ok=True)
    args.out = args.out.resolve()
    command = shlex.join([Path(sys.executable).name, "-m", "loadtests.ab", *(argv or sys.argv[1:])])
    pairs: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sluice-ab-") as tmp:
        work = Path(tmp)
        body = request_body()
        body_file = work / "request_b1.json"
        body_file.write_bytes(body)
        lua = work / "v2_b1.lua"
        shutil.copyfile(lua_script(), lua)
        measured_lua = lua
        if args.rate:
            measured_lua = work / "v2_b1_paced.lua"
            measured_lua.write_text(paced(lua.read_text(), args.connections, args.rate))
        with two_gateways(args, work, body) as gws:
            for side, gw in gws.items():
                run_wrk(f"{gw.base_url}/v2/models/{MODEL}/infer", lua, body_file, 16, max(1, args.warmup), work)
                if getattr(args, side) == DRIFT:
                    extra["drift_warm_s"] = round(warm_drift(gw), 2)
                    print(f"[{side}] first drift run (worker start) took {extra['drift_warm_s']} s", flush=True)
            drift_runs: list[dict[str, Any]] = []
            for i in range(args.pairs):
                order = ("a", "b") if i % 2 == 0 else ("b", "a")
                pair: dict[str, Any] = {"order": list(order)}
                for side in order:
                    gw = gws[side]
                    loop = DriftLoop(gw.base_url).__enter__() if getattr(args, side) == DRIFT else None
                    try:
                        pair[side] = measured_run(gw, measured_lua, body_file, args.connections, args.duration, work)
                    finally:
                        if loop is not None:
                            loop.__exit__()
                            drift_runs += loop.runs
                pairs.append(pair)
                a, b = pair["a"], pair["b"]
                print(
                    f"pair {i + 1}/{args.pairs} ({order[0]} first): a {a['rps']:,.0f} req/s p99 "
                    f"{a['p99_ms']:.2f} ms | b {b['rps']:,.0f} req/s p99 {b['p99_ms']:.2f} ms | "
                    f"a/b req/s {a['rps'] / b['rps']:.3f}, main-thread CPU µs/req "
                    f"{a['cpu_us_per_req_main_thread']:.1f} vs {b['cpu_us_per_req_main_thread']:.1f}, busy "
                    f"{a.get('main_thread_busy_share', 0):.2f} vs {b.get('main_thread_busy_share', 0):.2f}, "
                    f"runqueue {a.get('main_thread_runqueue_share', 0):.3f} vs "
                    f"{b.get('main_thread_runqueue_share', 0):.3f}",
                    flush=True,
                )
            for side, gw in gws.items():
                extra[f"prediction_log_{side}"] = scrape_prediction_log(gw)
            if drift_runs:
                extra["drift_runs"] = drift_runs
    summary = summarise(args, pairs)
    result = {
        "command": command,
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_facts(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "summary": summary,
        "pairs": pairs,
        **extra,
    }
    (args.out / "ab.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({"command": command, **summary}, indent=2))
    loss = summary["rps_loss_pct_interval"]
    if loss is not None:
        print(
            f"a costs {summary['rps_loss_pct']}% of b's req/s (median of {len(pairs)} pairs); "
            f"{loss[0]}% to {loss[1]}% at {summary['rps']['interval_coverage']:.0%} confidence"
        )
    if "drift_runs" in extra:
        ok = [r for r in extra["drift_runs"] if r["status"] == "ok"]
        print(f"drift runs during the drift side's load: {len(ok)} ok of {len(extra['drift_runs'])}")
    print(f"wrote {args.out / 'ab.json'}")
    return 0


def summarise(args: argparse.Namespace, pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of each side, and the median of the per-pair ratios (each from runs seconds apart)."""
    out: dict[str, Any] = {
        "a": label(args, "a"),
        "b": label(args, "b"),
        "connections": args.connections,
        "rate": args.rate or "full speed",
        "pairs": len(pairs),
    }
    for key in (
        "rps",
        "p50_ms",
        "p99_ms",
        "cpu_us_per_req_main_thread",
        "cpu_us_per_req_process",
        "cpu_us_per_req_children",
        "main_thread_busy_share",
        "main_thread_runqueue_share",
    ):
        if not all(key in p["a"] and key in p["b"] for p in pairs):
            continue
        a = [p["a"][key] for p in pairs]
        b = [p["b"][key] for p in pairs]
        ratios = [r for r in (ratio(x, y) for x, y in zip(a, b, strict=True)) if r is not None]
        interval = median_interval(ratios)
        out[key] = {
            "a_median": round(statistics.median(a), 2),
            "b_median": round(statistics.median(b), 2),
            "a_over_b_median": round(statistics.median(ratios), 4) if ratios else None,
            "a_over_b_range": [round(min(ratios), 4), round(max(ratios), 4)] if ratios else None,
            "a_over_b_interval": None if interval is None else [round(interval[0], 4), round(interval[1], 4)],
            "interval_coverage": None if interval is None else round(interval[2], 4),
        }
    rps = out["rps"]["a_over_b_median"]
    out["rps_loss_pct"] = round((1 - rps) * 100, 2) if rps is not None else None
    low_high = out["rps"]["a_over_b_interval"]
    out["rps_loss_pct_interval"] = None if low_high is None else [round((1 - r) * 100, 2) for r in reversed(low_high)]
    """The loss that the pairs bound at `interval_coverage`: a target inside it is beyond what the run can tell."""
    main = out["cpu_us_per_req_main_thread"]["a_over_b_median"]
    out["main_thread_cpu_cost_pct"] = round((main - 1) * 100, 2) if main is not None else None
    """What the event loop, the bound on req/s, spends more per request in a than in b."""
    errors = sum(
        sum(p[n].get(k, 0) for k in ("non2xx", "connect", "read", "write", "timeout"))
        for p in pairs
        for n in ("a", "b")
    )
    out["errors_and_non2xx"] = errors
    return out


if __name__ == "__main__":
    raise SystemExit(main())
