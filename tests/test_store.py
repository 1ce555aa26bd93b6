"""The state store on both engines: SQLite in a temporary directory and a real PostgreSQL.

PostgreSQL: 127.0.0.1:5432, database `test`, trust auth, as `postgres` or the current user
(override with SLUICE_TEST_PG_URL). Each test gets its own fresh schema, dropped afterwards.
Unreachable: skipped locally, a failure when CI=true.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command

from gateway.control.rollout_model import CheckResult, CheckSpec, Phase, RolloutSpec, RolloutState, Verdict
from gateway.errors import Conflict, InvalidInput
from gateway.serving.traffic import TrafficPolicy
from gateway.storage import control_state
from gateway.storage.control_state import AuditEvent
from gateway.storage.migrations import alembic_config, head_version
from gateway.storage.schema import UTCDateTime
from gateway.storage.store import Store
from monitors.records import Label, PredictionRecord
from monitors.triggers import RuleState
from tests.databases import Backend

UTC = timezone.utc
LATEST = head_version()


# --- engines: the `backend` fixture (tests/conftest.py) gives SQLite and PostgreSQL ---


@pytest.fixture
def store(backend: Backend) -> Store:
    """An upgraded store on each engine."""
    s = backend.open()
    s.upgrade()
    return s


def _tables(s: Store) -> set[str]:
    with s.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _columns(s: Store, table: str) -> set[str]:
    with s.engine.connect() as conn:
        return {c["name"] for c in sa.inspect(conn).get_columns(table)}


def test_for_state_dir_makes_a_wal_sqlite_file(tmp_path: Path) -> None:
    s = Store.for_state_dir(tmp_path / "a" / "b")
    try:
        assert s.upgrade() == LATEST
        assert (tmp_path / "a" / "b" / "sluice.db").is_file()
        assert s.engine.dialect.name == "sqlite"
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        s.close()


def test_password_never_shown() -> None:
    s = Store("postgresql+psycopg://sluice:hunter2@db.example:5432/sluice")  # no connection is made
    try:
        assert "hunter2" not in repr(s)
        assert "hunter2" not in s.display_url
        assert "***" in s.display_url
    finally:
        s.close()


# --- traffic policies ---------------------------------------------------------------------------


FULL_POLICY = TrafficPolicy(
    stable="3",
    canary="4",
    canary_weight=12.5,
    shadows=("5", "6"),
    shadow_sample_rate=0.25,
    sticky_header="x-user",
    sticky_parameter="user_id",
)


def test_policy_round_trip_and_overwrite(store: Store) -> None:
    assert store.get_policy("m") is None
    store.put_policy("m", FULL_POLICY)
    got = store.get_policy("m")
    assert got == FULL_POLICY
    assert got is not None and isinstance(got.shadows, tuple)

    store.put_policy("m", TrafficPolicy())
    assert store.get_policy("m") == TrafficPolicy()
    assert store.all_policies() == {"m": TrafficPolicy()}


def test_all_policies(store: Store) -> None:
    assert store.all_policies() == {}
    store.put_policy("b", FULL_POLICY)
    store.put_policy("a", TrafficPolicy(stable="1"))
    assert store.all_policies() == {"a": TrafficPolicy(stable="1"), "b": FULL_POLICY}


def test_concurrent_puts_of_a_new_policy(store: Store) -> None:
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            store.put_policy("new", TrafficPolicy(stable=str(i)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    got = store.get_policy("new")
    assert got is not None and got.stable in {str(i) for i in range(6)}
    assert list(store.all_policies()) == ["new"]


def test_policy_json_tolerates_missing_and_unknown_fields() -> None:
    doc = control_state.policy_to_json(FULL_POLICY)
    assert doc["shadows"] == ["5", "6"]
    assert control_state.policy_from_json(doc) == FULL_POLICY
    assert control_state.policy_from_json({"stable": "2", "from_the_future": 1}) == TrafficPolicy(stable="2")


# --- rollouts -----------------------------------------------------------------------------------


def _rollout(model: str = "m", canary: str = "2", stable: str = "1") -> RolloutState:
    spec = RolloutSpec(
        canary=canary,
        steps=(10.0, 50.0, 100.0),
        interval_s=5.0,
        failure_threshold=3,
        checks=(CheckSpec("error_ratio", 1.2, min_requests=7),),
    )
    return RolloutState(model=model, stable=stable, spec=spec, window_started_at=1234.5)


def test_rollout_save_update_and_finish(store: Store) -> None:
    assert store.rollout("m") is None
    assert store.active_rollouts() == []

    first = _rollout()
    store.save_rollout(first)
    assert store.rollout("m") == first
    assert store.active_rollouts() == [first]

    stepped = replace(
        first,
        step=1,
        failures=1,
        window_started_at=1240.0,
        last_results=(CheckResult("error_ratio", Verdict.FAIL, "canary 3% vs stable 1%"),),
    )
    store.save_rollout(stepped)
    assert store.rollout("m") == stepped
    assert store.active_rollouts() == [stepped]
    assert store.rollout_history("m") == [stepped]  # updated in place, not a second row

    done = replace(stepped, phase=Phase.PROMOTED, reason="all steps passed")
    store.save_rollout(done)
    assert store.active_rollouts() == []
    assert store.rollout("m") == done
    store.save_rollout(replace(done, reason="all steps passed (re-saved)"))
    assert len(store.rollout_history("m")) == 1


def test_rollout_history_and_one_active_per_model(store: Store) -> None:
    old = replace(_rollout(canary="2"), phase=Phase.ROLLED_BACK, reason="errors")
    store.save_rollout(_rollout(canary="2"))
    store.save_rollout(old)

    new = _rollout(canary="3")
    store.save_rollout(new)
    other = _rollout(model="n")
    store.save_rollout(other)

    assert store.rollout("m") == new
    assert store.rollout_history("m") == [new, old]
    assert store.active_rollouts() == [new, other]

    with pytest.raises(Conflict, match="already has an active rollout"):
        store.save_rollout(_rollout(canary="4"))
    assert store.rollout("m") == new


# --- versions -----------------------------------------------------------------------------------


def test_versions_desired_state(store: Store) -> None:
    assert store.versions() == []
    store.put_version("m", "1", artifact="/models/m/1/model.onnx", runtime="onnx", batching={}, desired="loaded")
    store.put_version(
        "m",
        "2",
        artifact=None,
        runtime="remote",
        batching={"max_batch_size": 32, "delays_ms": [1, 2.5], "nested": {"a": None}},
        desired="loaded",
    )
    store.put_version("n", "1", artifact="x", runtime="onnx", batching={}, desired="unloaded")

    rows = store.versions("m")
    assert [(r["model"], r["version"], r["desired"]) for r in rows] == [("m", "1", "loaded"), ("m", "2", "loaded")]
    assert rows[1]["artifact"] is None
    assert rows[1]["batching"] == {"max_batch_size": 32, "delays_ms": [1, 2.5], "nested": {"a": None}}
    assert rows[0]["created_at"].tzinfo is not None and rows[0]["created_at"].utcoffset() == timedelta(0)
    created = rows[0]["created_at"]

    store.put_version("m", "1", artifact="/models/m/1/model.onnx", runtime="onnx", batching={}, desired="unloaded")
    row = store.versions("m")[0]
    assert row["desired"] == "unloaded"
    assert row["created_at"] == created
    assert row["updated_at"] >= created
    assert len(store.versions()) == 3

    with pytest.raises(InvalidInput, match="desired state"):
        store.put_version("m", "1", artifact=None, runtime="onnx", batching={}, desired="running")


# --- audit log ----------------------------------------------------------------------------------


def test_audit_order_filter_limit_and_pages(store: Store) -> None:
    ids = [store.audit("alice", "policy.put", "m" if i % 2 == 0 else "n", None, {"i": i}) for i in range(7)]
    assert ids == sorted(ids) and len(set(ids)) == 7

    events = store.audit_events()
    assert [e.id for e in events] == ids[::-1]
    assert [e.after["i"] for e in store.audit_events(model="m")] == [6, 4, 2, 0]
    assert [e.after["i"] for e in store.audit_events(limit=3)] == [6, 5, 4]

    pages: list[list[int]] = []
    before: int | None = None
    while page := store.audit_events(limit=3, before_id=before):
        pages.append([e.after["i"] for e in page])
        before = page[-1].id
    assert pages == [[6, 5, 4], [3, 2, 1], [0]]
    assert [e.after["i"] for e in store.audit_events(model="n", limit=1, before_id=ids[5])] == [3]

    with pytest.raises(InvalidInput):
        store.audit_events(limit=0)


def test_audit_json_and_timestamps(store: Store) -> None:
    before = {"policy": {"stable": "1", "shadows": [], "weight": 0.0}, "note": None}
    after = {"policy": {"stable": "1", "canary": "2", "shadows": ["3"], "weight": 12.5}, "list": [1, "a", None]}
    t0 = datetime.now(UTC)
    event_id = store.audit("bob", "policy.put", "m", before, after)
    given = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    store.audit("ops", "store.upgrade", None, None, None, at=given)

    newest, first = store.audit_events()
    assert first.id == event_id
    assert (first.actor, first.action, first.model) == ("bob", "policy.put", "m")
    assert first.before == before and first.after == after
    assert first.at.utcoffset() == timedelta(0)
    assert abs(first.at - t0) < timedelta(seconds=30)

    assert newest.model is None and newest.before is None and newest.after is None
    assert newest.at == given and newest.at.tzinfo is not None and newest.at.utcoffset() == timedelta(0)
    assert newest.at.hour == 12

    doc = first.to_json()
    assert doc["at"].endswith("+00:00") and doc["before"] == before and doc["id"] == event_id

    with pytest.raises(ValueError, match="naive"):
        store.audit("bob", "x", None, None, None, at=datetime(2024, 1, 1))


def test_audit_event_is_frozen() -> None:
    e = AuditEvent(1, datetime.now(UTC), "a", "b", None, None, None)
    with pytest.raises(AttributeError):
        e.actor = "c"  # type: ignore[misc]


# --- restart ------------------------------------------------------------------------------------


def test_state_survives_a_restart(backend: Backend) -> None:
    first = backend.open()
    first.upgrade()
    first.put_policy("m", FULL_POLICY)
    rollout = _rollout()
    first.save_rollout(rollout)
    first.put_version("m", "4", artifact="a", runtime="onnx", batching={"max_batch_size": 8}, desired="loaded")
    event_id = first.audit("alice", "rollout.start", "m", None, rollout.to_json())
    first.close()

    second = backend.open()
    assert second.schema_version() == LATEST
    assert second.upgrade() == LATEST
    assert second.get_policy("m") == FULL_POLICY
    assert second.active_rollouts() == [rollout]
    assert [(v["version"], v["desired"], v["batching"]) for v in second.versions()] == [
        ("4", "loaded", {"max_batch_size": 8})
    ]
    (event,) = second.audit_events()
    assert event.id == event_id
    assert RolloutState.from_json(event.after) == rollout


def test_trigger_states_round_trip_overwrite_and_survive_a_restart(backend: Backend) -> None:
    first = backend.open()
    first.upgrade()
    assert first.trigger_states() == {}
    first.save_trigger_state("m", "1", "input-drift", RuleState(streak=1))
    first.save_trigger_state("m", "1", "input-drift", RuleState(streak=0, last_fired_at=1_700_000_123.25))
    first.save_trigger_state("m", "2", "input-drift", RuleState(streak=2))
    first.save_trigger_state("other", "1", "accuracy-drop", RuleState(streak=1))
    first.close()

    second = backend.open()
    assert second.trigger_states() == {
        ("m", "1", "input-drift"): RuleState(0, 1_700_000_123.25),
        ("m", "2", "input-drift"): RuleState(2, None),
        ("other", "1", "accuracy-drop"): RuleState(1, None),
    }


# --- migration 3: prediction tensors from JSON to bytes -------------------------------------------


def _indexes(s: Store, table: str) -> set[str]:
    with s.engine.connect() as conn:
        return {ix["name"] for ix in sa.inspect(conn).get_indexes(table) if ix["name"]}


def _at_revision(s: Store, revision: str) -> None:
    with s.engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


_ROW_PER_PREDICTION = sa.table(  # the log's table up to migration 9
    "predictions",
    *(sa.column(name) for name in ("model", "id", "version", "route", "latency_s", "outcome", "inputs", "outputs")),
    sa.column("at", UTCDateTime()),
)


def test_predictions_stored_a_row_each_and_as_json_by_release_0_1_s_first_schema_stay_readable(
    backend: Backend,
) -> None:
    """Rows the JSON store wrote before release 0.1's migration 3 hold their JSON text as bytes (that step
    converted the columns in place), and every row before migration 9 is a row of its own; migration 9 makes
    each a batch of one, and they read the same beside batches written since."""
    s = backend.open()
    _at_revision(s, "0008")
    t0 = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
    x_doc = {"x": {"shape": [1, 3], "datatype": "FP32", "data": [0.5, None, 2.0]}}  # NaN was stored as null
    y_doc = {"y": {"shape": [1, 2], "datatype": "INT64", "data": [1, -1]}}
    as_text = lambda doc: json.dumps(doc).encode()  # noqa: E731
    with s.engine.begin() as conn:
        conn.execute(
            sa.insert(_ROW_PER_PREDICTION),
            [
                {"model": "m", "id": "old-1", "version": "1", "route": "stable", "at": t0, "latency_s": 0.01,
                 "outcome": "ok", "inputs": as_text(x_doc), "outputs": as_text(y_doc)},
                {"model": "m", "id": "old-2", "version": "1", "route": "stable", "at": t0 + timedelta(seconds=1),
                 "latency_s": 0.02, "outcome": "error", "inputs": as_text(x_doc), "outputs": as_text({})},
            ],
        )  # fmt: skip
    assert s.upgrade() == LATEST
    assert "predictions" not in sa.inspect(s.engine).get_table_names()

    x = np.array([[1.0, np.inf, -2.0]], dtype=np.float32)
    new = PredictionRecord(
        "new-1", t0 + timedelta(seconds=2), "m", "1", "stable", {"x": x}, {"y": x[:, :2]}, 0.03, "ok"
    )
    s.write_predictions([new])

    rows = s.predictions("m")
    assert [r["id"] for r in rows] == ["old-1", "old-2", "new-1"]
    assert rows[0]["inputs"] == x_doc and rows[0]["outputs"] == y_doc and rows[0]["at"] == t0
    assert rows[1]["outputs"] == {} and rows[1]["outcome"] == "error"
    assert rows[2]["inputs"] == {"x": {"shape": [1, 3], "datatype": "FP32", "data": [1.0, None, -2.0]}}
    records = s.prediction_records("m", "1", outcome=None)
    assert [r.id for r in records] == ["old-1", "old-2", "new-1"]
    old_x = records[0].inputs["x"]
    assert old_x.dtype == np.float32 and old_x.shape == (1, 3) and np.isnan(old_x[0, 1]) and old_x[0, 2] == 2.0
    assert records[0].outputs["y"].tolist() == [[1, -1]] and records[1].outputs == {}
    assert records[2].inputs["x"].tobytes() == x.tobytes()  # infinity kept, bit for bit
    s.write_labels("m", [Label("old-1", 1), Label("new-1", 0)])
    assert [(p.id, p.outputs) for p in s.labeled_predictions("m", "1")] == [
        ("old-1", y_doc),
        ("new-1", {"y": {"shape": [1, 2], "datatype": "FP32", "data": [1.0, None]}}),
    ]
    assert s.prune_predictions(older_than=t0 + timedelta(seconds=1), keep_rows=None) == 1
    assert [r["id"] for r in s.predictions("m")] == ["old-2", "new-1"]
    assert s.labels("m") == {"new-1": 0}
