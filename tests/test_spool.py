"""The prediction log's spool on its own: real files in a temporary directory, no database.

Frames come back in the order they were written, across segments and across a reopen; a torn tail or a
flipped byte is skipped and counted, never decoded into records; the size cap refuses a frame whole; read
segments are deleted; one process per directory, and directories nobody holds are adopted.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from gateway.storage.spool import MAGIC, MAGIC_V1, SUFFIX, Spool, decode_batch, encode_batch, frame, records_in
from monitors.log_batches import BatchEntry, BatchFrame, BatchTensors, Slot, spoolable
from monitors.prediction_log import expand_items, spooled_form, tensors_from_bytes, tensors_to_bytes
from monitors.records import PredictionRow


def _row(i: int, *, model: str = "m") -> PredictionRow:
    x = tensors_to_bytes({"x": np.full((1, 4), i, dtype=np.float32)})
    y = tensors_to_bytes({"y": np.array([[i]], dtype=np.int64)})
    return (model, f"p{i:04d}", "1", "stable", 1_700_000_000.0 + i / 1000, 0.001 * i, "ok", x, y)


def _rows(start: int, n: int) -> list[PredictionRow]:
    return [_row(i) for i in range(start, start + n)]


def _drain(spool: Spool) -> list[str]:
    """Read back and commit every pending frame; the ids in the order they came."""
    ids: list[str] = []
    while (rows := spool.peek()) is not None:
        ids += [r[1] for r in rows]
        spool.commit()
    return ids


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SUFFIX}"))


def test_a_batch_round_trips_every_field_and_tensor_bit() -> None:
    rows = [*_rows(0, 3), ("modèle", "id-ü", "2", "shadow", 1.5, float("inf"), "timeout", b"", b"")]
    back = decode_batch(encode_batch(rows))
    assert back == rows
    assert tensors_from_bytes(back[2][7])["x"].tolist() == [[2.0, 2.0, 2.0, 2.0]]
    with pytest.raises(ValueError):
        decode_batch(encode_batch(rows)[:-1])
    with pytest.raises(ValueError):
        decode_batch(encode_batch(rows) + b"\x00")


def _frame(i: int, *, tag: str | None = None, whole: bool = False) -> BatchFrame:
    """A runtime batch of three requests as the log hands it over: its tensors in their stored form."""
    x = tensors_to_bytes({"x": np.arange(12, dtype=np.float32).reshape(3, 4) + i})
    y = tensors_to_bytes({"y": np.array([[1], [2], [3]], dtype=np.int64), "z": np.zeros((3, 2), np.float16)})
    slots: list[Slot] = [
        (f"b{i}-0", "stable", 0.001, 0, 1, None),
        (f"b{i}-1", "canary", 1e-7, 1, 2, ("y",)),
        ("ü-ß", "shadow", 0.25, 2, 3, ("z", "y")),
    ]
    return BatchFrame("m", "2", 1_700_000_000.0 + i, x, y, whole, slots, tag)


def test_runtime_batches_round_trip_as_one_item_beside_rows() -> None:
    items: list[PredictionRow | BatchFrame] = [
        _frame(0, tag="0123456789abcdef0123456789ab"),
        _row(1),
        _frame(2, whole=True),
    ]
    back = decode_batch(encode_batch(items))
    assert back == items  # every field, the slots' types included (JSON gives lists back)
    assert isinstance(back[0], BatchFrame) and back[0].slots[1][5] == ("y",) and back[2].tag is None
    assert expand_items(back) == expand_items(items)  # the same rows for the store, byte for byte
    assert records_in(back) == 7
    with pytest.raises(ValueError):
        decode_batch(encode_batch(items)[:-1])


def test_a_batch_the_spool_cannot_hold_as_one_item_is_refused() -> None:
    arrays = _frame(0)._replace(inputs={"x": np.zeros((3, 4), np.float32)})  # crossed as arrays: no fixed width
    endless = _frame(0)._replace(slots=[("a", "stable", float("inf"), 0, 3, None)])  # JSON has no infinity
    for frame_ in (arrays, endless):
        assert not spoolable(frame_)
        with pytest.raises(ValueError):
            encode_batch([frame_])
    assert spoolable(_frame(0))


def test_a_segment_of_rows_written_before_batches_were_spooled_is_still_read(tmp_path: Path) -> None:
    """A segment as the spool wrote it before (`MAGIC_V1`: rows, no kind byte) is written back, not skipped."""
    rows = _rows(0, 4)
    payload = [struct.pack("<I", len(rows))]
    for model, pid, version, route, at, latency_s, outcome, inputs, outputs in rows:
        texts = [t.encode() for t in (model, pid, version, route, outcome)]
        payload.append(struct.pack("<ddIIIIIII", at, latency_s, *map(len, texts), len(inputs), len(outputs)))
        payload += [*texts, inputs, outputs]
    body = b"".join(payload)
    directory = tmp_path / "s"
    directory.mkdir()
    (directory / f"{1:016d}{SUFFIX}").write_bytes(MAGIC_V1 + struct.pack("<II", len(body), zlib.crc32(body)) + body)
    spool = Spool(directory, max_bytes=1 << 20)
    spool.append([_frame(9)])  # new frames go to a new segment of the new kind, after the old one
    assert spool.peek() == rows
    spool.commit()
    assert spool.peek() == [_frame(9)]
    spool.commit()
    assert spool.counters.corrupt_bytes == 0 and not spool.pending
    spool.close()


def test_spilled_entries_spool_as_batches_where_they_can_and_as_rows_where_not() -> None:
    fixed = BatchTensors({"x": np.ones((2, 3), np.float32)}, {"y": np.zeros((2, 1), np.float32)}, 2, False)
    text = BatchTensors({"s": np.array([[b"a"], [b"bc"]], dtype=object)}, {"y": np.zeros((2, 1), np.float32)}, 2, False)
    entries = []
    for tensors in (fixed, text):
        entry = BatchEntry(None, "m", "1", tensors, tensors.nbytes, 1_700_000_000.0)
        entry.slots += [("r0", "stable", 0.1, 0, 1, None), ("r1", "stable", 0.2, 1, 2, None)]
        entries.append(entry)
    items = spooled_form([*entries, _row(7)])
    assert [type(i) for i in items[:1]] == [BatchFrame]  # its tensors once
    assert not any(isinstance(i, BatchFrame) for i in items[1:])  # text tensors: a row a request, then the row
    assert expand_items(items) == expand_items([*entries, _row(7)])
    assert decode_batch(encode_batch(items)) == items


def test_frames_come_back_in_order_across_segments_and_read_segments_are_deleted(tmp_path: Path) -> None:
    one = len(frame(_rows(0, 10)))
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=len(MAGIC) + 2 * one)
    for start in range(0, 100, 10):
        assert spool.append(_rows(start, 10))
    assert len(_segments(tmp_path / "s")) == 5  # two frames a segment
    assert spool.pending and spool.counters.spooled_records == 100
    assert spool.bytes == sum(p.stat().st_size for p in _segments(tmp_path / "s"))
    first = spool.peek()
    assert first is not None and spool.peek() == first  # the same frame until it is committed
    spool.commit()
    assert [r[1] for r in first] == [f"p{i:04d}" for i in range(10)]
    assert _drain(spool) == [f"p{i:04d}" for i in range(10, 100)]
    assert not spool.pending and spool.peek() is None
    assert _segments(tmp_path / "s") == [] and spool.bytes == 0
    assert spool.counters.replayed_records == 100
    assert spool.counters.replayed_bytes == spool.counters.spooled_bytes
    assert spool.append(_rows(100, 5))  # appending goes on after everything was read
    assert _drain(spool) == [f"p{i:04d}" for i in range(100, 105)]
    spool.close()


def test_appends_while_reading_keep_their_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(_rows(0, 5))
    rows = spool.peek()
    assert rows is not None
    spool.append(_rows(5, 5))
    spool.commit()
    spool.append(_rows(10, 5))
    assert _drain(spool) == [f"p{i:04d}" for i in range(5, 15)]
    spool.close()


def test_what_was_spooled_survives_a_reopen_and_is_read_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(_rows(0, 10))
    spool.append(_rows(10, 10))
    spool.close()
    again = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert again.pending
    again.append(_rows(20, 10))  # a new segment, after the old ones
    assert _drain(again) == [f"p{i:04d}" for i in range(30)]
    again.close()
    assert not Spool(tmp_path / "s", max_bytes=1 << 20).pending


def test_a_torn_tail_is_skipped_and_counted_not_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s", max_bytes=1 << 20)
    spool.append(_rows(0, 10))
    spool.append(_rows(10, 10))
    spool.close()
    (path,) = _segments(tmp_path / "s")
    size = path.stat().st_size
    os.truncate(path, size - 7)  # a crash in the middle of the last frame
    reopened = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert _drain(reopened) == [f"p{i:04d}" for i in range(10)]
    assert reopened.counters.corrupt_bytes == size - 7 - len(MAGIC) - len(frame(_rows(0, 10)))
    assert _segments(tmp_path / "s") == []
    reopened.close()


def test_a_flipped_byte_ends_its_segment_and_the_next_segment_is_read(tmp_path: Path) -> None:
    one = len(frame(_rows(0, 10)))
    spool = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=len(MAGIC) + 2 * one)
    for start in range(0, 40, 10):
        spool.append(_rows(start, 10))
    spool.close()
    first, second = _segments(tmp_path / "s")
    data = bytearray(first.read_bytes())
    data[len(MAGIC) + 20] ^= 0xFF  # inside the first frame's payload
    first.write_bytes(bytes(data))
    second.write_bytes(b"garbage, not a segment" + second.read_bytes())
    reopened = Spool(tmp_path / "s", max_bytes=1 << 20)
    assert _drain(reopened) == []
    assert reopened.counters.corrupt_bytes == 2 * one + 2 * one + len(b"garbage, not a segment")
    reopened.close()


def test_the_cap_refuses_a_frame_whole_and_read_frames_free_room(tmp_path: Path) -> None:
    one = len(frame(_rows(0, 10)))
    spool = Spool(tmp_path / "s", max_bytes=len(MAGIC) + 3 * one, segment_bytes=len(MAGIC) + 3 * one)
    assert all(spool.append(_rows(i * 10, 10)) for i in range(3))
    assert not spool.append(_rows(30, 10))  # past the cap: refused, nothing written
    assert spool.bytes == len(MAGIC) + 3 * one
    assert spool.counters.spooled_records == 30
    assert _drain(spool) == [f"p{i:04d}" for i in range(30)]
    assert spool.append(_rows(30, 10))
    assert _drain(spool) == [f"p{i:04d}" for i in range(30, 40)]
    spool.close()


def test_a_full_disk_keeps_nothing_of_the_frame(tmp_path: Path) -> None:
    """RLIMIT_FSIZE set in a child process: the write past the limit fails (EFBIG) as on a full disk, and
    the spool cuts the frame it could not finish off, so what was kept before reads back whole."""
    script = textwrap.dedent(
        f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from gateway.storage.spool import Spool
        from tests.test_spool import _rows
        spool = Spool({str(tmp_path / "s")!r}, max_bytes=1 << 30)
        assert spool.append(_rows(0, 10))
        resource.setrlimit(resource.RLIMIT_FSIZE, (spool.bytes + 400, resource.RLIM_INFINITY))
        try:
            spool.append(_rows(10, 100))
        except OSError as exc:
            print("refused", exc.errno)
        assert spool.append(_rows(110, 1))  # a frame that fits still goes after the first
        spool.close()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["refused", "27"]  # EFBIG
    spool = Spool(tmp_path / "s", max_bytes=1 << 30)
    assert _drain(spool) == [*(f"p{i:04d}" for i in range(10)), "p0110"]
    assert spool.counters.corrupt_bytes == 0
    spool.close()


def test_each_process_claims_a_directory_of_its_own_and_adopts_the_abandoned(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    first = Spool.claim(root, max_bytes=1 << 20)
    second = Spool.claim(root, max_bytes=1 << 20)
    assert first.directory == root / "0" and second.directory == root / "1"
    first.append(_rows(0, 5))
    second.append(_rows(5, 5))
    second.close()  # its directory is free now, with a segment in it
    third = Spool.claim(root, max_bytes=1 << 20)
    assert third.directory == root / "1" and _drain(third) == [f"p{i:04d}" for i in range(5, 10)]
    third.append(_rows(10, 5))
    third.close()
    first.close()
    # A held lock is another process's: a child holds directory 0 while this process claims.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); sys.stdin.read()",
            str(root / "0" / "lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fourth = Spool.claim(root, max_bytes=1 << 20)
        assert fourth.directory == root / "1"
        assert _drain(fourth) == [f"p{i:04d}" for i in range(10, 15)]  # directory 0's segment is not touched
        assert len(_segments(root / "0")) == 1
        fourth.close()
    finally:
        holder.communicate("", timeout=10)
    fifth = Spool.claim(root, max_bytes=1 << 20)  # 0 is free again: claimed, its own segment read
    assert fifth.directory == root / "0" and _drain(fifth) == [f"p{i:04d}" for i in range(5)]
    fifth.close()
