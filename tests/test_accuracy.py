from __future__ import annotations

import json
import math
import random
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from monitors.accuracy import (
    SKIP_LABEL,
    SKIP_OUTPUT,
    SKIP_PREDICTION,
    SKIP_ROWS,
    AccuracyReport,
    TaskType,
    compute,
    prediction_value,
    split_windows,
)
from monitors.records import LabeledPrediction

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def tensor(datatype: str, shape: list[int], data: list[Any]) -> dict[str, Any]:
    return {"shape": shape, "datatype": datatype, "data": data}


def labeled(
    outputs: dict[str, Any],
    label: Any,
    *,
    at: datetime = T0,
    lag_s: float = 1.0,
    id: str = "p",
    version: str = "v1",
) -> LabeledPrediction:
    return LabeledPrediction(
        id=id, at=at, version=version, outputs=outputs, label=label, labeled_at=at + timedelta(seconds=lag_s)
    )


def class_id(value: int) -> LabeledPrediction:
    return labeled({"label": tensor("INT64", [1], [value])}, None)


def with_label(item: LabeledPrediction, label: Any) -> LabeledPrediction:
    return LabeledPrediction(item.id, item.at, item.version, item.outputs, label, item.labeled_at)


# --- prediction_value ---------------------------------------------------------------------------

SCORES_2x3 = tensor("FP32", [2, 3], [0.1, 0.7, 0.2, 0.6, 0.3, 0.1])


@pytest.mark.parametrize(
    ("outputs", "task", "output", "expected"),
    [
        pytest.param({"label": tensor("INT64", [1], [2])}, "classification", None, 2, id="one-row-label"),
        pytest.param({"label": tensor("INT32", [3], [1, 0, 2])}, "classification", None, [1, 0, 2], id="rows"),
        pytest.param({"label": tensor("INT64", [2, 1], [4, 5])}, "classification", None, [4, 5], id="rows-by-1"),
        pytest.param({"probabilities": SCORES_2x3}, "classification", None, [1, 0], id="argmax"),
        pytest.param({"p": tensor("FP32", [1, 3], [0.2, 0.3, 0.5])}, "classification", None, 2, id="argmax-one-row"),
        pytest.param(
            {"p": tensor("FP32", [2, 1, 2], [0.9, 0.1, 0.2, 0.8])}, "classification", None, [0, 1], id="argmax-3d"
        ),
        pytest.param(
            {"probabilities": SCORES_2x3, "label": tensor("INT64", [2], [2, 2])},
            "classification",
            None,
            [2, 2],
            id="integer-output-before-scores",
        ),
        pytest.param(
            {"probabilities": SCORES_2x3, "label": tensor("INT64", [2], [2, 2])},
            "classification",
            "probabilities",
            [1, 0],
            id="named-scores",
        ),
        pytest.param(
            {"ids": tensor("INT64", [2, 3], [1, 2, 3, 4, 5, 6]), "label": tensor("INT64", [2], [7, 8])},
            "classification",
            None,
            [7, 8],
            id="skips-integer-output-with-several-per-row",
        ),
        pytest.param(
            {"name": tensor("BYTES", [2], ["cat", "dog"])}, "classification", "name", ["cat", "dog"], id="bytes"
        ),
        pytest.param({"flag": tensor("BOOL", [1], [True])}, "classification", "flag", True, id="bool"),
        pytest.param({"label": [3, 1]}, "classification", None, [3, 1], id="bare-list-inferred"),
        pytest.param({"y": tensor("FP32", [2, 1], [1.5, 2.5])}, "regression", None, [1.5, 2.5], id="reg-rows-by-1"),
        pytest.param({"y": tensor("FP64", [1], [0.25])}, "regression", None, 0.25, id="reg-one-row"),
        pytest.param({"y": tensor("FP64", [], [7.0])}, "regression", None, 7.0, id="reg-scalar"),
        pytest.param(
            {"label": tensor("INT64", [2], [1, 2]), "y": tensor("FP32", [2], [0.5, 1.0])},
            "regression",
            None,
            [0.5, 1.0],
            id="reg-first-float",
        ),
        pytest.param(
            {"scores": SCORES_2x3, "y": tensor("FP32", [2], [0.5, 1.0])},
            "regression",
            None,
            [0.5, 1.0],
            id="reg-skips-several-per-row",
        ),
        pytest.param({"count": tensor("INT64", [2], [3, 4])}, "regression", "count", [3, 4], id="reg-named-int"),
        pytest.param(
            {"broken": {"shape": [5], "datatype": "FP32", "data": [1.0]}, "y": tensor("FP32", [1], [2.0])},
            "regression",
            None,
            2.0,
            id="unreadable-output-passed-over",
        ),
    ],
)
def test_prediction_value(outputs: dict[str, Any], task: TaskType, output: str | None, expected: Any) -> None:
    got = prediction_value(outputs, task, output)
    assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("outputs", "task", "output", "message"),
    [
        pytest.param({}, "classification", None, "no integer output", id="no-outputs"),
        pytest.param({"y": tensor("FP32", [2], [0.1, 0.9])}, "classification", None, "class scores", id="float-1d"),
        pytest.param({"y": tensor("FP32", [2], [0.1, 0.9])}, "classification", "y", "class dimension", id="named-1d"),
        pytest.param({"label": tensor("INT64", [1], [1])}, "classification", "nope", "no output 'nope'", id="missing"),
        pytest.param({"label": tensor("INT64", [2], [1, 2])}, "regression", None, "no float output", id="reg-int"),
        pytest.param({"p": SCORES_2x3}, "regression", None, "no float output", id="reg-scores"),
        pytest.param({"p": SCORES_2x3}, "regression", "p", "several values per row", id="reg-named-scores"),
        pytest.param({"s": tensor("BYTES", [1], ["a"])}, "regression", "s", "not numeric", id="reg-bytes"),
        pytest.param({"y": tensor("FP32", [3], [1.0])}, "regression", "y", "unreadable", id="bad-shape"),
        pytest.param({"y": tensor("FP32", [1], [1.0])}, "ranking", None, "unknown task", id="bad-task"),
        pytest.param({"label": tensor("INT64", [0], [])}, "classification", "label", "no rows", id="no-rows"),
        pytest.param({"p": tensor("FP32", [0, 3], [])}, "classification", "p", "no rows", id="no-score-rows"),
    ],
)
def test_prediction_value_errors(outputs: dict[str, Any], task: Any, output: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prediction_value(outputs, task, output)


# --- classification -----------------------------------------------------------------------------


def naive_macro(truth: list[Any], predicted: list[Any]) -> dict[str, float]:
    """Metrics from their definitions, one class at a time (the oracle; scikit-learn is not a dependency)."""
    classes = set(truth) | set(predicted)
    precisions, recalls, f1s = [], [], []
    for c in classes:
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == c and p == c)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != c and p == c)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == c and p != c)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(precision)
        recalls.append(recall)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return {
        "accuracy": sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(truth),
        "precision": sum(precisions) / len(classes),
        "recall": sum(recalls) / len(classes),
        "f1": sum(f1s) / len(classes),
    }


