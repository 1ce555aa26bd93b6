"""Ray mode on two Ray nodes of this machine: a head (`ray start --head`) and a second raylet joined to it
(`ray start --address`), each with a model cache of its own, the model repository in a bucket of a real S3-protocol
server on 127.0.0.1 (moto's). Both nodes offer a custom resource, `models`, that the version's replicas ask for
(`ray.resources`), and its two replicas are spread one a node (`ray.max_replicas_per_node: 1`); the ingress, which
needs CPUs, is on the head (the second node has none). Then the second node dies under load
(every process of it SIGKILLed, as when a machine is lost): the version goes on answering from the head's replica.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from loadtests.ports import free_port
from tests.helpers import Load, wait_until
from tests.models import build_lookup
from tests.test_object_repository import ACCESS_KEY, SECRET_KEY, Bucket, s3_env
from tests.test_ray import session_pids
from tests.test_ray_lifecycle import _driver_env, serving

pytest.importorskip("ray") if os.environ.get("CI") != "true" else __import__("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

from tests import test_ray  # noqa: E402

pg_schema_url = test_ray.pg_schema_url
"""A PostgreSQL schema of this module's own."""


def _processes(sid: int) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for pid in session_pids(sid):
        with contextlib.suppress(OSError):
            found.setdefault(Path(f"/proc/{pid}/comm").read_text().strip(), []).append(pid)
    return found


def _kill_session(sid: int) -> None:
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_node(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`ray start --block` with `args` in a session of its own, up once its raylet runs; every process of that
    session killed at the end (this node only: other Rays on the machine are left alone)."""
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats", *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
                )
            return "raylet" in _processes(proc.pid)

        wait_until(up, timeout=180, interval=0.5, what="a Ray node to start")
        yield proc
    finally:
        _kill_session(proc.pid)
        proc.wait(30)


def test_a_version_spread_over_two_nodes_fetches_into_each_nodes_cache_and_outlives_the_loss_of_one(
    pg_schema_url: str, tmp_path: Path
) -> None:
    repo = tmp_path / "models"
    build_lookup(repo / "lookup" / "1" / "model.onnx", rows=100)
    (repo / "lookup" / "config.yaml").write_text(
        "ray:\n  num_cpus: 0\n  num_replicas: 2\n  max_replicas_per_node: 1\n  resources: {models: 0.5}\n"
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    root = Path(tempfile.mkdtemp(prefix="sluice-rn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    try:
        port = server.get_host_and_port()[1]
        Bucket(port, "two-nodes").upload(repo, "repo")
        caches = {"head": tmp_path / "cache-head", "second": tmp_path / "cache-second"}
        base = {**os.environ, **s3_env(port), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
        base.pop("RAY_ADDRESS", None)
        gcs = free_port()
        head_args = [
            "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--num-cpus", "2",
            "--include-dashboard", "false", "--object-store-memory", str(80 * 1024 * 1024),
            "--temp-dir", str(root / "ray"), "--resources", '{"models": 1}',
        ]  # fmt: skip
        second_args = [
            "--address", f"127.0.0.1:{gcs}", "--node-ip-address", "127.0.0.1", "--num-cpus", "0",
            "--object-store-memory", str(80 * 1024 * 1024), "--resources", '{"models": 1}',
        ]  # fmt: skip
        head_env = {**base, "SLUICE_MODEL_CACHE_DIR": str(caches["head"])}
        second_env = {**base, "SLUICE_MODEL_CACHE_DIR": str(caches["second"])}
        with (
            ray_node(head_args, head_env, tmp_path / "head.log"),
            ray_node(second_args, second_env, tmp_path / "second.log") as second,
        ):
            env = {**_driver_env(root, pg_schema_url), **s3_env(port), "RAY_AUTH_MODE": "disabled"}
            env.pop("SLUICE_RAY_OBJECT_STORE_MB")
            env["SLUICE_MODEL_CACHE_DIR"] = str(caches["head"])
            url = "s3://two-nodes/repo"
            with serving(["--ray-address", f"127.0.0.1:{gcs}"], env, url, tmp_path / "driver.log") as gw:
                # Each node fetched the version into its own cache, from the bucket: no path is shared.
                local = (repo / "lookup" / "1" / "model.onnx").read_bytes()
                for name, cache in caches.items():
                    found = list(cache.rglob("lookup/1/model.onnx"))
                    assert len(found) == 1 and found[0].read_bytes() == local, (name, found)

                with Load(gw.http_url, clients=8) as load:
                    wait_until(lambda: len(load.results) >= 300, timeout=60, what="traffic before the loss")
                    _kill_session(second.pid)  # the second machine is gone, with its replica
                    lost_at = len(load.results)
                    wait_until(lambda: len(load.results) >= lost_at + 600, timeout=120, what="traffic after it")
                after = [status for status, _, _ in load.results[lost_at:]]
                failed = len(after) - after.count(200)
                assert failed <= 16, f"{failed} of {len(after)} requests failed after the node was lost"
                assert after[-200:].count(200) == 200, "the version answers from the head's replica"
                logs = gw.logs()
                assert SECRET_KEY not in logs and ACCESS_KEY not in logs
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
