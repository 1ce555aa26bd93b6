"""Compare a shadow version's answer with the primary's. Pure: arrays in, a verdict out.

Per output, one of three modes: `argmax` (classifier scores: rows agree when the top class
does; the default for float outputs of shape [rows, k>1]), `close` (numeric tolerance), and
`exact` (integers, booleans, labels). The answer agrees when every shared output agrees.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def _mode(array: np.ndarray, rule: OutputRule) -> Mode:
    if rule.mode != "auto":
        return rule.mode
    if not np.issubdtype(array.dtype, np.floating):
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
        if np.issubdtype(want.dtype, np.floating) and np.issubdtype(got.dtype, np.floating):
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
