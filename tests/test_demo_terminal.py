"""`sluice demo` in a terminal: Ctrl-C (SIGINT to the whole foreground process group, as a terminal sends
it) once the monitor's process pool is starting prints nothing but Sluice's own lines and exits 130, and no
line of a fresh demo comes from a library (gRPC's fork handlers, a pool worker's traceback).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from loadtests.ports import free_port
from tests.helpers import ROOT, wait_until

OWN_PRINTS = (
    "demo model repository written to ",
    "Sluice is ready: HTTP http://127.0.0.1:",
    "models: ",
    "try: curl -s -X POST http://127.0.0.1:",
    "console: http://127.0.0.1:",
    "admin token for the console and the admin API (name 'demo', shown only now): ",
    "tour: ",
    "metrics: http://127.0.0.1:",
)
"""The lines the demo prints itself (gateway.cli.main: the repository line and the banner)."""
OWN_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (gateway|monitors|runtimes)[\w.]* \["
)
"""A record of one of Sluice's own loggers in the demo's text log format (gateway.observability.logs)."""


def is_own_line(line: str) -> bool:
    return line.startswith(OWN_PRINTS) or bool(OWN_LOG_LINE.match(line))


def pool_worker_started(group: int) -> bool:
    """A process of the group runs multiprocessing's spawn bootstrap, and it is not the resource tracker."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid == group or os.getpgid(proc.pid) != group:
                continue
        except (ProcessLookupError, psutil.Error):
            continue
        cmdline = " ".join(proc.info["cmdline"] or ())
        if "multiprocessing.spawn" in cmdline and "resource_tracker" not in cmdline:
            return True
    return False


def test_ctrl_c_prints_only_sluices_lines_and_exits_130(tmp_path: Path) -> None:
    http_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "GRPC_"))}
    env["SLUICE_STATE_DIR"] = str(tmp_path / "state")
    output = tmp_path / "demo.out"
    command = [
        sys.executable,
        "-m",
        "gateway",
        "demo",
        "--dir",
        str(tmp_path / "models"),
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(free_port()),
        "--no-tour",
        "--monitor-every",
        "1",  # churn's first drift run, and with it the monitor's process pool, a second after start
    ]
    with output.open("wb") as out:
        demo = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def ready() -> bool:
            assert demo.poll() is None, output.read_text()
            return httpx.get(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2).status_code == 200

        wait_until(ready, timeout=120, what="the demo to be ready")
        wait_until(lambda: pool_worker_started(demo.pid), timeout=60, what="the monitor's pool worker")
        os.killpg(demo.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        status = demo.wait(120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    text = output.read_text(errors="replace")
    assert status == 130, text
    for noise in ("Traceback", "KeyboardInterrupt", "fork_posix", "Exception in initializer"):
        assert noise not in text, text
    strangers = [line for line in text.splitlines() if line.strip() and not is_own_line(line)]
    assert not strangers, text
    assert "Sluice is ready" in text
