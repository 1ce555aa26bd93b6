"""`sluice serve --ray` on a real local Ray (2 CPUs) with the real PostgreSQL: one driver for the session, serving
its model repository from a bucket of a real S3-protocol server on 127.0.0.1 (moto's), so every version replica
fetches its file into a cache of its own, and the answers are compared with embedded mode on the local files.

The driver runs as `sluice serve --ray` would (its own process group, SIGTERM at the end); the tests talk to
the ingress replicas' own HTTP and gRPC servers with tritonclient, and join the cluster as a second Ray
driver to see what Serve sees (replica counts, replica processes). Every deployment asks for a sliver of
a CPU so that they all fit on the 2-core box.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from moto.server import ThreadedMotoServer

from gateway.cli.demo import build_demo_repository
from loadtests.ports import free_port
from tests.databases import pg_schema
from tests.helpers import ROOT, Load, ThreadedGateway, settings_for, wait_until
from tests.models import build_slow
from tests.test_object_repository import ACCESS_KEY, SECRET_KEY, Bucket, s3_env
from tests.test_rollouts import build_lookup

ray = pytest.importorskip("ray") if os.environ.get("CI") != "true" else __import__("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SLIVER = "ray:\n  num_cpus: 0.05\n"
TOKEN = "ray-test-admin-token-0123456789"


@pytest.fixture(scope="session")
def ray_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = build_demo_repository(tmp_path_factory.mktemp("ray") / "models")
    for model in repo.iterdir():
        config = model / "config.yaml"
        config.write_text((config.read_text() if config.exists() else "") + "\n" + SLIVER)
    build_lookup(repo / "lookup" / "1" / "model.onnx", rows=100)
    build_lookup(repo / "lookup" / "3" / "model.onnx", rows=80)  # fails for idx >= 80: a fifth of inputs
    (repo / "lookup" / "config.yaml").write_text("version_policy:\n  all: true\n" + SLIVER)
    build_slow(repo / "auto" / "1" / "model.onnx", matmuls=4, n=256)
    (repo / "auto" / "config.yaml").write_text(
        "batching:\n  max_batch_size: 4\n"
        "ray:\n  num_cpus: 0.05\n  autoscaling:\n    min_replicas: 1\n    max_replicas: 2\n"
        "    target_ongoing_requests: 1\n    upscale_delay_s: 0.5\n    downscale_delay_s: 4\n"
    )
    return repo


@pytest.fixture(scope="session")
def ray_bucket(ray_repo: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The repository uploaded to a bucket: its URL, and the provider's environment that reaches it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    Bucket(port, "ray-models").upload(ray_repo, "repo")
    yield "s3://ray-models/repo", s3_env(port)
    server.stop()


@pytest.fixture(scope="session")
def pg_schema_url(pg_url: str) -> Iterator[str]:
    with pg_schema(pg_url, "ray") as url:
        yield url


class RayGateway:
    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        http_port: int,
        grpc_port: int,
        log: Path,
        db: str,
        cache: Path | None = None,
    ) -> None:
        self.proc, self.http_port, self.grpc_port, self.log, self.db = proc, http_port, grpc_port, log, db
        self.cache = cache
        """SLUICE_MODEL_CACHE_DIR: where the replicas keep what they fetched from the bucket."""
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.admin = httpx.Client(base_url=self.http_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def session_pids(sid: int) -> list[int]:
    """Processes still in the driver's session (the driver, Ray's processes, the replicas)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, s, stat in (line.split() for line in out.splitlines()) if int(s) == sid and "Z" not in stat]


