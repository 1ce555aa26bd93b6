"""The admin commands of `sluice` against a real gateway, driven in-process by typer's CliRunner."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from gateway.cli.main import app
from gateway.storage.migrations import head_version
from gateway.storage.store import Store
from loadtests.ports import free_port
from tests.helpers import GatewayProcess, gateway_process

CLI_TOKEN = secrets.token_urlsafe(24)
runner = CliRunner()


@pytest.fixture(scope="module")
def gw(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    token = secrets.token_urlsafe(24)
    with gateway_process(
        demo_repo,
        tmp=tmp_path_factory.mktemp("cli-admin"),
        admin_token=token,
        env={"SLUICE_ADMIN_TOKENS": f"ci:{token},release-bot:{CLI_TOKEN}"},
    ) as gw:
        yield gw


@pytest.fixture
def env(gw: GatewayProcess) -> Iterator[dict[str, str]]:
    """The CLI's environment; after the test the models go back to their default state."""
    yield {"SLUICE_URL": gw.http_url, "SLUICE_ADMIN_TOKEN": CLI_TOKEN, "COLUMNS": "200"}
    with httpx.Client(base_url=f"{gw.http_url}/admin", headers=gw.admin_headers, timeout=30) as admin:
        for model in ("mlp", "classifier"):
            admin.post(f"/models/{model}/rollout/abort")
            for version in ("1", "2"):
                admin.post(f"/models/{model}/versions/{version}/load")
            admin.put(f"/models/{model}/traffic", json={})


def sluice(env: dict[str, str], *args: str) -> Result:
    return runner.invoke(app, list(args), env=env)


