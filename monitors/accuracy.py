"""Accuracy of a model version against its labels. Pure: labeled predictions in, a report out.

A stored prediction keeps its outputs in JSON form, ``{"name": {"shape": [...], "datatype": "...",
"data": [flat list]}}``. `prediction_value` turns them into the predicted value per row:

- classification: the named output, else the first integer output with one value per row (a
  ``label`` output), else the argmax over the class dimension of the first float output of shape
  ``[rows, k>1]`` (class scores);
- regression: the named output, else the first float output with one value per row (``[rows]`` or
  ``[rows, 1]``).

A one-row prediction gives one value; a prediction of several rows gives a list, and its label must
be a list of the same length. A labeled prediction that cannot be compared (no usable output, a row
count that differs from the label's, a label that is not a class or a number, a non-finite
regression prediction) is skipped and counted, by reason.

`compute` gives accuracy and macro precision, recall and F1 for classifiers (over the classes seen
in the labels or the predictions; a class with no predictions has precision 0, scikit-learn's
zero-division convention), MAE and RMSE for regressors, and for both the label coverage and the
label lag. `split_windows` groups labeled predictions into windows by prediction time.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np

from monitors.records import LabeledPrediction

TaskType = Literal["classification", "regression"]

TASKS: tuple[TaskType, ...] = ("classification", "regression")

_INTEGER_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT_TYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})
_INT_TEXT = re.compile(r"[+-]?\d+")

# Reasons a labeled prediction is skipped (keys of AccuracyReport.skipped_by_reason).
SKIP_OUTPUT = "output"
"""The prediction has no output this task can read (or the named output is missing or unfit)."""
SKIP_ROWS = "rows"
"""The label's row count differs from the prediction's."""
SKIP_LABEL = "label"
"""The label is not a class (classification) or a finite number (regression)."""
SKIP_PREDICTION = "prediction"
"""A regression prediction that is not finite."""


# --- reading predictions ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Tensor:
    array: np.ndarray
    kind: Literal["int", "float", "other"]

    @property
    def rows(self) -> int | None:
        """The batch dimension; None for a scalar."""
        return int(self.array.shape[0]) if self.array.ndim >= 1 else None

    def per_row(self) -> np.ndarray | None:
        """One value per row (shape [rows], [rows, 1], ...), flattened; None when rows have several."""
        if self.array.ndim == 0:
            return self.array.reshape(1)
        rows = self.array.shape[0]
        return self.array.reshape(rows) if self.array.size == rows else None

    def class_scores(self) -> np.ndarray | None:
        """Scores of shape [rows, k>1] (middle dimensions of 1 allowed); None otherwise."""
        shape = self.array.shape
        if self.kind != "float" or len(shape) < 2 or shape[-1] < 2 or math.prod(shape[1:-1]) != 1:
            return None
        return self.array.reshape(shape[0], shape[-1])


def _kind(datatype: Any, array: np.ndarray) -> Literal["int", "float", "other"]:
    if isinstance(datatype, str):
        upper = datatype.upper()
        if upper in _INTEGER_TYPES:
            return "int"
        if upper in _FLOAT_TYPES:
            return "float"
        return "other"
    if array.dtype.kind in "iu":
        return "int"
    if array.dtype.kind == "f":
        return "float"
    return "other"


def _tensor(name: str, entry: Any) -> _Tensor:
    """An output in JSON form ({"shape", "datatype", "data"}; a bare list is also accepted)."""
    if isinstance(entry, Mapping):
        data = entry.get("data")
        shape = entry.get("shape")
        datatype = entry.get("datatype")
    else:
        data, shape, datatype = entry, None, None
    if data is None:
        raise ValueError(f"output {name!r} has no data")
    try:
        array = np.asarray(data)
        if shape is not None:
            array = array.reshape([int(d) for d in shape])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"output {name!r} is unreadable: {exc}") from exc
    return _Tensor(array, _kind(datatype, array))


def _readable(outputs: Mapping[str, Any]) -> list[_Tensor]:
    """The outputs that parse, in order; an unreadable one is passed over when picking by task."""
    tensors = []
    for name, entry in outputs.items():
        try:
            tensors.append(_tensor(name, entry))
        except ValueError:
            continue
    return tensors


def _result(values: np.ndarray, rows: int | None) -> Any:
    items = values.tolist()
    if not items:
        raise ValueError("the prediction has no rows")
    return items if rows is not None and rows > 1 else items[0]


def prediction_value(outputs: Mapping[str, Any], task: TaskType, output: str | None = None) -> Any:
    """The predicted value of each row: a class id (or the named output's value) or a number.

    One row gives a single value, several rows a list. Raises ValueError when no output fits.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task type {task!r}; expected one of {', '.join(TASKS)}")
    if output is not None:
        if output not in outputs:
            raise ValueError(f"no output {output!r}; outputs: {', '.join(outputs) or 'none'}")
        tensor = _tensor(output, outputs[output])
        if task == "classification":
            scores = tensor.class_scores()
            if scores is not None:
                return _result(np.argmax(scores, axis=-1), tensor.rows)
            if tensor.kind == "float":
                raise ValueError(
                    f"output {output!r} is a float output without a class dimension [rows, k>1]; "
                    "name an output holding class ids, or one holding class scores"
                )
        elif tensor.kind == "other":
            raise ValueError(f"output {output!r} is not numeric")
        values = tensor.per_row()
        if values is None:
            raise ValueError(f"output {output!r} of shape {list(tensor.array.shape)} has several values per row")
        return _result(values, tensor.rows)

    tensors = _readable(outputs)
    if task == "classification":
        for tensor in tensors:
            values = tensor.per_row() if tensor.kind == "int" else None
            if values is not None:
                return _result(values, tensor.rows)
        for tensor in tensors:
            scores = tensor.class_scores()
            if scores is not None:
                return _result(np.argmax(scores, axis=-1), tensor.rows)
        raise ValueError(
            "no integer output with one value per row and no float output of class scores [rows, k>1]; "
            f"outputs: {', '.join(outputs) or 'none'}"
        )
    for tensor in tensors:
        values = tensor.per_row() if tensor.kind == "float" else None
        if values is not None:
            return _result(values, tensor.rows)
    raise ValueError(f"no float output with one value per row; outputs: {', '.join(outputs) or 'none'}")


# --- the report -------------------------------------------------------------------------------


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class ClassCounts:
    label: Any
    """The class, as in the labels (an integral float is read as an int, a string of digits too)."""
    tp: int
    fp: int
    fn: int

    @property
    def support(self) -> int:
        """Rows labeled with this class."""
        return self.tp + self.fn

    @property
    def predicted(self) -> int:
        """Rows predicted as this class."""
        return self.tp + self.fp

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "support": self.support,
            "predicted": self.predicted,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


@dataclass(frozen=True)
class AccuracyReport:
    task: TaskType
    n: int
    """Labeled rows compared (a prediction of several rows counts each row)."""
    skipped: int
    """Labeled predictions left out (not rows); see skipped_by_reason."""
    labeled: int
    """Labeled predictions given, skipped ones included."""
    predictions: int
    """Predictions in the window, labeled or not."""
    coverage: float | None
    """labeled / predictions, at most 1; None when the window has no predictions."""
    lag_median_s: float | None
    """Seconds from prediction to label, over every labeled prediction; None when there are none."""
    lag_p90_s: float | None
    accuracy: float | None = None
    """Classification only, as are precision, recall, f1 and classes; None when n is 0."""
    precision: float | None = None
    """Macro average over the classes in the labels or the predictions."""
    recall: float | None = None
    f1: float | None = None
    classes: tuple[ClassCounts, ...] = ()
    mae: float | None = None
    """Regression only, as is rmse; None when n is 0."""
    rmse: float | None = None
    skipped_by_reason: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "task": self.task,
            "n": self.n,
            "skipped": self.skipped,
            "skipped_by_reason": dict(self.skipped_by_reason),
            "labeled": self.labeled,
            "predictions": self.predictions,
            "coverage": self.coverage,
            "lag_median_s": self.lag_median_s,
            "lag_p90_s": self.lag_p90_s,
        }
        if self.task == "classification":
            doc |= {
                "accuracy": self.accuracy,
                "precision": self.precision,
                "recall": self.recall,
                "f1": self.f1,
                "classes": [c.to_json() for c in self.classes],
            }
        else:
            doc |= {"mae": self.mae, "rmse": self.rmse}
        return doc


