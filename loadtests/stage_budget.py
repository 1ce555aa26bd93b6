"""Where a request's CPU goes, by stage: the gateway against the bare floor, in one run.

    python -m loadtests.stage_budget [--modes floor,batching_on] [--connections 64] [--duration 10] \
        [--rate 400] [--out bench-results/stages]

Why a sampling profiler and not timers in the code: the gap to the floor is a sum of small costs ("each is
small; together they are the gap"), and timers around each stage would add costs of their own to the very
path being measured. py-spy samples the server's whole process tree from outside (`--subprocesses`: the
prediction log's writer and the monitor worker are counted too) while wrk drives it with the reference
request; only threads on a CPU are sampled (py-spy's default: idle threads are left out), so a stage's share
of the samples is its share of the CPU. That share times the tree's CPU seconds (read from /proc over the
same run), divided by the requests wrk completed, is the stage's µs of CPU per request.

A sample is charged to the innermost frame that a rule in `STAGES` recognises (numpy, the standard library's
helpers and the like are skipped over, so a `np.asarray` in the JSON decoder is decoding). What no rule
recognises is "other"; its top frames are listed so a rule can be added. The same rules read the floor, so a
stage the floor does not have (route, validate, queue, log, metrics, trace, shadow) shows as a cost the gateway
adds, and a stage both have (parse, decode, run, encode, write) compares directly.

Needs wrk (Debian) and py-spy (PyPI; in the dev extra); py-spy reads other processes' memory, which needs
root or ptrace rights (`kernel.yama.ptrace_scope` 0 or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.modes import ALL_MODES, FLOOR, GATEWAY_VS_FLOOR, HOST, MODEL, PROVIDERS, BenchError
from loadtests.ports import free_port
from loadtests.servers import prepare_server, running_gateway, server_cpu_s
from loadtests.wrk import lua_script, request_body, run_wrk

# (stage, path fragment, function-name prefixes or None for any). Checked in order, so put the specific
# rules (a codec's decode against its encode) before the general ones (the codec's module).
Rule = tuple[str, str, tuple[str, ...] | None]
STAGES: tuple[Rule, ...] = (
    ("run", "onnxruntime/", None),
    ("run", "runtimes/", None),
    ("decode", "codec_json.py", ("decode", "_json_data", "_object", "_datatype", "_shape", "_requested")),
    ("decode", "codec_binary.py", ("decode",)),
    ("encode", "codec_json.py", ("encode",)),
    ("encode", "codec_binary.py", ("encode",)),
    ("validate", "serving/validation.py", None),
    ("validate", "serving/guards.py", None),
    ("route", "serving/router.py", None),
    ("route", "serving/traffic.py", None),
    ("route", "serving/policy_view.py", None),
    ("shadow", "serving/shadow.py", None),
    ("queue", "serving/batcher.py", None),
    ("queue", "serving/batch_policy.py", None),
    ("queue", "serving/watchdog.py", None),
    ("log", "prediction_log", None),
    ("log", "log_writer", None),
    ("log", "storage/predictions.py", None),
    ("log", "sqlalchemy/", None),
    ("log", "psycopg/", None),
    ("log", "sqlite3/", None),
    ("metrics", "prometheus_client/", None),
    ("metrics", "observability/metrics.py", None),
    ("metrics", "serving/window_stats.py", None),
    ("metrics", "serving/window_publisher.py", None),
    ("trace", "opentelemetry/", None),
    ("trace", "observability/tracing.py", None),
    ("logs", "observability/logs.py", None),
    ("logs", "logging/", None),
    ("asgi", "uvicorn/protocols/", ("run_asgi", "receive")),
    ("write", "uvicorn/protocols/", ("send", "_send", "write")),
    ("write", "serving/http_protocol.py", ("write", "flush", "send")),
    ("write", "serving/http_app.py", ("_send",)),
    ("write", "serving/http_direct.py", ("answer",)),
    ("handler", "serving/http_direct.py", None),
    ("parse", "uvicorn/protocols/", None),
    ("parse", "httptools/", None),
    ("parse", "serving/http_protocol.py", None),
    # The guard protocol is the HTTP connection's protocol: httptools' parsing (C, no frame of its own) lands in
    # its callbacks (`data_received`, `on_message_complete`).
    ("parse", "serving/http_guard.py", None),
    ("handler", "serving/http_app.py", None),
    ("handler", "serving/dataplane.py", None),
    ("handler", "serving/request.py", None),
    ("handler", "floor_app.py", None),
    ("framework", "starlette/", None),
    ("framework", "fastapi/", None),
    ("framework", "uvicorn/", None),
    ("grpc", "grpc/", None),
    ("grpc", "grpc_app.py", None),
    ("monitor", "monitors/", None),
    ("monitor", "evidently/", None),
    ("control", "gateway/control/", None),
    ("control", "gateway/storage/", None),
    ("event loop", "asyncio/", None),
    ("event loop", "uvloop/", None),
    ("threads", "concurrent/futures/", None),
    ("threads", "threading.py", None),
)
ORDER = (
    *["parse", "decode", "route", "validate", "queue", "run", "shadow", "encode", "write", "handler", "framework"],
    "asgi",
    *["log", "metrics", "trace", "logs", "grpc", "monitor", "control"],
    "event loop",
    "threads",
    "other",
)
"""The table's rows: the request's own path first, then the side paths, then the machinery."""


FLOOR_APP = Path(__file__).with_name("floor_app.py")
LINE_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "floor_app.py": (
        ("orjson.loads", "decode"),
        ("np.asarray", "decode"),
        ("session.run", "run"),
        ("orjson.dumps", "encode"),
        ("y.ravel()", "encode"),
    ),
}
"""The floor does its whole request in one function, so its stages are told apart by the sampled line's text."""


