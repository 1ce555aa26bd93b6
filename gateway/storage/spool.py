"""The prediction log's spool: records the database cannot take now, kept on local disk until it can.

The log holds what it can in memory (its capacity); beyond that, while the database is away or slower
than the traffic, it spills its oldest records here, and writes them back first, in order, when the
database takes writes again. The spool outlives the process: a gateway stopped during an outage spills
what it holds, and the next start writes it. It is bounded (`max_bytes`, on disk): what does not fit is
refused, and the log drops and counts it.

Format: a directory of segment files, `<sequence>.seg`, each at most `segment_bytes` (a new one is started
beyond it), read and deleted oldest first. A segment is `MAGIC` and then frames, appended and never
rewritten: a frame is the payload's length and CRC-32 (little-endian u32 each), then the payload, one
batch of the log's items: u32 count, then per item a kind byte and its fields. A row (`ROW`, a request logged
alone) is two f64 (time, latency) and seven u32 lengths (model, id, version, route, outcome, inputs, outputs),
then those seven strings and blobs. A runtime batch (`BATCH`, `monitors.log_batches.BatchFrame`: its tensors
once, in their stored form, and a slot per request) is its time (f64), `whole` (u8) and six u32 lengths (model,
version, tag, inputs, outputs, slots), then those; its slots as JSON (id, route, latency, start row, stop row,
the outputs asked for), an empty tag for none. No pickle: a file in the state directory is not trusted to run
code. A frame that is cut short (a crash mid-write, a full disk) or whose CRC does not match ends its segment:
the rest of that segment is counted as corrupt and skipped, never decoded as records.

Why batches and not only rows: the spool used to keep every request as its row, and the database then took
each one back as a stored batch of one with a key row of its own: 9.6 µs of the writer's CPU a record
against 2.1 for the same records as runtime batches (`Store.write_log_items`, batches of 500 in runtime batches
of 16), and a row a request in the store for good. After an outage the spool competes with live traffic for
the writer, so its records should cost no more than live ones; and spilling a batch no longer expands it into
rows on the event loop. Segments written before (`MAGIC_V1`: rows only, no kind byte) are still read; a
gateway older than this one reads a segment of this one as corrupt, so let the spool drain before going back.

Crash safety is the page cache's: a frame is flushed to the OS as it is written (a killed process keeps
it) and fsynced when the spool closes (a SIGTERM keeps it through a power cut too). A segment is deleted
once every frame in it was taken by the database; the read position within a segment is not kept, so after
a restart the frames already written from a partly read segment (at most `segment_bytes`) are written
again, and the store ignores the ids it already has.

One writer per directory: `Spool.claim` takes the first numbered directory under its root that no other
process holds (an exclusive `flock`, let go when the process ends however it ends), so each `--workers`
worker and each Ray replica on a machine has its own, and adopts the segments of directories nobody holds
any more (a run that had more workers than this one). Pure file work, no database: testable on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from monitors.log_batches import BatchFrame, Slot, spoolable
from monitors.records import PredictionRow

log = logging.getLogger(__name__)

MAGIC = b"SLUICESPOOL\x00v002"
MAGIC_V1 = b"SLUICESPOOL\x00v001"
"""Segments of rows only (before runtime batches were spooled as such): still read."""
SUFFIX = ".seg"
SEGMENT_BYTES = 16 * 1024 * 1024
ROW = 0
BATCH = 1
_FRAME = struct.Struct("<II")
_COUNT = struct.Struct("<I")
_KIND = struct.Struct("<B")
_ROW = struct.Struct("<ddIIIIIII")
_BATCH = struct.Struct("<dBIIIIII")
_LOCK = "lock"
SpoolItem = PredictionRow | BatchFrame
"""What a frame holds: rows, and runtime batches whose tensors have a fixed width (their stored form, bytes)."""
_Frame = tuple[list[SpoolItem], int, int]
"""A frame read back: its items, its size in bytes, the offset after it."""


def records_in(items: Sequence[SpoolItem]) -> int:
    """The requests the items hold: a batch's slots, one a row."""
    return sum(len(item.slots) if isinstance(item, BatchFrame) else 1 for item in items)


