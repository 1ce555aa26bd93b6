"""The locust scenario in loadtests/ runs for a few seconds against a real gateway, so it cannot rot: the
locust CLI in its own process (it monkey-patches the standard library with gevent), both user classes,
every answer checked by the scenario itself, and its CSV read back."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, GatewayProcess


def test_the_locust_scenario_runs_clean_against_a_real_gateway(demo_gateway: GatewayProcess, tmp_path: Path) -> None:
    prefix = tmp_path / "locust"
    locust = Path(sys.executable).parent / "locust"
    result = subprocess.run(
        [
            str(locust),
            "-f",
            str(ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "-u",
            "8",
            "-r",
            "8",
            "-t",
            "4s",
            "--host",
            demo_gateway.http_url,
            "--csv",
            str(prefix),
            "--only-summary",
            "--stop-timeout",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "SLUICE_ROWS": "4"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (prefix.parent / "locust_stats.csv").open() as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) >= 50, total
    assert int(total["Failure Count"]) == 0, total
    names = set(rows)
    assert {"/v2/models/mlp/infer [rows=1]", "/v2/models/mlp/infer [rows=4]", "/v2/health/ready"} <= names, names
