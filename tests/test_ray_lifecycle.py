"""`sluice serve --ray` beside a Ray that someone else runs: what it starts, what it joins, what it leaves behind.

A `ray start --head` of the test's own runs first, recorded where `ray.init()` looks for a cluster to join (the
`ray_current_cluster` file under the temp dir). The driver, with no `--ray-address`, must start a Ray of its own
anyway, serve, and at SIGTERM stop only that one, leaving no metrics directory in its temp dir; with
`--ray-address`, the options only a Ray it starts can take are refused before it joins anything.

Ray is heavy on the 2-core box: one other cluster and one gateway serve the whole module. The other cluster is
stopped by killing the processes of its own session: `ray stop` would stop every Ray on the machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from loadtests.ports import free_port
from tests import test_ray
from tests.helpers import ROOT, wait_until
from tests.models import build_lookup
from tests.test_ray import SLIVER, TOKEN, RayGateway, session_pids

ray = pytest.importorskip("ray") if os.environ.get("CI") != "true" else __import__("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

pg_schema_url = test_ray.pg_schema_url
"""A PostgreSQL schema of this module's own (its gateway must not share state with test_ray's)."""


@pytest.fixture(scope="module")
def temp_root() -> Iterator[Path]:
    """The driver's TMPDIR and the other Ray's temp dir: the test's own, and short (Ray's socket paths must fit
    in 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="sluice-rl-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class OtherRay:
    proc: subprocess.Popen[bytes]
    address: str
    temp_dir: Path
    log: Path

    def core(self) -> dict[str, int]:
        """Its GCS and raylet: name -> pid."""
        found = {}
        for pid in session_pids(self.proc.pid):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if name in ("gcs_server", "raylet"):
                found[name] = pid
        return found

    def answers(self) -> bool:
        host, port = self.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            return True


@pytest.fixture(scope="module")
def other_ray(temp_root: Path) -> Iterator[OtherRay]:
    """A `ray start --head` on 127.0.0.1 (2 CPUs, no dashboard, a small object store), recorded as the machine's
    current cluster for a process whose TMPDIR is `temp_root`."""
    port = free_port()
    temp_dir = temp_root / "ray"
    log = temp_root / "other-ray.log"
    # As a `ray start` on a machine with no Ray token: no authentication (tests/conftest.py asks for tokens).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(temp_root), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(port), "--num-cpus", "2", "--include-dashboard", "false",
        "--object-store-memory", str(80 * 1024 * 1024), "--temp-dir", str(temp_dir), "--disable-usage-stats",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    other = OtherRay(proc, "", temp_dir, log)

    def up() -> bool:
        if proc.poll() is not None:
            return True
        other.address = (temp_dir / "ray_current_cluster").read_text().strip()  # Ray picks the node's address
        started = other.core().keys() == {"gcs_server", "raylet"}
        return other.address.endswith(f":{port}") and started and other.answers()

    try:
        wait_until(up, timeout=180, interval=0.5, what="the other Ray to start")
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        yield other
    finally:
        # This cluster only (its own session), killed outright: after a SIGTERM its GCS takes some 30 s to exit
        # (Ray 2.60, measured), and nothing here depends on it stopping gracefully.
        def gone() -> bool:
            left = session_pids(proc.pid)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return not left

        wait_until(gone, timeout=30, interval=0.2, what="the other Ray's processes to exit")
        proc.wait(30)


