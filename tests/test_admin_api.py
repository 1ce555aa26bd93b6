"""The admin API against a real gateway: tokens, traffic splits, shadows, refusals that change nothing,
versions loaded and unloaded, the audit log, and state that survives a restart."""

from __future__ import annotations

import hmac
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gateway.admin import auth as admin_auth
from gateway.admin.auth import DISABLED_MESSAGE, AdminAuth, AdminTokenError, read_token_file
from gateway.errors import Forbidden, Unauthorized
from gateway.settings import GatewaySettings
from tests.helpers import ROOT, GatewayProcess, ThreadedGateway, gateway_process, metric_value, settings_for, wait_until

OPS_TOKEN = secrets.token_urlsafe(24)
MODELS = ("mlp", "classifier")


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(demo_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """This module's own gateway (it changes state), logging at debug so the token check is strict."""
    token = secrets.token_urlsafe(24)
    with gateway_process(
        demo_repo,
        "--log-level",
        "debug",
        tmp=tmp_path_factory.mktemp("admin-api"),
        admin_token=token,
        env={"SLUICE_ADMIN_TOKENS": f"ci:{token},ops:{OPS_TOKEN}"},
    ) as gw:
        yield gw


@pytest.fixture
def admin(gw: GatewayProcess) -> Iterator[httpx.Client]:
    """An authenticated client; after the test, every model goes back to the default state."""
    with httpx.Client(base_url=f"{gw.http_url}/admin", headers=gw.admin_headers, timeout=30) as client:
        yield client
        for model in MODELS:
            client.post(f"/models/{model}/rollout/abort")  # 409 when there is none: fine
            for version in ("1", "2"):
                assert client.post(f"/models/{model}/versions/{version}/load").status_code == 200
            assert client.put(f"/models/{model}/traffic", json={}).status_code == 200


@pytest.fixture
def http(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.http_url, timeout=30) as client:
        yield client


def row(i: int) -> list[float]:
    return [((i * 31 + j * 7) % 97) / 97.0 - 0.5 for j in range(32)]


def infer(
    http: httpx.Client, model: str, i: int = 0, version: str | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": row(i)}]}
    return http.post(path, json=body, headers=headers)


def served_by(http: httpx.Client, model: str, i: int = 0, **kw: Any) -> str:
    response = infer(http, model, i, **kw)
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def snapshot(admin: httpx.Client) -> tuple[Any, int]:
    """Everything a refused request must leave alone: every model's view and the newest audit id."""
    models = admin.get("/models").json()
    events = admin.get("/audit", params={"limit": 1}).json()["events"]
    return models, events[0]["id"] if events else 0


def shadow_count(gw: GatewayProcess, model: str, version: str) -> float:
    return metric_value(gw.metrics(), "sluice_shadow_requests_total", 0.0, model=model, version=version)


# -- tokens -------------------------------------------------------------------------------------


def test_no_token_is_401_with_a_bearer_challenge(gw: GatewayProcess) -> None:
    response = httpx.get(f"{gw.http_url}/admin/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in response.json()["error"]
    malformed = httpx.get(f"{gw.http_url}/admin/models", headers={"Authorization": f"Basic {gw.admin_token}"})
    assert malformed.status_code == 401
    assert "Bearer <token>" in malformed.json()["error"]


@pytest.mark.parametrize("which", ["random", "name", "name:secret", "prefix", "other-case"])
def test_a_wrong_token_is_403(gw: GatewayProcess, which: str) -> None:
    token = {
        "random": secrets.token_urlsafe(24),
        "name": "ci",  # a configured name is not a token
        "name:secret": f"ci:{gw.admin_token}",  # nor is the name:token pair
        "prefix": gw.admin_token[:-1],
        "other-case": gw.admin_token.swapcase(),
    }[which]
    response = httpx.get(f"{gw.http_url}/admin/models", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json() == {"error": "invalid admin token"}


def test_the_right_token_is_200_and_names_the_actor(gw: GatewayProcess, admin: httpx.Client) -> None:
    assert admin.get("/models").status_code == 200
    ops = {"Authorization": f"Bearer {OPS_TOKEN}"}
    assert admin.put("/models/mlp/traffic", json={"stable": "1"}, headers=ops).status_code == 200
    newest = admin.get("/audit", params={"limit": 1}).json()["events"][0]
    assert (newest["actor"], newest["action"], newest["model"]) == ("ops", "policy.set", "mlp")


def test_tokens_never_reach_the_gateway_log(gw: GatewayProcess) -> None:
    for token in (gw.admin_token, OPS_TOKEN, "not-a-token-0123456789"):
        httpx.get(f"{gw.http_url}/admin/models", headers={"Authorization": f"Bearer {token}"})
    httpx.get(f"{gw.http_url}/admin/models", headers={"Authorization": f"Basic {gw.admin_token}"})
    logs = gw.logs()
    assert "admin API enabled for ci, ops" in logs
    for secret in (gw.admin_token, OPS_TOKEN, "not-a-token-0123456789"):
        assert secret not in logs


def test_openapi_lists_the_admin_paths_with_bearer_security(gw: GatewayProcess) -> None:
    schema = httpx.get(f"{gw.http_url}/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["AdminToken"] == {**schemes["AdminToken"], "type": "http", "scheme": "bearer"}
    admin_paths = {p: ops for p, ops in schema["paths"].items() if p.startswith("/admin")}
    assert {"/admin/models", "/admin/models/{model}/traffic", "/admin/models/{model}/rollout", "/admin/audit"} <= set(
        admin_paths
    )
    for ops in admin_paths.values():
        for op in ops.values():
            assert op["security"] == [{"AdminToken": []}]
            assert op["tags"] == ["admin"]
    # Triton's repository load and unload change what serves: admin token too.
    changes = {"/v2/repository/models/{model}/load", "/v2/repository/models/{model}/unload"}
    for path in changes:
        assert schema["paths"][path]["post"]["security"] == [{"AdminToken": []}], path
    for path, ops in schema["paths"].items():
        if not path.startswith("/admin") and path not in changes:
            assert all("security" not in op for op in ops.values()), path


def test_the_admin_api_is_disabled_without_tokens(demo_repo: Path, tmp_path: Path) -> None:
    settings = settings_for(demo_repo, tmp_path, grpc_port=-1, admin_tokens=None, admin_tokens_file=None)
    with ThreadedGateway(settings) as gw:
        for headers in ({}, {"Authorization": "Bearer anything"}):
            response = httpx.get(f"{gw.http_url}/admin/models", headers=headers)
            assert response.status_code == 403
            assert response.json() == {"error": DISABLED_MESSAGE}


# -- AdminAuth itself ---------------------------------------------------------------------------


def test_auth_compares_against_every_token_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = AdminAuth([("a", "token-a" * 3), ("b", "token-b" * 3), ("c", "token-c" * 3)])
    calls: list[int] = []
    original = hmac.compare_digest

    def counting(x: bytes, y: bytes) -> bool:
        calls.append(1)
        return original(x, y)

    monkeypatch.setattr(admin_auth.hmac, "compare_digest", counting)
    assert auth.authenticate("Bearer " + "token-a" * 3) == "a"
    assert len(calls) == 3
    assert auth.authenticate("bearer  " + "token-c" * 3 + " ") == "c"
    with pytest.raises(Forbidden):
        auth.authenticate("Bearer nope")
    with pytest.raises(Unauthorized):
        auth.authenticate(None)
    with pytest.raises(Unauthorized):
        auth.authenticate("Bearer")
    with pytest.raises(Unauthorized):
        auth.authenticate("Token " + "token-a" * 3)
    assert "token-a" not in repr(auth) and "token-a" not in repr(auth._tokens)


@pytest.mark.parametrize(
    ("tokens", "problem"),
    [
        ("ci:s3cret-value-1,ci:s3cret-value-2", "'ci' appears more than once"),
        ("ci:", "token for 'ci' is empty"),
        (":s3cret-value-1", "name before ':' is empty"),
        ("s3cret-value-1", "expected name:token"),
        ("ci:s3cret-value-1,ops:s3cret-value-1", "same token as 'ci'"),
        ("bad name:s3cret-value-1", "must be 1-64 letters"),
    ],
)
def test_bad_token_settings_fail_clearly_without_echoing_a_token(tokens: str, problem: str) -> None:
    with pytest.raises(AdminTokenError) as info:
        AdminAuth.from_settings(GatewaySettings(admin_tokens=SecretStr(tokens)))
    assert problem in str(info.value)
    assert "s3cret" not in str(info.value)


def test_token_file_with_comments_and_both_sources(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# admins\n\nalice: alice-token-0123456789  \n  # bob left\ncarol:carol:token:0123456789\n")
    assert read_token_file(path) == [("alice", " alice-token-0123456789"), ("carol", "carol:token:0123456789")]
    auth = AdminAuth.from_settings(
        GatewaySettings(admin_tokens=SecretStr("ci:ci-token-0123456789"), admin_tokens_file=path)
    )
    assert auth.names == ["ci", "alice", "carol"]
    assert auth.authenticate("Bearer carol:token:0123456789") == "carol"
    path.write_text("alice:alice-token-0123456789\nsecret-without-a-name\n")
    with pytest.raises(AdminTokenError, match="line 2: expected name:token") as info:
        read_token_file(path)
    assert "secret-without" not in str(info.value)
    with pytest.raises(AdminTokenError, match="cannot read admin tokens file"):
        read_token_file(tmp_path / "missing")


def test_serve_refuses_a_bad_token_file_before_listening(demo_repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("ci:first-secret-0123456789\nci:second-secret-0123456789\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--model-repo", str(demo_repo), "--http-port", "0",
         "--grpc-port", "-1", "--state-dir", str(tmp_path / "state"), "--admin-tokens-file", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'ci' appears more than once" in proc.stderr
    assert "secret" not in proc.stderr + proc.stdout


# -- models and traffic -------------------------------------------------------------------------


def test_list_models(admin: httpx.Client) -> None:
    models = {m["name"]: m for m in admin.get("/models").json()["models"]}
    assert {"mlp", "classifier"} <= set(models)
    mlp = models["mlp"]
    assert [(v["version"], v["state"]) for v in mlp["versions"]] == [("1", "READY"), ("2", "READY")]
    assert mlp["rollout"] is None
    assert admin.get("/models/mlp").json() == mlp
    missing = admin.get("/models/nope")
    assert missing.status_code == 404
    assert "nope" in missing.json()["error"]


def test_canary_at_30_percent_gets_30_percent_and_pinned_calls_stay(admin: httpx.Client, http: httpx.Client) -> None:
    policy = {"stable": "1", "canary": "2", "canary_weight": 30}
    response = admin.put("/models/mlp/traffic", json=policy)
    assert response.status_code == 200, response.text
    assert response.json() == {**response.json(), "stable": "1", "canary": "2", "canary_weight": 30.0}
    assert admin.get("/models/mlp/traffic").json() == response.json()
    with ThreadPoolExecutor(8) as pool:
        versions = Counter(pool.map(lambda i: served_by(http, "mlp", i), range(2000)))
    assert set(versions) == {"1", "2"}
    assert abs(versions["2"] / 2000 * 100 - 30) <= 3, versions
    weights = {v["version"]: (v["roles"], v["weight"]) for v in admin.get("/models/mlp").json()["versions"]}
    assert weights == {"1": (["stable"], 70.0), "2": (["canary"], 30.0)}
    assert {served_by(http, "mlp", i, version="1") for i in range(50)} == {"1"}


def test_sticky_header_keeps_each_caller_on_one_version(admin: httpx.Client, http: httpx.Client) -> None:
    policy = {"stable": "1", "canary": "2", "canary_weight": 50, "sticky_header": "x-user"}
    assert admin.put("/models/mlp/traffic", json=policy).status_code == 200
    seen: dict[str, set[str]] = {}
    for user in range(24):
        for i in range(5):
            seen.setdefault(f"user-{user}", set()).add(served_by(http, "mlp", i, headers={"X-User": f"user-{user}"}))
    assert all(len(v) == 1 for v in seen.values()), seen
    assert set().union(*seen.values()) == {"1", "2"}


def test_patch_changes_only_the_fields_sent(admin: httpx.Client) -> None:
    assert admin.put("/models/mlp/traffic", json={"stable": "1", "sticky_header": "x-user"}).status_code == 200
    patched = admin.patch("/models/mlp/traffic", json={"canary": "2", "canary_weight": 5})
    assert patched.status_code == 200, patched.text
    assert patched.json() == {
        "stable": "1",
        "canary": "2",
        "canary_weight": 5.0,
        "shadows": [],
        "shadow_sample_rate": 1.0,
        "sticky_header": "x-user",
        "sticky_parameter": None,
    }


def test_a_shadow_never_changes_the_answer(gw: GatewayProcess, admin: httpx.Client, http: httpx.Client) -> None:
    assert admin.put("/models/classifier/traffic", json={"stable": "1"}).status_code == 200

    def run() -> list[Any]:
        answers = []
        for i in range(40):  # one at a time: every batch is the same single row in both runs
            response = infer(http, "classifier", i)
            assert response.status_code == 200, response.text
            doc = response.json()
            assert doc["model_version"] == "1"
            answers.append(doc["outputs"])
        return answers

    plain = run()
    before = shadow_count(gw, "classifier", "2")
    shadowed = admin.post("/models/classifier/shadow", json={"versions": ["2"], "sample_rate": 1.0})
    assert shadowed.status_code == 200, shadowed.text
    assert shadowed.json()["stable"] == "1" and shadowed.json()["shadows"] == ["2"]
    assert run() == plain
    wait_until(lambda: shadow_count(gw, "classifier", "2") >= before + 40, timeout=20, what="40 shadow requests")
    roles = {v["version"]: v["roles"] for v in admin.get("/models/classifier").json()["versions"]}
    assert roles == {"1": ["stable"], "2": ["shadow"]}
    off = admin.post("/models/classifier/shadow", json={"versions": []})
    assert off.json()["shadows"] == [] and off.json()["stable"] == "1"


# -- refusals change nothing -------------------------------------------------------------------


def test_bad_requests_are_refused_clearly_and_change_nothing(admin: httpx.Client) -> None:
    assert admin.put("/models/mlp/traffic", json={"stable": "1", "canary": "2", "canary_weight": 10}).status_code == 200
    assert admin.post("/models/classifier/versions/2/unload").status_code == 200
    started = admin.post("/models/mlp/rollout", json={"canary": "2", "steps": [10, 50], "interval_s": 3600})
    assert started.status_code == 201, started.text
    cases: list[tuple[str, str, dict[str, Any] | None, int, str]] = [
        ("PUT", "/models/nope/traffic", {}, 404, "model 'nope' is not in the repository"),
        ("PUT", "/models/classifier/traffic", {"stable": "1", "canary": "9", "canary_weight": 5}, 404,
         "no version '9'"),
        ("PUT", "/models/classifier/traffic", {"stable": "1", "canary": "2", "canary_weight": 5}, 409,
         "version '2' is not loaded"),
        ("PUT", "/models/classifier/traffic", {"canary": "1", "canary_weight": 150}, 422, "canary_weight"),
        ("PUT", "/models/classifier/traffic", {"shadow_sample_rate": -0.5}, 422, "shadow_sample_rate"),
        ("PUT", "/models/classifier/traffic", {"stabel": "1"}, 422, "stabel"),
        ("PUT", "/models/classifier/traffic", {"canary_weight": 10}, 400, "no canary version"),
        ("PUT", "/models/mlp/traffic", {"stable": "1", "canary": "2", "canary_weight": 60}, 409,
         "rollout of version 2 in progress"),
        ("POST", "/models/mlp/rollout", {"canary": "2"}, 409, "already has a rollout"),
        ("POST", "/models/classifier/rollout", {"canary": "1", "steps": [50, 10]}, 422, "steps must rise"),
        ("POST", "/models/classifier/rollout", {"canary": "1", "checks": [{"name": "vibes", "threshold": 1}]}, 400,
         "unknown check 'vibes'"),
        ("POST", "/models/classifier/rollout", {"canary": "2"}, 409, "not loaded"),
        ("POST", "/models/nope/rollout", {"canary": "2"}, 404, "nope"),
        ("POST", "/models/mlp/versions/9/load", None, 404, "no version '9'"),
        ("POST", "/models/mlp/versions/2/unload", None, 409, "in use as canary"),
        ("POST", "/models/classifier/promote", None, 409, "no canary to promote"),
        ("POST", "/models/nope/rollback", None, 404, "nope"),
        ("POST", "/models/classifier/rollout/pause", None, 409, "no active rollout"),
        ("POST", "/models/mlp/shadow", {"versions": ["2"]}, 400, "both canary and shadow"),
    ]  # fmt: skip
    for method, path, body, status, message in cases:
        before = snapshot(admin)
        response = admin.request(method, path, json=body)
        assert response.status_code == status, (method, path, response.text)
        assert message in response.json()["error"], (method, path, response.text)
        assert snapshot(admin) == before, (method, path)


def test_an_oversized_admin_body_is_413_before_anything_reads_it(gw: GatewayProcess) -> None:
    big = b'{"stable": "' + b"1" * (2 * 1024 * 1024) + b'"}'
    for headers in ({}, gw.admin_headers):
        response = httpx.put(f"{gw.http_url}/admin/models/mlp/traffic", content=big, headers=headers)
        assert response.status_code == 413
        assert "over the limit" in response.json()["error"]


def test_get_rollout_is_404_before_any_and_the_last_one_after(admin: httpx.Client) -> None:
    none = admin.get("/models/classifier/rollout")
    assert none.status_code == 404
    assert "no rollout" in none.json()["error"]
    started = admin.post("/models/classifier/rollout", json={"canary": "2", "steps": [20, 100], "interval_s": 3600})
    assert started.status_code == 201
    assert started.json()["phase"] == "progressing" and started.json()["weight"] == 20.0
    assert admin.get("/models/classifier/rollout").json() == started.json()
    assert admin.get("/models/classifier/traffic").json()["canary_weight"] == 20.0
    assert admin.post("/models/classifier/rollout/pause").json()["phase"] == "paused"
    assert admin.post("/models/classifier/rollout/resume").json()["phase"] == "progressing"
    aborted = admin.post("/models/classifier/rollout/abort").json()
    assert aborted["phase"] == "aborted"
    assert admin.get("/models/classifier/rollout").json()["phase"] == "aborted"
    assert admin.get("/models/classifier/traffic").json()["canary"] is None


def test_promote_and_rollback_without_a_rollout(admin: httpx.Client) -> None:
    admin.put("/models/mlp/traffic", json={"stable": "1", "canary": "2", "canary_weight": 40})
    rolled_back = admin.post("/models/mlp/rollback").json()
    assert (rolled_back["stable"], rolled_back["canary"], rolled_back["canary_weight"]) == ("1", None, 0.0)
    admin.put("/models/mlp/traffic", json={"stable": "1", "canary": "2", "canary_weight": 40})
    promoted = admin.post("/models/mlp/promote").json()
    assert (promoted["stable"], promoted["canary"]) == ("2", None)


# -- versions -----------------------------------------------------------------------------------


def test_unload_refuses_a_version_in_use_then_drains_and_load_brings_it_back(
    admin: httpx.Client, http: httpx.Client
) -> None:
    admin.put("/models/mlp/traffic", json={"stable": "1", "canary": "2", "canary_weight": 20})
    for version, role in (("1", "stable"), ("2", "canary")):
        refused = admin.post(f"/models/mlp/versions/{version}/unload")
        assert refused.status_code == 409
        assert f"in use as {role}" in refused.json()["error"]
    assert served_by(http, "mlp", version="2") == "2"
    admin.put("/models/mlp/traffic", json={"stable": "1"})
    unloaded = admin.post("/models/mlp/versions/2/unload")
    assert unloaded.status_code == 200, unloaded.text
    assert unloaded.json()["state"] == "UNLOADED"
    pinned = infer(http, "mlp", version="2")
    assert pinned.status_code == 503
    assert "UNLOADED" in pinned.json()["error"]
    assert {served_by(http, "mlp", i) for i in range(20)} == {"1"}
    admin.put("/models/mlp/traffic", json={})
    last = admin.post("/models/mlp/versions/1/unload")
    assert last.status_code == 409 and "last ready version" in last.json()["error"]
    loaded = admin.post("/models/mlp/versions/2/load")
    assert loaded.status_code == 200 and loaded.json()["state"] == "READY"
    assert served_by(http, "mlp", version="2") == "2"


# -- audit --------------------------------------------------------------------------------------


def test_audit_log_names_actor_action_and_before_after(admin: httpx.Client) -> None:
    admin.put("/models/mlp/traffic", json={"stable": "1"})
    admin.put("/models/mlp/traffic", json={"stable": "1", "canary": "2", "canary_weight": 15})
    admin.post("/models/classifier/versions/1/unload")
    events = admin.get("/audit", params={"limit": 3}).json()["events"]
    assert [(e["actor"], e["action"], e["model"]) for e in events] == [
        ("ci", "version.unload", "classifier"),
        ("ci", "policy.set", "mlp"),
        ("ci", "policy.set", "mlp"),
    ]
    unload, second, first = events
    assert unload["after"] == {"version": "1", "state": "UNLOADED", "sha256": unload["after"]["sha256"]}
    assert len(unload["after"]["sha256"]) == 64  # the digest of the file that was serving
    assert (second["before"]["canary"], second["after"]["canary"], second["after"]["canary_weight"]) == (None, "2", 15)
    assert first["after"]["stable"] == "1"
    assert events[0]["id"] > events[1]["id"] > events[2]["id"]
    mlp_only = admin.get("/audit", params={"model": "mlp", "limit": 2}).json()
    assert [e["id"] for e in mlp_only["events"]] == [second["id"], first["id"]]
    assert mlp_only["next_before_id"] == first["id"]
    older = admin.get("/audit", params={"model": "mlp", "limit": 1, "before_id": second["id"]}).json()["events"]
    assert [e["id"] for e in older] == [first["id"]]
    bad = admin.get("/audit", params={"limit": 0})
    assert bad.status_code == 422 and "limit" in bad.json()["error"]


# -- persistence ----------------------------------------------------------------------------------


def test_state_survives_a_restart(demo_repo: Path, tmp_path: Path) -> None:
    token = secrets.token_urlsafe(24)
    state = tmp_path / "state"
    policy = {"stable": "1", "canary": "2", "canary_weight": 25.0, "sticky_parameter": "user"}
    with gateway_process(demo_repo, tmp=tmp_path, admin_token=token, state_dir=state) as first:
        headers = first.admin_headers
        assert httpx.put(f"{first.http_url}/admin/models/mlp/traffic", json=policy, headers=headers).status_code == 200
        unload = httpx.post(f"{first.http_url}/admin/models/classifier/versions/1/unload", headers=headers)
        assert unload.status_code == 200
        assert first.terminate() == 0
    with gateway_process(demo_repo, tmp=tmp_path, admin_token=token, state_dir=state) as second:
        headers = second.admin_headers
        restored = httpx.get(f"{second.http_url}/admin/models/mlp/traffic", headers=headers).json()
        assert restored == {**restored, **policy}
        classifier = httpx.get(f"{second.http_url}/admin/models/classifier", headers=headers).json()
        assert {v["version"]: v["state"] for v in classifier["versions"]} == {"1": "UNLOADED", "2": "READY"}
        with httpx.Client(base_url=second.http_url, timeout=30) as http:
            versions = Counter(served_by(http, "mlp", i) for i in range(400))
        assert abs(versions["2"] / 4 - 25) <= 3, versions
        audit = httpx.get(f"{second.http_url}/admin/audit", headers=headers).json()["events"]
        changes = [e["action"] for e in audit if e["action"] != "version.artifacts"]
        assert changes[:2] == ["version.unload", "policy.set"]
        # Each start audits the digest of every file it loaded.
        artifacts = [e for e in audit if e["action"] == "version.artifacts" and e["model"] == "classifier"]
        assert len(artifacts) == 2 and set(artifacts[0]["after"]["sha256"]) == {"2"}
