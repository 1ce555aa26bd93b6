"""Compare a shadow version's answer with the primary's. Pure: arrays in, a verdict out.

Per output, one of three modes: `argmax` (classifier scores: rows agree when the top class
does; the default for float outputs of shape [rows, k>1]), `close` (numeric tolerance), and
`exact` (integers, booleans, labels). The answer agrees when every shared output agrees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Mode = Literal["auto", "argmax", "close", "exact"]


@dataclass(frozen=True)
class OutputRule:
    mode: Mode = "auto"
    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass(frozen=True)
class Comparison:
    agreed: bool
    mean_abs_diff: float | None
    """Over the float outputs both answers have; None when there are none."""
    disagreeing: tuple[str, ...] = ()


def _floating(array: np.ndarray) -> bool:
    return array.dtype.kind == "f"  # np.issubdtype(dtype, np.floating), at a tenth of its cost


def _all_per_row(flags: np.ndarray, rows: int) -> np.ndarray:
    """Whether every element of each row is set (`.reshape(rows, -1).all(axis=1)`, without its Python layer)."""
    return flags if flags.ndim == 1 else np.logical_and.reduce(flags.reshape(rows, -1), axis=1)


def _mode(array: np.ndarray, rule: OutputRule) -> Mode:
    if rule.mode != "auto":
        return rule.mode
    if not _floating(array):
        return "exact"
    if array.ndim == 2 and array.shape[1] > 1:
        return "argmax"
    return "close"


def compare_outputs(
    primary: Mapping[str, np.ndarray],
    shadow: Mapping[str, np.ndarray],
    rules: Mapping[str, OutputRule] | None = None,
    default: OutputRule = OutputRule(),
) -> Comparison:
    rules = rules or {}
    disagreeing: list[str] = []
    diffs: list[float] = []
    for name, want in primary.items():
        got = shadow.get(name)
        if got is None or got.shape != want.shape:
            disagreeing.append(name)
            continue
        rule = rules.get(name, default)
        mode = _mode(want, rule)
        if _floating(want) and _floating(got):
            diffs.append(float(np.mean(np.abs(want.astype(np.float64) - got.astype(np.float64)))) if want.size else 0.0)
        if mode == "argmax":
            same = want.ndim >= 1 and bool(np.array_equal(np.argmax(want, axis=-1), np.argmax(got, axis=-1)))
        elif mode == "close":
            same = bool(np.allclose(want, got, atol=rule.atol, rtol=rule.rtol))
        else:
            same = bool(np.array_equal(want, got))
        if not same:
            disagreeing.append(name)
    return Comparison(
        agreed=not disagreeing,
        mean_abs_diff=float(np.mean(diffs)) if diffs else None,
        disagreeing=tuple(disagreeing),
    )


def compare_batch(
    primary: Mapping[str, np.ndarray],
    shadow: Mapping[str, np.ndarray],
    row_counts: Sequence[int],
    rules: Mapping[str, OutputRule] | None = None,
    default: OutputRule = OutputRule(),
) -> list[Comparison]:
    """`compare_outputs` for each request of a batch at once: `primary` and `shadow` hold the requests' rows one
    after the other (`row_counts` of them each). A few numpy calls per output for the whole batch instead of a
    dozen per request: the verdicts and differences are the ones `compare_outputs` gives each request alone."""
    agreed, means, disagreeing = _verdicts(primary, shadow, row_counts, rules or {}, default, names=True)
    if disagreeing is None:
        return [Comparison(a, d) for a, d in zip(agreed, means, strict=True)]
    return [Comparison(a, d, tuple(names)) for a, d, names in zip(agreed, means, disagreeing, strict=True)]


def batch_verdicts(
    primary: Mapping[str, np.ndarray],
    shadow: Mapping[str, np.ndarray],
    row_counts: Sequence[int],
    rules: Mapping[str, OutputRule] | None = None,
    default: OutputRule = OutputRule(),
) -> tuple[list[bool], list[float | None]]:
    """`compare_batch`'s verdicts and mean differences as two lists, without an object per request (the
    gateway's shadow counts and logs them; it does not name the outputs that disagreed)."""
    agreed, means, _ = _verdicts(primary, shadow, row_counts, rules or {}, default, names=False)
    return agreed, means


def _verdicts(
    primary: Mapping[str, np.ndarray],
    shadow: Mapping[str, np.ndarray],
    row_counts: Sequence[int],
    rules: Mapping[str, OutputRule],
    default: OutputRule,
    names: bool,
) -> tuple[list[bool], list[float | None], list[list[str]] | None]:
    n = len(row_counts)
    total = int(sum(row_counts))
    one_row_each = total == n  # the common case (one-row requests): no request spans rows to fold
    starts = np.concatenate(([0], np.cumsum(row_counts)[:-1])).astype(np.intp) if not one_row_each else None
    counts = np.asarray(row_counts, dtype=np.float64)
    agreed = np.ones(n, dtype=bool)
    disagreeing: list[list[str]] | None = None
    diff_sum = np.zeros(n)
    diff_outputs = 0
    for name, want in primary.items():
        got = shadow.get(name)
        if got is None or got.shape != want.shape or want.ndim == 0 or want.shape[0] != total:
            same = np.zeros(n, dtype=bool)
        else:
            rule = rules.get(name, default)
            mode = _mode(want, rule)
            if _floating(want) and _floating(got):
                diff_outputs += 1
                if want.size:
                    gaps = np.abs(want.astype(np.float64) - got.astype(np.float64)).reshape(total, -1)
                    per_row = np.add.reduce(gaps, axis=1) / gaps.shape[1]  # .mean(axis=1), without its Python layer
                    diff_sum += per_row if starts is None else np.add.reduceat(per_row, starts) / counts
            if mode == "argmax" and want.ndim >= 2:
                rows_same = _all_per_row(np.argmax(want, axis=-1) == np.argmax(got, axis=-1), total)
            elif mode == "argmax":  # a rank-1 output: each request's top row, as compare_outputs takes it
                rows_same = None
                first_rows = starts if starts is not None else range(n)
                same = np.array(
                    [
                        np.argmax(want[s : s + c]) == np.argmax(got[s : s + c])
                        for s, c in zip(first_rows, row_counts, strict=True)
                    ]
                )
            elif mode == "close":
                rows_same = _all_per_row(np.isclose(want, got, atol=rule.atol, rtol=rule.rtol), total)
            else:
                rows_same = _all_per_row(np.asarray(want == got), total)
            if rows_same is not None:
                if starts is None:
                    same = rows_same
                else:
                    same = np.logical_and.reduceat(rows_same, starts) if total else np.ones(n, dtype=bool)
        agreed &= same
        if names and not np.logical_and.reduce(same):
            if disagreeing is None:
                disagreeing = [[] for _ in range(n)]
            for i in np.flatnonzero(~same).tolist():
                disagreeing[i].append(name)
    # Plain Python values at once (`tolist`), not a numpy scalar per request.
    means: list[float | None] = (diff_sum / diff_outputs).tolist() if diff_outputs else [None] * n
    return agreed.tolist(), means, disagreeing
