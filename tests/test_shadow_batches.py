"""Shadow copies go by the batch: the copies of one primary batch reach the shadow as one request, are compared
at once, and one bad copy is the only one counted as failed. A real gateway process under concurrent load; the
shadow's own batch counts and the shadow counters are read from /metrics."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.storage.store import Store
from tests.helpers import GatewayProcess, Load, gateway_process, metric_value, wait_until
from tests.models import build_lookup

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("shadow-batches")
    repo = tmp / "models"
    build_lookup(repo / "lookup" / "1" / "model.onnx", rows=100, slow_matmuls=2)  # slow enough that batches form
    build_lookup(repo / "lookup" / "3" / "model.onnx", rows=80)  # the same table, but fails for idx >= 80
    (repo / "lookup" / "config.yaml").write_text("version_policy:\n  all: true\nbatching:\n  max_batch_size: 32\n")
    with gateway_process(repo, tmp=tmp) as gw:
        admin = httpx.Client(base_url=f"{gw.http_url}/admin", headers=gw.admin_headers, timeout=30)
        assert admin.put("/models/lookup/traffic", json={"stable": "1"}).status_code == 200
        shadowed = admin.post("/models/lookup/shadow", json={"versions": ["3"], "sample_rate": 1.0})
        assert shadowed.status_code == 200, shadowed.text
        yield gw


def figures(gw: GatewayProcess) -> dict[str, float]:
    text = gw.metrics()
    count = {
        f"shadow_{outcome}": metric_value(
            text, "sluice_shadow_requests_total", 0.0, model="lookup", version="3", outcome=outcome
        )
        for outcome in ("agreed", "disagreed", "error")
    }
    count["dropped"] = metric_value(text, "sluice_shadow_dropped_total", 0.0, model="lookup", version="3")
    for version in ("1", "3"):
        count[f"batches_{version}"] = metric_value(
            text, "sluice_batch_size_count", 0.0, model="lookup", version=version
        )
    return count


def settled(gw: GatewayProcess, before: dict[str, float], copies: int) -> dict[str, float]:
    def done() -> bool:
        now = figures(gw)
        return (
            sum(now[k] - before[k] for k in ("shadow_agreed", "shadow_disagreed", "shadow_error", "dropped")) >= copies
        )

    wait_until(done, timeout=60, what=f"all {copies} shadow copies counted")
    now = figures(gw)
    return {k: now[k] - before[k] for k in now}


def test_the_copies_of_a_primary_batch_go_to_the_shadow_as_one_and_every_copy_is_counted(gw: GatewayProcess) -> None:
    before = figures(gw)
    body = {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [7]}]}
    with Load(gw.http_url, clients=16, count=1500, body=body) as load:
        load.wait()
    assert [s for s, _, _ in load.results].count(200) == 1500
    got = settled(gw, before, 1500)
    assert got["shadow_agreed"] + got["dropped"] == 1500 and got["shadow_disagreed"] == got["shadow_error"] == 0, got
    assert got["shadow_agreed"] >= 500, f"most copies are compared, not dropped: {got}"
    # Counted on the batch's path in plain ints, the agreement's share is set at the scrape.
    assert metric_value(gw.metrics(), "sluice_shadow_agreement_ratio", model="lookup", version="3") == 1.0
    # One shadow runtime call per primary batch at most (the shadow batcher may merge more), and far fewer calls
    # than copies: the copies travelled together. (Before, each copy was a request of its own to the shadow.)
    assert got["batches_3"] <= got["batches_1"], got
    assert got["batches_3"] < got["shadow_agreed"] / 2, got


def test_one_bad_copy_in_a_batch_is_the_only_one_that_fails(gw: GatewayProcess) -> None:
    """Indices cycle through 0..99: a fifth of the copies (idx >= 80) fail on the shadow, whose table is shorter;
    the other four fifths, sent in the same batches, agree."""
    before = figures(gw)
    with Load(gw.http_url, clients=16, count=1000) as load:
        load.wait()
    assert [s for s, _, _ in load.results].count(200) == 1000
    got = settled(gw, before, 1000)
    compared = got["shadow_agreed"] + got["shadow_error"]
    assert got["shadow_disagreed"] == 0 and compared >= 300, got
    assert 0.1 <= got["shadow_error"] / compared <= 0.3, got


def test_each_copy_of_a_shadow_batch_is_logged_with_its_own_rows(gw: GatewayProcess) -> None:
    """The log keeps a shadow batch's tensors once and expands each copy's rows: every copy that ran is stored
    under its request's id, with that request's input and the shadow's answer to it (the same as the primary's
    where the tables agree), and every failed copy with its input and no outputs."""
    before = figures(gw)
    with Load(gw.http_url, clients=16, count=600) as load:
        load.wait()
    got = settled(gw, before, 600)
    ran = int(got["shadow_agreed"] + got["shadow_error"])
    ids = {pid for status, _, pid in load.results if status == 200}
    assert len(ids) == 600 and ran >= 200, got
    assert gw.state_dir is not None
    store = Store.for_state_dir(gw.state_dir)
    try:

        def ours() -> list[dict[str, Any]]:
            return [r for r in store.predictions("lookup", limit=1_000_000) if r["id"] in ids]

        wait_until(lambda: sum(r["route"] == "shadow" for r in ours()) == ran, timeout=30, what="the copies logged")
        rows = ours()
    finally:
        store.close()
    primary = {r["id"]: r for r in rows if r["route"] == "stable"}
    assert set(primary) == ids
    for row in (r for r in rows if r["route"] == "shadow"):
        mine = primary[row["id"]]
        assert row["version"] == "3" and row["inputs"] == mine["inputs"], row
        idx = mine["inputs"]["idx"]["data"][0]
        if row["outcome"] == "ok":
            assert idx < 80 and row["outputs"] == mine["outputs"], row
        else:
            assert idx >= 80 and row["outcome"] == "error" and row["outputs"] == {}, row