def one_row_each(truth: list[Any], predicted: list[int]) -> list[LabeledPrediction]:
    return [with_label(class_id(p), t) for t, p in zip(truth, predicted, strict=True)]


def test_classification_with_a_known_confusion_matrix() -> None:
    # class 0: tp 3 fp 0 fn 1; class 1: tp 1 fp 2 fn 1; class 2: tp 1; class 3 only predicted (recall 0/0);
    # class 4 only labeled (precision 0/0): both count as 0 in the macro averages.
    truth = [0, 0, 0, 0, 1, 1, 2, 4]
    predicted = [0, 0, 0, 1, 1, 3, 2, 1]
    report = compute(one_row_each(truth, predicted), predictions_in_window=8, task="classification")
    assert report.n == 8 and report.skipped == 0
    assert report.accuracy == pytest.approx(5 / 8)
    assert report.precision == pytest.approx((1 + 1 / 3 + 1 + 0 + 0) / 5)
    assert report.recall == pytest.approx((3 / 4 + 1 / 2 + 1 + 0 + 0) / 5)
    assert report.f1 == pytest.approx((6 / 7 + 2 / 5 + 1 + 0 + 0) / 5)
    counts = {c.label: (c.tp, c.fp, c.fn, c.support, c.predicted) for c in report.classes}
    assert counts == {
        0: (3, 0, 1, 4, 3),
        1: (1, 2, 1, 2, 3),
        2: (1, 0, 0, 1, 1),
        3: (0, 1, 0, 0, 1),
        4: (0, 0, 1, 1, 0),
    }
    assert [c.label for c in report.classes] == [0, 1, 2, 3, 4]
    assert report.mae is None and report.rmse is None


