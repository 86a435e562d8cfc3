"""Subject-level, site-stratified, seeded splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurounlearn.data.bundled import openneuro_transfer
from neurounlearn.data.splits import make_splits, split_sizes, splits_frame
from neurounlearn.errors import InputError


def cohort(sizes: dict[str, int], repeats: int = 2) -> pd.DataFrame:
    """Sites with the given numbers of subjects; every subject has ``repeats`` rows."""
    rows = [
        {"subject": f"{site}-{i}", "site": site, "session": r}
        for site, n in sizes.items()
        for i in range(n)
        for r in range(repeats)
    ]
    return pd.DataFrame(rows)


def split(df: pd.DataFrame, seed: int = 0, val: float = 0.15, test: float = 0.2) -> pd.Series:
    return make_splits(
        df,
        id_column="subject",
        site_column="site",
        seed=seed,
        val_fraction=val,
        test_fraction=test,
    )


SIZES = {"a": 20, "b": 9, "c": 3, "d": 40}


def test_rows_of_one_subject_never_straddle():
    df = cohort(SIZES, repeats=3)
    sides = split(df).groupby(df["subject"]).nunique()
    assert (sides == 1).all()


def test_every_site_appears_in_every_split():
    df = cohort(SIZES)
    table = pd.crosstab(df["site"], split(df))
    assert list(table.columns) == ["test", "train", "val"]
    assert (table > 0).all().all()


def test_same_seed_same_split():
    df = cohort(SIZES)
    pd.testing.assert_series_equal(split(df, seed=3), split(df, seed=3))


def test_other_seed_other_split():
    df = cohort(SIZES)
    assert not split(df, seed=0).equals(split(df, seed=1))


def test_fractions_roughly_respected():
    df = cohort({"a": 100, "b": 60}, repeats=1)
    shares = split(df, val=0.15, test=0.2).value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.02)
    assert shares["val"] == pytest.approx(0.15, abs=0.02)


def test_row_order_does_not_change_the_split():
    df = cohort(SIZES)
    shuffled = df.sample(frac=1, random_state=1)
    pd.testing.assert_series_equal(split(shuffled).sort_index(), split(df))


def test_index_is_kept():
    df = cohort(SIZES).set_index(pd.Index(np.arange(100, 100 + 2 * sum(SIZES.values()))))
    assert split(df).index.equals(df.index)


def test_adding_a_site_leaves_other_sites_alone():
    small = cohort({"a": 20, "b": 9})
    large = cohort({"a": 20, "b": 9, "z": 12})
    pd.testing.assert_series_equal(split(small), split(large).iloc[: len(small)])


def test_id_at_two_sites_follows_its_first_site():
    df = pd.concat(
        [cohort({"a": 5, "b": 5}), pd.DataFrame({"subject": ["a-0"], "site": ["b"]})],
        ignore_index=True,
    )
    result = split(df)
    assert result[df["subject"] == "a-0"].nunique() == 1
    alone = split(cohort({"a": 5, "b": 5}))
    assert result.iloc[0] == alone.iloc[0]


def test_small_sites_keep_a_training_subject():
    assert split_sizes(1, 0.15, 0.2) == (1, 0, 0)
    assert split_sizes(2, 0.15, 0.2) == (1, 0, 1)
    assert split_sizes(3, 0.4, 0.4) == (1, 1, 1)
    assert split_sizes(10, 0.15, 0.2) == (6, 2, 2)


def test_negative_seed_is_an_input_error():
    with pytest.raises(InputError, match="seed"):
        split(cohort(SIZES), seed=-1)


def test_empty_site_is_an_input_error():
    df = cohort(SIZES)
    df.loc[3, "site"] = None
    with pytest.raises(InputError, match="row 4, column 'site'"):
        split(df)


def test_splits_frame_columns_and_rows():
    df = cohort({"a": 3, "b": 3})
    frame = splits_frame(df, split(df), "subject", "site")
    assert list(frame.columns) == ["row", "subject", "site", "split"]
    assert frame["row"].tolist() == list(range(1, len(df) + 1))
    assert set(frame["split"]) == {"train", "val", "test"}


def test_bundled_repeat_sessions_stay_together():
    df = openneuro_transfer()
    result = make_splits(
        df,
        id_column="sub_id",
        site_column="site",
        seed=0,
        val_fraction=0.15,
        test_fraction=0.2,
    )
    repeated = df["sub_id"].duplicated(keep=False)
    assert repeated.sum() == 56
    assert (result[repeated].groupby(df["sub_id"][repeated]).nunique() == 1).all()
