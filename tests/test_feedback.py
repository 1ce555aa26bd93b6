"""Labels: POST /v2/models/{model}/feedback against a real gateway and its state database.

Predictions are made over HTTP and gRPC; their response ids are what the labels name.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import tritonclient.grpc as grpcclient

from gateway.storage.schema import prediction_keys_table
from gateway.storage.store import Store
from monitors.prediction_log import batch_tag_of
from monitors.records import PredictionRecord
from tests.helpers import GatewayProcess, gateway_process

UTC = timezone.utc
KEY = "label-app-key-0123456789"


@pytest.fixture(scope="module")
def gw(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with gateway_process(demo_repo, tmp=tmp_path_factory.mktemp("feedback")) as gw:
        yield gw


@pytest.fixture
def http(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.http_url, timeout=30) as client:
        yield client


@pytest.fixture
def state(gw: GatewayProcess) -> Iterator[Store]:
    """The gateway's own state database (SQLite in WAL mode: a second reader is fine)."""
    assert gw.state_dir is not None
    s = Store.for_state_dir(gw.state_dir)
    yield s
    s.close()


def predict(http: httpx.Client, model: str = "classifier", i: int = 0, request_id: str | None = None) -> str:
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [(i % 7) / 7.0] * 32}]
    }
    if request_id is not None:
        body["id"] = request_id
    r = http.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def feedback(http: httpx.Client, model: str, body: Any, **kw: Any) -> httpx.Response:
    return http.post(f"/v2/models/{model}/feedback", json=body, **kw)


def test_requests_answered_in_one_batch_are_labelled_by_the_ids_made_from_it(gw: GatewayProcess, state: Store) -> None:
    """Requests that ran in one runtime batch get ids made from the batch's tag, which the log stores with the
    batch instead of a key row a request: labels, the join and the lookups by id find them the same."""

    def burst(client: httpx.Client) -> list[str]:
        with ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda i: predict(client, i=i), range(64)))

    with httpx.Client(base_url=gw.http_url, timeout=30, limits=httpx.Limits(max_connections=16)) as client:
        ids = burst(client)
        made = [pid for pid in ids if batch_tag_of(pid) is not None]
        for _ in range(5):  # on a busy box a burst can run one request at a time: another
            if made:
                break
            ids = burst(client)
            made = [pid for pid in ids if batch_tag_of(pid) is not None]
        assert made, "no request of 6 bursts of 64 shared a runtime batch"
        assert len(set(ids)) == len(ids)
        r = feedback(client, "classifier", {"labels": [{"id": pid, "value": 1} for pid in ids]})
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": len(ids), "unchanged": 0}
    with state.engine.connect() as conn:
        keyed = set(
            conn.execute(sa.select(prediction_keys_table.c.id).where(prediction_keys_table.c.id.in_(ids))).scalars()
        )
    assert keyed == set(ids) - set(made)  # a batch's tag finds its requests: no key row for them
    stored = state.predictions("classifier", ids=ids)
    assert sorted(row["id"] for row in stored) == sorted(ids)
    (version,) = {row["version"] for row in stored}
    joined = {p.id for p in state.labeled_predictions("classifier", version)}
    assert set(ids) <= joined


def test_labels_sent_later_are_stored_and_joined(http: httpx.Client, state: Store) -> None:
    ids = [predict(http, i=i) for i in range(5)]  # the caller sent no id: the gateway made them
    assert len(set(ids)) == 5
    # At once: the predictions may still be queued in the log; the route writes them first.
    r = feedback(http, "classifier", {"labels": [{"id": pid, "value": n % 2} for n, pid in enumerate(ids)]})
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 5, "unchanged": 0}
    assert state.labels("classifier", ids) == {pid: n % 2 for n, pid in enumerate(ids)}
    served = {row["version"] for row in state.predictions("classifier", ids=ids)}
    (version,) = served
    joined = {p.id: p.label for p in state.labeled_predictions("classifier", version)}
    assert all(joined[pid] == n % 2 for n, pid in enumerate(ids))


def test_a_repeat_is_idempotent_and_a_new_value_replaces_the_old(http: httpx.Client, state: Store) -> None:
    pid = predict(http, i=1)
    first = feedback(http, "classifier", {"id": pid, "value": 3})  # one label alone
    assert first.status_code == 200 and first.json() == {"stored": 1, "unchanged": 0}
    again = feedback(http, "classifier", {"id": pid, "value": 3})
    assert again.status_code == 200 and again.json() == {"stored": 0, "unchanged": 1}
    changed = feedback(http, "classifier", {"labels": [{"id": pid, "value": 4}]})
    assert changed.status_code == 200 and changed.json() == {"stored": 1, "unchanged": 0}
    assert state.labels("classifier", [pid]) == {pid: 4}


def test_unknown_ids_are_404_listing_them_and_nothing_is_stored(http: httpx.Client, state: Store) -> None:
    known = predict(http, i=2)
    r = feedback(
        http,
        "classifier",
        {"labels": [{"id": known, "value": 1}, {"id": "no-such-id", "value": 0}, {"id": "nor-this", "value": 1}]},
    )
    assert r.status_code == 404, r.text
    doc = r.json()
    assert "unknown prediction ids for model 'classifier'" in doc["error"]
    assert "no-such-id" in doc["error"] and "nor-this" in doc["error"] and known not in doc["error"]
    assert doc["unknown"] == ["no-such-id", "nor-this"]
    assert state.labels("classifier", [known]) == {}  # all or nothing
    # A prediction of another model is unknown here too.
    mlp_id = predict(http, model="mlp")
    other = feedback(http, "classifier", {"id": mlp_id, "value": 1})
    assert other.status_code == 404 and other.json()["unknown"] == [mlp_id]