# --- computing --------------------------------------------------------------------------------


def _class(value: Any) -> Any:
    """A label or predicted class, normalised so that 1, 1.0 and "1" are the same class; None if unfit."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            return None
        return int(number) if number.is_integer() else number
    if isinstance(value, str):
        text = value.strip()
        return int(text) if _INT_TEXT.fullmatch(text) else text
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _sort_key(value: Any) -> tuple[int, float, str]:
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _classification(truth: list[Any], predicted: list[Any]) -> dict[str, Any]:
    if not truth:
        return {}
    classes = sorted(set(truth) | set(predicted), key=_sort_key)
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    t = np.fromiter((index[c] for c in truth), dtype=np.int64, count=len(truth))
    p = np.fromiter((index[c] for c in predicted), dtype=np.int64, count=len(predicted))
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    counts = tuple(ClassCounts(label=c, tp=int(tp[i]), fp=int(fp[i]), fn=int(fn[i])) for i, c in enumerate(classes))
    return {
        "accuracy": float(tp.sum()) / len(truth),
        "precision": float(np.mean([c.precision for c in counts])),
        "recall": float(np.mean([c.recall for c in counts])),
        "f1": float(np.mean([c.f1 for c in counts])),
        "classes": counts,
    }


def _regression(truth: list[float], predicted: list[float]) -> dict[str, Any]:
    if not truth:
        return {}
    error = np.asarray(predicted, dtype=np.float64) - np.asarray(truth, dtype=np.float64)
    return {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error * error)))}


def _pair_rows(prediction: Any, label: Any) -> tuple[list[Any], list[Any]] | None:
    """The label's rows beside the prediction's; None when the counts differ."""
    if isinstance(prediction, list):
        if not isinstance(label, list) or len(label) != len(prediction):
            return None
        return list(label), prediction
    if isinstance(label, list):
        return (list(label), [prediction]) if len(label) == 1 else None
    return [label], [prediction]


def compute(
    labeled: Sequence[LabeledPrediction],
    predictions_in_window: int,
    task: TaskType,
    output: str | None = None,
) -> AccuracyReport:
    """Accuracy of the labeled predictions of one version over one window.

    `predictions_in_window` counts every prediction of the window, labeled or not (for coverage).
    `output` names the output to read (see `prediction_value`); None picks one by the task.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task type {task!r}; expected one of {', '.join(TASKS)}")
    if predictions_in_window < 0:
        raise ValueError(f"predictions_in_window must be >= 0, got {predictions_in_window}")

    skipped: Counter[str] = Counter()
    truth: list[Any] = []
    predicted: list[Any] = []
    for item in labeled:
        try:
            value = prediction_value(item.outputs, task, output)
        except ValueError:
            skipped[SKIP_OUTPUT] += 1
            continue
        rows = _pair_rows(value, item.label)
        if rows is None:
            skipped[SKIP_ROWS] += 1
            continue
        labels, values = rows
        if task == "classification":
            label_classes = [_class(v) for v in labels]
            predicted_classes = [_class(v) for v in values]
            if any(c is None for c in label_classes):
                skipped[SKIP_LABEL] += 1
                continue
            if any(c is None for c in predicted_classes):
                skipped[SKIP_PREDICTION] += 1
                continue
            truth += label_classes
            predicted += predicted_classes
        else:
            label_numbers = [_number(v) for v in labels]
            predicted_numbers = [_number(v) for v in values]
            if any(x is None for x in label_numbers):
                skipped[SKIP_LABEL] += 1
                continue
            if any(x is None for x in predicted_numbers):
                skipped[SKIP_PREDICTION] += 1
                continue
            truth += label_numbers
            predicted += predicted_numbers

    lags = np.asarray([(item.labeled_at - item.at).total_seconds() for item in labeled], dtype=np.float64)
    metrics = _classification(truth, predicted) if task == "classification" else _regression(truth, predicted)
    return AccuracyReport(
        task=task,
        n=len(truth),
        skipped=sum(skipped.values()),
        labeled=len(labeled),
        predictions=predictions_in_window,
        coverage=min(1.0, len(labeled) / predictions_in_window) if predictions_in_window else None,
        lag_median_s=float(np.median(lags)) if lags.size else None,
        lag_p90_s=float(np.percentile(lags, 90)) if lags.size else None,
        skipped_by_reason=dict(skipped),
        **metrics,
    )


