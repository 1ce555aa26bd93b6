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
import datetime as dt
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.modes import (
    ALL_MODES,
    DEFAULT_MODES,
    DRIFT,
    FLOORS,
    GATEWAY_VS_FLOOR,
    HOST,
    LOGGING_OFF,
    MODEL,
    POLICIES,
    PROVIDERS,
    SHADOW,
    BenchError,
    mode_config,
)
from loadtests.ports import free_port
from loadtests.raw import measure_raw
from loadtests.report import machine_facts, markdown_report, print_report
from loadtests.scrape import counter_delta, scrape_prediction_log, scrape_shadow
from loadtests.servers import (
    DriftLoop,
    check_gateway,
    pg_schema,
    prepare_server,
    running_gateway,
    server_cpu_s,
    write_model_repo,
)
from loadtests.targets import LOG_COST_TARGET, Row, log_cost, shadow_cost, target_checks, vs_floor
from loadtests.wrk import lua_script, median_summary, request_body, run_wrk


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
        "build: `env PYTHONPATH=/path/to/its/checkout python -P -m gateway`; -P, because the gateway runs in this "
        "checkout, which would come first on sys.path); the floor always runs this Python's uvicorn",
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
    cmd, extra_env, info = prepare_server(name, work, port, args.provider, args.gateway_cmd, args.pg_url)
    log_path = args.out / (f"{name}.log" if name in FLOORS else f"gateway-{name}.log")
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
