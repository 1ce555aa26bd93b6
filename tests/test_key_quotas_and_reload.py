"""Per inference key quotas (429 with Retry-After, over HTTP and gRPC, counted by key name and never by key),
and admin tokens and inference keys reloaded from their files on SIGHUP or when they change, on a real
gateway; a broken file keeps the old keys in force.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until
from tests.models import build_lookup

APP, BATCH, NEW = (secrets.token_urlsafe(24) for _ in range(3))
ADMIN_OLD, ADMIN_NEW = secrets.token_urlsafe(24), secrets.token_urlsafe(24)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    build_lookup(tmp_path / "models" / "lookup" / "1" / "model.onnx", rows=10)
    (tmp_path / "inference.keys").write_text(f"# inference keys\napp:{APP}\nbatch:{BATCH}\n")
    (tmp_path / "admin.tokens").write_text(f"ops:{ADMIN_OLD}\n")
    return tmp_path


def start(keys_dir: Path, reload_s: float) -> Iterator[GatewayProcess]:
    with gateway_process(
        keys_dir / "models",
        "--inference-keys-file",
        str(keys_dir / "inference.keys"),
        "--admin-tokens-file",
        str(keys_dir / "admin.tokens"),
        "--inference-quotas",
        "app=5/5,*=1000/1000",
        tmp=keys_dir,
        env={"SLUICE_KEY_RELOAD_INTERVAL_S": str(reload_s), "SLUICE_ADMIN_TOKENS": ""},
        ready_path="/v2/health/live",
    ) as gw:
        wait_until(lambda: httpx.get(f"{gw.http_url}/v2/health/ready", timeout=2).status_code == 200, timeout=60)
        yield gw


@pytest.fixture
def polling(keys_dir: Path) -> Iterator[GatewayProcess]:
    yield from start(keys_dir, 0.2)


@pytest.fixture
def on_sighup_only(keys_dir: Path) -> Iterator[GatewayProcess]:
    yield from start(keys_dir, 3600)


BODY = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [3]}]}


def infer(gw: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(
        f"{gw.http_url}/v2/models/lookup/infer", json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )


def admin_status(gw: GatewayProcess, token: str) -> int:
    return httpx.get(
        f"{gw.http_url}/admin/models", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).status_code


def test_a_key_over_its_quota_gets_429_with_retry_after_and_others_do_not(polling: GatewayProcess) -> None:
    gw = polling
    with httpx.Client(timeout=10) as http:
        answers = [
            http.post(f"{gw.http_url}/v2/models/lookup/infer", json=BODY, headers={"Authorization": f"Bearer {APP}"})
            for _ in range(30)
        ]
    statuses = Counter(r.status_code for r in answers)
    assert statuses[200] >= 5 and statuses[429] >= 15, statuses  # a burst of 5, then 5 a second
    throttled = next(r for r in answers if r.status_code == 429)
    assert int(throttled.headers["retry-after"]) >= 1
    assert "quota" in throttled.json()["error"] and "'app'" in throttled.json()["error"]
    assert all(infer(gw, BATCH).status_code == 200 for _ in range(20))  # another key's quota is its own

    client = grpcclient.InferenceServerClient(gw.grpc_addr)
    try:
        x = grpcclient.InferInput("idx", [1, 1], "INT64")
        x.set_data_from_numpy(np.array([[3]], dtype=np.int64))
        with pytest.raises(InferenceServerException) as caught:
            for _ in range(20):
                client.infer("lookup", [x], headers={"authorization": f"Bearer {APP}"}, client_timeout=10)
        assert "RESOURCE_EXHAUSTED" in str(caught.value.status())
    finally:
        client.close()
    time.sleep(0.5)  # the bucket refills at 5 a second
    assert infer(gw, APP).status_code == 200

    text = gw.metrics()
    assert metric_value(text, "sluice_inference_key_requests_total", key_name="app", outcome="throttled") >= 15
    assert metric_value(text, "sluice_inference_key_requests_total", key_name="batch", outcome="admitted") >= 20
    assert APP not in text and BATCH not in text and APP not in gw.logs()


def test_keys_files_are_reloaded_when_they_change_and_a_broken_one_changes_nothing(
    polling: GatewayProcess, keys_dir: Path
) -> None:
    gw = polling
    assert infer(gw, NEW).status_code == 403 and admin_status(gw, ADMIN_NEW) == 403
    (keys_dir / "inference.keys").write_text(f"app:{APP}\nnew:{NEW}\n")  # batch is revoked, new added
    (keys_dir / "admin.tokens").write_text(f"ops:{ADMIN_NEW}\n")  # the admin token is rotated
    wait_until(lambda: infer(gw, NEW).status_code == 200, timeout=10, what="the new inference key")
    wait_until(lambda: admin_status(gw, ADMIN_NEW) == 200, timeout=10, what="the new admin token")
    assert infer(gw, BATCH).status_code == 403 and admin_status(gw, ADMIN_OLD) == 403

    (keys_dir / "inference.keys").write_text(f"app:{APP}\nthis line has no colon\n")
    wait_until(
        lambda: metric_value(gw.metrics(), "sluice_key_reloads_total", 0.0, kind="inference", outcome="error") >= 1,
        timeout=10,
    )
    assert infer(gw, NEW).status_code == 200, "a broken file must leave the keys in force"
    assert "line 2: expected name:token" in gw.logs()


def test_sighup_reloads_the_keys_at_once(on_sighup_only: GatewayProcess, keys_dir: Path) -> None:
    gw = on_sighup_only
    (keys_dir / "inference.keys").write_text(f"new:{NEW}\n")
    time.sleep(0.5)
    assert infer(gw, NEW).status_code == 403  # no polling to speak of: only the signal reloads
    os.kill(gw.proc.pid, signal.SIGHUP)
    wait_until(lambda: infer(gw, NEW).status_code == 200, timeout=5, what="the reload on SIGHUP")
    assert infer(gw, APP).status_code == 403
