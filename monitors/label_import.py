"""Read ground-truth labels from a CSV or Parquet file, for the CLI to post in batches.

A row gives a prediction id, a value and, optionally, when the truth became known. CSV values are
text: one that looks like an integer becomes an int, one that looks like a decimal number a float,
one that starts with ``[`` is read as a JSON array (labels of a prediction of several rows), and
anything else stays a string. Parquet values keep their types. A time is an ISO 8601 string or a
number of seconds since the epoch; a time without a zone is taken as UTC.

Rows with an empty id or value are passed over and counted; when an id appears more than once, the
last row wins and the repeats are counted. Parquet needs pyarrow, imported only when a Parquet file
is read.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from monitors.records import Label

log = logging.getLogger(__name__)

T = TypeVar("T")

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")

SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class LabelFile:
    labels: list[Label]
    """One per id, in the order ids first appear; for a repeated id, its last row's value and time."""
    rows: int
    """Data rows read (the header excluded)."""
    duplicates: int = 0
    """Rows whose id an earlier row already had."""
    blank: int = 0
    """Rows passed over for an empty id or value."""


def parse_value(text: str) -> Any:
    """A CSV cell as a label value: int, float, a JSON array, or the text itself (stripped)."""
    text = text.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON array: {text[:80]!r} ({exc.msg})") from exc
        if not isinstance(value, list):
            raise ValueError(f"not a JSON array: {text[:80]!r}")
        return value
    return text


def _epoch(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"not a time: {seconds!r} seconds since the epoch is out of range") from None


def parse_time(value: Any) -> datetime | None:
    """A label time: a datetime, an ISO 8601 string or epoch seconds; naive means UTC; blank is None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment: datetime = value
        if hasattr(value, "to_pydatetime"):  # a pandas Timestamp (pyarrow gives them for ns units)
            moment = value.to_pydatetime()
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return _epoch(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _FLOAT.fullmatch(text):
            return _epoch(float(text))
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            raise ValueError(f"not an ISO 8601 time or epoch seconds: {text!r}") from None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)
    raise ValueError(f"not a time: {value!r}")


def _check_columns(path: Path, present: Sequence[str], wanted: Iterable[str]) -> None:
    for column in wanted:
        if column not in present:
            raise ValueError(
                f"{path}: no column {column!r}; columns present: {', '.join(map(repr, present)) or 'none'}"
            )


def _wanted(id_column: str, value_column: str, time_column: str | None) -> list[str]:
    return [id_column, value_column] + ([time_column] if time_column is not None else [])


def _id(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def _csv_rows(path: Path, wanted: Sequence[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:  # an empty file (or a blank first line)
            return
        _check_columns(path, list(reader.fieldnames), wanted)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def _parquet_rows(path: Path, wanted: Sequence[str]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    try:
        parquet = importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        raise RuntimeError(
            f"reading Parquet labels ({path}) needs pyarrow, which is not installed: pip install pyarrow"
        ) from exc
    _check_columns(path, list(parquet.read_schema(path).names), wanted)
    table = parquet.read_table(path, columns=list(dict.fromkeys(wanted)))
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {number}", row


def load_labels(
    path: Path, *, id_column: str = "id", value_column: str = "value", time_column: str | None = None
) -> LabelFile:
    """The labels in a .csv or .parquet file, with counts of the rows repeated or passed over.

    Raises ValueError for an unknown suffix, a missing column (naming the columns present) or an
    unreadable value or time (naming the row); RuntimeError for Parquet without pyarrow.
    """
    path = Path(path)
    wanted = _wanted(id_column, value_column, time_column)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path, wanted)
        text = True
    elif suffix in (".parquet", ".pq"):
        rows = _parquet_rows(path, wanted)
        text = False
    else:
        raise ValueError(f"{path}: labels are read from {', '.join(SUFFIXES)} files, not {suffix or 'no suffix'!r}")

    labels: dict[str, Label] = {}
    read = duplicates = blank = 0
    for where, row in rows:
        read += 1
        prediction_id = _id(row.get(id_column))
        raw = row.get(value_column)
        if not prediction_id or _blank(raw):
            blank += 1
            continue
        try:
            value = parse_value(raw) if text and isinstance(raw, str) else raw
            at = parse_time(row.get(time_column)) if time_column is not None else None
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if prediction_id in labels:
            duplicates += 1
        labels[prediction_id] = Label(prediction_id=prediction_id, value=value, at=at)
    result = LabelFile(labels=list(labels.values()), rows=read, duplicates=duplicates, blank=blank)
    if duplicates:
        log.warning("%s: %d rows repeat an earlier id; the last row of each id wins", path, duplicates)
    if blank:
        log.warning("%s: %d rows with an empty id or value passed over", path, blank)
    return result


def read_labels(
    path: Path, *, id_column: str = "id", value_column: str = "value", time_column: str | None = None
) -> list[Label]:
    """The labels in a .csv or .parquet file (see `load_labels`, which also gives the counts)."""
    return load_labels(path, id_column=id_column, value_column=value_column, time_column=time_column).labels


def chunks(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive batches of at most `size` items, for posting labels a batch at a time."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
