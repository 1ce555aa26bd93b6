"""The results, written: the terminal table, the markdown report and the machine facts beside them."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.modes import FLOOR, GATEWAY_VS_FLOOR, LOGGING_OFF, PRIMARY_VERSION, ROOT, SHADOW, SHADOW_VERSION
from loadtests.targets import LOG_COST_TARGET, Row, fmt, log_cost, shadow_cost, target_checks, vs_floor


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
                fmt(r.median.get("rps"), ",.0f"),
                f"{min(rps):,.0f}–{max(rps):,.0f}" if rps else "—",
                fmt(r.median.get("p50_ms"), ".2f"),
                fmt(r.median.get("p90_ms"), ".2f"),
                fmt(r.median.get("p99_ms"), ".2f"),
                str(r.non2xx),
                str(r.errors),
                fmt(r.us_per_req, ",.0f"),
                fmt(r.overhead_ratio, ".1f") + ("×" if r.overhead_ratio is not None else ""),
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
            f"{fmt(v['on_rps'], ',.0f')} ({v['on_rps_range'][0]:,.0f}–{v['on_rps_range'][1]:,.0f})",
            f"{fmt(v['off_rps'], ',.0f')} ({v['off_rps_range'][0]:,.0f}–{v['off_rps_range'][1]:,.0f})",
            fmt(None if v["rps_loss"] is None else v["rps_loss"] * 100, ".1f") + " %",
            fmt(v["on_p50_ms"], ".2f"),
            fmt(v["off_p50_ms"], ".2f"),
            fmt(v["on_p99_ms"], ".2f"),
            fmt(v["off_p99_ms"], ".2f"),
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
            fmt(v["on_rps"], ",.0f"),
            fmt(v["shadow_rps"], ",.0f"),
            fmt(v["on_p50_ms"], ".2f"),
            fmt(v["shadow_p50_ms"], ".2f"),
            fmt(v["on_p99_ms"], ".2f"),
            fmt(v["shadow_p99_ms"], ".2f"),
            fmt(v["p99_ratio"], ".2f"),
            fmt(v["requests"], ",.0f"),
            fmt(v["shadow_compared"], ",.0f"),
            fmt(v["shadow_errored"], ",.0f"),
            fmt(v["shadow_dropped"], ",.0f")
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
        f"dropped; mean shadow inference time {fmt(mean_ms, '.2f')} ms"
    )


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
            fmt(v["floor_rps"], ",.0f"),
            fmt(v["gateway_rps"], ",.0f"),
            fmt(v["rps_ratio"], ".2f"),
            fmt(v["p50_above_floor_ms"], "+.2f"),
            f"{fmt(v['floor_p99_ms'], '.2f')} / {fmt(v['gateway_p99_ms'], '.2f')}",
            f"{fmt(v['floor_cpu_cores'], '.2f')} / {fmt(v['gateway_cpu_cores'], '.2f')}",
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
            lines.append(f"| {c} | {fmt(rr, '.2f')} | {fmt(pr, '.2f')} |")
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
            "- A request answered in a runtime batch is queued as a small tuple on its batch's entry (the batch's "
            "arrays held once); the event loop hands batches of 500 records over a pipe to the log's writer "
            "process, which inserts each runtime batch as one row (its tag names the requests whose ids the "
            "gateway made from it; any other request adds a key row) into the state database (SQLite here) every "
            "0.5 s or when a batch fills. On a box where wrk and the gateway share the cores, that process's CPU is "
            "taken from them. Read the log's cost side by side (`loadtests.ab`): these modes ran minutes apart.",
        ]
        line = log_totals_line(modes.get(GATEWAY_VS_FLOOR, {}).get("prediction_log"))
        if line:
            lines.append(f"- {line}.")
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {t['target']} | {t['shown']} | {_met(t['met'])} |" for t in target_checks(rows)]
    return "\n".join(lines) + "\n"
