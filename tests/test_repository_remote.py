"""The object-store listing on its own: obstore's in-memory store (the same API as S3, GCS and Azure) and an
S3 store whose server is not there; no gateway. The scan reads it as it reads a local folder."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import obstore
import pytest
from obstore.store import MemoryStore, S3Store

from gateway.errors import RepositoryUnavailable
from gateway.serving.model_cache import FetchRefused, ModelCache
from gateway.serving.repository import scan_model, scan_repository
from gateway.serving.repository_remote import ObjectStoreListing
from gateway.storage.object_store import RepositoryUrl
from tests.models import build_tabular

URL = RepositoryUrl("s3", "bucket", "repo")


def filled(tmp_path: Path) -> MemoryStore:
    store = MemoryStore()
    for version in (1, 2, 3):
        model = build_tabular(tmp_path / f"m{version}.onnx", seed=version)
        obstore.put(store, f"tab/{version}/model.onnx", model.read_bytes())
    obstore.put(store, "tab/config.yaml", b"version_policy:\n  latest: 2\n")
    obstore.put(store, "tab/reference.csv", b"a,b\n1,2\n")
    obstore.put(store, ".hidden/1/model.onnx", b"x")
    return store


def dead_store() -> S3Store:
    """An S3 store whose endpoint refuses connections at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return S3Store(
        "bucket",
        prefix="repo",
        endpoint=f"http://127.0.0.1:{port}",
        access_key_id="k",
        secret_access_key="s",
        region="us-east-1",
        client_options={"allow_http": True},
        retry_config={"max_retries": 0},
    )


def test_the_scan_reads_a_bucket_as_a_folder_and_fetches_only_what_loads(tmp_path: Path) -> None:
    outcomes: list[str] = []
    cache = ModelCache(tmp_path / "cache", max_bytes=None)
    listing = ObjectStoreListing(URL, cache, store=filled(tmp_path), on_fetch=outcomes.append)
    [source] = scan_repository(listing)
    assert source.name == "tab" and source.error is None
    assert [v.version for v in source.versions] == ["2", "3"]  # version_policy latest: 2, as for a local folder
    # the model's own files are mirrored (the drift reference too); no version file is fetched yet
    assert (cache.root / "tab" / "reference.csv").read_bytes() == b"a,b\n1,2\n"
    assert not (cache.root / "tab" / "3").exists() and outcomes == []
    path = listing.materialize(source.versions[1], None)
    assert path == cache.root / "tab" / "3" / "model.onnx" and path.read_bytes() == (tmp_path / "m3.onnx").read_bytes()
    assert listing.materialize(source.versions[1], None) == path
    assert outcomes == ["downloaded", "cached"]


def test_a_store_away_at_start_serves_from_the_last_listing_and_fetches_retry_with_backoff(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    first = ObjectStoreListing(URL, ModelCache(cache_dir, None), store=filled(tmp_path))
    [source] = scan_repository(first)
    first.materialize(source.versions[0], None)  # version 2 is cached, version 3 is not

    slept: list[float] = []
    outcomes: list[str] = []
    away = ObjectStoreListing(
        URL, ModelCache(cache_dir, None), store=dead_store(), on_fetch=outcomes.append, sleep=slept.append
    )
    [again] = scan_repository(away)  # the cache's last listing
    assert [v.version for v in again.versions] == ["2", "3"]
    assert away.materialize(again.versions[0], None).exists()
    with pytest.raises(
        RepositoryUnavailable, match=re.escape("cannot fetch s3://bucket/repo/tab/3/model.onnx after 3 attempts")
    ):
        away.materialize(again.versions[1], None)
    assert slept == [0.5, 1.0] and outcomes == ["cached", "failed"]
    # once it has a listing, a refresh that fails says so instead of serving a stale one
    with pytest.raises(RepositoryUnavailable, match=re.escape("cannot list s3://bucket/repo")):
        away.refresh()


def test_a_digest_that_differs_is_refused_at_once(tmp_path: Path) -> None:
    outcomes: list[str] = []
    slept: list[float] = []
    listing = ObjectStoreListing(
        URL, ModelCache(tmp_path / "c", None), store=filled(tmp_path), on_fetch=outcomes.append, sleep=slept.append
    )
    [source] = scan_repository(listing)
    with pytest.raises(FetchRefused, match=re.escape("s3://bucket/repo/tab/2/model.onnx: SHA-256")):
        listing.materialize(source.versions[0], "ab" * 32)
    assert outcomes == ["refused"] and slept == []  # no retry: the same object would give the same bytes
    assert not (tmp_path / "c" / "tab" / "2" / "model.onnx").exists()


def test_a_local_folder_is_scanned_in_place_by_the_same_code(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    for version in (1, 2, 3):
        build_tabular(repo / "tab" / str(version) / "model.onnx", seed=version)
    (repo / "tab" / "config.yaml").write_text("version_policy:\n  latest: 2\n")
    outside = build_tabular(tmp_path / "elsewhere.onnx")
    (repo / "leak" / "1").mkdir(parents=True)
    (repo / "leak" / "1" / "model.onnx").symlink_to(outside)
    sources = {s.name: s for s in scan_repository(repo)}
    tab = sources["tab"]
    assert [(v.version, v.artifact, v.remote) for v in tab.versions] == [
        ("2", (repo / "tab" / "2" / "model.onnx").resolve(), None),
        ("3", (repo / "tab" / "3" / "model.onnx").resolve(), None),
    ]  # the files where they are: nothing copied, nothing to fetch
    assert sources["leak"].versions == [] and "resolves outside the model repository" in str(sources["leak"].error)
    # a model folder as Ray's deployments name it, every version
    assert [v.version for v in scan_model(repo, repo / "tab", every_version=True).versions] == ["1", "2", "3"]
    assert "no such model folder" in str(scan_model(repo, "nope").error)
