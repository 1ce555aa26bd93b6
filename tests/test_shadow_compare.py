from __future__ import annotations

import numpy as np

from monitors.shadow_compare import OutputRule, compare_outputs


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
