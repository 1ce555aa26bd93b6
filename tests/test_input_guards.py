"""Tainted inputs and tampered artifacts, on a real gateway.

Input guards from config.yaml: NaN and infinities refused per input, value ranges and allowed categories
per feature (named by `monitoring.feature_names`), refused with a 400 naming the feature, or served and
flagged; each counted per model, version and feature. Artifact integrity: the SHA-256 of every loaded
file is in the model metadata and the admin view; a file whose digest differs from the one config.yaml
expects is refused with a clear error while the other models serve.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.faults import stored_ids
from tests.helpers import GatewayProcess, gateway_process, metric_value
from tests.models import build_tabular

FEATURES = "[age, income, tenure, balance, plan, region]"
GUARDS = """\
monitoring: {{feature_names: {features}}}
guards:
  action: {action}
  inputs: {{input: {{allow_nan: false, allow_inf: false}}}}
  features:
    age: {{min: 0, max: 130}}
    plan: {{allowed: [0, 1, 2]}}
"""


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("guards") / "models"
    for name, action in (("refusing", "refuse"), ("flagging", "flag")):
        build_tabular(root / name / "1" / "model.onnx")
        (root / name / "config.yaml").write_text(GUARDS.format(features=FEATURES, action=action))
    good = build_tabular(root / "pinned" / "1" / "model.onnx")
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    (root / "pinned" / "config.yaml").write_text(f"runtime: {{sha256: {{1: {digest}}}}}\n")
    build_tabular(root / "tampered" / "1" / "model.onnx", seed=7)  # not the file the digest names
    (root / "tampered" / "config.yaml").write_text(f"runtime: {{sha256: {{1: {digest}}}}}\n")
    return root


@pytest.fixture(scope="module")
def gw(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(repo, tmp=tmp_path_factory.mktemp("guards-logs")) as g:
        yield g


def row(age: float = 40.0, plan: float = 1.0, income: float = 1.0) -> list[float]:
    return [age, income, 3.0, 100.0, plan, 2.0]


def infer(gw: GatewayProcess, model: str, values: list[float], rid: str = "") -> httpx.Response:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": values}]}
    if rid:
        body["id"] = rid
    return httpx.post(f"{gw.http_url}/v2/models/{model}/infer", json=body, timeout=30)


def violations(gw: GatewayProcess, model: str, feature: str, action: str) -> float:
    text = gw.metrics()
    return metric_value(
        text, "sluice_input_guard_violations_total", 0.0, model=model, version="1", feature=feature, action=action
    )


def test_a_guarded_model_refuses_naming_the_feature_and_counts_it(gw: GatewayProcess) -> None:
    assert infer(gw, "refusing", row()).status_code == 200
    cases = {
        "age": (row(age=150.0), "150 is above the maximum 130"),
        "plan": (row(plan=3.0), "3 is not an allowed value"),
    }
    for feature, (values, why) in cases.items():
        before = violations(gw, "refusing", feature, "refused")
        r = infer(gw, "refusing", values, rid=f"refused-{feature}")
        assert r.status_code == 400, r.text
        assert f"feature '{feature}'" in r.json()["error"] and why in r.json()["error"], r.text
        assert violations(gw, "refusing", feature, "refused") == before + 1
    young = infer(gw, "refusing", row(age=-1.0))
    assert young.status_code == 400 and "below the minimum 0" in young.json()["error"]
    # NaN and infinities (JSON has neither: binary tensors over HTTP, raw floats over gRPC).
    http = httpclient.InferenceServerClient(gw.http_addr)
    try:
        x = httpclient.InferInput("input", [1, 6], "FP32")
        x.set_data_from_numpy(np.array([row(income=math.inf)], dtype=np.float32), binary_data=True)
        with pytest.raises(InferenceServerException) as refused:
            http.infer("refusing", [x])
        assert refused.value.status() == "400" and "infinity" in refused.value.message()
    finally:
        http.close()
    client = grpcclient.InferenceServerClient(gw.grpc_addr)
    try:
        x = grpcclient.InferInput("input", [1, 6], "FP32")
        x.set_data_from_numpy(np.array([row(income=math.nan)], dtype=np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("refusing", [x], client_timeout=30)
        assert "INVALID_ARGUMENT" in str(caught.value.status()) and "NaN" in caught.value.message()
    finally:
        client.close()
    assert violations(gw, "refusing", "input", "refused") == 2


def test_a_flagging_model_serves_and_names_what_it_flagged(gw: GatewayProcess) -> None:
    r = infer(gw, "flagging", row(age=200.0, plan=9.0))
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["flagged_features"] == "age,plan"
    assert infer(gw, "flagging", row()).json().get("parameters") is None
    assert violations(gw, "flagging", "age", "flagged") == 1 and violations(gw, "flagging", "plan", "flagged") == 1


def test_refused_requests_reach_the_prediction_log_as_invalid(gw: GatewayProcess, tmp_path: Path) -> None:
    assert infer(gw, "refusing", row(age=999.0), rid="guard-record").status_code == 400
    engine = sa.create_engine(f"sqlite:///{gw.state_dir / 'sluice.db'}")
    try:
        import time

        deadline = time.monotonic() + 10
        while "guard-record" not in (found := stored_ids(engine, "refusing")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert found.get("guard-record") == "invalid"
    finally:
        engine.dispose()


def test_artifact_digests_are_reported_and_a_mismatch_is_refused_while_others_serve(
    gw: GatewayProcess, repo: Path
) -> None:
    digest = hashlib.sha256((repo / "pinned" / "1" / "model.onnx").read_bytes()).hexdigest()
    meta = httpx.get(f"{gw.http_url}/v2/models/pinned", timeout=10).json()
    assert meta["parameters"]["sha256"] == digest
    refusing = httpx.get(f"{gw.http_url}/v2/models/refusing", timeout=10).json()
    assert (
        refusing["parameters"]["sha256"]
        == hashlib.sha256((repo / "refusing" / "1" / "model.onnx").read_bytes()).hexdigest()
    )
    view = httpx.get(f"{gw.http_url}/admin/models/pinned", headers=gw.admin_headers, timeout=10).json()
    assert view["versions"][0]["sha256"] == digest

    assert httpx.get(f"{gw.http_url}/v2/models/tampered/ready", timeout=10).status_code == 503
    refused = infer(gw, "tampered", row())
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert "SHA-256" in error and digest in error and "refusing an artifact that does not match" in error, error
    assert infer(gw, "pinned", row()).status_code == 200
    assert httpx.get(f"{gw.http_url}/v2/health/ready", timeout=10).status_code == 200
