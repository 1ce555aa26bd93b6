"""The model cache (atomic, verified, reused, bounded), the sync plan, and repository URLs: pure parts, no server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.control.repository_sync import plan_sync
from gateway.serving.model_cache import FetchRefused, ModelCache, ObjectInfo, backoff_delays
from gateway.serving.model_config import ModelConfig
from gateway.serving.registry import VersionState
from gateway.serving.repository import ModelSource, VersionSource
from gateway.storage.object_store import RepositoryUrlError, describe, open_store, parse_repository_url, redact

BODY = b"onnx bytes " * 1000


def info(key: str = "m/1/model.onnx", body: bytes = BODY, etag: str = '"e1"') -> ObjectInfo:
    return ObjectInfo(key, len(body), etag, 1_700_000_000.0)


def chunks(body: bytes, cut: int | None = None) -> Iterator[bytes]:
    data = body if cut is None else body[:cut]
    for i in range(0, len(data), 4096):
        yield data[i : i + 4096]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_fetched_file_is_renamed_into_place_whole_and_reused(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=None)
    digest = hashlib.sha256(BODY).hexdigest()
    path = cache.store(info(), chunks(BODY), expected_sha256=digest)
    assert path.read_bytes() == BODY and leftovers(path.parent) == []
    # the same object (a restart builds a new cache on the same folder): found, with or without its digest
    again = ModelCache(tmp_path, max_bytes=None)
    assert again.cached(info()) == path
    assert again.cached(info(), expected_sha256=digest) == path
    # another object under the same key (a new upload: other ETag), or another expected digest: not reused
    assert again.cached(info(etag='"e2"')) is None
    assert again.cached(info(), expected_sha256="0" * 64) is None


def test_a_short_transfer_or_a_wrong_digest_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=None)
    with pytest.raises(FetchRefused, match="truncated"):
        cache.store(info(), chunks(BODY, cut=5000))
    folder = tmp_path / "m" / "1"
    assert list(folder.iterdir()) == []  # no half file, no temporary one
    with pytest.raises(FetchRefused, match=r"SHA-256 .* differs"):
        cache.store(info(), chunks(BODY), expected_sha256="ab" * 32)
    assert list(folder.iterdir()) == []
    # a good copy already there survives a refused replacement
    good = cache.store(info(), chunks(BODY))
    with pytest.raises(FetchRefused):
        cache.store(info(etag='"e2"'), chunks(BODY, cut=10))
    assert good.read_bytes() == BODY and cache.cached(info()) == good


def test_a_file_changed_behind_the_sidecar_is_not_reused(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=None)
    path = cache.store(info(), chunks(BODY))
    path.write_bytes(BODY[:100])
    assert cache.cached(info()) is None


def test_eviction_frees_the_least_recently_used_versions_not_served_until_within_the_bound(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path, max_bytes=len(BODY) * 2)
    paths = {}
    for n, used in ((1, 100.0), (2, 300.0), (3, 200.0), (4, 50.0)):
        p = cache.store(info(f"m/{n}/model.onnx"), chunks(BODY))
        os.utime(p.with_name(p.name + ".meta.json"), (used, used))
        paths[n] = p
    cache.store(info("m/config.yaml", b"batching: {}\n"), chunks(b"batching: {}\n"))
    assert cache.usage() == 4 * len(BODY)
    evicted = cache.evict(keep={paths[4]})
    # 4 is the oldest but served: kept; then 1 (100) and 3 (200) go, the most recent (2) stays
    assert evicted == [paths[1], paths[3]]
    assert {p for p in paths.values() if p.exists()} == {paths[2], paths[4]}
    assert cache.usage() == 2 * len(BODY)
    assert (tmp_path / "m" / "config.yaml").exists()  # a model's own files are never evicted
    assert ModelCache(tmp_path, max_bytes=None).evict(keep=set()) == []  # no bound, no eviction


def test_backoff_doubles_up_to_its_cap() -> None:
    assert backoff_delays(1, 0.5, 4.0) == []
    assert backoff_delays(5, 0.5, 4.0) == [0.5, 1.0, 2.0, 4.0]
    assert backoff_delays(7, 0.5, 4.0)[-1] == 4.0


def source(name: str, *versions: str, error: str | None = None) -> ModelSource:
    return ModelSource(name, Path(name), ModelConfig(), [VersionSource(v, None) for v in versions], error)


R, F, U = VersionState.READY, VersionState.FAILED, VersionState.UNLOADED


def test_the_sync_plan_loads_what_the_policy_selects_and_unloads_what_left() -> None:
    plan = plan_sync(
        [source("a", "2", "3"), source("b", "1"), source("new", "1"), source("broken", error="config.yaml: bad")],
        {"a": {"1": R, "2": R, "3": F}, "b": {"1": U}, "gone": {"4": R, "5": F}, "broken": {"1": R}},
    )
    assert plan.load == (("a", "3"), ("b", "1"))  # a failed version is tried again; an unloaded one comes back
    assert plan.unload == (("a", "1"), ("gone", "4"))  # left the policy's selection; the model left the repository
    assert plan.new_models == ("new",)
    # a model whose scan failed is left as it is
    assert ("broken", "1") not in plan.unload


def test_repository_urls_never_carry_credentials() -> None:
    url = parse_repository_url("s3://models/prod/repo/")
    assert (url.scheme, url.bucket, url.prefix, str(url)) == ("s3", "models", "prod/repo", "s3://models/prod/repo")
    assert parse_repository_url("gs://b").prefix == ""
    assert parse_repository_url("az://container/p").scheme == "az"
    for bad, why in (
        ("s3://AKIAXXXX:SuperSecret123@models/repo", "must not carry credentials"),
        ("s3://models/repo?X-Amz-Signature=SuperSecret123", "query"),
        ("ftp://models/repo", "unknown scheme"),
        ("s3:///repo", "needs a bucket"),
        ("s3://models/a/../b", "segments"),
    ):
        with pytest.raises(RepositoryUrlError, match=why) as caught:
            parse_repository_url(bad)
        assert "SuperSecret123" not in str(caught.value) and "--model-repo" in str(caught.value)


def test_store_errors_are_one_line_with_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")
    raw = (
        "Generic S3 error: GET http://h/b/k?X-Amz-Credential=AKIAEXAMPLEKEY%2F&X-Amz-Signature=abc123 failed: "
        "<AWSAccessKeyId>AKIAEXAMPLEKEY</AWSAccessKeyId> key wJalrXUtnFEMI/K7MDENG\n\nDebug source: ..."
    )
    line = redact(raw)
    assert "\n" not in line and "Debug" not in line
    assert "AKIAEXAMPLEKEY" not in line and "wJalrXUtnFEMI" not in line and "abc123" not in line
    assert describe(OSError(raw)).startswith("OSError: Generic S3 error")


def test_each_store_is_opened_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """No request is sent: obstore checks its configuration when the store is made."""
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY")  # the environment wins over ~/.aws
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(RepositoryUrlError, match=r"--model-repo s3://b/models: .*Missing SecretAccessKey") as caught:
        open_store(parse_repository_url("s3://b/models"))
    assert "AKIAEXAMPLEKEY" not in str(caught.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")
    assert type(open_store(parse_repository_url("s3://b/models"))).__name__ == "S3Store"
    assert open_store(parse_repository_url("gs://b/models")).prefix == "models"
    with pytest.raises(RepositoryUrlError, match=r"--model-repo az://c/models: .*AZURE_STORAGE_ACCOUNT_NAME"):
        open_store(parse_repository_url("az://c/models"))
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "account")
    assert type(open_store(parse_repository_url("az://c/models"))).__name__ == "AzureStore"


def test_serve_refuses_a_repository_url_with_credentials_without_echoing_them() -> None:
    from typer.testing import CliRunner

    from gateway.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--model-repo", "s3://AKIAXXXX:SuperSecret123@models/repo"])
    assert result.exit_code == 2
    assert "must not carry credentials" in result.output and "SuperSecret123" not in result.output
    help_text = CliRunner().invoke(app, ["repo", "--help"], env={"COLUMNS": "200"}).output
    assert "sync" in help_text and "show" in help_text
    serve_help = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "--repository-poll-s" in serve_help and "--model-cache-max-bytes" in serve_help
