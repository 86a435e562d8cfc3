"""The table simulator: shape, determinism, sites, ages, sex, signal, files, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurounlearn.data.simulate import AGE_PRESETS
from neurounlearn.data.simulate_table import GENERATOR, simulate_table
from neurounlearn.errors import InputError
from neurounlearn.evaluation.leakage import RIDGE_ALPHAS


def _regions(table: pd.DataFrame) -> np.ndarray:
    return table.filter(regex="^region_").to_numpy()


def _site_bacc(table: pd.DataFrame) -> float:
    """Cross-validated balanced accuracy of a logistic regression reading site from regions."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, _regions(table), table.site, cv=cv)
    return float(balanced_accuracy_score(table.site, predicted))


def test_same_seed_gives_identical_table_and_another_seed_does_not() -> None:
    first = simulate_table(subjects=12, features=5, seed=3)
    pd.testing.assert_frame_equal(first, simulate_table(subjects=12, features=5, seed=3))
    other = simulate_table(subjects=12, features=5, seed=4)
    assert not np.allclose(_regions(first), _regions(other))
    assert not first.age.equals(other.age)


def test_columns_and_dtypes() -> None:
    table = simulate_table(sites=2, subjects=6, features=4)
    expected = ["subject", "site", "age", "sex", "tiv"] + [f"region_0{j}" for j in range(4)]
    assert list(table.columns) == expected
    assert table.subject.map(type).eq(str).all() and table.site.map(type).eq(str).all()
    assert table.sex.isin(["F", "M"]).all()
    for column in ["age", "tiv", *expected[5:]]:
        assert table[column].dtype == np.float64, column


def test_region_names_get_three_digits_from_region_100() -> None:
    table = simulate_table(sites=2, subjects=6, features=101)
    names = table.filter(regex="^region_").columns
    assert names[0] == "region_000" and names[-1] == "region_100"


def test_total_subjects_spread_evenly_with_remainder_to_first_sites() -> None:
    table = simulate_table(sites=3, subjects=11, features=4)
    assert table.site.value_counts().sort_index().to_dict() == {"A": 4, "B": 4, "C": 3}


def test_subjects_per_site_from_a_list() -> None:
    table = simulate_table(sites=3, subjects=[7, 3, 5], features=4)
    assert table.site.value_counts().sort_index().to_dict() == {"A": 7, "B": 3, "C": 5}


def test_subject_ids_are_unique_across_sites_and_numbered_from_one() -> None:
    table = simulate_table(sites=3, subjects=[4, 3, 3], features=4)
    assert table.subject.tolist() == [f"sub-{i:04d}" for i in range(1, 11)]


def test_paper_ages_stay_in_each_sites_range() -> None:
    table = simulate_table(sites=3, subjects=150, features=4, ages="paper")
    for k, site in enumerate("ABC"):
        low, high = AGE_PRESETS["paper"][k]
        ages = table.age[table.site == site]
        assert ages.between(low, high).all(), site
        assert ages.max() - ages.min() > 0.7 * (high - low), site  # the range is used, too
    assert (table.age.round(1) == table.age).all()


@pytest.mark.parametrize(("ratio", "sex"), [(0.0, "F"), (1.0, "M")])
def test_sex_ratio_zero_or_one_gives_a_single_sex(ratio: float, sex: str) -> None:
    table = simulate_table(subjects=30, features=4, sex_ratio=ratio)
    assert set(table.sex) == {sex}


def test_sex_ratio_per_site() -> None:
    table = simulate_table(subjects=30, features=4, sex_ratio=[0.0, 1.0, 0.0])
    assert table.groupby("site").sex.agg(set).to_dict() == {"A": {"F"}, "B": {"M"}, "C": {"F"}}


def test_regions_are_positive_volumes_with_two_decimals() -> None:
    values = _regions(simulate_table(subjects=30, features=10))
    assert (values > 0).all()
    np.testing.assert_array_equal(values, np.round(values, 2))


def test_site_strength_zero_leaves_sites_indistinguishable() -> None:
    # Measured over seeds 0-29: 0.27-0.42 (chance is 1/3).
    assert _site_bacc(simulate_table(subjects=300, site_strength=0.0)) < 0.5


def test_default_site_strength_makes_sites_separable() -> None:
    # Measured over seeds 0-29 at 150 subjects: 0.95-1.0.
    assert _site_bacc(simulate_table(subjects=150)) >= 0.9


def test_age_is_predictable_from_regions() -> None:
    # Measured over seeds 0-29 at 300 subjects: MAE 3.8-6.3 years; predicting the mean age
    # gives about 16.
    table = simulate_table(subjects=300)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    cv = KFold(5, shuffle=True, random_state=0)
    predicted = cross_val_predict(model, _regions(table), table.age, cv=cv)
    assert mean_absolute_error(table.age, predicted) < 7.5


def test_another_sites_size_changes_neither_this_sites_scanner_nor_subjects() -> None:
    small = simulate_table(subjects=[4, 5, 5], features=6)
    large = simulate_table(subjects=[9, 5, 5], features=6)
    site_b = [c for c in small.columns if c != "subject"]
    pd.testing.assert_frame_equal(
        small[small.site == "B"][site_b].reset_index(drop=True),
        large[large.site == "B"][site_b].reset_index(drop=True),
    )


def test_writes_manifest_and_generation_json(tmp_path: Path) -> None:
    out = tmp_path / "new" / "table"
    table = simulate_table(out, subjects=9, features=4, seed=2)
    pd.testing.assert_frame_equal(pd.read_csv(out / "manifest.csv"), table)
    meta = json.loads((out / "generation.json").read_text())
    assert meta["generator"] == GENERATOR
    assert meta["seed"] == 2
    assert len(meta["anatomy_model"]["age_slope_b"]["values"]) == 4
    assert set(meta["sites"]) == {"A", "B", "C"}
    assert not list(out.glob("*.tmp"))


def test_rerun_replaces_an_earlier_table_simulation(tmp_path: Path) -> None:
    simulate_table(tmp_path, subjects=9, features=4, seed=1)
    table = simulate_table(tmp_path, subjects=12, features=4, seed=2)
    assert len(pd.read_csv(tmp_path / "manifest.csv")) == len(table) == 12


def test_refuses_a_non_empty_folder_that_holds_no_table_simulation(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty") as caught:
        simulate_table(tmp_path, subjects=9, features=4)
    assert caught.value.problem.hint
    assert not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"sites": 1}, "sites"),
        ({"features": 3}, "features"),
        ({"site_strength": -0.5}, "site_strength"),
        ({"age_effect": -1.0}, "age_effect"),
        ({"noise": float("nan")}, "noise"),
        ({"sex_ratio": [0.5, 0.5]}, "sex ratio"),
        ({"sex_ratio": 1.5}, "sex_ratio"),
        ({"sex_ratio": [0.5, -0.1, 0.5]}, "site B"),
        ({"subjects": [5, 2, 5]}, "site B has 2 subjects"),
        ({"subjects": 8}, "at least 3 per site"),
        ({"subjects": [5, 5]}, "2 subject count"),
        ({"ages": "unknown"}, "age preset"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_input_error(arguments: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        simulate_table(**{"features": 4, **arguments})  # type: ignore[arg-type]