def _driver_env(temp_root: Path, db: str) -> dict[str, str]:
    env = {
        **os.environ,
        "TMPDIR": str(temp_root),
        "RAY_USAGE_STATS_ENABLED": "0",
        "SLUICE_DATABASE_URL": db,
        "SLUICE_ADMIN_TOKENS": f"ci:{TOKEN}",
        "SLUICE_RAY_INGRESS_CPUS": "0.25",
        "SLUICE_RAY_OBJECT_STORE_MB": "100",
    }
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model, two versions (one can be unloaded while the other serves)."""
    repo = tmp_path_factory.mktemp("ray-lifecycle") / "models"
    build_lookup(repo / "lookup" / "1" / "model.onnx", rows=10)
    build_lookup(repo / "lookup" / "2" / "model.onnx", rows=20)
    (repo / "lookup" / "config.yaml").write_text("version_policy:\n  all: true\n" + SLIVER)
    return repo


@contextlib.contextmanager
def serving(args: list[str], env: dict[str, str], repo: Path | str, log: Path) -> Iterator[RayGateway]:
    """`sluice serve --ray` with `args`, ready; stopped (and its session's processes killed) if a test did not."""
    http_port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--ray", *args, "--ray-ingress-replicas", "1",
        "--model-repo", str(repo), "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log-format", "text",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    gw = RayGateway(proc, http_port, grpc_port, log, env["SLUICE_DATABASE_URL"])

    def ready() -> bool:
        if proc.poll() is not None:
            return True
        up = httpx.get(f"{gw.http_url}/v2/health/ready", timeout=2).status_code == 200
        return up and "\nRay cluster: " in gw.logs()  # printed once the driver's deployments all run

    try:
        wait_until(ready, timeout=240, interval=0.5, what="Sluice on Ray to be ready")
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray driver exited with {proc.returncode}:\n{gw.logs()[-4000:]}")
        yield gw
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(120)
        for pid in session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def own_ray_gateway(
    other_ray: OtherRay, temp_root: Path, repo: Path, pg_schema_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayGateway]:
    """`sluice serve --ray` with no `--ray-address`, its TMPDIR the one where the other Ray is recorded."""
    log = tmp_path_factory.mktemp("ray-lifecycle-logs") / "driver.log"
    with serving(["--ray-num-cpus", "2"], _driver_env(temp_root, pg_schema_url), repo, log) as gw:
        yield gw


def test_artifact_digests_are_shown_and_audited_as_in_embedded_mode(own_ray_gateway: RayGateway, repo: Path) -> None:
    """The admin API and the audit log name each version's file by its SHA-256 under Ray too (the registry read
    `runtime.sha256`, which the Ray placement's runtime lacked: null everywhere, no `version.artifacts` event)."""
    gw = own_ray_gateway
    files = {v: hashlib.sha256((repo / "lookup" / v / "model.onnx").read_bytes()).hexdigest() for v in ("1", "2")}
    detail = gw.admin.get("/admin/models/lookup")
    assert detail.status_code == 200, detail.text
    assert {v["version"]: v["sha256"] for v in detail.json()["versions"]} == files

    events = gw.admin.get("/admin/audit", params={"model": "lookup", "limit": 200}).json()["events"]
    artifacts = [e["after"]["sha256"] for e in events if e["action"] == "version.artifacts"]
    assert artifacts and all(a == files for a in artifacts), artifacts
    # The load and unload events carry it too: tests/test_ray.py, where a version is unloaded and loaded again.


def test_without_ray_address_it_starts_a_ray_of_its_own_and_stops_only_that_leaving_no_metrics_dir(
    own_ray_gateway: RayGateway, other_ray: OtherRay, temp_root: Path
) -> None:
    """It used to join the recorded cluster and die of Ray's refusal ("When connecting to an existing cluster,
    object_store_memory must not be provided"), and every clean stop left its `sluice-metrics-*` directory."""
    gw = own_ray_gateway
    before = other_ray.core()
    clusters = [line.split(": ", 1)[1] for line in gw.logs().splitlines() if line.startswith("Ray cluster: ")]
    assert len(clusters) == 1 and clusters[0] != other_ray.address, clusters
    body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}
    answer = httpx.post(f"{gw.http_url}/v2/models/lookup/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert [p.name for p in temp_root.glob("sluice-metrics-*")], "the ingress writes its metrics in the temp dir"

    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(120) == 0, gw.logs()[-3000:]
    wait_until(lambda: not session_pids(gw.proc.pid), timeout=60, what="every process of its own Ray to exit")
    assert other_ray.core() == before, "the other Ray's GCS and raylet still run"
    assert other_ray.answers()
    assert (other_ray.temp_dir / "ray_current_cluster").read_text().strip() == other_ray.address
    assert not list(temp_root.glob("sluice-metrics-*")), gw.logs()[-3000:]


@pytest.mark.parametrize(
    ("option", "env", "named"),
    [
        (["--ray-num-cpus", "2"], {}, "--ray-num-cpus"),
        ([], {"SLUICE_RAY_OBJECT_STORE_MB": "100"}, "SLUICE_RAY_OBJECT_STORE_MB"),
    ],
)
def test_with_ray_address_an_option_a_joined_cluster_refuses_is_a_one_line_error(
    other_ray: OtherRay, temp_root: Path, repo: Path, pg_schema_url: str,
    option: list[str], env: dict[str, str], named: str,
) -> None:  # fmt: skip
    """Options that size a Ray this process would start mean nothing to a cluster it joins: refused at once, with
    the option named, before anything is joined or deployed."""
    driver_env = {**_driver_env(temp_root, pg_schema_url), **env}
    if not env:
        driver_env.pop("SLUICE_RAY_OBJECT_STORE_MB")
    code, out, err = _refusal(["--ray-address", other_ray.address, *option], driver_env, repo)
    lines = err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], lines
    assert "Traceback" not in out