@pytest.fixture(scope="session")
def ray_gateway(
    ray_bucket: tuple[str, dict[str, str]], pg_schema_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RayGateway]:
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("ray-logs") / "driver.log"
    url, provider_env = ray_bucket
    cache = tmp_path_factory.mktemp("ray-model-cache")
    env = {
        **os.environ,
        **provider_env,
        "SLUICE_MODEL_CACHE_DIR": str(cache),
        "RAY_USAGE_STATS_ENABLED": "0",
        "SLUICE_DATABASE_URL": pg_schema_url,
        "SLUICE_ADMIN_TOKENS": f"ci:{TOKEN}",
        "SLUICE_RAY_INGRESS_CPUS": "0.25",
        "SLUICE_RAY_OBJECT_STORE_MB": "100",
        "SLUICE_LEADER_LEASE_S": "3",
        "SLUICE_LEADER_RENEW_S": "0.5",
        "SLUICE_ROLLOUT_TICK_S": "0.2",
        "SLUICE_WINDOW_PUBLISH_S": "0.5",
    }
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--ray", "--ray-num-cpus", "2", "--ray-ingress-replicas", "2",
        "--model-repo", url, "--host", "127.0.0.1",
        "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--log-format", "text",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    gw = RayGateway(proc, http_port, grpc_port, log, pg_schema_url, cache)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the Ray driver exited with {proc.returncode}:\n{gw.logs()[-4000:]}")
        return httpx.get(f"{gw.http_url}/v2/health/ready", timeout=2).status_code == 200

    try:
        wait_until(ready, timeout=240, interval=0.5, what="Sluice on Ray to be ready")
        yield gw
    finally:
        if ray.is_initialized():
            ray.shutdown()
        proc.send_signal(signal.SIGTERM)  # the driver alone, as an orchestrator stops a container
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        wait_until(lambda: not session_pids(proc.pid), timeout=30, what="every Ray process to exit")
        assert code == 0, gw.logs()[-3000:]


@pytest.fixture(scope="session")
def cluster(ray_gateway: RayGateway) -> Any:
    """This test process joined to the gateway's Ray cluster, to read what Serve sees."""
    from ray import serve

    found = re.search(r"^Ray cluster: (\S+)$", ray_gateway.logs(), re.M)
    assert found is not None, "the driver names its cluster"
    ray.init(address=found.group(1), namespace="sluice", log_to_driver=False)
    return serve


