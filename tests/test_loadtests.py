"""The benchmark tools' own parts: the reference wrk script and its paced form against a real wrk,
and the A/B summary's arithmetic. Every figure in the READMEs goes through these.

wrk comes from Debian (`apt-get install -y wrk`); without it the wrk tests skip locally and fail in
CI (CI=true), where `.ci/run` installs it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.serving.model_config import load_model_config
from loadtests import ab
from loadtests.ab import median_interval, paced, summarise
from loadtests.modes import MODEL
from loadtests.servers import prepare_server
from loadtests.targets import Row, target_checks
from loadtests.wrk import lua_script, run_wrk
from tests.helpers import HookReceiver

WRK = shutil.which("wrk")
needs_wrk = pytest.mark.skipif(
    WRK is None and os.environ.get("CI") != "true", reason="wrk is not installed (apt-get install -y wrk)"
)


@pytest.fixture
def body_file(tmp_path: Path) -> Path:
    path = tmp_path / "request_b1.json"
    path.write_text(json.dumps({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}))
    return path


@pytest.fixture
def ok_server() -> Iterator[HookReceiver]:
    with HookReceiver() as server:
        yield server


@needs_wrk
def test_reference_script_posts_the_body_and_reports_its_summary(
    ok_server: HookReceiver, body_file: Path, tmp_path: Path
) -> None:
    result = run_wrk(ok_server.url, lua_script(), body_file, connections=2, duration_s=1, cwd=tmp_path)
    assert result["requests"] > 0
    assert result["requests"] <= len(ok_server.hits)  # wrk counts the requests that completed
    assert {body for _, body in ok_server.hits} == {body_file.read_bytes()}
    assert result["non2xx"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


@needs_wrk
def test_reference_script_counts_error_answers(body_file: Path, tmp_path: Path) -> None:
    with HookReceiver(status=503) as server:
        result = run_wrk(server.url, lua_script(), body_file, connections=2, duration_s=1, cwd=tmp_path)
    assert result["requests"] > 0
    assert result["non2xx"] == result["requests"]


@needs_wrk
def test_paced_script_offers_the_rate_asked_for(ok_server: HookReceiver, body_file: Path, tmp_path: Path) -> None:
    # 4 connections at 40 req/s in all: each waits 100 ms before each request. A closed loop at full
    # speed against this server makes hundreds of requests a second on any machine.
    script = tmp_path / "paced.lua"
    script.write_text(paced(lua_script().read_text(), connections=4, rate=40))
    result = run_wrk(ok_server.url, script, body_file, connections=4, duration_s=3, cwd=tmp_path)
    assert 25 <= result["rps"] <= 41, result


def test_paced_wait_is_whole_milliseconds_and_never_zero() -> None:
    assert "return 16\n" in paced("-- script", connections=64, rate=4000)
    assert "return 1\n" in paced("-- script", connections=1, rate=100_000)
    assert paced("-- script", connections=64, rate=4000).startswith("-- script\n")


def _run(rps: float, p99: float, loop_us: float, **errors: int) -> dict[str, float]:
    return {"rps": rps, "p50_ms": p99 / 3, "p99_ms": p99, "cpu_us_per_req_main_thread": loop_us, **errors}


def test_summary_is_the_median_of_per_pair_ratios_not_the_ratio_of_medians() -> None:
    args = argparse.Namespace(a="batching_on", b="logging_off", a_env={}, b_env={}, connections=64, rate=None)
    pairs = [
        # The box's speed drifts between pairs; each pair's two runs are seconds apart.
        {"a": _run(900, 10, 110), "b": _run(1000, 8, 100)},
        {"a": _run(1800, 12, 121), "b": _run(2000, 10, 110)},
        {"a": _run(950, 11, 100), "b": _run(1000, 10, 100, non2xx=2)},
    ]
    out = summarise(args, pairs)
    assert out["pairs"] == 3 and out["rate"] == "full speed"
    assert out["rps"]["a_over_b_median"] == 0.9  # ratios 0.9, 0.9, 0.95
    assert out["rps"]["a_over_b_range"] == [0.9, 0.95]
    assert out["rps"]["a_median"] == 950 and out["rps"]["b_median"] == 1000
    assert out["rps_loss_pct"] == 10.0
    assert out["p99_ms"]["a_over_b_median"] == 1.2  # ratios 1.25, 1.2, 1.1
    assert out["main_thread_cpu_cost_pct"] == 10.0  # ratios 1.1, 1.1, 1.0
    assert "cpu_us_per_req_process" not in out  # not measured in these runs: left out, not zero
    assert out["errors_and_non2xx"] == 2


def test_median_interval_is_the_order_statistics_the_sign_test_allows() -> None:
    ratios = [0.843, 0.831, 0.734, 0.893, 0.929, 0.768, 0.778, 0.786]  # a run of this box, 8 pairs
    low, high, coverage = median_interval(ratios) or (0, 0, 0)
    # k = 2: 1 - 2 * (1 + 8) / 256 = 0.93 (k = 3 would cover only 0.71), so the 2nd to the 7th smallest.
    assert (low, high) == (0.768, 0.893) and coverage == 1 - 18 / 256
    ten = median_interval([float(i) for i in range(10)])
    assert ten is not None and ten[:2] == (1.0, 8.0)  # k = 2 (0.979); k = 3 covers 0.891 < 0.9
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) == (1.0, 5.0, 1 - 2 / 32)
    assert median_interval([1.0, 2.0, 3.0, 4.0]) is None  # 0.875 at best: too few pairs to say
    assert median_interval([]) is None


def test_median_interval_covers_the_true_median_as_often_as_it_says() -> None:
    """Skewed, heavy-tailed draws (the box's slow runs): the interval holds the true median at least as
    often as its stated coverage; the median of a single sample would not give any such figure."""
    rng = random.Random(7)
    true_median = math.exp(0.0)  # of a lognormal(0, 1)
    for n in (6, 8, 10, 16):
        trials, hits, stated = 4000, 0, 1.0
        for _ in range(trials):
            interval = median_interval([rng.lognormvariate(0.0, 1.0) for _ in range(n)])
            assert interval is not None
            low, high, stated = interval
            hits += low <= true_median <= high
        assert stated >= 0.9
        assert hits / trials >= stated - 0.02, (n, hits / trials, stated)


def test_summary_bounds_the_loss_where_there_are_enough_pairs() -> None:
    args = argparse.Namespace(a="batching_on", b="logging_off", a_env={}, b_env={}, connections=64, rate=None)
    ratios = [0.95, 0.90, 1.02, 0.97, 0.93, 0.99]
    pairs = [{"a": _run(1000 * r, 10, 100), "b": _run(1000, 10, 100)} for r in ratios]
    out = summarise(args, pairs)
    assert out["rps"]["a_over_b_interval"] == [0.9, 1.02]  # n = 6: k = 1 (0.969); k = 2 covers 0.78
    assert out["rps_loss_pct_interval"] == [-2.0, 10.0]
    assert out["rps"]["interval_coverage"] == round(1 - 2 / 64, 4)
    assert summarise(args, pairs[:3])["rps_loss_pct_interval"] is None


def _row(mode: str, connections: int, rps: float, p50: float, p99: float, **errors: int) -> Row:
    median = {"rps": rps, "p50_ms": p50, "p99_ms": p99}
    return Row(mode=mode, connections=connections, median=median, runs=[{**median, **errors}])


def test_workers2_logging_off_is_workers2_with_the_log_off(tmp_path: Path) -> None:
    """The mode that prices the log's share of `workers2`: the same two workers and batching, no log."""
    modes = {}
    for name in ("workers2", "workers2_logging_off"):
        cmd, _env, info = prepare_server(name, tmp_path / name, 8000, "cpu", "sluice")
        config = load_model_config(Path(cmd[cmd.index("--model-repo") + 1]) / MODEL / "config.yaml")
        assert cmd[-2:] == ["--workers", "2"], info["cmd"]
        modes[name] = config
    assert modes["workers2"].logging.rate == 1.0
    assert modes["workers2_logging_off"].logging.rate == 0.0
    assert modes["workers2_logging_off"].model_copy(update={"logging": modes["workers2"].logging}) == modes["workers2"]


def test_ab_starts_each_side_with_its_modes_worker_arguments(tmp_path: Path) -> None:
    """`ab --a workers2` ran one process until 2026-12-07: each side now starts as `bench` starts the same mode,
    with the side's own environment on top."""
    args = ab.parse_args(["--a", "workers2", "--b", "batching_on", "--b-env", "X=1"])
    a_cmd, a_env = ab.side_command(args, "a", tmp_path, 8000)
    b_cmd, b_env = ab.side_command(args, "b", tmp_path, 8001)
    assert a_cmd[-2:] == ["--workers", "2"], a_cmd
    assert "--workers" not in b_cmd and b_env["X"] == "1" and "X" not in a_env
    with pytest.raises(SystemExit):  # Ray's modes need a PostgreSQL and a Ray each: `bench` runs them
        ab.parse_args(["--a", "ray"])


def test_ab_counts_the_cpu_of_the_whole_process_tree(tmp_path: Path) -> None:
    """Under `--workers` the requests are served two levels down (supervisor, workers, their log writers): a
    grandchild's CPU is the gateway's too."""
    done = tmp_path / "done"
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4:\n    pass\n"
    worker = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {burn!r}], check=True)\n"
    root = (
        "import pathlib, subprocess, sys, time\ntime.sleep(0.3)\n"
        f"subprocess.run([sys.executable, '-c', {worker!r}], check=True)\n"
        f"pathlib.Path({str(done)!r}).touch()\ntime.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", root])
    try:
        before = ab.cpu_times(parent.pid)
        deadline = time.monotonic() + 30
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done.exists(), "the grandchild never finished"
        after = ab.cpu_times(parent.pid)
    finally:
        parent.kill()
        parent.wait(timeout=10)
    assert after["children"] - before["children"] >= 0.35
    assert after["process"] - before["process"] < 0.2