@pytest.mark.parametrize("seed", range(20))
def test_classification_matches_the_definitions_on_random_data(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    truth = [rng.randint(0, 5) for _ in range(n)]
    predicted = [t if rng.random() < 0.5 else rng.randint(0, 6) for t in truth]
    report = compute(one_row_each(truth, predicted), predictions_in_window=n, task="classification")
    oracle = naive_macro(truth, predicted)
    assert report.n == n
    for key, value in oracle.items():
        assert getattr(report, key) == pytest.approx(value), key


def test_multi_row_predictions_count_every_row() -> None:
    scores = tensor("FP32", [3, 2], [0.9, 0.1, 0.2, 0.8, 0.6, 0.4])  # predicts 0, 1, 0
    items = [
        labeled({"probabilities": scores}, [0, 1, 1], id="a"),
        labeled({"label": tensor("INT64", [2], [1, 1])}, [1, 0], id="b"),
    ]
    report = compute(items, predictions_in_window=2, task="classification")
    assert report.n == 5
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.f1 == pytest.approx(naive_macro([0, 1, 1, 1, 0], [0, 1, 0, 1, 1])["f1"])


def test_labels_match_classes_across_json_forms() -> None:
    items = one_row_each([1.0, "2", " 3 ", True], [1, 2, 3, 1])
    items.append(labeled({"name": tensor("BYTES", [1], ["cat"])}, "cat"))
    report = compute(items, predictions_in_window=5, task="classification", output=None)
    # The BYTES prediction has no integer output or scores: skipped unless named.
    assert report.skipped_by_reason == {SKIP_OUTPUT: 1}
    assert report.accuracy == 1.0
    named = compute(items[-1:], predictions_in_window=1, task="classification", output="name")
    assert named.accuracy == 1.0 and [c.label for c in named.classes] == ["cat"]


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        pytest.param(labeled({"label": tensor("INT64", [3], [1, 2, 3])}, [1, 2]), SKIP_ROWS, id="short-label"),
        pytest.param(labeled({"label": tensor("INT64", [2], [1, 2])}, 1), SKIP_ROWS, id="scalar-for-rows"),
        pytest.param(labeled({"label": tensor("INT64", [1], [1])}, [1, 2]), SKIP_ROWS, id="rows-for-one"),
        pytest.param(labeled({"label": tensor("INT64", [1], [1])}, None), SKIP_LABEL, id="null-label"),
        pytest.param(labeled({"label": tensor("INT64", [1], [1])}, {"a": 1}), SKIP_LABEL, id="object-label"),
        pytest.param(labeled({"label": tensor("INT64", [2], [1, 1])}, [1, [1]]), SKIP_LABEL, id="nested"),
        pytest.param(labeled({}, 1), SKIP_OUTPUT, id="no-outputs"),
        pytest.param(labeled({"y": tensor("FP32", [1], [0.3])}, 1), SKIP_OUTPUT, id="float-no-classes"),
    ],
)
def test_classification_skips_what_cannot_be_compared(item: LabeledPrediction, reason: str) -> None:
    good = with_label(class_id(1), 1)
    report = compute([good, item], predictions_in_window=2, task="classification")
    assert report.n == 1 and report.accuracy == 1.0
    assert report.skipped == 1 and report.skipped_by_reason == {reason: 1}
    assert report.labeled == 2 and report.coverage == 1.0


def test_a_one_row_prediction_takes_a_label_list_of_one() -> None:
    report = compute([with_label(class_id(2), [2])], predictions_in_window=1, task="classification")
    assert report.n == 1 and report.accuracy == 1.0 and report.skipped == 0


# --- regression ---------------------------------------------------------------------------------


def test_regression_with_hand_computed_errors() -> None:
    items = [
        labeled({"y": tensor("FP32", [1], [1.5])}, 1),
        labeled({"y": tensor("FP32", [1, 1], [2.0])}, 2.0),
        labeled({"y": tensor("FP64", [2, 1], [2.0, 6.0])}, [3, 4]),
    ]
    report = compute(items, predictions_in_window=3, task="regression")
    # errors 0.5, 0, -1, 2
    assert report.n == 4 and report.skipped == 0
    assert report.mae == pytest.approx((0.5 + 0 + 1 + 2) / 4)
    assert report.rmse == pytest.approx(math.sqrt((0.25 + 0 + 1 + 4) / 4))
    assert report.accuracy is None and report.classes == ()


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        pytest.param(labeled({"y": tensor("FP32", [1], [1.0])}, "abc"), SKIP_LABEL, id="text-label"),
        pytest.param(labeled({"y": tensor("FP32", [1], [1.0])}, True), SKIP_LABEL, id="bool-label"),
        pytest.param(labeled({"y": tensor("FP32", [1], [1.0])}, float("nan")), SKIP_LABEL, id="nan-label"),
        pytest.param(labeled({"y": tensor("FP32", [1], [float("nan")])}, 1.0), SKIP_PREDICTION, id="nan-pred"),
        pytest.param(labeled({"y": tensor("FP32", [2], [1.0, 2.0])}, [1.0]), SKIP_ROWS, id="rows"),
        pytest.param(labeled({"label": tensor("INT64", [1], [1])}, 1.0), SKIP_OUTPUT, id="no-float"),
    ],
)
def test_regression_skips_what_cannot_be_compared(item: LabeledPrediction, reason: str) -> None:
    good = labeled({"y": tensor("FP32", [1], [3.0])}, 1.0)
    report = compute([good, item], predictions_in_window=4, task="regression")
    assert report.n == 1 and report.mae == pytest.approx(2.0) and report.rmse == pytest.approx(2.0)
    assert report.skipped_by_reason == {reason: 1}


