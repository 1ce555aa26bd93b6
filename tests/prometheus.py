"""A real Prometheus (the Debian package's binary) on 127.0.0.1 for tests: its own temporary storage, a 1 s
scrape and rule interval, and a small client for its HTTP API. Missing binaries skip locally and fail
under CI=true, where .ci/run installs them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from loadtests.ports import free_port
from tests.helpers import wait_until


def require_binary(name: str) -> str:
    """The binary's path; a skip with the reason locally, a failure under CI=true."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (apt-get install -y prometheus)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


class QueryError(AssertionError):
    pass


@dataclass
class Prometheus:
    url: str
    log_path: Path

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        doc = r.json()
        if doc.get("status") != "success":
            raise QueryError(f"{path} {params}: {doc.get('errorType')}: {doc.get('error')}")
        return doc["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self.api("query", **params)["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query_range", query=expr, start=start, end=end, step=step)["result"]
        return result

    def label_values(self, label: str, match: str, start: float, end: float) -> list[str]:
        values: list[str] = self.api(f"label/{label}/values", **{"match[]": match, "start": start, "end": end})
        return values


@contextmanager
def prometheus_server(
    tmp: Path, targets: list[str], rule_files: tuple[Path, ...] = (), job: str = "sluice"
) -> Iterator[Prometheus]:
    binary = require_binary("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {proc.returncode}:\n{log_path.read_text()}")
            return httpx.get(f"{prom.url}/-/ready", timeout=2).status_code == 200

        wait_until(ready, timeout=60, what="prometheus to be ready")
        yield prom
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