def test_a_long_list_of_unknown_ids_is_capped_in_the_message(http: httpx.Client) -> None:
    labels = [{"id": f"ghost-{i}", "value": 0} for i in range(100)]
    r = feedback(http, "classifier", {"labels": labels})
    assert r.status_code == 404
    assert "and 80 more" in r.json()["error"] and "ghost-99" not in r.json()["error"]
    assert len(r.json()["unknown"]) == 100


def test_a_grpc_prediction_is_labelled_by_its_response_id(gw: GatewayProcess, http: httpx.Client, state: Store) -> None:
    client = grpcclient.InferenceServerClient(gw.grpc_addr)
    try:
        x = grpcclient.InferInput("input", [1, 32], "FP32")
        x.set_data_from_numpy(np.full((1, 32), 0.5, np.float32))
        generated = client.infer("classifier", [x]).get_response().id
        chosen = client.infer("classifier", [x], request_id="order-4711").get_response().id
    finally:
        client.close()
    assert generated and chosen == "order-4711"
    r = feedback(http, "classifier", {"labels": [{"id": generated, "value": 2}, {"id": chosen, "value": 5}]})
    assert r.status_code == 200, r.text
    assert state.labels("classifier", [generated, chosen]) == {generated: 2, chosen: 5}


def test_a_label_hours_after_its_prediction_keeps_both_times(http: httpx.Client, state: Store) -> None:
    """A prediction logged five hours ago (written straight to the gateway's database) is labelled now."""
    made = datetime.now(UTC) - timedelta(hours=5)
    x = np.zeros((1, 32), np.float32)
    y = np.array([[0.1] * 8], np.float32)
    record = PredictionRecord(
        "yesterday-1", made, "classifier", "1", "stable", {"input": x}, {"probabilities": y}, 0.01, "ok"
    )
    state.write_predictions([record])
    known_at = datetime.now(UTC) - timedelta(hours=1)
    r = feedback(http, "classifier", {"id": "yesterday-1", "value": 7, "at": known_at.isoformat()})
    assert r.status_code == 200, r.text
    (p,) = [p for p in state.labeled_predictions("classifier", "1", since=made) if p.id == "yesterday-1"]
    assert p.label == 7 and abs(p.at - made) < timedelta(milliseconds=1)
    assert abs(p.labeled_at - known_at) < timedelta(milliseconds=1)


def test_unknown_model_is_404(http: httpx.Client) -> None:
    r = feedback(http, "no-such-model", {"id": "x", "value": 1})
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"labels": [{"value": 1}]}, "body.labels.0.id"),
        ({"labels": [{"id": "a"}]}, "body.labels.0.value"),
        ({"labels": [{"id": "a", "value": None}]}, "body.labels.0.value"),
        ({"labels": [{"id": "", "value": 1}]}, "body.labels.0.id"),
        ({"labels": [{"id": "a", "value": 1, "extra": 1}]}, "body.labels.0.extra"),
        ({"labels": [{"id": "a", "value": 1, "at": "yesterday"}]}, "body.labels.0.at"),
        ({"labels": []}, "body.labels"),
        ({"labels": "a"}, "body.labels"),
        ({"value": 1}, "body.id"),
        ([{"id": "a", "value": 1}], "body must be an object"),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(http: httpx.Client, body: Any, field: str) -> None:
    r = feedback(http, "classifier", body)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]


def test_a_body_that_is_not_json_is_400(http: httpx.Client) -> None:
    r = http.post("/v2/models/classifier/feedback", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


def test_the_route_takes_the_inference_keys_when_they_are_set(demo_repo: Path, tmp_path: Path) -> None:
    with (
        gateway_process(demo_repo, tmp=tmp_path, env={"SLUICE_INFERENCE_KEYS": f"label-app:{KEY}"}) as keyed,
        httpx.Client(base_url=keyed.http_url, timeout=30) as http,
    ):
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}]}
        pid = http.post("/v2/models/classifier/infer", json=body, headers=auth).json()["id"]
        assert feedback(http, "classifier", {"id": pid, "value": 1}).status_code == 401
        wrong = feedback(http, "classifier", {"id": pid, "value": 1}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        ok = feedback(http, "classifier", {"id": pid, "value": 1}, headers=auth)
        assert ok.status_code == 200 and ok.json() == {"stored": 1, "unchanged": 0}


def test_the_body_limit_applies(demo_repo: Path, tmp_path: Path) -> None:
    with gateway_process(demo_repo, "--max-body-bytes", "1000", tmp=tmp_path) as small:
        labels = [{"id": f"id-{i}", "value": i} for i in range(100)]
        r = httpx.post(f"{small.http_url}/v2/models/classifier/feedback", json={"labels": labels}, timeout=30)
        assert r.status_code == 413 and "over the limit of 1000 bytes" in r.json()["error"]
