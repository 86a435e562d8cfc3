"""Numbers and tables as text: the dash for missing values, rounding, mean ± sd, markdown."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from neurounlearn.formatting import (
    DASH,
    MeanSD,
    fmt_mean_sd,
    fmt_number,
    is_missing,
    markdown_table,
    mean_sd,
)


@pytest.mark.parametrize("value", [None, float("nan"), np.float32("nan"), pd.NA, pd.NaT])
def test_missing_values_print_as_a_dash(value: object) -> None:
    assert is_missing(value)
    assert fmt_number(value) == "—" == DASH


@pytest.mark.parametrize("value", [0, 0.0, -1.5, np.int64(3), np.float32(0.25), "nan"])
def test_present_values_are_not_missing(value: object) -> None:
    assert not is_missing(value)


def test_dash_text_can_be_replaced() -> None:
    assert fmt_number(None, dash="n/a") == "n/a"
    assert fmt_mean_sd(None, dash="-") == "-"


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (0.456, 2, "0.46"),
        (3, 2, "3.00"),
        (12.345, 1, "12.3"),
        (0.6412, 3, "0.641"),
        (41.6, 0, "42"),
        (np.float32(0.125), 2, "0.12"),  # the float's own rounding, as f-strings do
        (np.int64(7), 1, "7.0"),
        (-0.004, 2, "-0.00"),
    ],
)
def test_numbers_are_rounded_to_fixed_digits(value: object, digits: int, text: str) -> None:
    assert fmt_number(value, digits) == text


def test_infinity_prints_as_inf_unless_only_finite_numbers_are_wanted() -> None:
    assert fmt_number(float("inf")) == "inf"
    assert fmt_number(float("-inf"), finite=True) == "—"
    assert fmt_number(1.0, finite=True) == "1.00"


def test_mean_sd_uses_the_sample_sd_and_drops_none() -> None:
    stat = mean_sd([2.0, None, 4.0, 9.0])
    assert stat == MeanSD(mean=5.0, sd=math.sqrt(13.0), n=3)  # ddof 1: 26 / 2
    assert stat.sd == pytest.approx(float(np.std([2.0, 4.0, 9.0], ddof=1)))


def test_mean_sd_of_one_value_has_sd_zero_and_of_none_has_neither() -> None:
    assert mean_sd([0.7]) == MeanSD(0.7, 0.0, 1)
    assert mean_sd([None, None]) == MeanSD(None, None, 0)
    assert mean_sd([]) == MeanSD(None, None, 0)


def test_mean_sd_with_a_nan_is_nan_and_prints_as_a_dash() -> None:
    stat = mean_sd([1.0, float("nan"), 2.0])
    assert stat.n == 3
    assert math.isnan(stat.mean or 0.0)
    assert math.isnan(stat.sd or 0.0)
    assert fmt_mean_sd(stat) == "—"


def test_mean_sd_accepts_ints_and_numpy_scalars() -> None:
    stat = mean_sd([np.int64(1), 2, np.float32(3.0)])
    assert (stat.mean, stat.sd, stat.n) == (2.0, 1.0, 3)
    assert isinstance(stat.mean, float)


def test_mean_sd_as_dict_with_and_without_n() -> None:
    stat = mean_sd([1, 3])
    assert stat.as_dict() == {"mean": 2.0, "sd": math.sqrt(2.0), "n": 2}
    assert list(stat.as_dict(with_n=False)) == ["mean", "sd"]


def test_mean_sd_text_from_a_result_or_a_stored_dict() -> None:
    assert fmt_mean_sd(mean_sd([1.0, 2.0, 3.0])) == "2.00 ± 1.00"
    assert fmt_mean_sd({"mean": 0.5, "sd": 0.0449}, 3) == "0.500 ± 0.045"
    assert fmt_mean_sd({"mean": 41.6, "sd": 2.4}, 0) == "42 ± 2"


def test_mean_sd_text_is_a_dash_without_a_mean() -> None:
    assert fmt_mean_sd(mean_sd([None])) == "—"
    assert fmt_mean_sd({"mean": None, "sd": None}) == "—"
    assert fmt_mean_sd({}) == "—"
    assert fmt_mean_sd(None) == "—"


def test_markdown_table_has_a_header_a_rule_and_one_line_per_row() -> None:
    text = markdown_table(["arm", "MAE", "BAcc"], [["baseline", "4.20", "0.61"], ["grl", "", "—"]])
    assert text.split("\n") == [
        "| arm | MAE | BAcc |",
        "|---|---|---|",
        "| baseline | 4.20 | 0.61 |",
        "| grl |  | — |",
    ]
    assert not text.endswith("\n")


def test_markdown_table_without_rows_is_header_and_rule() -> None:
    assert markdown_table(["a"], []) == "| a |\n|---|"