def _inputs(meta: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for spec in meta["inputs"]:
        shape = [2 if d < 0 else d for d in spec["shape"]]
        dt = spec["datatype"]
        if dt == "BOOL":
            out[spec["name"]] = rng.integers(0, 2, shape).astype(bool)
        elif dt.startswith(("INT", "UINT")):
            out[spec["name"]] = rng.integers(0, 5, shape).astype(dt.lower())
        elif dt == "BYTES":
            out[spec["name"]] = np.array([b"ab"] * int(np.prod(shape)), dtype=object).reshape(shape)
        else:
            out[spec["name"]] = rng.standard_normal(shape).astype(
                {"FP16": "float16", "FP32": "float32"}.get(dt, "float64")
            )
    if "offsets" in out:  # multi_io's offsets index rows
        out["offsets"] = np.zeros_like(out["offsets"])
    return out


def _infer(client: Any, module: Any, model: str, version: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    inputs = []
    for name, array in arrays.items():
        dt = {"object": "BYTES", "bool": "BOOL", "float16": "FP16", "float32": "FP32", "float64": "FP64"}.get(
            array.dtype.name, array.dtype.name.upper()
        )
        x = module.InferInput(name, list(array.shape), dt)
        x.set_data_from_numpy(array)
        inputs.append(x)
    result = client.infer(model, inputs, model_version=version)
    response = result.get_response()
    names = (
        [o["name"] for o in response["outputs"]] if isinstance(response, dict) else [o.name for o in response.outputs]
    )
    return {name: result.as_numpy(name) for name in names}


def test_tritonclient_over_http_and_grpc_gets_the_answers_of_embedded_mode(
    ray_gateway: RayGateway, ray_repo: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    on_ray = {
        "http": httpclient.InferenceServerClient(f"127.0.0.1:{ray_gateway.http_port}"),
        "grpc": grpcclient.InferenceServerClient(f"127.0.0.1:{ray_gateway.grpc_port}"),
    }
    modules = {"http": httpclient, "grpc": grpcclient}
    compared = 0
    with ThreadedGateway(settings_for(ray_repo, tmp=tmp_path, grpc_port=0)) as embedded:
        local = {
            "http": httpclient.InferenceServerClient(embedded.http_addr),
            "grpc": grpcclient.InferenceServerClient(embedded.grpc_addr),
        }
        for model in ("mlp", "classifier", "multi_io", "dtypes", "fixed", "churn"):
            meta = httpx.get(f"{embedded.http_url}/v2/models/{model}", timeout=10).json()
            ray_meta = httpx.get(f"{ray_gateway.http_url}/v2/models/{model}", timeout=10).json()
            assert ray_meta["inputs"] == meta["inputs"] and ray_meta["outputs"] == meta["outputs"]
            for version in meta["versions"]:
                arrays = _inputs(meta, rng)
                for protocol in ("http", "grpc"):
                    expected = _infer(local[protocol], modules[protocol], model, version, arrays)
                    got = _infer(on_ray[protocol], modules[protocol], model, version, arrays)
                    assert got.keys() == expected.keys()
                    for name in expected:
                        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{model}/{version} {name}")
                    compared += 1
    assert compared >= 20
    # Each version replica fetched its file from the bucket into the cache: the local file's very bytes.
    for model in ("mlp", "classifier", "multi_io", "dtypes", "fixed", "churn"):
        for local_file in (ray_repo / model).glob("*/model.onnx"):
            assert ray_gateway.cache is not None
            cached = list(ray_gateway.cache.rglob(f"{model}/{local_file.parent.name}/model.onnx"))
            assert len(cached) == 1, f"{model}/{local_file.parent.name} not in the cache: {cached}"
            assert cached[0].read_bytes() == local_file.read_bytes()
    assert SECRET_KEY not in ray_gateway.logs() and ACCESS_KEY not in ray_gateway.logs()


def _replicas(cluster: Any) -> dict[int, dict[str, Any]]:
    """The ingress replicas, by pid (each call lands on one; ask until both answered)."""
    handle = cluster.get_app_handle("sluice-ingress")
    seen: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        d = handle.describe.remote().result(timeout_s=10)
        seen[d["pid"]] = d
    return seen


def _version_replica_pids(cluster: Any, app: str) -> set[int]:
    """The pids of the version's replicas, as they answer (one call each, up to a few)."""
    handle = cluster.get_app_handle(app)
    return {int(handle.metadata.remote().result(timeout_s=30)[2]) for _ in range(3)}


def _served_by(db: str, model: str) -> Counter[str]:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("select replica, sum(requests) from window_summaries where model = :m group by replica"),
                {"m": model},
            ).all()
    finally:
        engine.dispose()
    return Counter({str(r[0]): int(r[1]) for r in rows})


def test_two_ingress_replicas_share_a_canary_follow_a_change_and_roll_a_failing_one_back_once(
    ray_gateway: RayGateway, cluster: Any
) -> None:
    gw = ray_gateway
    replicas = _replicas(cluster)
    assert len(replicas) == 2 and sum(d["leader"] for d in replicas.values()) == 1
    policy = {"stable": "1", "canary": "3", "canary_weight": 10}
    assert gw.admin.put("/admin/models/lookup/traffic", json={"stable": "1"}).status_code == 200

    # A change made through either replica is in force on both within the bound.
    lags = []
    clients = [httpx.Client(base_url=d["admin"], timeout=10) for d in replicas.values()]
    body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}
    for d, weight in zip(list(replicas.values()) * 2, (100, 0, 100, 0), strict=True):
        expected = "3" if weight == 100 else "1"
        through = httpx.put(
            f"{d['admin']}/admin/models/lookup/traffic",
            json={**policy, "canary_weight": weight},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert through.status_code == 200, through.text
        changed = time.monotonic()
        for client in clients:
            wait_until(
                lambda c=client, e=expected: c.post("/v2/models/lookup/infer", json=body).json()["model_version"] == e,  # type: ignore[misc]
                timeout=5,
                interval=0.01,
            )
        lags.append(time.monotonic() - changed)
    print(f"Ray mode: a change seen by both ingress replicas in {max(lags) * 1000:.0f} ms at most")
    assert max(lags) < 1.0, lags

    # A 10% canary over both replicas holds its share (all on good inputs: version 3 fails on idx >= 80 only).
    assert gw.admin.put("/admin/models/lookup/traffic", json={**policy, "canary": "3"}).status_code == 200
    time.sleep(0.5)  # the follower's poll (0.2 s) on both replicas
    with Load(gw.http_url, clients=12, count=3000, body=body) as load:
        load.wait()
    versions = Counter(v for status, v, _ in load.results if status == 200)
    assert 0.08 <= versions["3"] / 3000 <= 0.12, versions
    assert len(_served_by(gw.db, "lookup")) == 2, "both ingress replicas served"

    # A failing canary judged on both replicas' traffic is rolled back once.
    assert gw.admin.put("/admin/models/lookup/traffic", json={"stable": "1"}).status_code == 200
    spec = {
        "canary": "3",
        "steps": [20, 50],
        "interval_s": 2.0,
        "failure_threshold": 2,
        "checks": [{"name": "error_ratio", "threshold": 1.5, "min_requests": 10}],
    }
    assert gw.admin.post("/admin/models/lookup/rollout", json=spec).status_code in (200, 201)
    with Load(gw.http_url, clients=12):
        wait_until(lambda: gw.admin.get("/admin/models/lookup/rollout").json()["phase"] != "progressing", timeout=90)
    assert gw.admin.get("/admin/models/lookup/rollout").json()["phase"] == "rolled_back"
    events = gw.admin.get("/admin/audit", params={"model": "lookup", "limit": 200}).json()["events"]
    kinds = [t["kind"] for e in events if e["action"] == "rollout.analysis" for t in e["after"]["transitions"]]
    assert kinds.count("rollback") == 1, kinds


def test_a_version_replica_killed_under_load_is_restored_and_no_caller_sees_it(
    ray_gateway: RayGateway, cluster: Any
) -> None:
    gw = ray_gateway
    assert gw.admin.put("/admin/models/mlp/traffic", json={"stable": "1"}).status_code == 200
    app = "sluice-version.mlp.1"
    before = _version_replica_pids(cluster, app)
    assert len(before) == 1, before
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.25] * 32}]}
    with Load(gw.http_url, clients=8, model="mlp", body=body) as load:
        wait_until(lambda: len(load.results) > 200, timeout=60)
        os.kill(next(iter(before)), signal.SIGKILL)
        wait_until(lambda: _version_replica_pids(cluster, app) - before, timeout=60, what="Serve to restore it")
        served = len(load.results)
        wait_until(lambda: len(load.results) > served + 200, timeout=60)
    failed = [r for r in load.results if r[0] != 200]
    print(f"Ray mode: a version replica killed under load: {len(failed)} of {len(load.results)} requests failed")
    assert not failed, failed[:5]


