"""The prediction log's stored form (migration 9, `gateway.storage.prediction_batches`), on SQLite and a real
PostgreSQL: a runtime batch is one row with a key per request, and every reader still sees the rows each
request would have been alone: windows cut at a time that batches share, the newest rows of a range, counts,
labels, repeated ids, pruning by age and by row count. The ids the gateway makes for a batch's requests
(migration 10) are found by the batch's tag, with no key row of their own."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from gateway.storage.store import Store
from monitors.log_batches import BatchFrame, BatchTensors
from monitors.prediction_log import batch_request_id, expand_items, tensors_from_bytes, tensors_to_bytes
from monitors.records import Label
from tests.databases import Backend

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(backend: Backend) -> Store:
    s = backend.open()
    s.upgrade()
    return s


def frame(ids: list[str], at: datetime, *, version: str = "1", first: float = 0.0) -> BatchFrame:
    """A runtime batch of len(ids) requests, one row each; request i's input row is first + i."""
    n = len(ids)
    x = (first + np.arange(n * 3, dtype=np.float32).reshape(n, 3) // 3).astype(np.float32)
    y = np.stack([x[:, 0] * 2, -x[:, 0]], axis=1)
    slots = [(id_, "stable", 0.001 * (i + 1), i, i + 1, None) for i, id_ in enumerate(ids)]
    return BatchFrame(
        "m", version, at.timestamp(), tensors_to_bytes({"x": x}), tensors_to_bytes({"y": y}), False, slots
    )


def counts(store: Store) -> tuple[int, int]:
    with store.engine.connect() as conn:
        batches = conn.execute(sa.text("select count(*) from prediction_batches")).scalar_one()
        keys = conn.execute(sa.text("select count(*) from prediction_keys")).scalar_one()
    return batches, keys


def test_a_runtime_batch_is_one_row_and_reads_back_as_the_rows_of_its_requests(store: Store) -> None:
    batch = frame([f"r{i:02d}" for i in range(16)], T0)
    assert store.write_log_items([batch]) == 16
    assert counts(store) == (1, 16)
    expected = {row[1]: row for row in expand_items([batch])}
    records = store.prediction_records("m", "1")
    assert [r.id for r in records] == sorted(expected)  # one time: ordered by id
    for r in records:
        _, _, _, route, _, latency_s, outcome, inputs, outputs = expected[r.id]
        assert (r.at, r.route, r.latency_s, r.outcome) == (T0, route, latency_s, outcome)
        assert r.inputs["x"].tobytes() == tensors_from_bytes(inputs)["x"].tobytes()
        assert r.outputs["y"].tobytes() == tensors_from_bytes(outputs)["y"].tobytes()
    assert records[3].inputs["x"].tolist() == [[3.0, 3.0, 3.0]]
    assert store.count_predictions("m", "1") == 16


def test_windows_cut_by_time_and_count_with_batches_that_share_a_time(store: Store) -> None:
    # Two replicas' batches logged in the same microsecond, then a later one.
    store.write_log_items([frame(["b0", "b2", "b4"], T0), frame(["b1", "b3"], T0, first=10)])
    store.write_log_items([frame(["c0", "c1", "c2", "c3"], T0 + timedelta(seconds=1))])
    assert counts(store) == (3, 9)
    assert [r.id for r in store.prediction_records("m", "1", limit=4)] == ["b0", "b1", "b2", "b3"]
    assert [r.id for r in store.prediction_records("m", "1", limit=4, newest=True)] == ["c0", "c1", "c2", "c3"]
    assert [r.id for r in store.prediction_records("m", "1", limit=6, newest=True)] == [
        "b3",
        "b4",
        "c0",
        "c1",
        "c2",
        "c3",
    ]
    later = T0 + timedelta(milliseconds=1)
    assert [r["id"] for r in store.predictions("m", since=later)] == ["c0", "c1", "c2", "c3"]
    assert [r["id"] for r in store.predictions("m", until=later)] == ["b0", "b1", "b2", "b3", "b4"]
    assert store.count_predictions("m", "1", since=later) == 4
    assert store.count_predictions("m", "1", until=later) == 5
    assert [r["id"] for r in store.predictions("m", ids=["c2", "b1", "nope"])] == ["b1", "c2"]
    assert store.prediction_records("m", "1", limit=4)[1].inputs["x"].tolist() == [[10.0, 10.0, 10.0]]


def test_a_repeated_id_keeps_its_first_prediction_across_writes_and_within_a_batch(store: Store) -> None:
    store.write_log_items([frame(["a", "b"], T0)])
    stored = store.write_log_items([frame(["b", "c", "c", "d"], T0 + timedelta(seconds=1), first=5)])
    assert stored == 2  # c and d; b was taken, the second c repeats the first
    rows = {r.id: r for r in store.prediction_records("m", "1")}
    assert sorted(rows) == ["a", "b", "c", "d"]
    assert rows["b"].at == T0 and rows["b"].inputs["x"].tolist() == [[1.0, 1.0, 1.0]]  # the first b
    assert rows["c"].inputs["x"].tolist() == [[6.0, 6.0, 6.0]]  # the first c of the batch
    assert store.count_predictions("m", "1") == 4
    # A batch whose every id was taken leaves nothing behind.
    assert store.write_log_items([frame(["a", "d"], T0 + timedelta(seconds=2))]) == 0
    assert counts(store) == (2, 4)


def test_labels_find_their_requests_inside_batches(store: Store) -> None:
    store.write_log_items([frame(["a", "b", "c"], T0), frame(["d"], T0 + timedelta(seconds=1), version="2")])
    assert store.write_labels("m", [Label("b", 1), Label("d", 0), Label("x", 1)]).unknown == ("x",)
    assert store.write_labels("m", [Label("b", 1), Label("d", 0)]).stored == 2
    (b,) = store.labeled_predictions("m", "1")
    assert (b.id, b.at, b.label) == ("b", T0, 1)
    assert b.outputs == {"y": {"shape": [1, 2], "datatype": "FP32", "data": [2.0, -1.0]}}
    assert [p.id for p in store.labeled_predictions("m", "2")] == ["d"]
    assert store.labeled_predictions("m", "1", since=T0 + timedelta(milliseconds=1)) == []


def test_pruning_takes_whole_batches_and_their_keys(store: Store) -> None:
    store.write_log_items([frame(["a0", "a1", "a2"], T0)])
    store.write_log_items([frame(["b0", "b1"], T0 + timedelta(seconds=1), version="2")])
    store.write_log_items([frame(["c0", "c1", "c2"], T0 + timedelta(seconds=2))])
    store.write_labels("m", [Label("a1", 1), Label("c1", 1)])
    assert store.prune_predictions(older_than=T0 + timedelta(milliseconds=500), keep_rows=None) == 3
    assert counts(store) == (2, 5) and store.labels("m") == {"c1": 1}
    # At most 4 rows stay: the batch holding the fifth newest goes whole (b0 and b1 share its time).
    assert store.prune_predictions(older_than=None, keep_rows=4) == 2
    assert [r["id"] for r in store.predictions("m")] == ["c0", "c1", "c2"]
    assert store.write_labels("m", [Label("b0", 1)]).unknown == ("b0",)
    assert store.prune_predictions(older_than=None, keep_rows=3) == 0


def tagged_frame(at: datetime, rows: int, *, callers: dict[int, str] | None = None, version: str = "1") -> BatchFrame:
    """A runtime batch whose requests sent no id (but those in `callers`, by row): the gateway made each one's id
    from the batch's tag, as the data plane does."""
    tensors = BatchTensors({}, {}, rows, False)
    callers = callers or {}
    ids = [callers.get(i) or batch_request_id(tensors, i) for i in range(rows)]
    plain = frame(ids, at, version=version)
    return plain._replace(tag=tensors.tag)


def test_the_ids_the_gateway_makes_for_a_batch_have_no_key_rows_and_are_found_by_its_tag(store: Store) -> None:
    batch = tagged_frame(T0, 4, callers={2: "order-7"})
    ids = [slot[0] for slot in batch.slots]
    assert store.write_log_items([batch]) == 4
    assert counts(store) == (1, 1)  # the caller's id alone has a key row
    assert [r.id for r in store.prediction_records("m", "1")] == sorted(ids)
    assert [r["id"] for r in store.predictions("m", ids=[ids[1], ids[3]])] == sorted([ids[1], ids[3]])
    assert [r["id"] for r in store.predictions("m", version="2", ids=[ids[1]])] == []
    # An id of the same form that no request had: the tag is known, the row is not.
    assert batch.tag is not None
    ghost = f"{batch.tag}-9"
    assert store.write_labels("m", [Label(ids[1], 1), Label(ghost, 0)]).unknown == (ghost,)
    assert store.write_labels("m", [Label(ids[1], 1), Label("order-7", 0), Label(ids[3], 1)]).stored == 3
    labeled = {p.id: (p.label, p.outputs["y"]["data"]) for p in store.labeled_predictions("m", "1")}
    assert labeled == {ids[1]: (1, [2.0, -1.0]), "order-7": (0, [4.0, -2.0]), ids[3]: (1, [6.0, -3.0])}
    assert store.labeled_predictions("m", "2") == []


def test_a_tagged_batch_in_two_parts_sent_again_or_spooled_row_by_row_is_stored_once(store: Store) -> None:
    batch = tagged_frame(T0, 5)
    first, second = batch._replace(slots=batch.slots[:3]), batch._replace(slots=batch.slots[3:])
    assert store.write_log_items([first, second]) == 5  # one runtime batch logged in two entries
    assert store.write_log_items([first]) == 0  # a write that failed part-way, sent again
    assert store.write_log_items(expand_items([second])) == 0  # held, spooled, written back as rows
    assert counts(store) == (2, 0)
    assert sorted(r.id for r in store.prediction_records("m", "1")) == sorted(s[0] for s in batch.slots)


def test_an_id_the_gateway_made_sent_back_by_a_caller_keeps_its_first_prediction(store: Store) -> None:
    batch = tagged_frame(T0, 3)
    made = batch.slots[1][0]
    store.write_log_items([batch])
    later = T0 + timedelta(seconds=1)
    assert store.write_log_items([frame([made, "fresh"], later, first=50)]) == 1  # made: taken already
    assert store.write_log_items([frame([made], later, version="2", first=60)]) == 1  # another version's
    assert counts(store) == (3, 2)
    rows = store.predictions("m", ids=[made])
    assert [(r["version"], r["at"]) for r in rows] == [("1", T0), ("2", later)]
    assert rows[0]["inputs"]["x"]["data"] == [1.0, 1.0, 1.0]


def test_pruning_a_tagged_batch_takes_the_labels_of_its_requests(store: Store) -> None:
    old, new = tagged_frame(T0, 2), tagged_frame(T0 + timedelta(seconds=2), 2)
    store.write_log_items([old, new])
    store.write_labels("m", [Label(old.slots[0][0], 1), Label(new.slots[1][0], 0)])
    assert store.prune_predictions(older_than=T0 + timedelta(seconds=1), keep_rows=None) == 2
    assert store.labels("m") == {new.slots[1][0]: 0}
    assert store.write_labels("m", [Label(old.slots[1][0], 1)]).unknown == (old.slots[1][0],)


def test_a_shadows_copies_keep_their_primary_ids_under_their_own_version(store: Store) -> None:
    primary = tagged_frame(T0, 3)
    copies = frame([slot[0] for slot in primary.slots], T0, version="2", first=20)
    copies = copies._replace(slots=[(slot[0], "shadow", *slot[2:]) for slot in copies.slots])
    assert store.write_log_items([primary, copies]) == 6
    assert store.write_log_items([copies]) == 0  # sent again: their key rows hold them
    assert counts(store) == (2, 3)
    made = primary.slots[2][0]
    rows = store.predictions("m", ids=[made])
    assert [(r["version"], r["route"], r["inputs"]["x"]["data"]) for r in rows] == [
        ("1", "stable", [2.0, 2.0, 2.0]),
        ("2", "shadow", [22.0, 22.0, 22.0]),
    ]