@dataclass(frozen=True)
class Frame:
    function: str
    path: str
    line: int = 0


def parse_frame(text: str) -> Frame:
    """py-spy's raw frame `function (path:line)`; a process marker `process 12:"cmd"` keeps its text."""
    name, sep, rest = text.rpartition(" (")
    if not sep:
        return Frame(text, "")
    path, _, line = rest.rstrip(")").rpartition(":")
    return Frame(name, path, int(line) if line.isdigit() else 0)


def _line_stage(frame: Frame, sources: dict[str, list[str]]) -> str | None:
    for suffix, rules in LINE_RULES.items():
        if frame.path.endswith(suffix) and suffix in sources and 0 < frame.line <= len(sources[suffix]):
            text = sources[suffix][frame.line - 1]
            return next((stage for needle, stage in rules if needle in text), None)
    return None


def _named(function: str, prefixes: tuple[str, ...]) -> bool:
    """py-spy names a method by its qualified name (`RequestResponseCycle.send`): match the last part."""
    return function.rpartition(".")[2].lstrip("_").startswith(tuple(p.lstrip("_") for p in prefixes))


def stage_of(frames: Sequence[Frame], sources: dict[str, list[str]] | None = None) -> str:
    """The stage a stack's CPU is charged to: the innermost frame some rule recognises (frames outermost first).
    `sources`: the lines of the files in `LINE_RULES`, by file name."""
    for frame in reversed(frames):
        by_line = _line_stage(frame, sources or {})
        if by_line is not None:
            return by_line
        for stage, fragment, prefixes in STAGES:
            if fragment in frame.path and (prefixes is None or _named(frame.function, prefixes)):
                return stage
    return "other"


def parse_raw(lines: Iterable[str]) -> list[tuple[list[Frame], int]]:
    """py-spy's `--format raw` (collapsed stacks: frames joined by ';', then a space and a count). A process
    marker whose command line has a newline in it (a `python -c` child) splits one stack over lines: the
    pieces are joined back until a line ends with a count."""
    stacks: list[tuple[list[Frame], int]] = []
    pending = ""
    for line in lines:
        pending += line.rstrip("\n")
        head, _, count = pending.rpartition(" ")
        if not count.isdigit() or not head:
            pending += "\n"
            continue
        stacks.append((_frames(head), int(count)))
        pending = ""
    return stacks


def _frames(stack: str) -> list[Frame]:
    """A collapsed stack's frames, without its process markers. A marker's command line may hold a ';' of its own
    (`--workers`' workers run `python -c "from multiprocessing.spawn import spawn_main; spawn_main(...)"`): its
    pieces are skipped up to the one that closes its quote."""
    frames: list[Frame] = []
    in_marker = False
    for part in stack.split(";"):
        if in_marker or part.startswith("process "):
            in_marker = not part.endswith('"')
            continue
        frames.append(parse_frame(part))
    return frames


def budget(
    stacks: Sequence[tuple[list[Frame], int]], sources: dict[str, list[str]] | None = None
) -> tuple[Counter[str], Counter[str]]:
    """Samples per stage, and the innermost frames of what no rule recognised (to write the next rule)."""
    per_stage: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for frames, count in stacks:
        stage = stage_of(frames, sources)
        per_stage[stage] += count
        if stage == "other" and frames:
            unknown[f"{frames[-1].function} ({frames[-1].path})"] += count
    return per_stage, unknown


def per_request_us(per_stage: Counter[str], cpu_s: float, requests: int) -> dict[str, float]:
    """Each stage's share of the samples, times the CPU the tree used, per request completed."""
    total = sum(per_stage.values())
    if total == 0 or requests <= 0:
        return {}
    return {stage: cpu_s * n / total / requests * 1e6 for stage, n in per_stage.items()}


