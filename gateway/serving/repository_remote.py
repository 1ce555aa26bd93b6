"""A model repository on object storage (S3, GCS, Azure), read through the local model cache.

The listing is one LIST of the repository's prefix (one of a model's, for a single model's scan). Each
model's own files (config.yaml, a drift reference) are small: they are mirrored into the cache as the
listing is read, so the scan reads them as it reads a local repository's. A version's file is fetched
only when the version loads (`materialize`): from the cache when the same object (ETag, size, modification
time) is there already, else downloaded, verified and renamed into place (`model_cache`). A fetch that
fails is retried with backoff; each outcome is counted (`sluice_repository_fetches_total{outcome}`).

The last good listing is kept in the cache (`listing.json`): a gateway that starts while the store is
away serves the versions its cache holds, and says so in its log.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.serving.model_cache import FetchRefused, ModelCache, ObjectInfo, backoff_delays
from gateway.serving.repository import LocalListing, RepositoryListing, VersionSource
from gateway.storage.object_store import (
    RepositoryUnavailable,
    RepositoryUrl,
    describe,
    is_url,
    open_store,
    parse_repository_url,
)

if TYPE_CHECKING:
    from obstore.store import ObjectStore

log = logging.getLogger(__name__)

LISTING_FILE = "listing.json"
FETCH_ATTEMPTS = 3
FETCH_BACKOFF_S = 0.5
FETCH_BACKOFF_CAP_S = 4.0

FetchObserver = Callable[[str], None]
"""Told each fetch's outcome: downloaded, cached, refused (not the expected bytes) or failed (the store)."""


