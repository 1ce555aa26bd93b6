"""A model repository on object storage, served from a real S3-protocol server on 127.0.0.1 (moto's
standalone server): the same answers as the local repository, a cache that survives a restart, broken
uploads refused while the rest serves, new and removed versions synced through the control plane (one
process and --workers 2), and an outage of the store that serving never notices.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from tests.helpers import ROOT, GatewayProcess, Load, gateway_process, metric_value, wait_until
from tests.models import build_tabular

pytestmark = pytest.mark.slow

ACCESS_KEY = "AKIASLUICETESTKEY01"
SECRET_KEY = "sluice-test-secret-Zq8rT2vW9xY4"
ROW = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75]
OUTAGE_S = 30.0
"""How long the object store is away under load (the issue's figure)."""


def s3_env(port: int) -> dict[str, str]:
    """The provider's standard environment: the only place the gateway finds its credentials."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_REGION": "us-east-1",
    }


class Bucket:
    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.client = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=name)

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def upload(self, local: Path, prefix: str) -> None:
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            self.put(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())

    def delete_prefix(self, prefix: str) -> None:
        listed = self.client.list_objects_v2(Bucket=self.name, Prefix=prefix).get("Contents", [])
        for obj in listed:
            self.client.delete_object(Bucket=self.name, Key=obj["Key"])


@pytest.fixture
def s3() -> Iterator[int]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    yield server.get_host_and_port()[1]
    server.stop()


def local_repo(root: Path) -> Path:
    for version, seed in ((1, 1), (2, 2)):
        build_tabular(root / "tab" / str(version) / "model.onnx", seed=seed)
    (root / "tab" / "config.yaml").write_text("version_policy:\n  all: true\n")
    other = build_tabular(root / "other" / "1" / "model.onnx", seed=7)
    digest = hashlib.sha256(other.read_bytes()).hexdigest()  # checked against the bytes fetched
    (root / "other" / "config.yaml").write_text(f"runtime:\n  sha256: {{1: {digest}}}\n")
    return root


def infer(gw: GatewayProcess, model: str, version: str | None = None, client: httpx.Client | None = None) -> Any:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": ROW}]}
    r = (client or httpx).post(f"{gw.http_url}{path}", json=body, timeout=30)  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    return r.json()["outputs"][0]["data"]


def admin(gw: GatewayProcess, method: str, path: str) -> httpx.Response:
    return httpx.request(method, f"{gw.http_url}/admin{path}", headers=gw.admin_headers, timeout=120)


def versions(gw: GatewayProcess, model: str) -> dict[str, dict[str, Any]]:
    doc = admin(gw, "GET", f"/models/{model}").json()
    return {v["version"]: v for v in doc["versions"]}


def fetches(gw: GatewayProcess, outcome: str) -> float:
    return metric_value(gw.metrics(), "sluice_repository_fetches_total", default=0.0, outcome=outcome)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET_KEY not in text
        assert ACCESS_KEY not in text


def expected_answers(local: Path) -> dict[tuple[str, str], Any]:
    """What the local repository's files answer, run by ONNX Runtime itself."""
    import numpy as np
    import onnxruntime as ort

    row = np.array([ROW], dtype=np.float32)
    answers = {}
    for model, version in (("tab", "1"), ("tab", "2"), ("other", "1")):
        session = ort.InferenceSession(str(local / model / version / "model.onnx"), providers=["CPUExecutionProvider"])
        answers[(model, version)] = session.run(None, {"input": row})[0].ravel().tolist()
    return answers


def test_a_bucket_repository_answers_as_the_local_one_reuses_its_cache_and_outlives_the_store(
    tmp_path: Path,
) -> None:
    """One gateway fetches and serves; a restart serves from the cache with no download; then the store stops
    under load for 30 s (serving unaffected, syncs fail and say so) and the next poll recovers."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server.get_host_and_port()[1]
    local = local_repo(tmp_path / "models")
    expected = expected_answers(local)
    assert expected[("tab", "1")] != expected[("tab", "2")]
    bucket = Bucket(port, "answers")
    bucket.upload(local, "prod/repo")
    url = "s3://answers/prod/repo"
    state = tmp_path / "state"
    args = ("--repository-poll-s", "1")
    try:
        with gateway_process(url, *args, tmp=tmp_path, state_dir=state, env=s3_env(port)) as gw:
            assert all(np.allclose(infer(gw, *k), v, rtol=1e-6) for k, v in expected.items())
            assert fetches(gw, "downloaded") == 3 and fetches(gw, "cached") == 0
            cached = state / "model-cache" / "s3" / "answers" / "prod/repo" / "tab" / "2" / "model.onnx"
            assert cached.read_bytes() == (local / "tab" / "2" / "model.onnx").read_bytes()
            shown = admin(gw, "GET", "/repository").json()
            size = sum((local / m / v / "model.onnx").stat().st_size for m, v in expected)
            assert shown["location"] == url and shown["cache"]["bytes"] == size
            assert metric_value(gw.metrics(), "sluice_model_cache_bytes") == size
            assert_no_secret(gw.logs(), admin(gw, "GET", "/models").text, admin(gw, "GET", "/repository").text)
        # a restart on the same state directory serves the same versions without downloading them again
        with gateway_process(url, *args, tmp=tmp_path, state_dir=state, env=s3_env(port)) as gw:
            assert all(np.allclose(infer(gw, *k), v, rtol=1e-6) for k, v in expected.items())
            assert fetches(gw, "downloaded") == 0 and fetches(gw, "cached") == 3
            load = Load(gw.http_url, clients=4, model="tab", body=_body())
            with load:
                server.stop()
                started = time.monotonic()
                wait_until(
                    lambda: metric_value(gw.metrics(), "sluice_repository_sync_errors_total", default=0) >= 2,
                    timeout=20,
                    what="polls failing while the store is away",
                )
                r = admin(gw, "POST", "/repository/sync")
                assert r.status_code == 503 and "cannot list s3://answers/prod/repo" in r.json()["error"]
                last = admin(gw, "GET", "/repository").json()["last_sync"]
                assert last["ok"] is False and url in last["error"]
                assert {v: s["state"] for v, s in versions(gw, "tab").items()} == {"1": "READY", "2": "READY"}
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))  # the store away, under load
            assert load.results and all(status == 200 for status, _, _ in load.results), load.errors[:3]
            # the store is back (same buckets), with a new version: the next poll brings it in
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            bucket.put("prod/repo/tab/3/model.onnx", (local / "tab" / "1" / "model.onnx").read_bytes())
            wait_until(lambda: versions(gw, "tab")["3"]["state"] == "READY", timeout=30, what="version 3 synced in")
            assert admin(gw, "GET", "/repository").json()["last_sync"]["ok"] is True
            assert infer(gw, "tab", "3") == infer(gw, "tab", "1")
            audit = admin(gw, "GET", "/audit?model=tab").json()["events"]
            assert any(e["actor"] == "repository-sync" and e["action"] == "version.load" for e in audit)
            assert_no_secret(gw.logs(), gw.metrics())
    finally:
        server.stop()


def _body() -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": ROW}]}


def test_broken_uploads_are_refused_and_new_versions_sync_in_on_every_worker(s3: int, tmp_path: Path) -> None:
    local = local_repo(tmp_path / "models")
    good = (local / "tab" / "1" / "model.onnx").read_bytes()
    bucket = Bucket(s3, "sync")
    bucket.upload(local, "repo")
    bucket.put("repo/tab/3/model.onnx", good[: len(good) // 2])  # a truncated upload, no digest to catch it
    bucket.put("repo/tab/4/model.onnx", good)  # its digest in config.yaml is another file's
    bucket.put(
        "repo/tab/config.yaml", f"version_policy:\n  all: true\nruntime:\n  sha256: {{4: {'ab' * 32}}}\n".encode()
    )
    env = {**s3_env(s3), "SLUICE_LEADER_RENEW_S": "0.5"}
    bound = 3 * len(good) + 50  # room for three whole versions: past it, versions not loaded are evicted
    args = ("--workers", "2", "--model-cache-max-bytes", str(bound))
    cache = tmp_path / "state" / "model-cache" / "s3" / "sync" / "repo" / "tab"
    with gateway_process("s3://sync/repo", *args, tmp=tmp_path, env=env) as gw:
        shown = versions(gw, "tab")
        assert {v: s["state"] for v, s in shown.items()} == {"1": "READY", "2": "READY", "3": "FAILED", "4": "FAILED"}
        assert "s3://sync/repo/tab/4/model.onnx: SHA-256" in shown["4"]["error"]
        assert "s3://sync/repo/tab/3/model.onnx" in shown["3"]["error"]  # with ONNX Runtime's reason for the half file
        expected = expected_answers(local)
        for _ in range(4):  # fresh connections: both workers answer as the local files do
            assert all(np.allclose(infer(gw, *k), v, rtol=1e-6) for k, v in expected.items())
        # version 5 uploaded, version 1 removed: a sync (the CLI) loads one and unloads the other on both workers
        bucket.put("repo/tab/5/model.onnx", (local / "tab" / "2" / "model.onnx").read_bytes())
        bucket.delete_prefix("repo/tab/1/")
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "repo", "sync", "--url", gw.http_url, "--json"],
            cwd=ROOT,
            env={"SLUICE_ADMIN_TOKEN": gw.admin_token, "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1, proc.stderr  # 3 and 4 still fail, and it says so
        assert '"tab/5"' in proc.stdout and '"tab/1"' in proc.stdout
        shown = versions(gw, "tab")
        assert (shown["5"]["state"], shown["1"]["state"]) == ("READY", "UNLOADED")
        assert "SHA-256" in shown["4"]["error"]
        # version 1, unloaded, left the cache (it was over its bound); the versions served stay
        assert not (cache / "1" / "model.onnx").exists()
        assert (cache / "2" / "model.onnx").exists() and (cache / "5" / "model.onnx").exists()

        def every_worker_follows() -> bool:
            # fresh connections, so the kernel spreads them over both workers
            answers = [
                httpx.post(f"{gw.http_url}/v2/models/tab/versions/5/infer", json=_body(), timeout=10) for _ in range(12)
            ]
            gone = [httpx.get(f"{gw.http_url}/v2/models/tab/versions/1/ready", timeout=10) for _ in range(12)]
            return all(r.status_code == 200 for r in answers) and all(r.status_code != 200 for r in gone)

        wait_until(every_worker_follows, timeout=30, what="both workers serving version 5 and not version 1")
        assert infer(gw, "tab", "5") == infer(gw, "tab", "2")
        audit = admin(gw, "GET", "/audit?model=tab").json()["events"]
        assert {(e["actor"], e["action"]) for e in audit} >= {("ci", "version.load"), ("ci", "version.unload")}
        assert_no_secret(gw.logs(), admin(gw, "GET", "/models/tab").text)
