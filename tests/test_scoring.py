"""Each task's scoring: how its targets and predictions become numbers and figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurounlearn.evaluation.scoring import scoring_of

CLASSES = ["F", "M"]


def test_class_labels_become_their_index_and_unknown_ones_nan() -> None:
    numbers = scoring_of("classification").numbers(np.array(["M", "F", None, "X"]), CLASSES)
    np.testing.assert_array_equal(numbers, [1.0, 0.0, np.nan, np.nan])


def test_a_numeric_target_reads_text_numbers_and_leaves_blanks_missing() -> None:
    numbers = scoring_of("regression").numbers(np.array(["31.5", "", 40], dtype=object), [])
    np.testing.assert_array_equal(numbers, [31.5, np.nan, 40.0])


def test_classification_predictions_are_probabilities_in_class_order() -> None:
    preds = pd.DataFrame({"prob_M": [0.9, 0.2], "prob_F": [0.1, 0.8]})
    sc = scoring_of("classification")
    prob = sc.prediction_array(preds, CLASSES)
    np.testing.assert_array_equal(prob, [[0.1, 0.9], [0.8, 0.2]])
    assert sc.column(np.vstack([prob, [np.nan, np.nan]]), CLASSES) == ["M", "F", None]
    assert sc.predicted(np.vstack([prob, [np.nan, np.nan]])).tolist() == [True, True, False]


def test_classes_are_the_labels_found_as_text_and_none_for_a_number() -> None:
    assert scoring_of("classification").classes(pd.Series(["M", "F", None, "M"])) == CLASSES
    assert scoring_of("regression").classes(pd.Series([30.0, 40.0])) == []


def test_only_a_numeric_target_is_bias_corrected_on_its_validation_rows() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(20, 80, 60)
    pred = 50 + 0.5 * (y - 50)  # regression to the mean, which Cole's correction undoes
    split = np.array(["train"] * 20 + ["val"] * 20 + ["test"] * 20)
    test = np.flatnonzero(split == "test")
    cole, offset = scoring_of("regression").corrected(y, pred, split, test)
    assert cole is not None and offset is not None
    np.testing.assert_allclose(cole, y[test], atol=1e-6)
    assert scoring_of("classification").corrected(y, pred, split, test) == [None, None]


def test_a_held_out_site_is_split_into_offset_slope_and_spread_for_a_number() -> None:
    y = np.array([30.0, 40.0, 50.0])
    figures = scoring_of("regression").external(y, y + 5, [])
    assert figures["offset"] == pytest.approx(5.0) and figures["mae"] == pytest.approx(5.0)
    labels = scoring_of("classification").external(
        np.array([0.0, 1.0]), np.array([[0.9, 0.1], [0.2, 0.8]]), CLASSES
    )
    assert labels == {"balanced_accuracy": 1.0, "n": 2}


def test_segmentation_has_no_scoring_of_this_kind() -> None:
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        scoring_of("segmentation")