def test_a_malformed_ray_address_is_a_one_line_error_not_a_traceback(
    temp_root: Path, repo: Path, pg_schema_url: str
) -> None:
    """Ray's ValueError (or ConnectionError) for an address it cannot use ends the driver as a config error does."""
    env = _driver_env(temp_root, pg_schema_url)
    env.pop("SLUICE_RAY_OBJECT_STORE_MB")
    code, out, err = _refusal(["--ray-address", "nohost:notaport"], env, repo)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot join the Ray cluster at --ray-address nohost:notaport: "), last
    assert "Traceback" not in out + err


def _refusal(args: list[str], env: dict[str, str], repo: Path) -> tuple[int | None, str, str]:
    """Run a driver expected to refuse at once: its exit code, stdout and stderr (an AssertionError if it served)."""
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--ray", *args,
        "--model-repo", str(repo), "--host", "127.0.0.1",
        "--http-port", str(free_port()), "--grpc-port", str(free_port()),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for pid in session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"{args} were not refused: the driver joined and served") from None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def test_joined_with_ray_address_it_serves_and_at_sigterm_removes_what_it_deployed_and_its_metrics_dir(
    other_ray: OtherRay, temp_root: Path, repo: Path, pg_schema_url: str, tmp_path: Path
) -> None:
    """On a cluster of someone else's, a SIGTERM removes this run's applications and metrics directory (on every
    node: a task pinned to each) and leaves the cluster, and Serve in it, running."""
    env = _driver_env(temp_root, pg_schema_url)
    env.pop("SLUICE_RAY_OBJECT_STORE_MB")
    env["RAY_AUTH_MODE"] = "disabled"  # as the other Ray runs
    before = other_ray.core()
    with serving(["--ray-address", other_ray.address], env, repo, tmp_path / "driver.log") as gw:
        assert f"Ray cluster: {other_ray.address}" in gw.logs()
        body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}
        answer = httpx.post(f"{gw.http_url}/v2/models/lookup/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        made = list(temp_root.glob("sluice-metrics-*"))
        assert len(made) == 1, made
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(120) == 0, gw.logs()[-3000:]
    assert not made[0].exists(), gw.logs()[-3000:]
    assert other_ray.core() == before and other_ray.answers()
    deleted = re.findall(r"Deleting app \['([^']+)'\]", gw.logs())
    assert sorted(deleted) == ["sluice-ingress", "sluice-version.lookup.1", "sluice-version.lookup.2"], deleted
