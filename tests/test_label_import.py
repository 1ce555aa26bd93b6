from __future__ import annotations

import csv
import logging
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from monitors.label_import import chunks, load_labels, parse_time, parse_value, read_labels
from monitors.records import Label

UTC = timezone.utc


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


# --- values and times ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3", 3),
        (" -12 ", -12),
        ("+4", 4),
        ("007", 7),
        ("2.5", 2.5),
        ("-.5", -0.5),
        ("1e3", 1000.0),
        ("3.", 3.0),
        ("cat", "cat"),
        (" dog ", "dog"),
        ("1_000", "1_000"),
        ("nan", "nan"),
        ("[1, 0, 2]", [1, 0, 2]),
        ('["a", "b"]', ["a", "b"]),
        ("[]", []),
    ],
)
def test_parse_value(text: str, expected: Any) -> None:
    got = parse_value(text)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("text", ["[1, 2", "[1,]"])
def test_parse_value_rejects_broken_arrays(text: str) -> None:
    with pytest.raises(ValueError, match="not a JSON array"):
        parse_value(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("2024-05-01 12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("1714564800", datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("1714564800.5", datetime(2024, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
        (1714564800, datetime(2024, 5, 1, 12, tzinfo=UTC)),
        (datetime(2024, 5, 1, 12), datetime(2024, 5, 1, 12, tzinfo=UTC)),
        ("", None),
        ("  ", None),
        (None, None),
    ],
)
def test_parse_time(value: Any, expected: datetime | None) -> None:
    got = parse_time(value)
    assert got == expected
    assert got is None or got.utcoffset() is not None


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", True, float("nan"), 1e20, [1]])
def test_parse_time_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="not a"):
        parse_time(value)


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_labels_with_parsed_values(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "labels.csv",
        [["id", "value", "note"], ["a", "1", "x"], ["b", "2.5", ""], ["c", "cat", ""], ["d", "[1, 0, 2]", ""]],
    )
    assert read_labels(path) == [
        Label("a", 1),
        Label("b", 2.5),
        Label("c", "cat"),
        Label("d", [1, 0, 2]),
    ]


def test_csv_named_columns_and_times(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "truth.CSV",
        [
            ["request", "truth", "known_at"],
            ["a", "0", "2024-05-01T12:00:00Z"],
            ["b", "1", "1714564800"],
            ["c", "1", ""],
        ],
    )
    labels = read_labels(path, id_column="request", value_column="truth", time_column="known_at")
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert labels == [Label("a", 0, noon), Label("b", 1, noon), Label("c", 1, None)]


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffid,value\r\na,1\r\n".encode())
    assert read_labels(path) == [Label("a", 1)]


def test_duplicate_ids_the_last_row_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(
        tmp_path / "labels.csv",
        [["id", "value"], ["a", "1"], ["b", "2"], ["a", "3"], ["a", "4"], ["c", "5"]],
    )
    with caplog.at_level(logging.WARNING, logger="monitors.label_import"):
        result = load_labels(path)
    assert result.labels == [Label("a", 4), Label("b", 2), Label("c", 5)]
    assert (result.rows, result.duplicates, result.blank) == (5, 2, 0)
    assert "2 rows repeat an earlier id" in caplog.text


def test_rows_without_an_id_or_value_are_passed_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_csv(tmp_path / "labels.csv", [["id", "value"], ["a", "1"], ["", "2"], ["b", ""], ["c", " "], ["d"]])
    with caplog.at_level(logging.WARNING, logger="monitors.label_import"):
        result = load_labels(path)
    assert result.labels == [Label("a", 1)]
    assert (result.rows, result.duplicates, result.blank) == (5, 0, 4)
    assert "4 rows with an empty id or value" in caplog.text


@pytest.mark.parametrize(
    ("header", "kwargs", "missing"),
    [
        (["id", "label"], {}, "value"),
        (["prediction", "value"], {}, "id"),
        (["id", "value"], {"time_column": "at"}, "at"),
        (["id", "value"], {"value_column": "truth"}, "truth"),
    ],
)
def test_missing_columns_are_named(tmp_path: Path, header: list[str], kwargs: dict[str, Any], missing: str) -> None:
    path = write_csv(tmp_path / "labels.csv", [header, ["a", "1"]])
    with pytest.raises(ValueError) as excinfo:
        read_labels(path, **kwargs)
    message = str(excinfo.value)
    assert f"no column {missing!r}" in message
    assert all(repr(column) in message for column in header)