def test_targets_read_each_gateway_mode_against_its_own_floor() -> None:
    rows = [
        _row("floor", 64, 20_000, 3.0, 8.0),
        _row("floor2", 64, 30_000, 2.0, 20.0),
        _row("batching_on", 64, 15_000, 4.0, 9.0),  # 0.75 of the one-process floor: not met
        _row("workers2", 64, 25_000, 2.5, 24.0),  # 0.83 of the two-process floor, p99 1.2 × its p99
        _row("logging_off", 64, 15_600, 4.0, 9.0),  # logging costs 1 - 15,000/15,600 = 3.8%
        _row("floor", 1, 15_000, 0.06, 0.5),
        _row("batching_on", 1, 6_000, 0.30, 2.5),  # +0.24 ms: met; p99 2.5 ms: not met
    ]
    met = {t["target"]: t["met"] for t in target_checks(rows)}
    assert met == {
        "64 connections: batching_on req/s ≥ 0.8 × floor": False,
        "64 connections: workers2 req/s ≥ 0.8 × floor2": True,
        "64 connections: workers2 p99 ≤ 1.25 × floor2 p99": True,
        "1 connection: batching_on p50 ≤ floor + 0.3 ms": True,
        "1 connection: batching_on p99 ≤ 2 ms": False,
        "64 connections: the prediction log costs ≤ 5% of req/s": True,
    }
    errored = [*rows[:3], _row("workers2", 64, 25_000, 2.5, 18.0, non2xx=3)]
    assert {t["target"]: t["met"] for t in target_checks(errored)}[
        "64 connections: workers2 req/s ≥ 0.8 × floor2"
    ] is False
    slow_tail = [*rows[:3], _row("workers2", 64, 25_000, 2.5, 26.0)]  # 1.3 × the floor's p99
    assert {t["target"]: t["met"] for t in target_checks(slow_tail)}[
        "64 connections: workers2 p99 ≤ 1.25 × floor2 p99"
    ] is False
    assert all(t["met"] is None for t in target_checks([])), "nothing measured is never met"