def split_windows(
    labeled: Sequence[LabeledPrediction], window_s: float, now: datetime
) -> list[tuple[datetime, datetime, list[LabeledPrediction]]]:
    """Labeled predictions grouped by prediction time into windows of `window_s` ending at `now`.

    Window i covers [now - (i+1)·window_s, now - i·window_s); a prediction at or after `now` (clock
    skew) falls in the latest. Only windows holding something are returned, oldest first, each as
    (start, end, items in the given order).
    """
    if not window_s > 0 or not math.isfinite(window_s):
        raise ValueError(f"window_s must be a positive number of seconds, got {window_s}")
    width = timedelta(seconds=window_s)
    if width <= timedelta(0):
        raise ValueError(f"window_s must be at least a microsecond, got {window_s}")
    step = width.total_seconds()
    groups: dict[int, list[LabeledPrediction]] = {}
    for item in labeled:
        age = (now - item.at).total_seconds()
        back = math.floor(age / step) if age > 0 else 0
        # Guard against float rounding putting an item on the wrong side of a window edge.
        while back > 0 and item.at >= now - back * width:
            back -= 1
        while item.at < now - (back + 1) * width:
            back += 1
        groups.setdefault(back, []).append(item)
    return [(now - (back + 1) * width, now - back * width, groups[back]) for back in sorted(groups, reverse=True)]