def encode_batch(items: Sequence[SpoolItem]) -> bytes:
    """One frame's payload: the items in their spooled form (see the module's docstring). A batch must be
    `monitors.log_batches.spoolable` (its tensors in their stored form, its latencies finite): ValueError if not."""
    parts = [_COUNT.pack(len(items))]
    for item in items:
        if isinstance(item, BatchFrame):
            inputs, outputs = item.inputs, item.outputs
            if not isinstance(inputs, bytes) or not isinstance(outputs, bytes) or not spoolable(item):
                raise ValueError("a batch spools with its tensors in their stored form and finite latencies")
            names = (item.model.encode(), item.version.encode(), (item.tag or "").encode())
            slots = orjson.dumps(item.slots)
            lengths = (*(len(t) for t in names), len(inputs), len(outputs), len(slots))
            parts.append(_KIND.pack(BATCH) + _BATCH.pack(item.at, item.whole, *lengths))
            parts.extend((*names, inputs, outputs, slots))
            continue
        model, pid, version, route, at, latency_s, outcome, inputs, outputs = item
        texts = (model.encode(), pid.encode(), version.encode(), route.encode(), outcome.encode())
        parts.append(_KIND.pack(ROW) + _ROW.pack(at, latency_s, *(len(t) for t in texts), len(inputs), len(outputs)))
        parts.extend(texts)
        parts.append(inputs)
        parts.append(outputs)
    return b"".join(parts)


def decode_batch(payload: bytes, *, kinds: bool = True) -> list[SpoolItem]:
    """The items of one frame's payload (`kinds=False`: a frame of a `MAGIC_V1` segment, rows without a kind
    byte); ValueError when it does not hold what `encode_batch` writes."""
    try:
        view = memoryview(payload)
        (count,) = _COUNT.unpack_from(view, 0)
        offset = _COUNT.size
        items: list[SpoolItem] = []
        for _ in range(count):
            kind = ROW
            if kinds:
                (kind,) = _KIND.unpack_from(view, offset)
                offset += _KIND.size
            if kind == BATCH:
                at, whole, *lengths = _BATCH.unpack_from(view, offset)
                offset += _BATCH.size
                fields, offset = _fields(view, offset, lengths)
                model, version, tag = (f.decode() for f in fields[:3])
                slots = [_slot(*slot) for slot in orjson.loads(fields[5])]
                items.append(BatchFrame(model, version, at, fields[3], fields[4], bool(whole), slots, tag or None))
            elif kind == ROW:
                at, latency_s, *lengths = _ROW.unpack_from(view, offset)
                offset += _ROW.size
                fields, offset = _fields(view, offset, lengths)
                model, pid, version, route, outcome = (f.decode() for f in fields[:5])
                items.append((model, pid, version, route, at, latency_s, outcome, fields[5], fields[6]))
            else:
                raise ValueError(f"an item of unknown kind {kind}")
    except (struct.error, UnicodeDecodeError, orjson.JSONDecodeError, TypeError, IndexError) as exc:
        raise ValueError(f"not a spooled batch: {exc}") from exc
    if offset != len(view):
        raise ValueError("bytes left over after the batch")
    return items


def _slot(id_: str, route: str, latency_s: float, start: int, stop: int, wanted: list[str] | None) -> Slot:
    """A slot as the log made it: JSON gives its outputs asked for back as a list."""
    return (id_, route, latency_s, start, stop, None if wanted is None else tuple(wanted))


def _fields(view: memoryview, offset: int, lengths: Sequence[int]) -> tuple[list[bytes], int]:
    fields: list[bytes] = []
    for length in lengths:
        end = offset + length
        if end > len(view):
            raise ValueError("a field runs past the frame")
        fields.append(bytes(view[offset:end]))
        offset = end
    return fields, offset


def frame(items: Sequence[SpoolItem]) -> bytes:
    """A whole frame: length, CRC-32, payload."""
    payload = encode_batch(items)
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class SpoolCounters:
    """Since this process opened the spool; plain ints read at scrape time."""

    spooled_records: int = 0
    spooled_bytes: int = 0
    replayed_records: int = 0
    """Read back and taken by the database (or failed there for good: the log counts those as failed)."""
    replayed_bytes: int = 0
    corrupt_bytes: int = 0
    """Skipped when read: a torn tail, a bad checksum, a file that is not a segment."""


