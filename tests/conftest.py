from __future__ import annotations

import os
import sqlite3

# Ray 2.60 starts a local cluster with token authentication (the token in ~/.ray/auth_token), and a process reads
# the mode once, when it imports Ray: set before any test module does, so that tests/test_ray.py can join the
# cluster its driver started.
os.environ.setdefault("RAY_AUTH_MODE", "token")
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.cli.demo import build_demo_repository
from gateway.storage.store import Store
from tests.databases import Backend, find_pg_url
from tests.helpers import GatewayProcess, gateway_process


@pytest.fixture(scope="session")
def demo_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_repository(tmp_path_factory.mktemp("demo") / "models")


@pytest.fixture(scope="session")
def demo_gateway(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One `sluice serve` process on the demo repository, shared by the protocol tests."""
    with gateway_process(
        demo_repo, "--max-body-bytes", str(4 * 1024 * 1024), tmp=tmp_path_factory.mktemp("logs")
    ) as gw:
        yield gw


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The real PostgreSQL; skipped when unreachable locally, a failure under CI=true."""
    url, errors = find_pg_url()
    if url is not None:
        return url
    message = "PostgreSQL is unreachable: " + "; ".join(errors)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each storage feature runs on both engines; PostgreSQL tests get a schema of their own."""
    if request.param == "sqlite":
        (tmp_path / "state").mkdir(exist_ok=True)
        b = Backend("sqlite", f"sqlite:///{tmp_path / 'state' / 'sluice.db'}")
        yield b
        for s in b.opened:
            s.close()
        return
    url = request.getfixturevalue("pg_url")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    b = Backend("postgresql", url, {"options": f"-csearch_path={schema}"})
    try:
        yield b
    finally:
        for s in b.opened:
            s.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def locked_store(tmp_path: Path) -> Iterator[tuple[Store, sqlite3.Connection]]:
    """A real SQLite store whose writes wait 0.2 s for the lock and then find the database busy (unavailable)
    while the test's own connection holds the write lock (`BEGIN IMMEDIATE`; `ROLLBACK` gives it back)."""
    state = tmp_path / "state"
    state.mkdir()
    s = Store(f"sqlite:///{state / 'sluice.db'}", connect_args={"timeout": 0.2})
    s.upgrade()
    blocker = sqlite3.connect(state / "sluice.db", isolation_level=None)
    yield s, blocker
    blocker.close()
    s.close()
