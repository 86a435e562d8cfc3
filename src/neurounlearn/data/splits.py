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
        raise InputError(f"the seed must be 0 or more, got {seed}", hint="e.g. train.seed=0")
    assignment: dict[object, str] = {}
    for site, ids in _site_ids(df, id_column, site_column).items():
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


def _site_ids(df: pd.DataFrame, id_column: str, site_column: str) -> dict[object, list[object]]:
    """Each site's unique subject ids, sorted (an id at several sites counts at its first)."""
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
    return {
        site: sorted(first_site.index[first_site == site], key=str)
        for site in sorted(first_site.unique(), key=str)
    }


def kfold_splits(
    df: pd.DataFrame,
    *,
    id_column: str,
    site_column: str,
    folds: int,
    seed: int,
    val_fraction: float,
) -> list[pd.Series]:
    """Site-stratified, subject-level K-fold cross-fitting splits.

    Each site's ids (sorted, then shuffled with the same per-site stream as
    :func:`make_splits`) are dealt to the folds in turn, so every subject is in exactly one
    test fold and each site is spread over the folds as evenly as its size allows. In fold
    ``k`` the other folds' subjects are split again, per site, into validation
    (``val_fraction`` of them, at least one when the site has 3 or more) and training.

    Args:
        df: the checked manifest.
        id_column: subject id column.
        site_column: site column.
        folds: number of folds, 2 or more, at most the subject count of the smallest site.
        seed: non-negative integer.
        val_fraction: share of each site's non-test subjects for validation.

    Returns:
        ``folds`` Series of ``"train"``/``"val"``/``"test"`` with ``df``'s index.

    Raises:
        InputError: fewer than 2 folds, or a site with fewer subjects than folds.

    Examples:
        >>> df = pd.DataFrame({"subject": list("abcdefgh"), "site": ["x"] * 4 + ["y"] * 4})
        >>> splits = kfold_splits(df, id_column="subject", site_column="site", folds=2, seed=0,
        ...                       val_fraction=0.2)
        >>> [int((s == "test").sum()) for s in splits]
        [4, 4]
    """
    if seed < 0:
        raise InputError(f"the seed must be 0 or more, got {seed}", hint="e.g. train.seed=0")
    if folds < 2:
        raise InputError(f"the number of folds must be 2 or more, got {folds}", hint="e.g. 5 folds")
    by_site = _site_ids(df, id_column, site_column)
    small = {site: len(ids) for site, ids in by_site.items() if len(ids) < folds}
    if small:
        site, n = min(small.items(), key=lambda kv: kv[1])
        raise InputError(
            f"{folds} folds are more than site '{site}' holds: it has {n} subject(s), and "
            "every fold needs a test subject of every site",
            column=site_column,
            hint=f"use {max(2, n)} folds or fewer, or drop or merge the smallest site(s)",
        )
    fold_of: dict[object, int] = {}
    order_of: dict[object, list[object]] = {}
    for site, ids in by_site.items():
        shuffled = [ids[k] for k in _site_rng(seed, site).permutation(len(ids))]
        order_of[site] = shuffled
        for rank, subject in enumerate(shuffled):
            fold_of[subject] = rank % folds
    out = []
    for k in range(folds):
        assignment: dict[object, str] = {}
        for shuffled in order_of.values():
            rest = [s for s in shuffled if fold_of[s] != k]
            n_val = max(1, round(val_fraction * len(rest))) if len(rest) >= 2 else 0
            for rank, subject in enumerate(rest):
                assignment[subject] = "val" if rank < n_val else "train"
            assignment.update({s: "test" for s in shuffled if fold_of[s] == k})
        out.append(df[id_column].map(assignment).rename("split"))
    return out


def leave_one_site_out_splits(
    df: pd.DataFrame, *, id_column: str, site_column: str, seed: int, val_fraction: float
) -> dict[str, pd.Series]:
    """One split per site: all of that site's rows test, the other sites train/validation.

    The other sites are split per site as in :func:`kfold_splits` (``val_fraction`` to
    validation), so the held-out site is a scanner the model never saw.

    Returns:
        ``{site (as str): split Series}`` in sorted site order.
    """
    by_site = _site_ids(df, id_column, site_column)
    if len(by_site) < 2:
        raise InputError(
            f"leave-one-site-out needs at least 2 sites; found {len(by_site)}",
            column=site_column,
            hint="check the site column",
        )
    out: dict[str, pd.Series] = {}
    for held in by_site:
        assignment: dict[object, str] = {}
        for site, ids in by_site.items():
            if site == held:
                assignment.update({s: "test" for s in ids})
                continue
            shuffled = [ids[k] for k in _site_rng(seed, site).permutation(len(ids))]
            n_val = max(1, round(val_fraction * len(ids))) if len(ids) >= 2 else 0
            for rank, subject in enumerate(shuffled):
                assignment[subject] = "val" if rank < n_val else "train"
        out[str(held)] = df[id_column].map(assignment).rename("split")
    return out
