"""The state database's schema through Alembic, on SQLite and a real PostgreSQL: a migrated database equals the
models, a database made by release 0.1 (its hand-written runner's schema version 6) is taken over with its rows,
a failing revision leaves nothing behind, a newer database is refused, and racing upgrades agree."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gateway.serving.traffic import TrafficPolicy
from gateway.storage.migrations import SchemaError, apply_migrations, head_version
from gateway.storage.schema import metadata
from gateway.storage.store import Store, upgrade_database
from tests.databases import Backend

DATA = Path(__file__).parent / "data"
HEAD = head_version()


def differences(store: Store) -> list[object]:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(context, metadata))


def tables(store: Store) -> set[str]:
    with store.engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def load_release_0_1(backend: Backend, store: Store) -> None:
    """A state database as release 0.1 left it: a policy, a version, an audit event (its own dump)."""
    if backend.name == "sqlite":
        script = (DATA / "state-release-0.1.sqlite.sql").read_text()
        with store.engine.connect() as conn:
            conn.connection.driver_connection.executescript(script)  # type: ignore[union-attr]
        return
    schema = backend.connect_args["options"].split("=", 1)[1]
    script = (DATA / "state-release-0.1.postgresql.sql").read_text().replace("legacy01.", f'"{schema}".')
    with store.engine.begin() as conn:
        for statement in script.split(";\n"):
            if statement.strip() and not statement.startswith("CREATE SCHEMA"):
                conn.exec_driver_sql(statement)


def test_a_migrated_database_equals_the_models(backend: Backend) -> None:
    store = backend.open()
    assert store.schema_version() == 0
    assert store.upgrade() == HEAD >= 6
    assert store.schema_version() == HEAD
    assert differences(store) == []
    assert "schema_version" not in tables(store) and "alembic_version" in tables(store)
    assert store.upgrade() == HEAD  # idempotent
    store.put_policy("m", TrafficPolicy(stable="1"))
    assert backend.open().upgrade() == HEAD and store.get_policy("m") == TrafficPolicy(stable="1")


def test_a_database_made_by_release_0_1_is_taken_over_with_its_rows(backend: Backend) -> None:
    store = backend.open()
    load_release_0_1(backend, store)
    assert store.schema_version() == 6
    assert store.upgrade() == HEAD
    assert differences(store) == []
    assert "schema_version" not in tables(store)
    assert store.get_policy("mlp") == TrafficPolicy(stable="1", canary="2", canary_weight=0.1)
    assert [(v["model"], v["version"], v["desired"]) for v in store.versions()] == [("mlp", "2", "loaded")]
    assert [(e.actor, e.action) for e in store.audit_events()] == [("ci", "policy.set")]
    assert store.control_revision() == 2
    store.put_policy("mlp", TrafficPolicy(stable="2"))  # and it works as a current database
    assert store.control_revision() == 3


def test_an_older_release_0_1_database_is_refused_with_what_to_do(backend: Backend) -> None:
    store = backend.open()
    load_release_0_1(backend, store)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM schema_version WHERE version = 6"))
    with pytest.raises(SchemaError, match=r"start release 0\.1 on it once"):
        store.upgrade()


BROKEN = """
import sqlalchemy as sa
from alembic import op

revision = "{number}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("versions", sa.Column("half_done", sa.Integer(), nullable=True))
    raise RuntimeError("boom")
"""


def test_a_failing_revision_leaves_the_database_as_it_was(backend: Backend, tmp_path: Path) -> None:
    store = backend.open()
    store.upgrade()
    extra = tmp_path / "versions"
    extra.mkdir()
    (extra / f"{HEAD + 1:04d}_broken.py").write_text(BROKEN.format(number=f"{HEAD + 1:04d}", head=f"{HEAD:04d}"))
    with pytest.raises(RuntimeError, match="boom"), store.engine.begin() as conn:
        apply_migrations(conn, "test", extra_versions=extra)
    assert store.schema_version() == HEAD
    with store.engine.connect() as conn:
        assert "half_done" not in {c["name"] for c in sa.inspect(conn).get_columns("versions")}


def test_a_database_newer_than_the_code_is_refused(backend: Backend) -> None:
    store = backend.open()
    store.upgrade()
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match=f"schema version 9999, newer than this code's {HEAD}"):
        store.upgrade()


def test_racing_upgrades_agree(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[int] = []
    errors: list[BaseException] = []

    def run(s: Store) -> None:
        try:
            barrier.wait()
            results.append(s.upgrade())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == [HEAD] * len(stores)
    assert differences(stores[0]) == []


def test_upgrade_database_by_url(backend: Backend) -> None:
    url = backend.url_with_search_path()
    assert upgrade_database(url) == HEAD
    assert upgrade_database(url) == HEAD
    assert backend.open().schema_version() == HEAD