def ok(env: dict[str, str], *args: str) -> str:
    result = sluice(env, *args)
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def traffic(env: dict[str, str], model: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(ok(env, "traffic", "show", model, "--json"))
    return doc


@pytest.mark.parametrize(
    "command",
    [
        ["models"], ["traffic"], ["traffic", "show"], ["traffic", "set"], ["canary"], ["canary", "start"],
        ["canary", "status"], ["canary", "promote"], ["canary", "abort"], ["canary", "pause"], ["canary", "resume"],
        ["shadow"], ["rollback"], ["load"], ["unload"], ["audit"], ["db"], ["db", "upgrade"],
    ],
)  # fmt: skip
def test_help_for_every_admin_command(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command in (["models"], ["canary", "start"], ["audit"]):
        assert "SLUICE_URL" in result.output and "SLUICE_ADMIN_TOKEN" in result.output


def test_models_table_lists_the_demo_models(env: dict[str, str]) -> None:
    out = ok(env, "models")
    for text in ("mlp", "classifier", "READY", "CPUExecutionProvider", "stable newest ready"):
        assert text in out
    single = json.loads(ok(env, "models", "mlp", "--json"))
    assert [v["version"] for v in single[0]["versions"]] == ["1", "2"]


def test_traffic_set_patches_and_show_reads_it_back(env: dict[str, str]) -> None:
    out = ok(env, "traffic", "set", "mlp", "--stable", "1", "--canary", "2", "--weight", "30")
    assert "canary_weight" in out and "30" in out
    ok(env, "traffic", "set", "mlp", "--sticky-header", "x-user")
    assert traffic(env, "mlp") == {
        "stable": "1",
        "canary": "2",
        "canary_weight": 30.0,
        "shadows": [],
        "shadow_sample_rate": 1.0,
        "sticky_header": "x-user",
        "sticky_parameter": None,
    }
    ok(env, "traffic", "set", "mlp", "--canary", "none")
    assert (traffic(env, "mlp")["canary"], traffic(env, "mlp")["canary_weight"]) == (None, 0.0)
    refused = sluice(env, "traffic", "set", "mlp", "--weight", "150")
    assert refused.exit_code == 2
    nothing = sluice(env, "traffic", "set", "mlp")
    assert nothing.exit_code == 2 and "nothing to change" in nothing.stderr


def test_canary_start_status_abort_round_trip(env: dict[str, str]) -> None:
    out = ok(
        env, "canary", "start", "mlp", "--version", "2", "--steps", "10,50,100", "--interval", "3600",
        "--check", "error_ratio=2", "--check", "latency_p99_ratio=3:50",
    )  # fmt: skip
    assert "progressing" in out and "10%" in out and "1 of 3" in out
    assert "latency_p99_ratio<=3 (min 50)" in out
    status = json.loads(ok(env, "canary", "status", "mlp", "--json"))
    assert (status["phase"], status["weight"], status["spec"]["canary"]) == ("progressing", 10.0, "2")
    again = sluice(env, "canary", "start", "mlp", "--version", "2")
    assert again.exit_code == 1
    assert "already has a rollout" in again.stderr
    assert "progressing" in ok(env, "models")
    assert "paused" in ok(env, "canary", "pause", "mlp")
    assert "progressing" in ok(env, "canary", "resume", "mlp")
    assert "aborted" in ok(env, "canary", "abort", "mlp")
    history = ok(env, "audit", "--model", "mlp", "--limit", "4")
    for line in ("rollout of 2: aborted at 0%", "rollout of 2: paused at 10%", "rollout of 2: progressing at 10%"):
        assert line in history
    assert "canary_weight: 10.0 -> 0.0" in history
    watched = sluice(env, "canary", "status", "mlp", "--watch", "--timeout", "5")
    assert watched.exit_code == 1
    assert "ended aborted" in watched.stderr
    assert traffic(env, "mlp")["canary"] is None


def test_canary_promote_then_watch_exits_0(env: dict[str, str]) -> None:
    ok(env, "canary", "start", "classifier", "--version", "2", "--steps", "50", "--interval", "3600")
    assert "promoted" in ok(env, "canary", "promote", "classifier")
    watched = sluice(env, "canary", "status", "classifier", "--watch")
    assert watched.exit_code == 0, watched.output
    assert "promoted" in watched.stdout
    assert traffic(env, "classifier")["stable"] == "2"


def test_shadow_on_and_off(env: dict[str, str]) -> None:
    assert "shadowing 1 on 25% of requests" in ok(env, "shadow", "classifier", "--version", "1", "--rate", "0.25")
    policy = traffic(env, "classifier")
    assert (policy["shadows"], policy["shadow_sample_rate"]) == (["1"], 0.25)
    assert "no shadows" in ok(env, "shadow", "classifier", "--off")
    assert traffic(env, "classifier")["shadows"] == []
    both = sluice(env, "shadow", "classifier", "--off", "--version", "1")
    assert both.exit_code == 2


def test_rollback_removes_the_canary(env: dict[str, str]) -> None:
    ok(env, "traffic", "set", "mlp", "--stable", "1", "--canary", "2", "--weight", "40")
    assert "rolled back; stable 1" in ok(env, "rollback", "mlp")
    assert traffic(env, "mlp")["canary"] is None
    again = sluice(env, "rollback", "mlp")
    assert again.exit_code == 1
    assert "no canary to roll back" in again.stderr


def test_unload_and_load(env: dict[str, str], gw: GatewayProcess) -> None:
    assert "UNLOADED" in ok(env, "unload", "classifier", "1")
    assert httpx.get(f"{gw.http_url}/v2/models/classifier/versions/1/ready").status_code == 503
    assert "READY" in ok(env, "load", "classifier", "1")
    missing = sluice(env, "load", "classifier", "9")
    assert missing.exit_code == 1 and "no version '9'" in missing.stderr


def test_audit_shows_the_cli_token_name(env: dict[str, str]) -> None:
    ok(env, "traffic", "set", "mlp", "--stable", "1")
    out = ok(env, "audit", "--model", "mlp", "--limit", "1")
    assert "release-bot" in out and "policy.set" in out and "stable" in out
    events = json.loads(ok(env, "audit", "--limit", "1", "--json"))["events"]
    assert (events[0]["actor"], events[0]["action"]) == ("release-bot", "policy.set")
    assert CLI_TOKEN not in out


def test_a_bad_or_missing_token_exits_3_clearly(env: dict[str, str]) -> None:
    wrong = sluice({**env, "SLUICE_ADMIN_TOKEN": "wrong-token-0123456789"}, "models")
    assert wrong.exit_code == 3
    assert "invalid admin token (HTTP 403)" in wrong.stderr
    assert "wrong-token" not in wrong.output
    missing = sluice({**env, "SLUICE_ADMIN_TOKEN": ""}, "models")
    assert missing.exit_code == 3
    assert "no admin token" in missing.stderr


def test_an_unreachable_gateway_exits_1(env: dict[str, str]) -> None:
    result = sluice({**env, "SLUICE_URL": f"http://127.0.0.1:{free_port()}"}, "models", "--http-timeout", "5")
    assert result.exit_code == 1
    assert "cannot reach the gateway" in result.stderr


def test_db_upgrade_prints_the_schema_version(tmp_path: Path) -> None:
    for _ in range(2):  # idempotent
        result = runner.invoke(app, ["db", "upgrade", "--state-dir", str(tmp_path)], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert f"is at schema version {head_version()}" in result.stdout
    with Store.for_state_dir(tmp_path) as store:
        assert store.schema_version() == head_version()
    dsn = f"sqlite:///{tmp_path / 'other.db'}"
    result = runner.invoke(app, ["db", "upgrade", "--dsn", dsn], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "other.db is at schema version" in result.stdout
