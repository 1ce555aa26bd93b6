"""Data and prediction drift of one model version, computed with Evidently's DataDriftPreset.

Two steps, both free of I/O:

- `to_frame` flattens prediction records into one table row per request row: a feature column per
  input value (`input[0]`, `input[1]`, ... or the names the model's config gives) and a prediction
  column per output (`pred:<name>`: the value for one-wide outputs, the argmax class for score
  vectors, the class for integer outputs);
- `compute` runs `Report([DataDriftPreset(columns=features), ValueDrift(pred...)], include_tests=True)`
  on a current frame against a reference frame and reads the snapshot into a `DriftResult`: the
  method and score of every column, whether it drifted (from Evidently's own tests, so p-value and
  distance methods are read alike), the share of drifted feature columns, and the dataset verdict.

Evidently 0.7 has no `dataset_drift` field: the verdict is derived as Evidently's legacy preset did,
share of drifted features >= `drift_share`. Its import takes seconds, so it is imported inside
`compute`, which the gateway runs in a worker process, never on the serving path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from monitors.records import PredictionRecord

if TYPE_CHECKING:
    import pandas as pd

PREDICTION_PREFIX = "pred:"


@dataclass(frozen=True)
class DriftOptions:
    """How a window is judged; the model config's `monitoring.drift` section maps onto this."""

    drift_share: float = 0.5
    """Share of drifted feature columns at or above which the dataset counts as drifted."""
    num_method: str | None = None
    """Evidently stat test for numeric columns (e.g. "ks", "wasserstein", "psi"); None: Evidently's default
    (K-S p-value up to 1,000 rows, normed Wasserstein distance above)."""
    cat_method: str | None = None
    threshold: float | None = None
    """The per-column threshold of the method; None: the method's default."""
    feature_names: tuple[str, ...] = ()
    """Names for the flattened input values, in order; empty: `input[i]`."""


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float | None
    """The method's statistic: a p-value (drift when low) or a distance (drift when high)."""
    threshold: float | None
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    rows: int
    reference_rows: int
    drift_share: float
    """Share of feature columns that drifted."""
    drifted_features: int
    features: int
    dataset_drift: bool
    drift_share_threshold: float
    columns: tuple[ColumnDrift, ...] = field(default=())
    predictions: tuple[ColumnDrift, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> DriftResult:
        fields = dict(doc)
        fields["columns"] = tuple(ColumnDrift(**c) for c in doc.get("columns", ()))
        fields["predictions"] = tuple(ColumnDrift(**c) for c in doc.get("predictions", ()))
        return cls(**fields)

    def score(self, column: str) -> float | None:
        for c in (*self.columns, *self.predictions):
            if c.column == column:
                return c.score
        return None


class DriftError(ValueError):
    """A window that cannot be judged (no rows, no features in common with the reference)."""


# --- records -> frame -----------------------------------------------------------------------


def _per_row(array: np.ndarray) -> np.ndarray | None:
    """[rows, ...] -> [rows, width]; None for a tensor without a row dimension."""
    if array.ndim == 0:
        return None
    return array.reshape(array.shape[0], -1)


def _prediction_column(array: np.ndarray) -> np.ndarray | None:
    rows = _per_row(array)
    if rows is None or rows.shape[1] == 0:
        return None
    if rows.shape[1] == 1:
        return rows[:, 0]
    if rows.dtype.kind == "f":
        classes: np.ndarray = np.argmax(rows, axis=1)  # class scores: the predicted class
        return classes
    return None


def to_frame(records: Sequence[PredictionRecord], feature_names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per request row: feature columns from the inputs, `pred:<output>` columns from the outputs.

    Non-numeric inputs (BYTES) are skipped; a record whose tensors disagree on the row count is skipped.
    """
    import pandas as pd

    blocks: dict[str, list[np.ndarray]] = {}
    for record in records:
        columns: dict[str, np.ndarray] = {}
        rows: int | None = None
        for name, array in record.inputs.items():
            per_row = _per_row(np.asarray(array))
            if per_row is None or per_row.dtype.kind not in "biuf":
                continue
            rows = per_row.shape[0] if rows is None else rows
            if per_row.shape[0] != rows:
                columns = {}
                break
            width = per_row.shape[1]
            for i in range(width):
                columns[name if width == 1 else f"{name}[{i}]"] = per_row[:, i]
        if not columns or rows is None:
            continue
        for name, array in record.outputs.items():
            column = _prediction_column(np.asarray(array))
            if column is not None and column.shape[0] == rows and column.dtype.kind in "biuf":
                columns[PREDICTION_PREFIX + name] = column
        for name, values in columns.items():
            blocks.setdefault(name, []).append(values)
    lengths = {name: sum(len(v) for v in parts) for name, parts in blocks.items()}
    full = max(lengths.values(), default=0)
    frame = pd.DataFrame({name: np.concatenate(parts) for name, parts in blocks.items() if lengths[name] == full})
    features = [c for c in frame.columns if not c.startswith(PREDICTION_PREFIX)]
    if feature_names and len(feature_names) == len(features):
        frame = frame.rename(columns=dict(zip(features, feature_names, strict=True)))
    return frame


# --- the report -----------------------------------------------------------------------------


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def compute(current: pd.DataFrame, reference: pd.DataFrame, options: DriftOptions) -> tuple[DriftResult, Any]:
    """Judge `current` against `reference`; returns the result and Evidently's snapshot (for its HTML)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    if current.empty or reference.empty:
        raise DriftError(f"cannot judge drift on {len(current)} current rows against {len(reference)} reference rows")
    common = [c for c in current.columns if c in reference.columns]
    features = [c for c in common if not c.startswith(PREDICTION_PREFIX)]
    predictions = [c for c in common if c.startswith(PREDICTION_PREFIX)]
    if not features:
        raise DriftError(
            f"no feature columns in common: current has {list(current.columns)[:8]}, "
            f"reference has {list(reference.columns)[:8]}"
        )
    categorical = [c for c in predictions if current[c].dtype.kind in "biu" and reference[c].dtype.kind in "biu"]
    numerical = [c for c in common if c not in categorical]
    definition = DataDefinition(numerical_columns=numerical, categorical_columns=categorical)
    method_args: dict[str, Any] = {"drift_share": options.drift_share}
    if options.num_method is not None:
        method_args["num_method"] = options.num_method
    if options.cat_method is not None:
        method_args["cat_method"] = options.cat_method
    if options.threshold is not None:
        method_args["threshold"] = options.threshold
    value_args: dict[str, Any] = {}
    if options.threshold is not None:
        value_args["threshold"] = options.threshold
    metrics: list[Any] = [DataDriftPreset(columns=features, **method_args)]
    for column in predictions:
        method = options.cat_method if column in categorical else options.num_method
        metrics.append(ValueDrift(column=column, **({"method": method} if method else {}), **value_args))
    report = Report(metrics, include_tests=True)
    snapshot = report.run(
        current_data=Dataset.from_pandas(current[common], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[common], data_definition=definition),
    )
    doc = snapshot.dict()
    failed = {t["metric_config"]["metric_id"] for t in doc.get("tests", ()) if _status(t) == "FAIL"}
    columns: dict[str, ColumnDrift] = {}
    for metric in doc["metrics"]:
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        column = str(config["column"])
        columns[column] = ColumnDrift(
            column=column,
            method=str(config.get("method", "")),
            score=_finite(metric.get("value")),
            threshold=_finite(config.get("threshold")),
            drifted=metric["id"] in failed,
        )
    feature_drift = tuple(columns[c] for c in features if c in columns)
    drifted = sum(1 for c in feature_drift if c.drifted)
    share = drifted / len(features)
    result = DriftResult(
        rows=len(current),
        reference_rows=len(reference),
        drift_share=share,
        drifted_features=drifted,
        features=len(features),
        dataset_drift=share >= options.drift_share,
        drift_share_threshold=options.drift_share,
        columns=feature_drift,
        predictions=tuple(columns[c] for c in predictions if c in columns),
    )
    return result, snapshot


def _status(test: Mapping[str, Any]) -> str:
    status = test.get("status")
    return str(getattr(status, "value", status))
