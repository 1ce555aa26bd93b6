"""The local cache of a remote model repository: whole, verified files, reused across restarts.

A file is written to a temporary name in its own folder, checked (its size against the listing's, its
SHA-256 against config.yaml's when given) and only then renamed into place, so a reader never sees a
half file, whatever dies when. A sidecar `<file>.meta.json`, written after the rename, records the
object it came from (ETag, size, modification time) and the file's digest: a later fetch of the same
object, in this process or after a restart, reuses the file without downloading it again. The worker
processes of one gateway share the cache; two that fetch the same file at once each write their own
temporary file and the last rename wins, with the same bytes.

Eviction frees whole versions, least recently used first, only while the cache is over its bound and
never a version this process serves (`evict(keep=...)`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

META_SUFFIX = ".meta.json"


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a remote repository, as its listing describes it."""

    key: str
    """Relative to the repository's root: <model>/<version>/model.onnx."""
    size: int
    etag: str | None
    modified: float
    """Seconds since the epoch."""

    def same_object(self, meta: dict[str, object]) -> bool:
        return meta.get("etag") == self.etag and meta.get("size") == self.size and meta.get("modified") == self.modified


class FetchRefused(Exception):
    """The bytes fetched are not the expected ones (size or digest): retrying the same object will not help."""


def backoff_delays(attempts: int, base_s: float, cap_s: float) -> list[float]:
    """Seconds to wait before each retry of a fetch: doubling from `base_s`, at most `cap_s` (no jitter needed:
    each gateway retries its own fetches, a handful at a time)."""
    return [min(cap_s, base_s * 2**i) for i in range(max(0, attempts - 1))]


class ModelCache:
    def __init__(self, root: Path, max_bytes: int | None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key

    def cached(self, info: ObjectInfo, expected_sha256: str | None = None) -> Path | None:
        """The cached file of `info` when it is there, whole and of that object (and digest), else None."""
        dest = self.path(info.key)
        meta = _read_meta(dest)
        if meta is None or not info.same_object(meta):
            return None
        try:
            if dest.stat().st_size != info.size:
                return None
        except OSError:
            return None
        if expected_sha256 is not None and meta.get("sha256") != expected_sha256.lower():
            return None
        with contextlib.suppress(OSError):
            os.utime(_meta_path(dest))  # recently used: evicted last
        return dest

    def store(self, info: ObjectInfo, chunks: Iterable[bytes], expected_sha256: str | None = None) -> Path:
        """Write `chunks` as the file of `info`: to a temporary name, verified, then renamed into place.

        Raises FetchRefused when the bytes are not the object's (short, long, or another digest); whatever
        the reason, nothing but the temporary file was written, and it is gone."""
        dest = self.path(info.key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size != info.size:
                raise FetchRefused(f"{info.key}: got {size} bytes, the listing says {info.size} (a truncated transfer)")
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256.lower():
                raise FetchRefused(
                    f"{info.key}: SHA-256 {sha256} differs from the {expected_sha256.lower()} config.yaml expects"
                )
            _meta_path(dest).unlink(missing_ok=True)  # the old sidecar must not vouch for the new file
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _write_meta(dest, {**asdict(info), "sha256": sha256})
        return dest

    def remove(self, key: str) -> None:
        dest = self.path(key)
        _meta_path(dest).unlink(missing_ok=True)
        dest.unlink(missing_ok=True)

    def entries(self) -> Iterator[tuple[Path, int, float]]:
        """(file, size, last used) of every cached version file (<model>/<version>/<file>, with a sidecar);
        a model's own files (config.yaml, a drift reference) are small and always kept."""
        for meta in self.root.glob(f"*/*/*{META_SUFFIX}"):
            dest = meta.with_name(meta.name.removesuffix(META_SUFFIX))
            with contextlib.suppress(OSError):
                yield dest, dest.stat().st_size, meta.stat().st_mtime

    def usage(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def evict(self, keep: set[Path], clock: Callable[[], float] = time.time) -> list[Path]:
        """Delete cached files not in `keep`, least recently used first, until the cache is within its bound."""
        if self.max_bytes is None:
            return []
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        evicted: list[Path] = []
        for dest, size, _ in entries:
            if total <= self.max_bytes:
                break
            if dest in keep:
                continue
            _meta_path(dest).unlink(missing_ok=True)
            dest.unlink(missing_ok=True)
            total -= size
            evicted.append(dest)
            log.info("model cache: evicted %s (%d bytes) to stay within %d bytes", dest, size, self.max_bytes)
        return evicted


def _meta_path(dest: Path) -> Path:
    return dest.with_name(dest.name + META_SUFFIX)


def _read_meta(dest: Path) -> dict[str, object] | None:
    try:
        meta = json.loads(_meta_path(dest).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(dest: Path, meta: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".meta.part", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(meta, out)
        os.replace(tmp, _meta_path(dest))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