class Spool:
    """Append-only segments in one directory this process owns; see the module's docstring.

    Not thread-safe: the log calls it from its event loop (a frame is a batch of ~500 records, ~150 KB:
    a write to the page cache, well under a millisecond).
    """

    def __init__(self, directory: Path, *, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        """Open the segments already in `directory` (made if missing) for reading; new frames go to a new
        segment after them. The caller owns the directory (see `claim`)."""
        if max_bytes < 1 or segment_bytes < len(MAGIC) + _FRAME.size:
            raise ValueError("max_bytes must be at least 1 and segment_bytes hold a frame")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.counters = SpoolCounters()
        self._sizes: dict[int, int] = {}
        for path in self.directory.glob(f"*{SUFFIX}"):
            with contextlib.suppress(ValueError, OSError):
                self._sizes[int(path.stem)] = path.stat().st_size
        self._segments: deque[int] = deque(sorted(self._sizes))
        self._next = (self._segments[-1] + 1) if self._segments else 1
        self._out: int | None = None
        """The descriptor of the segment being appended to (the newest), if one is open."""
        self._read_offset = len(MAGIC)
        self._peeked: _Frame | None = None
        """The frame `peek` returned and not yet committed: its rows, its size, the offset after it."""
        self._lock_fd: int | None = None

    @classmethod
    def claim(cls, root: Path, *, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> Spool:
        """The spool in the first directory under `root` (`root/0`, `root/1`, ...) that no other process
        holds, with the segments of the directories nobody holds moved into it (oldest first)."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        n = 0
        while True:
            directory = root / str(n)
            lock_fd = _try_lock(directory)
            if lock_fd is not None:
                break
            n += 1
        try:
            _adopt(root, directory)
            spool = cls(directory, max_bytes=max_bytes, segment_bytes=segment_bytes)
        except BaseException:
            os.close(lock_fd)
            raise
        spool._lock_fd = lock_fd
        return spool

    # -- state ----------------------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        """Bytes on disk now, read or not (what `max_bytes` bounds)."""
        return sum(self._sizes.values())

    @property
    def pending(self) -> bool:
        """Whether a frame is waiting to be read back."""
        segments = self._segments
        if not segments:
            return False
        return len(segments) > 1 or self._read_offset < self._sizes[segments[0]]

    # -- writing --------------------------------------------------------------------------------

    def append(self, items: Sequence[SpoolItem]) -> bool:
        """Keep `items` as one frame after everything spooled; False (nothing kept) when it would take the
        spool past `max_bytes`. OSError (a full disk) keeps nothing either: a cut-short frame is cut off."""
        if not items:
            return True
        data = frame(items)
        starting = self._out is None or self._sizes[self._segments[-1]] + len(data) > self.segment_bytes
        if self.bytes + len(data) + (len(MAGIC) if starting else 0) > self.max_bytes:
            return False
        if starting:
            self._start_segment()
        assert self._out is not None
        seq = self._segments[-1]
        size = self._sizes[seq]
        try:
            _write_all(self._out, data)
        except OSError:
            try:
                os.ftruncate(self._out, size)
            except OSError:  # the torn frame stays: the reader skips it; nothing goes after it
                self._sizes[seq] = os.fstat(self._out).st_size
                self._close_out(sync=False)
            raise
        self._sizes[seq] = size + len(data)
        self.counters.spooled_records += records_in(items)
        self.counters.spooled_bytes += len(data)
        return True

    def _start_segment(self) -> None:
        self._close_out(sync=False)
        seq = self._next
        self._next += 1
        fd = os.open(self.directory / f"{seq:016d}{SUFFIX}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            _write_all(fd, MAGIC)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                (self.directory / f"{seq:016d}{SUFFIX}").unlink()
            raise
        self._out = fd
        self._segments.append(seq)
        self._sizes[seq] = len(MAGIC)

    # -- reading back ---------------------------------------------------------------------------

    def peek(self) -> list[SpoolItem] | None:
        """The oldest frame's items, None when nothing is pending. The same frame again until `commit`."""
        if self._peeked is not None:
            return self._peeked[0]
        while self._segments:
            seq = self._segments[0]
            size = self._sizes[seq]
            if self._read_offset >= size:
                if len(self._segments) == 1 and self._out is not None:
                    return None  # the segment being appended to, read to its end
                self._delete_first()
                continue
            found = self._read_frame(seq, self._read_offset, size)
            if found is None:
                self._delete_first()  # what was left of it is corrupt (counted, logged)
                continue
            self._peeked = found
            return found[0]
        return None

    def commit(self) -> None:
        """The frame `peek` returned was taken: never read it again (its segment goes once read through)."""
        if self._peeked is None:
            return
        items, length, end = self._peeked
        self._peeked = None
        self._read_offset = end
        self.counters.replayed_records += records_in(items)
        self.counters.replayed_bytes += length
        if end >= self._sizes[self._segments[0]]:
            if len(self._segments) == 1:
                self._close_out(sync=False)  # everything was read: the next frame starts a new segment
            self._delete_first()

    def _read_frame(self, seq: int, offset: int, size: int) -> _Frame | None:
        path = self.directory / f"{seq:016d}{SUFFIX}"
        try:
            with path.open("rb") as f:
                magic = f.read(len(MAGIC))
                if magic not in (MAGIC, MAGIC_V1):
                    return self._corrupt(seq, offset, size, "not a spool segment")
                f.seek(offset)
                head = f.read(_FRAME.size)
                if len(head) < _FRAME.size:
                    return self._corrupt(seq, offset, size, "a frame cut short")
                length, crc = _FRAME.unpack(head)
                payload = f.read(length)
        except OSError as exc:
            return self._corrupt(seq, offset, size, f"unreadable: {exc}")
        if len(payload) < length:
            return self._corrupt(seq, offset, size, "a frame cut short")
        if zlib.crc32(payload) != crc:
            return self._corrupt(seq, offset, size, "a frame whose checksum does not match")
        try:
            items = decode_batch(payload, kinds=magic == MAGIC)
        except ValueError as exc:
            return self._corrupt(seq, offset, size, str(exc))
        total = _FRAME.size + length
        return items, total, offset + total

    def _corrupt(self, seq: int, offset: int, size: int, why: str) -> _Frame | None:
        """Count and log the rest of a segment as corrupt; None: no frame (for `_read_frame` to return)."""
        skipped = max(0, size - offset)
        self.counters.corrupt_bytes += skipped
        log.warning(
            "prediction spool: %s in %s at byte %d: skipping the %d bytes after it",
            why,
            self.directory / f"{seq:016d}{SUFFIX}",
            offset,
            skipped,
        )
        return None

    def _delete_first(self) -> None:
        seq = self._segments.popleft()
        del self._sizes[seq]
        self._read_offset = len(MAGIC)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{seq:016d}{SUFFIX}").unlink()

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Fsync the segment being written, and let the directory go (another process may claim it)."""
        self._close_out(sync=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _close_out(self, *, sync: bool) -> None:
        fd, self._out = self._out, None
        if fd is None:
            return
        try:
            if sync:
                with contextlib.suppress(OSError):
                    os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _try_lock(directory: Path) -> int | None:
    """A descriptor holding `directory`'s lock, or None when another process holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _adopt(root: Path, mine: Path) -> None:
    """Move the segments of directories under `root` that no process holds into `mine`, after its own."""
    own = [int(p.stem) for p in mine.glob(f"*{SUFFIX}") if p.stem.isdigit()]
    next_seq = max(own, default=0) + 1
    for other in sorted(root.iterdir(), key=lambda p: p.name):
        if other == mine or not other.is_dir() or not any(other.glob(f"*{SUFFIX}")):
            continue
        fd = _try_lock(other)
        if fd is None:
            continue  # a live process writes there
        try:
            orphans = sorted(p for p in other.glob(f"*{SUFFIX}") if p.stem.isdigit())
            for path in orphans:
                path.rename(mine / f"{next_seq:016d}{SUFFIX}")
                next_seq += 1
            if orphans:
                log.info("prediction spool: took over %d segments from %s", len(orphans), other)
        finally:
            os.close(fd)