def test_a_version_scales_out_under_load_and_back_in(ray_gateway: RayGateway, cluster: Any) -> None:
    gw = ray_gateway
    app = "sluice-version.auto.1"

    def replicas() -> int:
        status = cluster.status().applications[app].deployments["version"]
        return sum(n for state, n in status.replica_states.items() if str(state).endswith("RUNNING"))

    assert replicas() == 1
    body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    with Load(gw.http_url, clients=16, model="auto", body=body) as load:
        wait_until(lambda: replicas() == 2, timeout=90, interval=0.5, what="a second replica")
    assert all(status == 200 for status, _, _ in load.results)
    wait_until(lambda: replicas() == 1, timeout=90, interval=0.5, what="back to one replica")


def test_unloading_a_version_removes_its_deployment_and_loading_it_deploys_it_again(
    ray_gateway: RayGateway, cluster: Any, ray_repo: Path
) -> None:
    gw = ray_gateway
    app = "sluice-version.lookup.3"
    assert gw.admin.put("/admin/models/lookup/traffic", json={"stable": "1"}).status_code == 200
    body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}
    assert httpx.post(f"{gw.http_url}/v2/models/lookup/versions/3/infer", json=body, timeout=30).status_code == 200
    assert gw.admin.post("/admin/models/lookup/versions/3/unload").status_code == 200
    wait_until(lambda: app not in cluster.status().applications, timeout=60, what="the deployment removed")
    r = httpx.post(f"{gw.http_url}/v2/models/lookup/versions/3/infer", json=body, timeout=30)
    assert r.status_code == 503 and "UNLOADED" in r.json()["error"]
    loaded = gw.admin.post("/admin/models/lookup/versions/3/load")
    assert loaded.status_code == 200 and loaded.json()["state"] == "READY", loaded.text
    assert str(cluster.status().applications[app].status).endswith("RUNNING")
    # Both audit events name the file by its digest, as in embedded mode (they had none under Ray).
    digest = hashlib.sha256((ray_repo / "lookup" / "3" / "model.onnx").read_bytes()).hexdigest()
    assert loaded.json()["sha256"] == digest
    events = gw.admin.get("/admin/audit", params={"model": "lookup", "limit": 200}).json()["events"]
    changes = {e["action"]: e["after"] for e in events if e["action"] in ("version.unload", "version.load")}
    assert {a: after["sha256"] for a, after in changes.items()} == {"version.unload": digest, "version.load": digest}
    # Both ingress replicas follow: every request pinned to it is answered, whichever replica takes it.
    wait_until(
        lambda: all(
            httpx.post(f"{gw.http_url}/v2/models/lookup/versions/3/infer", json=body, headers={"Connection": "close"},
                       timeout=30).status_code == 200
            for _ in range(10)
        ),
        timeout=30,
    )  # fmt: skip


