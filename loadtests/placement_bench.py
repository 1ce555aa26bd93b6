"""`worker` against `device` placement with `--workers N`: where does one runtime process per device win?

    python -m loadtests.placement_bench --out bench-results/placement        # ≈ 12 min on the 2-core box
    python -m loadtests.placement_bench --duration 2 --rounds 1 --connections 16 --hidden 256   # smoke run

Both placements serve the same model from one gateway each, started side by side (`--workers 2` by default)
and kept up together; wrk (the reference recipe: one thread, closed loop, `v2_b1.lua`, one-row V2 JSON) then
runs against one and the other in turn, the order swapped every round, so a drift of the shared box falls on
both alike. Two models: the reference MLP (`gateway.cli.demo.build_reference_mlp`: microseconds a row, where
the hop to a runtime process costs more than the model) and the wide MLP of `loadtests/gpu_check.py`
(32→hidden→hidden→8, `--hidden`, default 4096: milliseconds a row, where merging the workers' batches
pays). Connections 16, 64 and 256.

Per run: req/s and rows/s (`--rows` per request), p50 and p99, the mean rows per runtime call (the runtime
process's calls for `device`, the workers' for `worker`; read from /metrics before and after), and the
resident memory of the gateway's whole process tree (supervisor, workers, runtime process). Medians over the
rounds go to `results.json` and `results.md` in `--out`. `loadtests/gpu_placement.py` runs the same on a GPU
machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from loadtests.gpu_check import build_wide_mlp
from loadtests.modes import HOST, BenchError
from loadtests.ports import free_port
from loadtests.report import machine_facts
from loadtests.servers import Gateway, running_gateway
from loadtests.wrk import lua_script, run_wrk

MODEL = "mlp"
PLACEMENTS = ("worker", "device")
MODELS = ("reference", "wide")
_LABELS = {"model": MODEL, "version": "1"}


def config_yaml(placement: str, provider: str) -> str:
    """The model's config.yaml: the reference recipe's runtime (one intra-op thread), batching on, no log."""
    return (
        f"runtime:\n  kind: onnx\n  execution_providers: [{provider}]\n  intra_op_threads: 1\n"
        f"  placement: {placement}\n"
        "batching:\n  max_batch_size: 256\n  max_queue_delay_ms: 2\n  queue_capacity: 4096\n"
        "logging:\n  enabled: false\n"
    )


def write_repo(root: Path, model: str, placement: str, provider: str, hidden: int) -> Path:
    from gateway.cli.demo import build_reference_mlp

    path = root / MODEL / "1" / "model.onnx"
    if model == "reference":
        build_reference_mlp(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        build_wide_mlp(path, hidden=hidden)
    (root / MODEL / "config.yaml").write_text(config_yaml(placement, provider))
    return root


def request_body(rows: int) -> bytes:
    x = np.random.default_rng(42).standard_normal((rows, 32)).astype(np.float32)
    payload = {"inputs": [{"name": "input", "shape": [rows, 32], "datatype": "FP32", "data": x.ravel()}]}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants (shared pages counted in each, as `ps` does)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, parent in parents.items() if parent == pid and p not in tree]
        tree.update(kids)
        frontier.extend(kids)
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in tree:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
    return total


def scrape(gw: Gateway) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{gw.base_url}/metrics", timeout=10) as resp:
        text: str = resp.read().decode()
        return text


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")):
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


def mean_batch(before: str, after: str, placement: str) -> float | None:
    """Mean rows per runtime call over a run: the runtime process's calls, or the workers' own."""
    name = "sluice_device_batch_size" if placement == "device" else "sluice_batch_size"
    return _mean_delta(before, after, name, **_LABELS)


def _mean_delta(before: str, after: str, name: str, **labels: str) -> float | None:
    total = metric_sum(after, f"{name}_sum", **labels) - metric_sum(before, f"{name}_sum", **labels)
    count = metric_sum(after, f"{name}_count", **labels) - metric_sum(before, f"{name}_count", **labels)
    return total / count if count else None


def hop_us(before: str, after: str) -> float | None:
    """The hop measured inside the gateway: a worker's runtime call (its batch sent, answered) less the time the
    batch waited and ran in the runtime process; means over the run, in µs (the call a worker batch joined is
    averaged per call, so with much merging this is approximate)."""
    call = _mean_delta(before, after, "sluice_compute_duration_seconds", **_LABELS)
    queued = _mean_delta(before, after, "sluice_device_queue_wait_seconds", **_LABELS)
    ran = _mean_delta(before, after, "sluice_device_compute_duration_seconds", **_LABELS)
    if call is None or queued is None or ran is None:
        return None
    return (call - queued - ran) * 1e6


@dataclass
class Side:
    placement: str
    gateway: Gateway
    runs: dict[int, list[dict[str, Any]]] = field(default_factory=dict)


def measured_run(side: Side, connections: int, duration_s: int, body_file: Path, rows: int, work: Path) -> None:
    gw = side.gateway
    before = scrape(gw)
    wrk = run_wrk(f"{gw.base_url}/v2/models/{MODEL}/infer", lua_script(), body_file, connections, duration_s, work)
    after = scrape(gw)
    assert gw.proc is not None
    run = {
        "rps": wrk["rps"],
        "rows_per_s": wrk["rps"] * rows,
        "p50_ms": wrk["p50_ms"],
        "p99_ms": wrk["p99_ms"],
        "errors": wrk.get("non2xx", 0) + wrk.get("connect", 0) + wrk.get("read", 0) + wrk.get("timeout", 0),
        "mean_batch": mean_batch(before, after, side.placement),
        "rss_mib": tree_rss_bytes(gw.proc.pid) / 2**20,
        "hop_us": hop_us(before, after) if side.placement == "device" else None,
    }
    side.runs.setdefault(connections, []).append(run)
    print(f"  {side.placement:>6} c={connections:<4} " + " ".join(f"{k}={_fmt(v)}" for k, v in run.items()), flush=True)


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.1f}" if isinstance(v, float) else str(v)


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r[key] is not None]
        out[key] = float(statistics.median(values)) if values else None
    return out


@contextlib.contextmanager
def two_gateways(args: argparse.Namespace, model: str, work: Path) -> Iterator[list[Side]]:
    with contextlib.ExitStack() as stack:
        sides = []
        for placement in PLACEMENTS:
            repo = write_repo(work / f"repo-{model}-{placement}", model, placement, args.provider, args.hidden)
            port = free_port()
            cmd = [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--model-repo",
                str(repo),
                "--state-dir",
                str(work / f"state-{model}-{placement}"),
                "--host",
                HOST,
                "--http-port",
                str(port),
                "--grpc-port",
                "-1",
                "--workers",
                str(args.workers),
            ]
            log_path = args.out / f"gateway-{model}-{placement}.log"
            gw = stack.enter_context(running_gateway(cmd, log_path, port))
            sides.append(Side(placement, gw))
        for side in sides:
            side.gateway.wait_ready()
        yield sides


def bench_model(
    args: argparse.Namespace, model: str, work: Path, during: Callable[[Side, int], Any] | None = None
) -> dict[str, Any]:
    """Both placements of one model, rounds of wrk alternating between them; medians per connection count.
    `during(side, connections)`: a context manager entered around each measured run (the GPU script samples
    NVML with it) whose value is added to the run."""
    body_file = work / f"request_b{args.rows}.json"
    body_file.write_bytes(request_body(args.rows))
    with two_gateways(args, model, work) as sides:
        for side in sides:  # warm-up: connections opened, batches formed, the runtime process busy once
            run_wrk(f"{side.gateway.base_url}/v2/models/{MODEL}/infer", lua_script(), body_file, 16, 2, work)
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]
            for connections in args.connections:
                for side in order:
                    if during is None:
                        measured_run(side, connections, args.duration, body_file, args.rows, work)
                    else:
                        with during(side, connections) as extra:
                            measured_run(side, connections, args.duration, body_file, args.rows, work)
                        side.runs[connections][-1].update(extra or {})
        return {side.placement: {c: medians(runs) for c, runs in side.runs.items()} for side in sides}


def markdown(results: dict[str, Any], facts: dict[str, Any], command: str) -> str:
    lines = [
        "# worker against device placement",
        "",
        f"`{command}`",
        "",
        f"Machine: {facts.get('cpu_model', '?')}, {facts.get('nproc', '?')} CPUs, GPU {facts.get('gpu') or 'none'}; "
        f"commit {facts.get('git_commit', '?')}.",
        "",
        "| model | conns | placement | req/s | rows/s | p50 ms | p99 ms | rows/call | RSS MiB | hop µs | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, by_placement in results.items():
        connections = sorted({c for runs in by_placement.values() for c in runs})
        for c in connections:
            for placement in PLACEMENTS:
                m = by_placement.get(placement, {}).get(c)
                if m is None:
                    continue
                keys = ("rps", "rows_per_s", "p50_ms", "p99_ms", "mean_batch", "rss_mib", "hop_us")
                cells = [m[k] for k in keys]
                shown = " | ".join("–" if v is None else f"{v:,.1f}" for v in cells)
                lines.append(f"| {model} | {c} | {placement} | {shown} | {m['errors']:.0f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.placement_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-results/placement"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
    p.add_argument("--connections", type=lambda s: [int(c) for c in s.split(",")], default=[16, 64, 256])
    p.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    p.add_argument("--rows", type=int, default=1, help="rows per request")
    p.add_argument("--hidden", type=int, default=4096, help="the wide MLP's hidden width")
    args = p.parse_args(argv)
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; choose from {', '.join(MODELS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m loadtests.placement_bench " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="sluice-placement-") as tmp:
            for model in args.models:
                print(f"[{model}] worker and device placement, --workers {args.workers}", flush=True)
                results[model] = bench_model(args, model, Path(tmp))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    facts = machine_facts()
    doc = {"command": command, "machine": facts, "seconds": time.monotonic() - started, "results": results}
    (args.out / "results.json").write_text(json.dumps(doc, indent=2))
    (args.out / "results.md").write_text(markdown(results, facts, command))
    print(markdown(results, facts, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
