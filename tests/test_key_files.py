"""Key files that cannot be read as keys: an undecodable file (UTF-16, Latin-1), a malformed line, a file
that is gone. Each is a refusal that keeps that file's old keys, is counted and logged (file, line, reason;
never a secret), and never blocks the other file's reload: a revoked inference key must stop working even
while the admin tokens file is broken.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.admin.auth import AdminTokenError, read_token_file
from tests.helpers import GatewayProcess, gateway_process, metric_value, wait_until
from tests.models import build_lookup

A, B, C = (secrets.token_urlsafe(24) for _ in range(3))
OPS = secrets.token_urlsafe(24)
BODY = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [3]}]}


def test_an_undecodable_file_names_the_file_and_line_and_never_the_secret(tmp_path: Path) -> None:
    utf16 = tmp_path / "utf16.keys"
    utf16.write_text(f"app:{A}\n", encoding="utf-16")
    with pytest.raises(AdminTokenError) as caught:
        read_token_file(utf16, kind="inference keys")
    message = str(caught.value)
    assert str(utf16) in message and "line 1" in message and "UTF-8" in message and A not in message

    latin1 = tmp_path / "latin1.keys"
    latin1.write_bytes(f"# keys\napp:{A}\nrené:{B}é\n".encode("latin-1"))
    with pytest.raises(AdminTokenError) as caught:
        read_token_file(latin1, kind="inference keys")
    assert f"{latin1}, line 3" in str(caught.value) and B not in str(caught.value)
    assert "inference keys file" in str(caught.value) or "line 3" in str(caught.value)


def test_a_missing_file_is_named_with_its_kind(tmp_path: Path) -> None:
    with pytest.raises(AdminTokenError, match="cannot read inference keys file"):
        read_token_file(tmp_path / "absent.keys", kind="inference keys")


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayProcess]:
    build_lookup(tmp_path / "models" / "lookup" / "1" / "model.onnx", rows=10)
    (tmp_path / "inference.keys").write_text(f"a:{A}\nb:{B}\n")
    (tmp_path / "admin.tokens").write_text(f"ops:{OPS}\n")
    with gateway_process(
        tmp_path / "models",
        "--inference-keys-file",
        str(tmp_path / "inference.keys"),
        "--admin-tokens-file",
        str(tmp_path / "admin.tokens"),
        tmp=tmp_path,
        env={"SLUICE_KEY_RELOAD_INTERVAL_S": "0.2", "SLUICE_ADMIN_TOKENS": ""},
        ready_path="/v2/health/live",
    ) as gw:
        wait_until(lambda: httpx.get(f"{gw.http_url}/v2/health/ready", timeout=2).status_code == 200, timeout=60)
        yield gw


def infer(gw: GatewayProcess, key: str) -> int:
    return httpx.post(
        f"{gw.http_url}/v2/models/lookup/infer", json=BODY, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ).status_code


def reloads(gw: GatewayProcess, kind: str, outcome: str) -> float:
    return metric_value(gw.metrics(), "sluice_key_reloads_total", 0.0, kind=kind, outcome=outcome)


def test_a_broken_admin_file_never_blocks_revoking_an_inference_key(gateway: GatewayProcess, tmp_path: Path) -> None:
    gw = gateway
    assert infer(gw, B) == 200 and infer(gw, C) == 403
    (tmp_path / "admin.tokens").write_text(f"ops:{OPS}\n", encoding="utf-16")  # undecodable as UTF-8
    wait_until(lambda: reloads(gw, "admin", "error") >= 1, timeout=10, what="the admin file's refusal, counted")
    (tmp_path / "inference.keys").write_text(f"a:{A}\nc:{C}\n")  # b revoked, c added
    wait_until(lambda: infer(gw, C) == 200, timeout=10, what="the new inference key, by the file poll")
    assert infer(gw, B) == 403, "a revoked key kept working"
    before = reloads(gw, "inference", "ok")
    (tmp_path / "inference.keys").write_text(f"a:{A}\n")  # c revoked, reloaded on SIGHUP this time
    os.kill(gw.proc.pid, signal.SIGHUP)
    wait_until(lambda: infer(gw, C) == 403, timeout=10, what="the SIGHUP reload")
    assert reloads(gw, "inference", "ok") > before
    assert httpx.get(f"{gw.http_url}/admin/models", headers={"Authorization": f"Bearer {OPS}"}).status_code == 200

    (tmp_path / "inference.keys").write_bytes(f"a:{A}\nrené:{B}\n".encode("latin-1"))
    wait_until(lambda: reloads(gw, "inference", "error") >= 1, timeout=10, what="the inference file's refusal")
    assert infer(gw, A) == 200 and infer(gw, B) == 403, "a refused file keeps its old keys"
    (tmp_path / "inference.keys").write_text("")  # as an editor's save is between its truncation and its write
    wait_until(lambda: reloads(gw, "inference", "error") >= 2, timeout=10, what="the empty file's refusal")
    assert infer(gw, A) == 200 and infer(gw, B) == 403 and infer(gw, C) == 403, "an empty file opened inference"
    logs = gw.logs()
    assert "the file holds no keys now" in logs
    assert f"{tmp_path / 'admin.tokens'}, line 1" in logs and f"{tmp_path / 'inference.keys'}, line 2" in logs
    assert "Traceback" not in logs and "UnicodeDecodeError" not in logs
    assert all(secret not in logs for secret in (A, B, C, OPS))