# --- coverage, lag, empty windows, JSON ---------------------------------------------------------


def test_coverage_and_label_lag() -> None:
    items = [with_label(labeled({"label": tensor("INT64", [1], [1])}, None, lag_s=lag), 1) for lag in (30, 10, 100, 20)]
    report = compute(items, predictions_in_window=10, task="classification")
    assert report.coverage == pytest.approx(0.4)
    assert report.lag_median_s == pytest.approx(25.0)
    assert report.lag_p90_s == pytest.approx(30 + 0.7 * 70)  # linear between the 3rd and 4th of 4


def test_lag_counts_skipped_labels_and_coverage_is_at_most_one() -> None:
    items = [labeled({}, 1, lag_s=5.0), labeled({}, 1, lag_s=15.0)]
    report = compute(items, predictions_in_window=1, task="regression")
    assert report.n == 0 and report.skipped == 2
    assert report.coverage == 1.0
    assert report.lag_median_s == pytest.approx(10.0)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_nothing_labeled(task: TaskType) -> None:
    report = compute([], predictions_in_window=0, task=task)
    assert report == AccuracyReport(
        task=task,
        n=0,
        skipped=0,
        labeled=0,
        predictions=0,
        coverage=None,
        lag_median_s=None,
        lag_p90_s=None,
    )
    assert compute([], predictions_in_window=7, task=task).coverage == 0.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        compute([], 0, "ranking")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="predictions_in_window"):
        compute([], -1, "regression")


def test_to_json_is_json_and_keeps_to_the_task() -> None:
    items = one_row_each([0, 1, 1], [0, 1, 0])
    doc = compute(items, 4, "classification").to_json()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["accuracy"] == pytest.approx(2 / 3) and doc["coverage"] == 0.75
    assert doc["classes"][1] == {
        "label": 1,
        "support": 2,
        "predicted": 1,
        "tp": 1,
        "fp": 0,
        "fn": 1,
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
    }
    assert "mae" not in doc

    regression = compute([labeled({"y": tensor("FP32", [1], [2.0])}, "x")], 1, "regression").to_json()
    assert json.loads(json.dumps(regression)) == regression
    assert regression["skipped_by_reason"] == {SKIP_LABEL: 1}
    assert regression["mae"] is None and "accuracy" not in regression


# --- windows ------------------------------------------------------------------------------------


def at(seconds_before_now: float) -> LabeledPrediction:
    return labeled({}, 1, at=T0 - timedelta(seconds=seconds_before_now), id=f"{seconds_before_now}")


def test_split_windows_groups_by_prediction_time() -> None:
    # Windows are [start, end): 60 s before now starts the latest window; after now (skew) also lands there.
    items = [at(10), at(59.999), at(60), at(61), at(300), at(-5), at(0)]
    windows = split_windows(items, 60, now=T0)
    summary = [
        ((T0 - start).total_seconds(), (T0 - end).total_seconds(), [i.id for i in group])
        for start, end, group in windows
    ]
    assert summary == [
        (300.0, 240.0, ["300"]),
        (120.0, 60.0, ["61"]),
        (60.0, 0.0, ["10", "59.999", "60", "-5", "0"]),
    ]


@pytest.mark.parametrize("window_s", [0.7, 1.3, 7.0, 3600.0])
def test_split_windows_edges_hold_for_any_width(window_s: float) -> None:
    rng = random.Random(int(window_s * 10))
    items = [at(rng.uniform(0, 20 * window_s)) for _ in range(200)] + [at(k * window_s) for k in range(1, 6)]
    windows = split_windows(items, window_s, now=T0)
    assert sum(len(group) for _, _, group in windows) == len(items)
    starts = [start for start, _, _ in windows]
    assert starts == sorted(starts)
    for start, end, group in windows:
        assert end - start == timedelta(seconds=window_s)
        assert all(start <= item.at < end for item in group)


def test_split_windows_empty_and_invalid() -> None:
    assert split_windows([], 60, now=T0) == []
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e-7):
        with pytest.raises(ValueError, match="window_s"):
            split_windows([at(1)], bad, now=T0)
