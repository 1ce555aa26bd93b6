"""The soak script (loadtests/soak.py, ten minutes by hand) runs for a few seconds so it cannot rot: it starts
a real gateway, paces load, samples RSS, open files and threads, and writes its verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_the_soak_script_samples_a_real_gateway(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.soak",
            "--duration",
            "5",
            "--interval",
            "1",
            "--rate",
            "100",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert result.returncode in (0, 1), result.stdout[-2000:] + result.stderr[-2000:]
    doc = json.loads(out.read_text())
    samples = doc["samples"]
    assert len(samples) >= 4
    assert all(s["rss_mib"] > 10 and s["open_fds"] > 5 and s["threads"] >= 2 for s in samples), samples
    assert samples[-1]["requests"] >= 200 and samples[-1]["errors"] == 0, samples[-1]
    assert samples[-1]["writer_rss_mib"] > 0, "the prediction log's writer process was not found"
    assert {"flat", "rss_growth_mib", "fd_growth", "thread_growth"} <= set(doc["verdict"])
