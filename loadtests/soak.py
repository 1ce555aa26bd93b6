"""A soak: a real `sluice serve` at moderate, steady load for a long time (10 minutes by default), watched for
leaks: resident memory, open file descriptors and threads of the gateway process and of its prediction log
writer, sampled every `--interval` seconds.

    python -m loadtests.soak                       # 10 minutes at 400 req/s on the demo model mlp
    python -m loadtests.soak --duration 60 --rate 200 --json bench-results/soak.json

Not a CI test (it takes minutes on purpose; `tests/test_soak.py` runs it for a few seconds so it cannot rot).
The load is paced (a fixed rate from a few client threads, each request checked), so the gateway is busy
but not saturated, as in a long day of service. The verdict looks for a trend, not a step: it compares the
last third of the run with the middle third, after warm-up (the first minute, or the first fifth of a short
run). A leak keeps growing; a periodic job's first run does not (at 300 s the prediction log's first prune
and the housekeeping start worker threads, each with its own database connection: a one-time step of a
few threads and file descriptors). Flat means RSS grew by less than 5% (or 16 MiB), open files by at most 4
and threads by at most 2 between those thirds. The first-to-last growth is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Sample:
    t_s: float
    rss_mib: float
    open_fds: int
    threads: int
    writer_rss_mib: float
    writer_fds: int
    requests: int
    errors: int


def _status(pid: int) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rss_mib(pid: int) -> float:
    try:
        return int(_status(pid).get("VmRSS", "0 kB").split()[0]) / 1024
    except (OSError, ValueError):
        return 0.0


class PacedLoad:
    """`rate` requests a second from `threads` threads, each waiting for its slot; every answer checked."""

    def __init__(self, url: str, body: bytes, rate: float, threads: int = 4) -> None:
        self.url = url
        self.body = body
        self.interval = threads / rate
        self.threads = threads
        self.requests = 0
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        headers = {"Content-Type": "application/json"}
        with httpx.Client(timeout=10) as client:
            next_at = time.monotonic() + index * self.interval / self.threads
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                next_at += self.interval
                try:
                    ok = client.post(self.url, content=self.body, headers=headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                with self._lock:
                    self.requests += 1
                    self.errors += 0 if ok else 1

    def __enter__(self) -> PacedLoad:
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(15)


def _verdict(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    steady = [s for s in samples if s.t_s >= warmup_s] or samples
    third = max(1, len(steady) // 3)
    first, middle, last = steady[:third], steady[third:-third] or steady[:third], steady[-third:]

    def growth(field: str, since: list[Sample]) -> float:
        after = statistics.median(getattr(s, field) for s in last)
        return float(after - statistics.median(getattr(s, field) for s in since))

    rss_base = statistics.median(s.rss_mib for s in middle) or 1.0
    verdict: dict[str, Any] = {
        "rss_mib": [first[0].rss_mib, last[-1].rss_mib],
        "open_fds": [first[0].open_fds, last[-1].open_fds],
        "threads": [first[0].threads, last[-1].threads],
        "writer_rss_mib": [first[0].writer_rss_mib, last[-1].writer_rss_mib],
        "rss_growth_mib": round(growth("rss_mib", middle), 1),
        "rss_growth_pct": round(100 * growth("rss_mib", middle) / rss_base, 1),
        "fd_growth": growth("open_fds", middle),
        "thread_growth": growth("threads", middle),
        "writer_rss_growth_mib": round(growth("writer_rss_mib", middle), 1),
        "rss_growth_since_warmup_mib": round(growth("rss_mib", first), 1),
        "fd_growth_since_warmup": growth("open_fds", first),
        "thread_growth_since_warmup": growth("threads", first),
    }
    verdict["flat"] = bool(
        (verdict["rss_growth_mib"] < 16 or verdict["rss_growth_pct"] < 5)
        and verdict["fd_growth"] <= 4
        and verdict["thread_growth"] <= 2
    )
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=float, default=400.0, help="requests a second, paced (default 400)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--json", type=Path, help="also write the samples and the verdict here")
    args = parser.parse_args(argv)

    from gateway.cli.demo import build_demo_repository

    work = Path(tempfile.mkdtemp(prefix="sluice-soak-"))
    repo = build_demo_repository(work / "models")
    port = free_port()
    log = (work / "gateway.log").open("wb")
    command = [sys.executable, "-m", "gateway", "serve", "--model-repo", str(repo), "--http-port", str(port)]
    command += ["--grpc-port", "-1", "--state-dir", str(work / "state"), "--log-level", "warning"]
    proc = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the gateway did not get ready; see {work / 'gateway.log'}")
            time.sleep(0.2)
        body = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.5] * 32}]}
        ).encode()
        samples: list[Sample] = []
        started = time.monotonic()
        with PacedLoad(f"{url}/v2/models/mlp/infer", body, args.rate) as load:
            while (elapsed := time.monotonic() - started) < args.duration:
                writer = next(iter(_children(proc.pid)), None)
                status = _status(proc.pid)
                sample = Sample(
                    t_s=round(elapsed, 1),
                    rss_mib=round(_rss_mib(proc.pid), 1),
                    open_fds=_fds(proc.pid),
                    threads=int(status.get("Threads", "0")),
                    writer_rss_mib=round(_rss_mib(writer), 1) if writer else 0.0,
                    writer_fds=_fds(writer) if writer else 0,
                    requests=load.requests,
                    errors=load.errors,
                )
                samples.append(sample)
                print(
                    f"{sample.t_s:7.0f}s  rss {sample.rss_mib:7.1f} MiB  fds {sample.open_fds:4d}  threads "
                    f"{sample.threads:3d}  writer rss {sample.writer_rss_mib:6.1f} MiB  requests {sample.requests} "
                    f"errors {sample.errors}",
                    flush=True,
                )
                time.sleep(min(args.interval, max(0.0, args.duration - (time.monotonic() - started))))
        verdict = _verdict(samples, warmup_s=min(60.0, args.duration / 5))
        verdict["achieved_rate"] = round(samples[-1].requests / max(samples[-1].t_s, 1e-9), 1)
        verdict["errors"] = samples[-1].errors
        print(json.dumps(verdict))
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"samples": [asdict(s) for s in samples], "verdict": verdict}, indent=1))
        return 0 if verdict["flat"] and not verdict["errors"] else 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