def test_placement_cost_runs_and_checks_the_runtime_process_against_the_session(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from loadtests.placement_cost import main

    assert main(["--calls", "20", "--rows", "1,4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rows", "inline", "µs", "thread", "µs", "process", "µs"]
    assert [line.split()[0] for line in lines[1:]] == ["1", "4"]


def test_the_stage_budget_charges_a_sample_to_the_innermost_frame_a_rule_knows() -> None:
    from loadtests.stage_budget import Frame, budget, parse_raw, per_request_us

    raw = [
        'process 10:"python -m gateway serve";run (uvloop/__init__.py:1);'
        "handle (gateway/serving/http_app.py:80);decode_request (gateway/serving/codec_json.py:40);"
        "asarray (numpy/core/numeric.py:9) 30\n",
        'process 10:"python -m gateway serve";run (gateway/serving/batcher.py:200);'
        "run (runtimes/onnx.py:120);run (onnxruntime/capi/session.py:220) 50\n",
        'process 11:"python -c import x\n',
        'y";main (somewhere/else.py:3) 20\n',  # a `python -c` child whose command line spans lines
        'process 12:"uvicorn";app (loadtests/floor_app.py:2) 10\n',
        'process 10:"python";RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:500) 5\n',
        # A `--workers` worker: spawned with `-c "...; spawn_main(...)"`, a ';' inside the process marker.
        'process 10:"python -m gateway serve --workers 2";process 13:"python -B -c from multiprocessing.spawn import '
        'spawn_main; spawn_main(tracker_fd=6, pipe_handle=8) --multiprocessing-fork";'
        "run (runtimes/onnx.py:120) 7\n",
        'process 13:"python -c a; b" 3\n',  # a sample with no Python frame
    ]
    stacks = parse_raw(raw)
    assert [count for _, count in stacks] == [30, 50, 20, 10, 5, 7, 3]
    assert stacks[5][0] == [Frame("run", "runtimes/onnx.py", 120)] and stacks[6][0] == []
    per_stage, unknown = budget(stacks, {"floor_app.py": ["import x", "    tensor = orjson.loads(body)"]})
    assert per_stage == {"decode": 40, "run": 57, "other": 23, "write": 5}
    assert unknown == {"main (somewhere/else.py)": 20}
    us = per_request_us(per_stage, cpu_s=1.25, requests=1000)  # 125 samples over 1.25 CPU-s: 10 ms a sample
    assert us == pytest.approx({"decode": 400.0, "run": 570.0, "other": 230.0, "write": 50.0})


def test_the_stage_budgets_table_has_a_row_for_every_stage_so_each_column_adds_up_to_its_total() -> None:
    from loadtests.stage_budget import ORDER, STAGES, ModeBudget, table

    assert {stage for stage, _, _ in STAGES} <= set(ORDER)  # every stage a rule charges has its place

    floor = ModeBudget("floor", 100.0, 1000, 10.0, {"parse": 4.0, "asgi": 1.0, "run": 5.0}, 10, [])
    gateway = ModeBudget("gw", 90.0, 900, 12.0, {"parse": 2.0, "log": 4.0, "run": 6.0}, 12, [])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table([floor, gateway]).splitlines()}
    assert rows["asgi"] == "| asgi | 1.0 | 0.0 | -1.0 |"
    assert rows["log"] == "| log | 0.0 | 4.0 | +4.0 |"
    for column, mode in enumerate((floor, gateway), start=1):
        cells = [line.split(" | ")[column] for stage, line in rows.items() if stage in {*floor.stages_us, "log"}]
        assert sum(float(cell) for cell in cells) == mode.cpu_us_per_request


def test_placement_bench_reads_each_placements_calls_and_the_hop_from_metrics() -> None:
    from loadtests.placement_bench import hop_us, markdown, mean_batch

    labels = 'model="mlp",version="1"'
    device = f'device="cpu",{labels}'
    before = "\n".join(
        [
            f"sluice_batch_size_sum{{{labels}}} 10.0",
            f"sluice_batch_size_count{{{labels}}} 10.0",
            f"sluice_compute_duration_seconds_sum{{{labels}}} 0.0",
            f"sluice_compute_duration_seconds_count{{{labels}}} 0.0",
        ]
    )
    after = "\n".join(
        [
            f"sluice_batch_size_sum{{{labels}}} 110.0",
            f"sluice_batch_size_count{{{labels}}} 60.0",
            f"sluice_device_batch_size_sum{{{device}}} 100.0",
            f"sluice_device_batch_size_count{{{device}}} 20.0",
            f"sluice_compute_duration_seconds_sum{{{labels}}} 0.05",
            f"sluice_compute_duration_seconds_count{{{labels}}} 50.0",
            f"sluice_device_queue_wait_seconds_sum{{{device}}} 0.01",
            f"sluice_device_queue_wait_seconds_count{{{device}}} 50.0",
            f"sluice_device_compute_duration_seconds_sum{{{device}}} 0.008",
            f"sluice_device_compute_duration_seconds_count{{{device}}} 20.0",
        ]
    )
    assert mean_batch(before, after, "worker") == 2.0  # 100 rows in 50 worker calls
    assert mean_batch(before, after, "device") == 5.0  # the same rows in 20 calls of the runtime process
    hop = hop_us(before, after)
    assert hop is not None and abs(hop - (1000 - 200 - 400)) < 1e-6  # 1 ms a call, less 0.2 queued, 0.4 run
    run = {"rps": 10.0, "rows_per_s": 10.0, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "rss_mib": 1.0}
    results = {"reference": {"worker": {16: {**run, "mean_batch": 2.0, "hop_us": None}}}}
    table = markdown(results, {}, "python -m loadtests.placement_bench")
    assert "| reference | 16 | worker | 10.0 | 10.0 | 1.0 | 2.0 | 2.0 | 1.0 | – | 0 |" in table
