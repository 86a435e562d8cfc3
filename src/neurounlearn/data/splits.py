"""Subject-level, site-stratified, seeded train/validation/test splits.

Every row of one subject id lands on the same side (repeat sessions never straddle the split),
and every site contributes to train, validation and test in proportion. The split depends only
on the ids, their sites and the seed, never on the row order (ids are sorted before shuffling),
and each site draws from its own random stream, so adding a site leaves the others' splits as
they were.

Examples:
    >>> df = pd.DataFrame({"subject": list("abcdef"), "site": ["x"] * 3 + ["y"] * 3})
    >>> split = make_splits(df, id_column="subject", site_column="site", seed=0,
    ...                     val_fraction=0.2, test_fraction=0.2)
    >>> sorted(split.value_counts().items())
    [('test', 2), ('train', 2), ('val', 2)]
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from neurounlearn.errors import InputError

SPLITS = ("train", "val", "test")


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(n_train, n_val, n_test)`` for a site with ``n`` subjects.

    ``n_test = max(1, round(test_fraction * n))`` and likewise ``n_val``; the rest train. When
    that leaves no training subject, the larger of val/test (val on a tie) gives one up until
    train has one, so a site with 3 or more subjects always appears in all three splits.

    Examples:
        >>> split_sizes(10, 0.15, 0.2), split_sizes(3, 0.15, 0.2), split_sizes(2, 0.15, 0.2)
        ((6, 2, 2), (1, 1, 1), (1, 0, 1))
    """
    n_test = max(1, round(test_fraction * n))
    n_val = max(1, round(val_fraction * n))
    while n - n_val - n_test < 1 and n_val + n_test > 0:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n - n_val - n_test, n_val, n_test


def _site_rng(seed: int, site: object) -> np.random.Generator:
    # crc32, not hash(): Python salts str hashes per process, which would break reproducibility.
    return np.random.default_rng([seed, zlib.crc32(str(site).encode())])


def make_splits(
    df: pd.DataFrame,
    *,
    id_column: str,
    site_column: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> pd.Series:
    """Assign each row to ``"train"``, ``"val"`` or ``"test"``.

    Steps, per site (sites in sorted order):

    1. take the site's unique ids, sorted (so the row order of the file does not matter);
    2. shuffle them with ``numpy.random.default_rng([seed, crc32(site)])``;
    3. the first ``n_test`` go to test, the next ``n_val`` to validation, the rest to train
       (sizes from :func:`split_sizes`).

    An id that appears at several sites is one subject: it is split with the site of its first
    row (and counted only there).

    Args:
        df: the checked manifest.
        id_column: subject id column.
        site_column: site column.
        seed: non-negative integer; the same seed gives the same split.
        val_fraction: share of each site's subjects for validation.
        test_fraction: share of each site's subjects for testing.

    Returns:
        A Series of split names with ``df``'s index, named ``"split"``.

    Raises:
        InputError: a negative seed, or an empty id or site (run the manifest check first).
    """
    if seed < 0:
        raise InputError(f"the seed must be 0 or more, got {seed}", hint="e.g. --seed 0")
    for column in (id_column, site_column):
        missing = df[column].isna().to_numpy()
        if missing.any():
            raise InputError(
                "is empty; every row needs a subject id and a site before splitting",
                row=int(np.flatnonzero(missing)[0]) + 1,
                column=column,
                hint="fill it in or drop the row",
            )
    first_site = df.groupby(id_column, sort=False)[site_column].first()
    assignment: dict[object, str] = {}
    for site in sorted(first_site.unique(), key=str):
        ids = sorted(first_site.index[first_site == site], key=str)
        order = _site_rng(seed, site).permutation(len(ids))
        _, n_val, n_test = split_sizes(len(ids), val_fraction, test_fraction)
        for rank, k in enumerate(order):
            name = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            assignment[ids[k]] = name
    return df[id_column].map(assignment).rename("split")


def splits_frame(
    df: pd.DataFrame, split: pd.Series, id_column: str, site_column: str
) -> pd.DataFrame:
    """The table written to ``RUN_DIR/splits.csv``.

    Returns:
        Columns ``row`` (1-based data row of the manifest), the id column, the site column and
        ``split``, one line per manifest row, in manifest order.
    """
    if not split.index.equals(df.index):
        raise ValueError("split must have the same index as df (use make_splits(df, ...))")
    return pd.DataFrame(
        {
            "row": np.arange(1, len(df) + 1),
            id_column: df[id_column].to_numpy(),
            site_column: df[site_column].to_numpy(),
            "split": split.to_numpy(),
        }
    )