def test_deployments_that_cannot_fit_a_local_ray_are_refused_at_start_naming_what_asks(
    pg_schema_url: str, tmp_path: Path
) -> None:
    """Serve would wait for ever to place a replica no node can hold (the driver used to block in `serve.run`,
    never ready, the reason only in Serve's own log): a local Ray refuses at once, and leaves nothing running."""
    repo = tmp_path / "models"
    build_lookup(repo / "big" / "1" / "model.onnx", rows=10)
    (repo / "big" / "config.yaml").write_text("ray:\n  num_cpus: 1.5\n  num_replicas: 2\n")
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "SLUICE_DATABASE_URL": pg_schema_url,
        "SLUICE_RAY_INGRESS_CPUS": "0.25",
        "SLUICE_RAY_OBJECT_STORE_MB": "100",
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable, "-m", "gateway", "serve", "--ray", "--ray-num-cpus", "2", "--ray-ingress-replicas", "1",
        "--model-repo", str(repo), "--host", "127.0.0.1",
        "--http-port", str(free_port()), "--grpc-port", str(free_port()),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for pid in session_pids(proc.pid):  # the driver and the Ray it started, in their process groups
            os.kill(pid, signal.SIGKILL)
        raise AssertionError("the driver did not refuse deployments that cannot fit: it is waiting for them") from None
    text = " ".join(out.decode(errors="replace").split())
    assert proc.returncode == 2, text[-3000:]
    assert "ask for 3.25 CPUs at start (big/1 2 x 1.5, ingress 1 x 0.25) and the Ray cluster has 2" in text, text
    wait_until(lambda: not session_pids(proc.pid), timeout=30, what="every Ray process to exit")
