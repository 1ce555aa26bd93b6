"""What the prediction log holds, as the README says: every request once a version was chosen for it
(answered, or failed with its outcome and no outputs); none refused before that (an unknown model or
version, a gateway draining), since no version's record could hold it."""

from __future__ import annotations

import time

import httpx
import sqlalchemy as sa

from tests.faults import stored_ids
from tests.helpers import GatewayProcess

ROW = [0.5] * 32


def post(gw: GatewayProcess, path: str, rid: str, datatype: str = "FP32") -> int:
    body = {"id": rid, "inputs": [{"name": "input", "shape": [1, 32], "datatype": datatype, "data": ROW}]}
    return httpx.post(f"{gw.http_url}{path}", json=body, timeout=10).status_code


def test_records_exist_once_a_version_was_chosen_and_not_before(demo_gateway: GatewayProcess) -> None:
    gw = demo_gateway
    assert post(gw, "/v2/models/mlp/infer", "scope-ok") == 200
    assert post(gw, "/v2/models/mlp/infer", "scope-invalid", datatype="FP64") == 400
    assert post(gw, "/v2/models/no-such-model/infer", "scope-no-model") == 404
    assert post(gw, "/v2/models/mlp/versions/99/infer", "scope-no-version") == 404
    engine = sa.create_engine(f"sqlite:///{gw.state_dir / 'sluice.db'}")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stored = stored_ids(engine, "mlp")
            if "scope-ok" in stored and "scope-invalid" in stored:
                break
            time.sleep(0.1)
        assert stored["scope-ok"] == "ok" and stored["scope-invalid"] == "invalid"
        with engine.connect() as conn:
            others = conn.execute(sa.text("select id from prediction_keys where id like 'scope-no-%'")).all()
        assert others == []
    finally:
        engine.dispose()
