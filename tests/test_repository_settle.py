"""The periodic repository sync waits for a version's files to settle: a model file still being copied into a local
repository is not loaded (and not failed) until it has stopped changing. In an in-process gateway with an injected
clock: the poll is called by hand, the files' modification times are set to say how old they are."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.control.repository_sync import FileSeen, settle_wait
from tests.helpers import FakeClock, ThreadedGateway, settings_for
from tests.models import build_tabular

ROW = [0.5, -1.0, 2.0, 0.25, 1.5, -0.75]
SETTLE_S = 2.0


class Repo:
    def __init__(self, gw: ThreadedGateway, clock: FakeClock, root: Path) -> None:
        self.gw, self.clock, self.root = gw, clock, root
        self.http = httpx.Client(base_url=gw.http_url, timeout=30)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.gw.loop).result(60)

    def poll(self) -> dict[str, Any]:
        """One periodic sync, as the leader's loop runs it; its report."""
        sync = self.gw.gateway.repository_sync
        self.run(sync.poll())
        assert sync.last is not None
        report: dict[str, Any] = sync.last.to_json()
        return report

    def sync_now(self) -> dict[str, Any]:
        """A sync someone asked for (`sluice repo sync`)."""
        report: dict[str, Any] = self.run(self.gw.gateway.repository_sync.run("test")).to_json()
        return report

    def write(self, version: str, content: bytes, age_s: float) -> Path:
        """The version's model file holding `content`, last changed `age_s` ago by the gateway's clock."""
        path = self.root / "tab" / version / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        changed = self.clock.now - age_s
        os.utime(path, (changed, changed))
        os.utime(path.parent, (changed, changed))
        return path

    def states(self) -> dict[str, str]:
        model = self.gw.gateway.registry.models["tab"]
        return {v: s.state.value for v, s in model.versions.items()}

    def audit(self) -> list[str]:
        """The actions of the model's audit trail, newest first."""
        return [e.action for e in self.run(self.gw.gateway.control.audit_events("tab", 100, None))]

    def served(self, version: str) -> str:
        body = {"inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": ROW}]}
        r = self.http.post(f"/v2/models/tab/versions/{version}/infer", json=body)
        assert r.status_code == 200, r.text
        return str(r.json()["model_version"])


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repo]:
    root = tmp_path / "models"
    build_tabular(root / "tab" / "1" / "model.onnx", seed=3)
    (root / "tab" / "config.yaml").write_text("version_policy: {all: true}\n")
    clock = FakeClock(1_800_000_000.0)
    settings = settings_for(root, tmp_path, grpc_port=-1, repository_settle_s=SETTLE_S)
    with ThreadedGateway(settings, clock=clock, run_controller=False) as gw:
        r = Repo(gw, clock, root)
        yield r
        r.http.close()


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return build_tabular(tmp_path_factory.mktemp("m") / "model.onnx", seed=4).read_bytes()


def test_a_file_still_being_copied_is_waited_for_not_failed_then_loaded_once_settled(
    repo: Repo, model_bytes: bytes
) -> None:
    audited = repo.audit()
    repo.write("2", model_bytes[: len(model_bytes) // 2], age_s=0.2)  # the copy is half way
    report = repo.poll()
    assert report["failed"] == {}, report  # before: the half file was loaded, and failed
    assert "tab/2" in report["settling"] and "model.onnx" in report["settling"]["tab/2"], report
    assert repo.states() == {"1": "READY"}
    assert repo.audit() == audited  # nothing happened to the model

    repo.write("2", model_bytes, age_s=0.1)  # the copy ends: changed again since the last poll
    report = repo.poll()
    assert report["failed"] == {} and "tab/2" in report["settling"], report

    repo.clock.now += SETTLE_S  # nothing changed for the settle window: loaded
    report = repo.poll()
    assert report["loaded"] == ["tab/2"] and report["settling"] == {}, report
    assert repo.served("2") == "2"
    assert repo.audit()[0] == "version.load"


def test_a_file_dated_ahead_of_the_clock_loads_once_the_polls_have_seen_it_unchanged_long_enough(
    repo: Repo, model_bytes: bytes
) -> None:
    """A file whose time is ahead of the gateway's clock (copied with its times kept from a machine whose clock is
    ahead) would never look old: the polls' own view counts instead. A copy that only paused between two polls is
    not taken for finished."""
    repo.write("2", model_bytes, age_s=-3600)
    assert "dated ahead" in repo.poll()["settling"]["tab/2"]
    repo.clock.now += SETTLE_S / 2
    assert "tab/2" in repo.poll()["settling"]  # unchanged, but only for half the window
    repo.clock.now += SETTLE_S / 2
    report = repo.poll()
    assert report["loaded"] == ["tab/2"], report


def test_a_broken_file_that_settled_still_fails_and_is_reported(repo: Repo, model_bytes: bytes) -> None:
    repo.write("2", model_bytes[: len(model_bytes) // 2], age_s=60)
    report = repo.poll()
    assert "tab/2" in report["failed"] and report["settling"] == {}, report
    assert repo.states()["2"] == "FAILED"


def test_a_sync_someone_asked_for_loads_a_fresh_file_at_once(repo: Repo, model_bytes: bytes) -> None:
    """`sluice repo sync` right after a copy means the copy is done: no wait (without a poll it would never load)."""
    repo.write("2", model_bytes, age_s=0.0)
    report = repo.sync_now()
    assert report["loaded"] == ["tab/2"] and report["settling"] == {}, report


# --- the decision alone ---------------------------------------------------------------------------------------


def test_settle_wait_counts_from_the_last_change_by_the_files_time_or_by_what_the_polls_saw() -> None:
    now = 1000.0
    fresh = FileSeen(size=10, mtime=now - 0.5)
    assert settle_wait(fresh, None, None, now, 2.0) == pytest.approx(1.5)
    assert settle_wait(FileSeen(10, now - 2.0), None, None, now, 2.0) == 0.0
    grown = FileSeen(5, now - 0.7)
    assert settle_wait(fresh, grown, now - 10, now, 2.0) == pytest.approx(1.5)  # grew since: still copying
    assert settle_wait(fresh, fresh, now - 1.0, now, 2.0) == pytest.approx(1.0)  # unchanged, by its own time 0.5 s
    assert settle_wait(fresh, fresh, now - 2.0, now, 2.0) == 0.0  # unchanged for the window, as the polls saw it
    ahead = FileSeen(10, now + 50)
    assert settle_wait(ahead, None, None, now, 2.0) == 2.0  # a time ahead of the clock waits a whole window
    assert settle_wait(ahead, ahead, now - 0.5, now, 2.0) == pytest.approx(1.5)
    assert settle_wait(ahead, ahead, now - 2.5, now, 2.0) == 0.0
    assert settle_wait(fresh, None, None, now, 0.0) == 0.0  # 0 turns the wait off
