"""Task metrics: exact values, NaN handling, the brain-age bias and its correction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neurounlearn.errors import InputError
from neurounlearn.evaluation.metrics import (
    apply_bias_correction,
    brain_age_bias,
    error_split,
    fit_bias_correction,
    headline,
    paired_sites,
    regression_metrics,
    task_metrics,
)


def _shrunk_predictions(seed: int, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Ages and predictions pulled halfway toward the mean, like a typical brain-age model."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    pred = 50 + 0.5 * (age - 50) + rng.normal(0, 2, n)
    return age, pred


def test_regression_metrics_exact_values() -> None:
    result = regression_metrics([10.0, 20.0, 30.0, 40.0], [12.0, 18.0, 33.0, 40.0])
    assert result["mae"] == pytest.approx(7 / 4)
    assert result["rmse"] == pytest.approx(np.sqrt(17 / 4))
    assert result["r2"] == pytest.approx(1 - 17 / 500)
    assert result["pearson_r"] == pytest.approx(
        np.corrcoef([10, 20, 30, 40], [12, 18, 33, 40])[0, 1]
    )
    assert result["n"] == 4


def test_rows_with_unknown_truth_are_ignored() -> None:
    result = regression_metrics([10.0, np.nan, 30.0], [11.0, 99.0, 29.0])
    assert result["n"] == 2
    assert result["mae"] == pytest.approx(1.0)


def test_undefined_values_are_none_and_json_is_valid() -> None:
    result = regression_metrics([10.0, 20.0, 30.0], [25.0, 25.0, 25.0], sites=["a", "a", "b"])
    assert result["pearson_r"] is None
    json.dumps(result, allow_nan=False)


def test_per_site_mae_uses_string_keys() -> None:
    result = regression_metrics([1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 3.0, 7.0], sites=[1, 1, 2, 2])
    assert result["per_site"] == {"1": {"mae": 0.5, "n": 2}, "2": {"mae": 1.5, "n": 2}}


def test_nan_prediction_for_labelled_subject_raises() -> None:
    with pytest.raises(InputError, match="NaN"):
        regression_metrics([1.0, 2.0], [1.0, np.nan])


def test_bias_slope_is_negative_for_predictions_shrunk_toward_the_mean() -> None:
    age, pred = _shrunk_predictions(0)
    bias = brain_age_bias(age, pred)
    assert bias["slope"] == pytest.approx(-0.5, abs=0.05)
    assert bias["spearman_delta_age"] < -0.8
    assert bias["spearman_p_value"] < 1e-6


def test_bias_correction_fit_on_validation_removes_the_slope_on_test() -> None:
    val_age, val_pred = _shrunk_predictions(1)
    test_age, test_pred = _shrunk_predictions(2)
    a, b = fit_bias_correction(val_age, val_pred)
    corrected = apply_bias_correction(test_pred, a, b)
    assert abs(brain_age_bias(test_age, corrected)["slope"]) < 0.1
    assert abs(brain_age_bias(test_age, test_pred)["slope"]) > 0.4


def test_offset_correction_removes_the_slope_and_lowers_the_mae_where_cole_stretches() -> None:
    rng = np.random.default_rng(5)
    age = rng.uniform(20, 80, 400)
    pred = 50 + 0.3 * (age - 50) + rng.normal(0, 6, 400)  # a shallow, noisy model
    val, test = slice(0, 200), slice(200, 400)
    a, b = fit_bias_correction(age[val], pred[val])
    cole = apply_bias_correction(pred[test], a, b)
    a, b = fit_bias_correction(age[val], pred[val], method="offset")
    offset = apply_bias_correction(pred[test], a, b, method="offset", y_true=age[test])
    raw = np.abs(pred[test] - age[test]).mean()
    # dividing by the slope 0.3 triples the noise; subtracting the offset never touches it
    assert np.abs(cole - age[test]).mean() > raw
    assert np.abs(offset - age[test]).mean() < raw
    # raw slope -0.7; what is left is the two halves' sampling difference (measured 0.13)
    assert abs(brain_age_bias(age[test], offset)["slope"]) < 0.25


def test_offset_correction_needs_the_true_ages_and_methods_are_checked() -> None:
    with pytest.raises(InputError, match="true age"):
        apply_bias_correction([30.0], 0.1, 2.0, method="offset")
    with pytest.raises(ValueError, match="choose one of: cole, offset"):
        fit_bias_correction([20.0, 40.0], [30.0, 40.0], method="beheshti")


def test_bias_correction_on_constant_ages_raises() -> None:
    with pytest.raises(InputError, match="constant"):
        fit_bias_correction([40.0, 40.0, 40.0], [38.0, 41.0, 44.0])


def test_task_metrics_corrected_mae_only_with_validation_arrays() -> None:
    test_age, test_pred = _shrunk_predictions(3)
    val_age, val_pred = _shrunk_predictions(4)
    sites = np.where(test_age > 50, "old_site", "young_site")
    plain = task_metrics(test_age, test_pred, sites)
    corrected = task_metrics(test_age, test_pred, sites, y_true_val=val_age, y_pred_val=val_pred)
    assert plain["kind"] == "regression"
    assert plain["bias_corrected_mae"] is None
    assert corrected["bias_corrected_mae"] < corrected["mae"]
    assert plain["offset_corrected_mae"] is None
    assert corrected["offset_corrected_mae"] < corrected["mae"]
    assert corrected["offset_correction"]["method"] == "offset"
    assert set(corrected["per_site"]) == {"old_site", "young_site"}
    json.dumps(corrected, allow_nan=False)


def test_task_metrics_needs_both_validation_arrays() -> None:
    with pytest.raises(InputError, match="both"):
        task_metrics([1.0, 2.0], [1.0, 2.0], None, y_true_val=[1.0, 2.0])


def test_error_split_separates_offset_slope_and_spread() -> None:
    truth = np.linspace(20.0, 40.0, 21)
    noise = np.tile([0.5, -0.5], 11)[:21]
    pred = 30.0 + 0.5 * (truth - 30.0) + 4.0 + noise  # shrunk by half, 4 years too old
    split = error_split(truth, pred)
    assert split["offset"] == pytest.approx(4.0 + noise.mean())
    assert split["slope"] == pytest.approx(-0.5, abs=0.01)
    assert split["spread"] == pytest.approx(0.5, abs=0.02)
    assert split["mae_without_offset"] < split["mae"]


def test_error_split_of_one_age_has_no_slope() -> None:
    split = error_split([25.0, 25.0, 25.0], [26.0, 27.0, 28.0])
    assert split["offset"] == pytest.approx(2.0) and split["slope"] is None
    assert split["spread"] == pytest.approx(np.std([-1.0, 0.0, 1.0]))


def test_paired_sites_counts_wins_and_tests_them() -> None:
    arm = {f"s{i}": 1.0 for i in range(8)}
    base = {f"s{i}": 2.0 + i for i in range(8)}
    paired = paired_sites(arm, base, lower_is_better=True)
    assert (paired["wins"], paired["losses"]) == (8, 0)
    assert paired["sign_p"] == pytest.approx(2 / 2**8)
    assert paired["wilcoxon_p"] < 0.01
    flipped = paired_sites(base, arm, lower_is_better=False)
    assert flipped["wins"] == 8  # higher is better for an accuracy


def test_paired_sites_skips_sites_without_a_figure() -> None:
    paired = paired_sites({"a": 1.0, "b": None}, {"a": 2.0, "b": 3.0}, lower_is_better=True)
    assert paired["sites"] == 1 and paired["sign_p"] is None


def test_the_headline_figure_is_mae_for_regression_and_balanced_accuracy_for_classification():
    regression, classification = headline("regression"), headline("classification")
    assert (regression.metric, regression.label, regression.lower_is_better) == ("mae", "MAE", True)
    assert (classification.metric, classification.lower_is_better) == ("balanced_accuracy", False)
    with pytest.raises(ValueError, match="segmentation"):
        headline("segmentation")
