"""Where should a worker's runtime live? The cost of one batch for each placement, on the reference MLP.

    python -m loadtests.placement_cost [--calls 3000] [--rows 1,8,32]

`--workers N` could give each worker its own ONNX Runtime session (the placement Sluice uses), or keep
one runtime process per device that every worker sends its batches to over shared memory (one copy of
the weights, and the workers' batches merged). This measures, per batch, in µs (median of repeats):

- `inline`: the session called on the caller's thread (what a worker does for a quick CPU model);
- `thread`: the call handed to a runtime thread and the answer awaited on an asyncio loop (a worker's
  other path);
- `process`: the batch written to shared memory, a message over a pipe to a runtime process that runs
  the same session and writes the outputs back into shared memory, and its reply read: the least a
  shared runtime process costs, before any batching across workers.

Only the hop is measured: no HTTP, no JSON. Compare the hops with the model's own time (`inline`).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from gateway.cli.demo import build_reference_mlp

IN, OUT = 32, 8
SLOTS = 1024
"""Rows the shared buffers hold."""


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _serve(path: str, conn: Connection, in_name: str, out_name: str) -> None:
    """The runtime process: wait for a row count, run that many rows from shared memory, answer."""
    session = _session(Path(path))
    shm_in, shm_out = SharedMemory(in_name), SharedMemory(out_name)
    inputs = np.ndarray((SLOTS, IN), np.float32, buffer=shm_in.buf)
    outputs = np.ndarray((SLOTS, OUT), np.float32, buffer=shm_out.buf)
    try:
        while True:
            rows = conn.recv_bytes()
            if not rows:
                return
            n = int.from_bytes(rows, "little")
            (result,) = session.run(["output"], {"input": inputs[:n]})
            outputs[:n] = result
            conn.send_bytes(rows)
    finally:
        del inputs, outputs
        shm_in.close()
        shm_out.close()


def _median_us(fn: Any, calls: int, repeats: int = 5) -> float:
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(runs)


async def _thread_us(session: Any, batch: np.ndarray, calls: int) -> float:
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(1)
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls):
            await loop.run_in_executor(pool, session.run, ["output"], {"input": batch})
        runs.append((time.perf_counter() - started) / calls * 1e6)
    pool.shutdown()
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.placement_cost", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_reference_mlp(Path(tmp) / "model.onnx", 1234)
        session = _session(path)
        shm_in = SharedMemory(create=True, size=SLOTS * IN * 4)
        shm_out = SharedMemory(create=True, size=SLOTS * OUT * 4)
        here, there = multiprocessing.get_context("spawn").Pipe()
        child = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(str(path), there, shm_in.name, shm_out.name), daemon=True
        )
        child.start()
        views = {
            "in": np.ndarray((SLOTS, IN), np.float32, buffer=shm_in.buf),
            "out": np.ndarray((SLOTS, OUT), np.float32, buffer=shm_out.buf),
        }
        print(f"{'rows':>5} {'inline µs':>10} {'thread µs':>10} {'process µs':>11}")
        try:
            for rows in args.rows:
                batch = np.random.default_rng(42).standard_normal((rows, IN)).astype(np.float32)
                expected = session.run(["output"], {"input": batch})[0]

                def via_process(batch: np.ndarray = batch) -> np.ndarray:
                    n = len(batch)
                    views["in"][:n] = batch
                    here.send_bytes(n.to_bytes(4, "little"))
                    here.recv_bytes()
                    return views["out"][:n].copy()

                np.testing.assert_allclose(via_process(), expected, rtol=1e-5)
                inline = _median_us(lambda batch=batch: session.run(["output"], {"input": batch}), args.calls)
                thread = asyncio.run(_thread_us(session, batch, args.calls))
                process = _median_us(via_process, args.calls)
                print(f"{rows:>5} {inline:>10.1f} {thread:>10.1f} {process:>11.1f}", flush=True)
        finally:
            here.send_bytes(b"")
            child.join(10)
            views.clear()  # no numpy view may outlive the buffers it looks into
            shm_in.close()
            shm_in.unlink()
            shm_out.close()
            shm_out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