@dataclass
class ModeBudget:
    mode: str
    rps: float
    requests: int
    cpu_us_per_request: float
    stages_us: dict[str, float]
    samples: int
    unrecognised: list[tuple[str, int]]


def profile_mode(name: str, args: argparse.Namespace, work: Path, body_file: Path) -> ModeBudget:
    port = free_port()
    cmd, env, _ = prepare_server(name, work, port, args.provider, f"{sys.executable} -m gateway")
    url = f"http://{HOST}:{port}/v2/models/{MODEL}/infer"
    lua = lua_script()
    raw_path = args.out / f"{name}.pyspy.txt"
    with running_gateway(cmd, args.out / f"{name}.log", port, env) as gw:
        gw.wait_ready()
        assert gw.proc is not None
        run_wrk(url, lua, body_file, 16, 2, work)  # warm-up
        spy = subprocess.Popen(
            [
                args.py_spy,
                "record",
                "--pid",
                str(gw.proc.pid),
                "--subprocesses",
                "--nonblocking",
                "--rate",
                str(args.rate),
                "--format",
                "raw",
                "--duration",
                str(args.duration + 1),
                "--output",
                str(raw_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        cpu_before = server_cpu_s(gw)
        result = run_wrk(url, lua, body_file, args.connections, args.duration, work)
        cpu_s = server_cpu_s(gw) - cpu_before
        _, err = spy.communicate(timeout=args.duration + 60)
        if spy.returncode != 0 or not raw_path.exists():
            raise BenchError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
    stacks = parse_raw(raw_path.read_text(errors="replace").splitlines(keepends=True))
    per_stage, unknown = budget(stacks, {FLOOR_APP.name: FLOOR_APP.read_text().splitlines()})
    requests = int(result["requests"])
    return ModeBudget(
        mode=name,
        rps=result["rps"],
        requests=requests,
        cpu_us_per_request=cpu_s / max(requests, 1) * 1e6,
        stages_us=per_request_us(per_stage, cpu_s, requests),
        samples=sum(per_stage.values()),
        unrecognised=unknown.most_common(12),
    )


def table(results: Sequence[ModeBudget]) -> str:
    """Markdown: a row a stage, a column a mode, and the gateway's excess over the first mode (the floor)."""
    names = [r.mode for r in results]
    stages = [r.stages_us for r in results]
    seen = [s for s in ORDER if any(s in st for st in stages)]
    seen += sorted({s for st in stages for s in st} - set(ORDER))  # a stage without its place: a row all the same
    head = "| stage | " + " | ".join(f"{n} µs/req" for n in names)
    head += " | " + " | ".join(f"{n} − {names[0]}" for n in names[1:]) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(names) - 1)]
    for stage in seen:
        values = [st.get(stage, 0.0) for st in stages]
        cells = [f"{v:,.1f}" for v in values] + [f"{v - values[0]:+,.1f}" for v in values[1:]]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    totals = [r.cpu_us_per_request for r in results]
    cells = [f"**{t:,.1f}**" for t in totals] + [f"**{t - totals[0]:+,.1f}**" for t in totals[1:]]
    lines.append("| **all (CPU of the process tree / requests)** | " + " | ".join(cells) + " |")
    rps = [f"{r.rps:,.0f}" for r in results]
    pad = " |" * (len(names) - 1)
    lines.append("| req/s during the profile (py-spy's sampling included) | " + " | ".join(rps) + " |" + pad)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.stage_budget", description=__doc__.splitlines()[0])
    p.add_argument("--modes", default=f"{FLOOR},{GATEWAY_VS_FLOOR}", help="comma-separated; the first is the baseline")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=int, default=10, help="seconds of wrk (and of sampling) per mode")
    p.add_argument("--rate", type=int, default=400, help="py-spy samples a second")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    p.add_argument("--out", type=Path, default=Path("bench-results/stages"))
    p.add_argument("--py-spy", default=shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in ALL_MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {list(ALL_MODES)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: sudo apt-get install -y wrk", file=sys.stderr)
        return 2
    if not Path(args.py_spy).exists() and shutil.which(args.py_spy) is None:
        print("py-spy is not installed: pip install py-spy (it is in the dev extra)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="sluice-stages-") as tmp:
        work = Path(tmp)
        body_file = work / "request_b1.json"
        body_file.write_bytes(request_body())
        for name in args.modes:
            print(f"[{name}] profiling {args.duration} s at {args.connections} connections", flush=True)
            results.append(profile_mode(name, args, work, body_file))
    report = table(results)
    print(report)
    for r in results:
        print(f"\n[{r.mode}] unrecognised frames (add a rule in STAGES if one is large):")
        for frame, n in r.unrecognised:
            print(f"  {n:>6}  {frame}")
    (args.out / "stages.json").write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))
    (args.out / "stages.md").write_text(report + "\n")
    print(f"wrote {args.out / 'stages.json'} and {args.out / 'stages.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
