from __future__ import annotations

import itertools

import numpy as np
import pytest

from monitors.shadow_compare import OutputRule, compare_batch, compare_outputs


def test_classifier_scores_agree_on_argmax_despite_numeric_differences() -> None:
    primary = {"probabilities": np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)}
    shadow = {"probabilities": np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]], np.float32)}
    result = compare_outputs(primary, shadow)
    assert result.agreed
    assert result.mean_abs_diff is not None and 0.05 < result.mean_abs_diff < 0.15


def test_a_different_top_class_disagrees() -> None:
    primary = {"p": np.array([[0.7, 0.3]], np.float32)}
    shadow = {"p": np.array([[0.3, 0.7]], np.float32)}
    assert compare_outputs(primary, shadow).disagreeing == ("p",)


def test_regression_outputs_use_tolerance_per_output() -> None:
    primary = {"y": np.array([1.0, 2.0]), "z": np.array([1.0, 2.0])}
    shadow = {"y": np.array([1.01, 2.0]), "z": np.array([1.01, 2.0])}
    loose = {"y": OutputRule(mode="close", atol=0.05)}
    assert compare_outputs(primary, shadow, loose).disagreeing == ("z",)


def test_labels_must_match_exactly_and_shape_mismatch_disagrees() -> None:
    assert compare_outputs({"label": np.array([1, 2])}, {"label": np.array([1, 2])}).agreed
    assert not compare_outputs({"label": np.array([1, 2])}, {"label": np.array([1, 3])}).agreed
    assert not compare_outputs({"y": np.zeros((2, 3))}, {"y": np.zeros((3, 3))}).agreed
    assert not compare_outputs({"y": np.zeros(2)}, {}).agreed


def test_a_batch_compared_at_once_gives_each_request_the_verdict_it_gets_alone() -> None:
    """compare_batch against compare_outputs request by request, on random batches of every mode: classifier
    scores (argmax), regression values near the tolerance (close), labels (exact), a rank-1 output under an
    explicit argmax rule, and requests of 1 to 4 rows."""
    rng = np.random.default_rng(3)
    rules = {"y": OutputRule(mode="close", atol=0.05), "r": OutputRule(mode="argmax")}
    for trial in range(300):
        size = rng.integers(1, 8)
        counts = [1] * size if trial % 3 == 0 else list(rng.integers(1, 5, size=size))  # one-row requests too
        total = sum(counts)
        primary = {
            "scores": rng.random((total, 3)).astype(np.float32),
            "y": rng.standard_normal((total, 1)),
            "label": rng.integers(0, 3, (total,)),
            "r": rng.random(total),
        }
        shadow = {
            "scores": primary["scores"] + rng.normal(0, 0.2, (total, 3)).astype(np.float32),
            "y": primary["y"] + rng.normal(0, 0.03, (total, 1)),
            "label": np.where(rng.random(total) < 0.1, 9, primary["label"]),
            "r": primary["r"] + rng.normal(0, 0.1, total),
        }
        together = compare_batch(primary, shadow, counts, rules)
        offsets = np.cumsum([0, *counts])
        for i, (start, end) in enumerate(itertools.pairwise(offsets)):
            alone = compare_outputs(
                {k: v[start:end] for k, v in primary.items()}, {k: v[start:end] for k, v in shadow.items()}, rules
            )
            assert together[i].agreed == alone.agreed and together[i].disagreeing == alone.disagreeing
            assert together[i].mean_abs_diff == pytest.approx(alone.mean_abs_diff, rel=1e-9)
    assert not any(c.agreed for c in compare_batch({"y": np.zeros((3, 2))}, {"y": np.zeros((3, 3))}, [1, 2]))
    assert [c.disagreeing for c in compare_batch({"y": np.zeros(3)}, {}, [2, 1])] == [("y",), ("y",)]
