"""Read and check a feature-table manifest before anything trains.

A manifest is a CSV (or TSV) with one row per scan: an id column, a site column, the target,
confound columns and feature columns picked by a regex. :func:`find_problems` reports every
problem at once, each with its file, 1-based data row (the first row under the header is row 1)
and column, so a researcher can fix the whole file in one pass.

Examples:
    >>> spec = TableSpec(target="age", confounds=["site"], subsets={}, features=r"^lh_",
    ...                  id_column=None)
    >>> df, features, warnings = load_table("manifest.csv", spec)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from neurounlearn.errors import InputError, Problem, raise_if_errors
from neurounlearn.query import select

ID_CANDIDATES = ("subject", "sub_id", "participant_id", "subject_id", "id")

#: Row-level problems of one kind reported one by one before a single summary line.
MAX_ROW_PROBLEMS = 20
#: Names shown when a message lists columns or rows.
MAX_LISTED = 12


@dataclass
class TableSpec:
    """What a run uses from the manifest.

    Args:
        target: column to predict; ``None`` for predict/embed, where no target is needed.
        confounds: columns to unlearn (e.g. ``["site"]``); they must exist when training.
        subsets: confound name -> query (:mod:`neurounlearn.query`) restricting the rows that
            enter that confound's adversary (e.g. ``{"site": "18 <= age <= 35"}``); may be
            empty.
        features: regex applied with :func:`re.search` to every column name; ``None`` selects
            every numeric column that is not the id, site, target or a confound.
        id_column: subject id column; ``None`` picks the first of :data:`ID_CANDIDATES`
            present (exact name first, then ignoring case). There is no fall-back to the first
            column: a wrong guess would silently group unrelated rows in the split.
        site_column: column naming each scan's site (stratifies the split).
        min_subjects_per_site: fewest subjects (unique ids) a site needs when training, so
            that train, validation and test each get one.
        use_features: ``False`` for image inputs: no feature columns are selected or checked
            (the images are checked by :mod:`neurounlearn.data.volumes`).
        task: ``regression`` (the target must be numeric) or ``classification`` (any labels,
            at least two classes).
        confound_kinds: confound name -> ``categorical`` or ``continuous`` (numbers only);
            missing names are categorical.
        conditional: target-conditioned confounds -> their number of target bins (``None``:
            not given, an error with a regression target).
        unlabelled_sites: sites whose targets are hidden from training; each must exist.
        image_column: images: the column of image paths (a repeated id is judged by it).
        target_range: regression: ``(low, high)``; a target outside it is an error naming the
            row (``None``: any finite value up to :data:`MAX_TARGET` in size).
    """

    target: str | None
    confounds: list[str] = field(default_factory=list)
    subsets: dict[str, str] = field(default_factory=dict)
    features: str | None = None
    id_column: str | None = None
    site_column: str = "site"
    min_subjects_per_site: int = 3
    use_features: bool = True
    task: str = "regression"
    confound_kinds: dict[str, str] = field(default_factory=dict)
    conditional: dict[str, int | None] = field(default_factory=dict)
    unlabelled_sites: list[str] = field(default_factory=list)
    target_range: tuple[float, float] | None = None
    image_column: str | None = None


#: A regression target beyond this size cannot be trained on in float32 (its variance
#: overflows); far past any measurement in years, millimetres or cubic millimetres.
MAX_TARGET = 1e12

#: A numeric target with at most this many distinct values is taken for classes (e.g. sex 0/1).
MAX_AUTO_CLASSES = 2


def infer_task(values: pd.Series) -> tuple[str, str]:
    """``(task, reason)`` for a target column: classification when most of its values are not
    numbers or it has at most :data:`MAX_AUTO_CLASSES` distinct values, else regression (a
    numeric column with a few typos stays a regression target, and the typos are reported).

    Examples:
        >>> infer_task(pd.Series(["F", "M", "F"]))[0], infer_task(pd.Series([20.5, 31, 44]))[0]
        ('classification', 'regression')
    """
    known = values.dropna()
    n = int(known.nunique())
    if n and _non_numeric(known).mean() > 0.5:
        return "classification", f"is mostly not numbers ({n} distinct values)"
    if n <= MAX_AUTO_CLASSES:
        return "classification", f"has {n} distinct values"
    return "regression", f"is numeric with {n} distinct values"


# ----------------------------------------------------------------------------- small helpers


def preview_list(items: Sequence[object], limit: int = MAX_LISTED) -> str:
    """``a, b, c … (N more)`` — long lists of columns or rows stay readable."""
    shown = ", ".join(str(x) for x in items[:limit])
    more = len(items) - limit
    return shown + (f" … ({more} more)" if more > 0 else "")


def _columns_are(df: pd.DataFrame) -> str:
    return f"columns are: {preview_list(list(df.columns))}"


def _did_you_mean(name: str, df: pd.DataFrame) -> str:
    close = difflib.get_close_matches(name, [str(c) for c in df.columns], n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def missing_column_problem(
    df: pd.DataFrame, path: str | Path, name: str, who: str, hint: str
) -> Problem:
    """``who`` names column ``name``, which ``df`` lacks: the problem, with the columns there
    are and the closest one."""
    return Problem(
        f"{who} names column '{name}', which is not in the manifest; {_columns_are(df)}",
        file=path,
        column=name,
        hint=_did_you_mean(name, df) + hint,
    )


def cap_row_problems(
    problems: list[Problem], what: str, path: str | Path, hint: str | None
) -> list[Problem]:
    """The first :data:`MAX_ROW_PROBLEMS` problems, then one line counting the rest."""
    if len(problems) <= MAX_ROW_PROBLEMS:
        return problems
    rest = problems[MAX_ROW_PROBLEMS:]
    rows = [p.row for p in rest if p.row is not None]
    summary = Problem(
        f"… and {len(rest)} more rows with {what} (rows {preview_list(rows)})",
        file=path,
        hint=hint,
        severity=problems[0].severity,
    )
    return [*problems[:MAX_ROW_PROBLEMS], summary]


def _rows(mask: np.ndarray) -> list[int]:
    """1-based data row numbers where ``mask`` is true."""
    return [int(i) + 1 for i in np.flatnonzero(mask)]


def _non_numeric(values: pd.Series) -> np.ndarray:
    """True where a cell holds something that is not a number (empty cells are fine)."""
    if pd.api.types.is_numeric_dtype(values):
        return np.zeros(len(values), dtype=bool)
    coerced = pd.to_numeric(values, errors="coerce")
    return (coerced.isna() & values.notna()).to_numpy()


def _as_float(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


# ----------------------------------------------------------------------------- reading


def _separator(path: Path) -> str:
    return "\t" if path.suffix.lower() in {".tsv", ".tab"} else ","


def read_table(path: str | Path, *, text_columns: Iterable[str] = ID_CANDIDATES) -> pd.DataFrame:
    """Read a manifest as it is: every column kept, values not coerced.

    ``.tsv``/``.tab`` files are read tab-separated, anything else comma-separated. Columns named
    in ``text_columns`` (by default the usual id names) are read as text so that ids like
    ``001`` keep their leading zeros.

    Args:
        path: the CSV/TSV file.
        text_columns: columns to read as strings if present.

    Returns:
        The table with a RangeIndex (position ``i`` is data row ``i + 1``).

    Raises:
        InputError: the file is missing, a folder, empty, has only a header, repeats a column
            name, or cannot be parsed as CSV.

    Examples:
        >>> df = read_table("manifest.csv")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            "file not found",
            file=path,
            hint=f"check the path (relative paths start from {Path.cwd()})",
        )
    if path.is_dir():
        raise InputError(
            "is a folder, not a CSV file", file=path, hint="give the manifest file inside it"
        )
    sep = _separator(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh, delimiter=sep), [])
    except UnicodeDecodeError as err:
        raise InputError(
            f"is not UTF-8 text ({err.reason} at byte {err.start})",
            file=path,
            hint="save it as CSV UTF-8 (spreadsheet programs offer this under 'Save as')",
        ) from None
    if not [h for h in header if h.strip()]:
        raise InputError(
            "the file is empty (no header line)",
            file=path,
            hint="the first line must name the columns, e.g. subject,site,age,...",
        )
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        raise InputError(
            f"column name(s) {preview_list([repr(h) for h in repeated])} appear more than once "
            "in the header",
            file=path,
            column=repeated[0],
            hint="rename or delete the repeated columns",
        )
    text = set(text_columns)
    try:
        df = pd.read_csv(
            path,
            sep=sep,
            dtype={h: str for h in header if h in text},
            low_memory=False,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        raise InputError("the file is empty", file=path) from None
    except (pd.errors.ParserError, ValueError) as err:
        message = str(err).strip()
        match = re.search(r"line (\d+)", message)
        row = int(match.group(1)) - 1 if match else None
        raise InputError(
            f"could not be read as {'TSV' if sep == chr(9) else 'CSV'}: {message}",
            file=path,
            row=row,
            hint="check that row for an extra separator or an unclosed quote "
            "(values containing commas must be quoted)",
        ) from None
    if len(df) == 0:
        raise InputError(
            "has a header but no data rows", file=path, hint="add one row per scan under the header"
        )
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- columns


def _resolve_id(
    df: pd.DataFrame, requested: str | None, path: str | Path
) -> tuple[str | None, list[Problem]]:
    if requested is not None:
        if requested in df.columns:
            return requested, []
        return None, [
            missing_column_problem(
                df, path, requested, "data.id_column", "set data.id_column to the subject id column"
            )
        ]
    for name in ID_CANDIDATES:
        if name in df.columns:
            return name, []
    lowered = {str(c).lower(): str(c) for c in reversed(list(df.columns))}
    for name in ID_CANDIDATES:
        if name in lowered:
            return lowered[name], []
    return None, [
        Problem(
            f"no subject id column found (looked for {', '.join(ID_CANDIDATES)}); "
            f"{_columns_are(df)}",
            file=path,
            hint="name the id column with data.id_column=NAME, or add a 'subject' column",
        )
    ]


def find_id_column(df: pd.DataFrame, requested: str | None) -> str | None:
    """The subject id column as :func:`resolve_id_column` picks it, or ``None`` where there is
    none (the problem is :func:`find_problems`' to report)."""
    return _resolve_id(df, requested, "")[0]


def resolve_id_column(df: pd.DataFrame, requested: str | None, path: str | Path) -> str:
    """The subject id column: ``requested`` if given, else the first of :data:`ID_CANDIDATES`.

    Candidates are tried by exact name first, then ignoring case (``Subject``, ``ID``).

    Raises:
        InputError: ``requested`` is not a column, or no candidate is present.
    """
    name, problems = _resolve_id(df, requested, path)
    raise_if_errors(problems)
    assert name is not None
    return name


def _feature_problems(
    df: pd.DataFrame, regex: str | None, path: str | Path, exclude: Iterable[str]
) -> tuple[list[str], list[Problem]]:
    excluded = set(exclude)
    if regex is None:
        columns = [
            c for c in df.columns if c not in excluded and pd.api.types.is_numeric_dtype(df[c])
        ]
        if not columns:
            return [], [
                Problem(
                    "no numeric feature columns besides the id, site, target and confounds; "
                    + _columns_are(df),
                    file=path,
                    hint="pick feature columns with a regex, data.features=REGEX",
                )
            ]
        return columns, []
    try:
        pattern = re.compile(regex)
    except re.error as err:
        return [], [
            Problem(
                f"data.features '{regex}' is not a valid regular expression: {err}",
                file=path,
                hint="escape special characters with a backslash, e.g. '^lh_.*\\.thickness$'",
            )
        ]
    columns = [c for c in df.columns if pattern.search(str(c)) and c not in excluded]
    if not columns:
        return [], [
            Problem(
                f"data.features '{regex}' matches no feature column; {_columns_are(df)}",
                file=path,
                hint="the regex is searched in each column name, e.g. '^lh_' selects "
                "columns starting with lh_ (the id, site, target and confounds never count)",
            )
        ]
    problems = []
    for col in columns:
        bad = _non_numeric(df[col])
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            problems.append(
                Problem(
                    f"feature column is not numeric: row {first + 1} holds {df[col].iloc[first]!r}"
                    f" ({int(bad.sum())} non-numeric cell(s) in all)",
                    file=path,
                    row=first + 1,
                    column=str(col),
                    hint="use '.' as the decimal point and leave missing values empty, or "
                    "narrow data.features so that it leaves this column out",
                )
            )
    if len(problems) > MAX_ROW_PROBLEMS:
        more = problems[MAX_ROW_PROBLEMS:]
        problems = [
            *problems[:MAX_ROW_PROBLEMS],
            Problem(
                f"… and {len(more)} more non-numeric feature columns: "
                f"{preview_list([p.column for p in more])}",
                file=path,
            ),
        ]
    return columns, problems


def select_features(
    df: pd.DataFrame, regex: str | None, path: str | Path, *, exclude: Iterable[str] = ()
) -> list[str]:
    """Feature columns: names matched by ``regex`` (``re.search``), in file order.

    Args:
        df: the manifest.
        regex: pattern searched in each column name; ``None`` takes every numeric column.
        path: the manifest's path, for messages.
        exclude: columns never used as features even if matched (id, site, target, confounds).

    Raises:
        InputErrors: invalid regex, nothing matched, or a matched column holds text.

    Examples:
        >>> select_features(pd.DataFrame({"id": ["a"], "lh_x": [1.0]}), "^lh_", "m.csv")
        ['lh_x']
    """
    columns, problems = _feature_problems(df, regex, path, exclude)
    raise_if_errors(problems)
    return columns


# ----------------------------------------------------------------------------- checks


def _empty_cells(
    df: pd.DataFrame, column: str, path: str | Path, what: str, hint: str
) -> list[Problem]:
    missing = _rows(df[column].isna().to_numpy())
    problems = [
        Problem(f"{what} is empty", file=path, row=r, column=column, hint=hint) for r in missing
    ]
    return cap_row_problems(problems, f"an empty '{column}'", path, hint)


def _one_class_problem(values: pd.Series, path: str | Path, target: str) -> list[Problem]:
    classes = values.dropna().astype(str).unique()
    if len(classes) >= 2:
        return []
    return [
        Problem(
            f"classification target '{target}' has only one class ({classes[0]!r}); there "
            "is nothing to tell apart",
            file=path,
            column=target,
            hint="use data with at least two classes, or data.task=regression for a number",
        )
    ]


def _target_problems(
    df: pd.DataFrame,
    path: str | Path,
    target: str,
    training: bool,
    task: str = "regression",
    target_range: tuple[float, float] | None = None,
) -> list[Problem]:
    values = df[target]
    if training and values.isna().all():
        return [
            Problem(
                f"target '{target}' is empty in every row; there is nothing to train on",
                file=path,
                column=target,
                hint="fill in the target, or name another column with data.target",
            )
        ]
    if task == "classification":
        return _one_class_problem(values, path, target) if training else []
    hint = (
        "write a number ('.' as the decimal point), or leave the cell empty if unknown; for "
        "labels such as sex or diagnosis set data.task=classification"
    )
    bad = _non_numeric(values)
    problems = [
        Problem(
            f"target '{target}' is not a number: {values.iloc[r - 1]!r}",
            file=path,
            row=r,
            column=target,
            hint=hint,
        )
        for r in _rows(bad)
    ]
    problems = cap_row_problems(problems, f"a non-numeric '{target}'", path, hint)
    infinite = _rows(np.isinf(_as_float(values)))
    inf_problems = [
        Problem(f"target '{target}' is infinite", file=path, row=r, column=target, hint=hint)
        for r in infinite
    ]
    problems += cap_row_problems(inf_problems, f"an infinite '{target}'", path, hint)
    return problems + _range_problems(values, path, target, training, target_range)


def _fmt_number(x: float) -> str:
    return f"{x:g}"


def _range_problems(
    values: pd.Series,
    path: str | Path,
    target: str,
    training: bool,
    target_range: tuple[float, float] | None,
) -> list[Problem]:
    """A regression target outside its plausible range, too large to train on, or the same
    in every labelled row."""
    numbers = _as_float(values)
    finite = np.isfinite(numbers)
    if target_range is not None:
        low, high = target_range
        outside = finite & ((numbers < low) | (numbers > high))
        hint = (
            f"correct the value (is it in another unit?), or if such values are right set the "
            f"range, e.g. data.target_range=[{_fmt_number(low)},{_fmt_number(high * 10)}]"
            ", or allow any value with data.target_range=null"
        )
        found = [
            Problem(
                f"target '{target}' is {_fmt_number(numbers[r - 1])}, outside the plausible "
                f"range [{_fmt_number(low)}, {_fmt_number(high)}]",
                file=path,
                row=r,
                column=target,
                hint=hint,
            )
            for r in _rows(outside)
        ]
        if found:
            return cap_row_problems(found, f"a '{target}' outside its range", path, hint)
    huge = finite & (np.abs(numbers) > MAX_TARGET)
    hint = "correct the value, or rescale the column (e.g. to thousands) before training"
    found = [
        Problem(
            f"target '{target}' is {_fmt_number(numbers[r - 1])}, too large to train on "
            f"(more than {_fmt_number(MAX_TARGET)} in size)",
            file=path,
            row=r,
            column=target,
            hint=hint,
        )
        for r in _rows(huge)
    ]
    if found:
        return cap_row_problems(found, f"a '{target}' too large to train on", path, hint)
    labelled = numbers[finite]
    if training and labelled.size > 1 and np.all(labelled == labelled[0]):
        return [
            Problem(
                f"regression target '{target}' is {_fmt_number(labelled[0])} in every row; "
                "there is nothing to learn",
                file=path,
                column=target,
                hint="name another column with data.target, or check that the column was "
                "exported with its values",
            )
        ]
    return []


def _feature_value_problems(
    df: pd.DataFrame, path: str | Path, features: list[str]
) -> list[Problem]:
    values = df[features].to_numpy(dtype=float)  # callers pass numeric columns only
    problems = []
    all_empty = np.isnan(values).all(axis=0)
    for j in np.flatnonzero(all_empty):
        problems.append(
            Problem(
                "feature column is empty in every row",
                file=path,
                column=features[j],
                hint="leave it out of data.features or fill it in",
            )
        )
    keep = ~all_empty
    kept = [f for f, k in zip(features, keep, strict=True) if k]
    bad = ~np.isfinite(values[:, keep])
    hint = "fill in the values or drop the row (or leave the column out of data.features)"
    row_problems = []
    kept_values = values[:, keep]
    for i in np.flatnonzero(bad.any(axis=1)):
        where = np.flatnonzero(bad[i])
        cols = [kept[j] for j in where]
        kinds = ["NaN" if np.isnan(kept_values[i, j]) else "inf" for j in where]
        described = [f"{c} ({k})" for c, k in zip(cols, kinds, strict=True)]
        row_problems.append(
            Problem(
                f"missing or infinite feature value in {len(cols)} column(s): "
                f"{preview_list(described, 6)}",
                file=path,
                row=int(i) + 1,
                column=cols[0] if len(cols) == 1 else None,
                hint=hint,
            )
        )
    return problems + cap_row_problems(
        row_problems, "missing or infinite feature values", path, hint
    )


def _duplicate_rows(df: pd.DataFrame, path: str | Path) -> list[Problem]:
    duplicated = df.duplicated(keep="first").to_numpy()
    if not duplicated.any():
        return []
    hashes = pd.util.hash_pandas_object(df, index=False).to_numpy()
    first_row: dict[int, int] = {}
    for i, h in enumerate(hashes):
        first_row.setdefault(int(h), i + 1)
    hint = "remove one of the two rows"
    problems = [
        Problem(
            f"row {r} repeats row {first_row[int(hashes[r - 1])]} exactly (every column)",
            file=path,
            row=r,
            hint=hint,
        )
        for r in _rows(duplicated)
    ]
    return cap_row_problems(problems, "an exact copy of an earlier row", path, hint)


def _id_problems(
    df: pd.DataFrame,
    path: str | Path,
    id_col: str,
    target: str | None,
    features: list[str],
    site: str | None,
    image_column: str | None = None,
) -> list[Problem]:
    problems = _empty_cells(df, id_col, path, "subject id", "fill in the id or drop the row")
    ids = df[id_col]
    repeated = ids.duplicated(keep=False) & ids.notna()
    if not repeated.any():
        return problems
    sub = df.loc[repeated]
    if target is not None and target in df.columns and features:
        what = "image" if features == [image_column] else "features"
        feature_hash = pd.util.hash_pandas_object(sub[features], index=False)
        per_id = pd.DataFrame({"id": sub[id_col], "f": feature_hash, "t": sub[target]})
        grouped = per_id.groupby("id", sort=False)
        same = grouped["f"].nunique() == 1
        differ = grouped["t"].nunique(dropna=False) > 1

        def examples(flagged: list[object]) -> str:
            return "; ".join(
                f"'{i}' (rows {', '.join(map(str, _rows((ids == i).to_numpy())))})"
                for i in flagged[:3]
            )

        copied = same[same & differ].index.tolist()
        if copied:
            problems.append(
                Problem(
                    f"{len(copied)} subject id(s) appear on several rows with identical "
                    f"{what} but a different '{target}', e.g. {examples(copied)}; "
                    "their rows are kept on the same side of the split",
                    file=path,
                    column=id_col,
                    hint="expected for repeat sessions that share one feature extraction; "
                    "otherwise check for rows copied under the wrong id",
                    severity="warning",
                )
            )
        sessions = same[~same & differ].index.tolist()
        if sessions:
            problems.append(
                Problem(
                    f"{len(sessions)} subject id(s) appear on several rows with different "
                    f"{what} and a different '{target}', e.g. {examples(sessions)}; they are "
                    "taken for repeat sessions of one subject and kept on the same side of "
                    "the split",
                    file=path,
                    column=id_col,
                    hint="expected for longitudinal data; if the rows are different people, "
                    "give each its own id",
                    severity="warning",
                )
            )
    if site is not None and site in df.columns:
        sites_per_id = sub.groupby(id_col, sort=False)[site].nunique()
        shared = sites_per_id[sites_per_id > 1].index.tolist()
        if shared:
            problems.append(
                Problem(
                    f"{len(shared)} subject id(s) appear at more than one site, e.g. "
                    f"{preview_list([repr(s) for s in shared], 3)}; each is treated as one subject "
                    "and split with its first site",
                    file=path,
                    column=id_col,
                    hint="if sites number their subjects independently, make ids unique, "
                    "e.g. by prefixing the site",
                    severity="warning",
                )
            )
    return problems


def _site_problems(
    df: pd.DataFrame, path: str | Path, site: str, id_col: str | None, minimum: int
) -> list[Problem]:
    problems = _empty_cells(df, site, path, "site", "fill in the site or drop the row")
    present = df[site].notna()
    keys = df.loc[present, id_col] if id_col is not None else df.index[present].to_series()
    counts = keys.groupby(df.loc[present, site], sort=True).nunique()
    for name, count in counts.items():
        if count < minimum:
            rows = _rows((df[site] == name).to_numpy())
            problems.append(
                Problem(
                    f"site {name!r} has {count} subject(s) (rows {preview_list(rows)}); each site "
                    f"needs at least {minimum} so that train, validation and test get one each",
                    file=path,
                    column=site,
                    row=rows[0],
                    hint="merge it with a similar site or drop its rows",
                )
            )
    return problems


def _confound_problems(df: pd.DataFrame, path: str | Path, spec: TableSpec) -> list[Problem]:
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, name in enumerate(spec.confounds):
        if name in seen:
            problems.append(
                Problem(
                    f"the confound list names '{name}' twice",
                    file=path,
                    column=name,
                    hint="give each confound once",
                )
            )
            continue
        seen.add(name)
        if spec.target is not None and name == spec.target:
            problems.append(
                Problem(
                    f"the confound list names the target column '{name}'; a model cannot predict "
                    "what it unlearns",
                    file=path,
                    column=name,
                    hint=f"remove '{name}' from the confounds or choose another data.target",
                )
            )
            continue
        if name not in df.columns:
            if name == spec.site_column:
                continue  # already reported as the missing site column
            problems.append(
                missing_column_problem(
                    df,
                    path,
                    name,
                    f"confounds.{index}.name",
                    "check the spelling (names are case-sensitive), or set "
                    f"confounds.{index}.name to the confound's column",
                )
            )
            continue
        if name != spec.site_column:  # the site check already reports empty sites
            hint = f"fill in '{name}' or drop the row"
            problems += _empty_cells(df, name, path, f"confound '{name}'", hint)
        if spec.confound_kinds.get(name) == "continuous":
            numeric = _continuous_problems(df, path, name, index)
            if numeric:
                problems += numeric
                continue
        if (
            spec.target is not None
            and spec.target in df.columns
            and _same_values(df[name], df[spec.target])
        ):
            problems.append(
                Problem(
                    f"confound '{name}' holds the same value as the target '{spec.target}' in "
                    "every row; a model cannot predict what it unlearns",
                    file=path,
                    column=name,
                    hint=f"remove '{name}' from the confounds or choose another data.target",
                )
            )
            continue
        levels = df[name].dropna().unique()
        if len(levels) < 2:
            problems.append(
                Problem(
                    f"the confound list names column '{name}', which has only one value "
                    f"({preview_list([repr(v) for v in levels]) or 'none'}); there is nothing "
                    "to unlearn",
                    file=path,
                    column=name,
                    hint=f"remove '{name}' from the confounds, or use data with more than one "
                    "level",
                )
            )
            continue
        query = spec.subsets.get(name)
        if query:
            problems += _subset_problems(df, path, name, query)
        if name in spec.conditional:
            problems += _conditional_problems(path, name, spec)
    for name in spec.subsets:
        if name not in spec.confounds:
            problems.append(
                Problem(
                    f"a subset is given for '{name}', which is not a confound being unlearned",
                    file=path,
                    column=name,
                    hint=f"add '{name}' to the confounds or remove its subset",
                )
            )
    return problems


def _same_values(a: pd.Series, b: pd.Series) -> bool:
    """Whether two columns agree in every row where both are filled (compared as text)."""
    both = a.notna() & b.notna()
    if not both.any():
        return False
    return bool((a[both].astype(str) == b[both].astype(str)).all())


def _continuous_problems(
    df: pd.DataFrame, path: str | Path, name: str, index: int
) -> list[Problem]:
    """``index``: the confound's position in ``confounds``, to name its settings."""
    values = df[name]
    hint = (
        f"write a number in every '{name}' cell ('.' as the decimal point), or unlearn it as "
        f"classes with confounds.{index}.kind=categorical"
    )
    problems = [
        Problem(
            f"continuous confound '{name}' is not a number: {values.iloc[r - 1]!r}",
            file=path,
            row=r,
            column=name,
            hint=hint,
        )
        for r in _rows(_non_numeric(values))
    ]
    return cap_row_problems(problems, f"a non-numeric '{name}'", path, hint)


def _conditional_problems(path: str | Path, name: str, spec: TableSpec) -> list[Problem]:
    if spec.task == "regression" and spec.conditional.get(name) is None:
        index = spec.confounds.index(name)
        return [
            Problem(
                f"confound '{name}' is target-conditioned, but the target '{spec.target}' is "
                "continuous and no number of target bins is given",
                file=path,
                column=name,
                hint=f"give the bins, e.g. confounds.{index}.target_bins=5",
            )
        ]
    return []


def _unlabelled_site_problems(
    df: pd.DataFrame, path: str | Path, spec: TableSpec, target: str | None
) -> list[Problem]:
    site = spec.site_column
    if not spec.unlabelled_sites or site not in df.columns:
        return []
    sites = df[site].dropna().astype(str)
    known = sorted(sites.unique().tolist())
    problems = [
        Problem(
            f"data.unlabelled_sites names site {name!r}, which is not in column '{site}'; sites "
            f"are: {preview_list(known)}",
            file=path,
            column=site,
            hint="check the spelling (site names are case-sensitive)",
        )
        for name in spec.unlabelled_sites
        if name not in known
    ]
    if target is not None and not problems:
        hidden = df[site].astype(str).isin(spec.unlabelled_sites)
        labelled = df[target].notna()
        if labelled.any() and not (labelled & ~hidden).any():
            problems.append(
                Problem(
                    f"every row with a target '{target}' is at an unlabelled site "
                    f"({', '.join(spec.unlabelled_sites)}); there is nothing to train on",
                    file=path,
                    column=target,
                    hint="leave at least one labelled site out of data.unlabelled_sites",
                )
            )
    return problems


def _encoded_confounds(
    df: pd.DataFrame, path: str | Path, spec: TableSpec, features: list[str]
) -> list[Problem]:
    """Features that restate a confound level by level (e.g. ``sitenum`` next to ``site``).

    Unlearning cannot help when the input hands the confound to the model directly.
    """
    problems = []
    for name in dict.fromkeys(spec.confounds):
        if name not in df.columns or name == spec.target or not features:
            continue
        if spec.confound_kinds.get(name) == "continuous":
            continue  # one value per subject: every feature would look like a restatement
        levels = df[name].dropna()
        n_levels = levels.nunique()
        if n_levels < 2:
            continue
        grouped = df.loc[levels.index].groupby(name)[features]
        constant = (grouped.nunique(dropna=False) <= 1).all(axis=0)
        suspects = [f for f in features if constant[f]]
        if not suspects:
            continue
        distinct = grouped.first()[suspects].nunique(dropna=False)
        for col in distinct.index[distinct == n_levels]:
            problems.append(
                Problem(
                    f"feature column takes one value per level of confound '{name}', so it "
                    f"hands '{name}' to the model directly and unlearning cannot remove it",
                    file=path,
                    column=str(col),
                    hint=f"leave '{col}' out of data.features",
                )
            )
    return problems


def _subset_problems(df: pd.DataFrame, path: str | Path, name: str, query: str) -> list[Problem]:
    hint = (
        "write a query over manifest columns, e.g. '18 <= age <= 35'; quote column "
        "names that are not plain identifiers with backticks, e.g. '`age-years` > 18'"
    )
    try:
        selected = df[select(df, query)]
    except InputError as err:
        return [
            Problem(
                f"the subset for confound '{name}' is refused: {err.problem.message}",
                file=path,
                column=err.problem.column or name,
                hint=err.problem.hint or hint,
            )
        ]
    if len(selected) == 0:
        return [
            Problem(
                f"the subset for confound '{name}' ({query!r}) selects no rows",
                file=path,
                column=name,
                hint="widen the query so that it keeps some rows, or remove it",
            )
        ]
    if selected[name].nunique() < 2:
        return [
            Problem(
                f"the subset for confound '{name}' ({query!r}) keeps only one value of "
                f"'{name}'; there is nothing to unlearn inside it",
                file=path,
                column=name,
                hint="widen the query so that it keeps rows from at least two levels",
            )
        ]
    return []


def find_problems(
    df: pd.DataFrame, path: str | Path, spec: TableSpec, *, training: bool = True
) -> list[Problem]:
    """Every problem in the manifest, errors and warnings, in one list.

    Always checked: the id column (present, no empty ids, repeated ids), the feature columns
    (regex, numeric, finite values), exact duplicate rows, and the target when ``spec.target``
    is not ``None``. Only when ``training``: the target is not empty everywhere, the site
    column (present, no empty sites, at least ``min_subjects_per_site`` subjects per site) and
    the confounds (present, not the target, more than one level, valid subset queries).

    Args:
        df: the manifest as read by :func:`read_table`.
        path: the manifest's path, for messages.
        spec: what the run uses.
        training: ``False`` for predict/embed, where site and confounds are not needed.

    Returns:
        Problems; those with ``severity == "error"`` must stop the run.
    """
    problems: list[Problem] = []
    id_col, id_problems = _resolve_id(df, spec.id_column, path)
    problems += id_problems

    target = spec.target
    if target is not None:
        if target not in df.columns:
            problems.append(
                missing_column_problem(
                    df,
                    path,
                    target,
                    "data.target",
                    "check the spelling (names are case-sensitive), or set data.target to the "
                    "column to predict",
                )
            )
            target = None
        else:
            problems += _target_problems(df, path, target, training, spec.task, spec.target_range)

    site = spec.site_column if training else None
    if site is not None and site not in df.columns:
        problems.append(
            Problem(
                f"site column '{site}' is not in the manifest; {_columns_are(df)}",
                file=path,
                column=site,
                hint=_did_you_mean(site, df) + "set data.site_column to the column naming "
                "each scan's site, e.g. data.site_column=scanner",
            )
        )
        site = None

    exclude = {c for c in (id_col, spec.site_column, spec.target, *spec.confounds) if c}
    features: list[str] = []
    feature_problems: list[Problem] = []
    if spec.use_features:
        features, feature_problems = _feature_problems(df, spec.features, path, exclude)
    problems += feature_problems
    numeric_features = [f for f in features if not any(p.column == f for p in feature_problems)]
    if numeric_features:
        problems += _feature_value_problems(df, path, numeric_features)

    problems += _duplicate_rows(df, path)
    if id_col is not None:
        inputs = numeric_features
        if not spec.use_features and spec.image_column and spec.image_column in df.columns:
            inputs = [spec.image_column]
        problems += _id_problems(
            df, path, id_col, target, inputs, site, image_column=spec.image_column
        )
    if training:
        if site is not None:
            problems += _site_problems(df, path, site, id_col, spec.min_subjects_per_site)
        problems += _confound_problems(df, path, spec)
        problems += _encoded_confounds(df, path, spec, numeric_features)
        problems += _unlabelled_site_problems(df, path, spec, target)
    return problems


def load_table(
    path: str | Path, spec: TableSpec, *, training: bool = True
) -> tuple[pd.DataFrame, list[str], list[Problem]]:
    """Read and check a manifest; stop on any error.

    Args:
        path: the CSV/TSV manifest.
        spec: what the run uses.
        training: ``False`` for predict/embed (no site or confounds needed).

    Returns:
        ``(frame, feature_columns, warnings)``: the frame has a RangeIndex (position ``i`` is
        data row ``i + 1``); ``feature_columns`` in file order.

    Raises:
        InputError: the file cannot be read, or :func:`find_problems` found errors (all of them
            are in ``err.problems``).
    """
    id_names = (*ID_CANDIDATES, spec.id_column) if spec.id_column else ID_CANDIDATES
    df = read_table(path, text_columns=id_names)
    problems = find_problems(df, path, spec, training=training)
    raise_if_errors(problems)
    id_col = resolve_id_column(df, spec.id_column, path)
    exclude = {c for c in (id_col, spec.site_column, spec.target, *spec.confounds) if c}
    features = (
        select_features(df, spec.features, path, exclude=exclude) if spec.use_features else []
    )
    warnings = [p for p in problems if p.severity != "error"]
    return df, features, warnings


def check_new_data(
    df: pd.DataFrame,
    path: str | Path,
    feature_columns: Sequence[str],
    regex: str | None,
    *,
    exclude: Iterable[str] = (),
) -> None:
    """Check that new data (predict/embed) has exactly the features the model was trained on.

    The columns that the training regex selects in the new file must be the training feature
    columns; their order may differ (index the frame with ``feature_columns``). With
    ``regex=None`` (training used every numeric column) only missing columns are errors.

    Args:
        df: the new manifest.
        path: its path, for messages.
        feature_columns: the training feature columns (from the run directory).
        regex: the training ``data.features`` regex, or ``None``.
        exclude: columns that were never features (id, site, target, confounds at training).

    Raises:
        InputError: columns are missing or extra, listed by name.
    """
    expected = list(feature_columns)
    present = set(df.columns)
    missing = [c for c in expected if c not in present]
    extra: list[str] = []
    if regex is not None:
        try:
            pattern = re.compile(regex)
        except re.error as err:
            raise InputError(
                f"the training data.features '{regex}' is not a valid regular expression: {err}",
                file=path,
            ) from None
        skip = set(exclude) | set(expected)
        extra = [str(c) for c in df.columns if pattern.search(str(c)) and c not in skip]
    if not missing and not extra:
        _check_new_values(df, path, expected)
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} training feature column(s) missing: {preview_list(missing)}")
    if extra:
        parts.append(
            f"{len(extra)} column(s) match data.features '{regex}' but were not trained on: "
            f"{preview_list(extra)}"
        )
    raise InputError(
        "the features do not match the trained model; " + "; ".join(parts),
        file=path,
        column=(missing or extra)[0],
        hint="give a table with the same feature columns as the training manifest "
        "(rename or drop the listed columns)",
    )


def _check_new_values(df: pd.DataFrame, path: str | Path, features: list[str]) -> None:
    """Every value of new data must be a finite number: report each bad cell's row and column."""
    problems: list[Problem] = []
    numeric: list[str] = []
    for c in features:
        bad = _non_numeric(df[c])
        if bad.any():
            rows = _rows(bad)
            problems.append(
                Problem(
                    f"non-numeric feature value {df[c].iloc[rows[0] - 1]!r}"
                    + (
                        f" (and {len(rows) - 1} more row(s): {preview_list(rows[1:])})"
                        if len(rows) > 1
                        else ""
                    ),
                    file=path,
                    row=rows[0],
                    column=str(c),
                    hint="features must be numbers",
                )
            )
        else:
            numeric.append(c)
    if numeric:
        problems += _feature_value_problems(df, path, numeric)
    raise_if_errors(problems)