class ObjectStoreListing:
    def __init__(
        self,
        url: RepositoryUrl,
        cache: ModelCache,
        *,
        store: ObjectStore | None = None,
        on_fetch: FetchObserver | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.cache = cache
        self._store = store if store is not None else open_store(url)
        self._on_fetch = on_fetch
        self._sleep = sleep
        self._objects: dict[str, ObjectInfo] | None = None
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        return self.cache.root

    def describe(self) -> str:
        return str(self.url)

    # -- the listing ------------------------------------------------------------------------

    def refresh(self, model: str | None = None) -> None:
        prefix = f"{model}/" if model else None
        try:
            listed = {info.key: info for info in self._list(prefix)}
        except Exception as exc:
            message = f"cannot list {self.url}{'/' + model if model else ''}: {describe(exc)}"
            with self._lock:
                if self._objects is None:
                    self._objects = self._load_saved()
                    if self._objects is not None:
                        log.error("%s; serving from the cache's last listing", message)
                        return
            raise RepositoryUnavailable(message) from None
        with self._lock:
            objects = dict(self._objects or {})
            if model is None:
                objects = listed
            else:
                objects = {k: v for k, v in objects.items() if not k.startswith(f"{model}/")} | listed
            self._objects = objects
        self._mirror_model_files(listed, model)
        if model is None:
            self._save(listed)

    def model_names(self) -> list[str]:
        return sorted({key.split("/", 1)[0] for key in self._snapshot() if "/" in key and not key.startswith(".")})

    def has_model(self, model: str) -> bool:
        return any(key.startswith(f"{model}/") for key in self._snapshot())

    def version_numbers(self, model: str) -> list[int]:
        numbers = set()
        for key in self._snapshot():
            parts = key.split("/")
            if len(parts) >= 3 and parts[0] == model and parts[1].isdigit():
                numbers.add(int(parts[1]))
        return sorted(numbers)

    def artifact(self, model: str, version: int, filename: str) -> tuple[Path, ObjectInfo | None]:
        key = f"{model}/{version}/{filename}"
        info = self._snapshot().get(key)
        # A version folder without its file: the load fails naming what is missing, as a local one does.
        return self.cache.path(key), info or ObjectInfo(key, -1, None, 0.0)

    # -- fetching --------------------------------------------------------------------------

    def materialize(self, version: VersionSource, expected_sha256: str | None) -> Path:
        """The version's file in the cache: reused when the same object is there, else fetched (retried with
        backoff when the store fails; refused at once when the bytes are not the expected ones)."""
        info = version.remote
        if info is None:
            assert version.artifact is not None
            return version.artifact
        if info.size < 0:
            raise FileNotFoundError(f"{self.url}/{info.key}: no such object in the repository")
        cached = self.cache.cached(info, expected_sha256)
        if cached is not None:
            self._observe("cached")
            return cached
        delays = backoff_delays(FETCH_ATTEMPTS, FETCH_BACKOFF_S, FETCH_BACKOFF_CAP_S)
        for attempt in range(FETCH_ATTEMPTS):
            try:
                path = self.cache.store(info, self._chunks(info.key), expected_sha256)
            except FetchRefused as exc:
                self._observe("refused")
                raise FetchRefused(f"{self.url}/{exc}") from None
            except Exception as exc:
                reason = describe(exc)
                if attempt == len(delays):
                    self._observe("failed")
                    raise RepositoryUnavailable(
                        f"cannot fetch {self.url}/{info.key} after {FETCH_ATTEMPTS} attempts: {reason}"
                    ) from None
                log.warning(
                    "fetching %s/%s failed (%s); retrying in %.1f s", self.url, info.key, reason, delays[attempt]
                )
                self._sleep(delays[attempt])
                continue
            self._observe("downloaded")
            log.info("fetched %s/%s (%d bytes) into the model cache", self.url, info.key, info.size)
            return path
        raise AssertionError("unreachable")

    def _observe(self, outcome: str) -> None:
        if self._on_fetch is not None:
            self._on_fetch(outcome)

    # -- the store -------------------------------------------------------------------------

    def _list(self, prefix: str | None) -> Iterator[ObjectInfo]:
        import obstore

        for chunk in obstore.list(self._store, prefix=prefix):
            for meta in chunk:
                yield ObjectInfo(meta["path"], meta["size"], meta["e_tag"], meta["last_modified"].timestamp())

    def _chunks(self, key: str) -> Iterator[bytes]:
        import obstore

        for chunk in obstore.get(self._store, key):
            yield bytes(chunk)

    def _snapshot(self) -> dict[str, ObjectInfo]:
        with self._lock:
            return self._objects or {}

    def _mirror_model_files(self, listed: dict[str, ObjectInfo], model: str | None) -> None:
        """Each model's own files (<model>/<file>) into the cache, as the listing now has them: fetched when
        new or changed, removed when gone (a stale config.yaml must not outlive its object)."""
        for key, info in listed.items():
            if key.count("/") == 1 and self.cache.cached(info) is None:
                try:
                    self.cache.store(info, self._chunks(key))
                except Exception as exc:
                    raise RepositoryUnavailable(f"cannot fetch {self.url}/{key}: {describe(exc)}") from None
        models = [model] if model else [p.name for p in self.root.iterdir() if p.is_dir()]
        for name in models:
            folder = self.root / name
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                own = path.is_file() and not path.name.startswith(".") and not path.name.endswith(".meta.json")
                if own and f"{name}/{path.name}" not in listed:
                    self.cache.remove(f"{name}/{path.name}")

    def _save(self, listed: dict[str, ObjectInfo]) -> None:
        doc = {"url": str(self.url), "objects": [asdict(i) for i in listed.values()]}
        fd, tmp = tempfile.mkstemp(prefix=f".{LISTING_FILE}.", suffix=".part", dir=self.root)
        with os.fdopen(fd, "w") as out:
            json.dump(doc, out)
        os.replace(tmp, self.root / LISTING_FILE)

    def _load_saved(self) -> dict[str, ObjectInfo] | None:
        try:
            doc: Any = json.loads((self.root / LISTING_FILE).read_text())
        except (OSError, ValueError):
            return None
        if doc.get("url") != str(self.url):
            return None
        return {o["key"]: ObjectInfo(**o) for o in doc.get("objects", [])}


def open_repository(
    location: Path | str,
    cache_dir: Path,
    *,
    max_bytes: int | None = None,
    on_fetch: FetchObserver | None = None,
) -> RepositoryListing:
    """The listing of `--model-repo`: a local folder as it is, or an object store through a cache in
    `cache_dir/<scheme>/<bucket>/<prefix>`. Raises RepositoryUrlError (naming the option) for a bad URL."""
    if not is_url(location):
        return LocalListing(Path(location))
    url = parse_repository_url(str(location))
    root = cache_dir / url.scheme / url.bucket / (url.prefix or "_root")
    return ObjectStoreListing(url, ModelCache(root, max_bytes), on_fetch=on_fetch)