@pytest.mark.parametrize("content", ["", "\n", "id,value\n", "id,value\r\n"])
def test_empty_files_give_no_labels(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(content)
    assert read_labels(path) == []


def test_bad_cells_name_the_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "labels.csv", [["id", "value", "at"], ["a", "1", ""], ["b", "[1, 2", ""]])
    with pytest.raises(ValueError, match=r"labels\.csv:3: not a JSON array"):
        read_labels(path)
    path = write_csv(tmp_path / "times.csv", [["id", "value", "at"], ["a", "1", "soon"]])
    with pytest.raises(ValueError, match=r"times\.csv:2: not an ISO 8601 time"):
        read_labels(path, time_column="at")


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text("[]")
    with pytest.raises(ValueError, match=r"\.csv, \.parquet"):
        read_labels(path)


# --- Parquet ------------------------------------------------------------------------------------


def test_parquet_without_pyarrow_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # makes importing it fail
    path = tmp_path / "labels.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(RuntimeError, match="pip install pyarrow"):
        read_labels(path)


def test_parquet_labels_keep_their_types(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    noon = datetime(2024, 5, 1, 12)
    table = pa.table(
        {
            "id": pa.array([1, 2, 3, 4, None, 2], pa.int64()),
            "value": pa.array([[1, 0], [2], None, [5], [6], [3]], pa.list_(pa.int64())),
            "at": pa.array([noon, None, noon, noon + timedelta(seconds=1), noon, noon], pa.timestamp("ns")),
        }
    )
    path = tmp_path / "labels.parquet"
    pq.write_table(table, path)
    result = load_labels(path, time_column="at")
    at = noon.replace(tzinfo=UTC)
    assert result.labels == [
        Label("1", [1, 0], at),
        Label("2", [3], at),
        Label("4", [5], at + timedelta(seconds=1)),
    ]
    assert all(type(label.at) is datetime for label in result.labels)
    assert (result.rows, result.duplicates, result.blank) == (6, 1, 2)


def test_parquet_scalars_strings_and_aware_times(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    noon = datetime(2024, 5, 1, 12, tzinfo=UTC)
    table = pa.table(
        {
            "request": ["a", "b", "c"],
            "y": pa.array([0.5, float("nan"), 2.0]),
            "cls": ["cat", "dog", "1"],
            "known": pa.array([noon, noon, noon], pa.timestamp("us", tz="UTC")),
        }
    )
    path = tmp_path / "labels.pq"
    pq.write_table(table, path)
    regression = load_labels(path, id_column="request", value_column="y", time_column="known")
    assert regression.labels == [Label("a", 0.5, noon), Label("c", 2.0, noon)]
    assert regression.blank == 1
    # Parquet strings stay strings: only CSV text is parsed.
    assert read_labels(path, id_column="request", value_column="cls") == [
        Label("a", "cat"),
        Label("b", "dog"),
        Label("c", "1"),
    ]
    with pytest.raises(ValueError, match=r"no column 'value'; columns present: 'request', 'y', 'cls', 'known'"):
        read_labels(path, id_column="request")


def test_empty_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "value": pa.array([], pa.int64())}), path)
    assert read_labels(path) == []


# --- batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "size", "lengths"),
    [(0, 3, []), (1, 3, [1]), (6, 3, [3, 3]), (7, 3, [3, 3, 1]), (5, 1, [1] * 5), (2, 10, [2])],
)
def test_chunks(n: int, size: int, lengths: list[int]) -> None:
    labels = [Label(str(i), i) for i in range(n)]
    batches = list(chunks(labels, size))
    assert [len(b) for b in batches] == lengths
    assert [label for batch in batches for label in batch] == labels


@pytest.mark.parametrize("size", [0, -1])
def test_chunks_rejects_a_size_below_one(size: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        list(chunks([Label("a", 1)], size))
