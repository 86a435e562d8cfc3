"""Manifest reading and checking: each bad input gives a problem naming file, row and column."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurounlearn.data.bundled import OPENNEURO_FEATURES, write_openneuro_transfer
from neurounlearn.data.manifest import (
    TableSpec,
    check_new_data,
    find_problems,
    load_table,
    read_table,
    resolve_id_column,
    select_features,
)
from neurounlearn.errors import InputError, InputErrors, Problem


def cohort(sites: int = 3, per_site: int = 4) -> pd.DataFrame:
    """A valid manifest: ``per_site`` subjects at each of ``sites`` sites."""
    rng = np.random.default_rng(0)
    n = sites * per_site
    return pd.DataFrame(
        {
            "subject": [f"s{i:02d}" for i in range(n)],
            "site": np.repeat([f"site{k}" for k in range(sites)], per_site),
            "age": np.round(rng.uniform(20, 80, n), 1),
            "sex": np.tile([0, 1], n // 2 + 1)[:n],
            "f_a": rng.normal(size=n),
            "f_b": rng.normal(size=n),
            "f_c": rng.normal(size=n),
        }
    )


def spec(**changes: object) -> TableSpec:
    base = TableSpec(target="age", confounds=["site"], subsets={}, features="^f_", id_column=None)
    for key, value in changes.items():
        setattr(base, key, value)
    return base


def write(tmp_path: Path, df: pd.DataFrame, name: str = "manifest.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def problems_for(tmp_path: Path, df: pd.DataFrame, **changes: object) -> list[Problem]:
    path = write(tmp_path, df)
    return find_problems(read_table(path), path, spec(**changes))


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def only_error(problems: list[Problem]) -> Problem:
    found = errors(problems)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def assert_names(problem: Problem, *, row: int | None, column: str | None) -> None:
    text = str(problem)
    assert "manifest.csv" in text
    if row is not None:
        assert problem.row == row
        assert f"row {row}" in text
    if column is not None:
        assert column in text


# ----------------------------------------------------------------------------- read_table


def test_valid_cohort_has_no_problems(tmp_path):
    assert problems_for(tmp_path, cohort()) == []


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found") as err:
        read_table(tmp_path / "nope.csv")
    assert "nope.csv" in str(err.value)
    assert "check the path" in str(err.value)


def test_directory_is_not_a_csv(tmp_path):
    with pytest.raises(InputError, match="folder"):
        read_table(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("")
    with pytest.raises(InputError, match="empty"):
        read_table(path)


def test_header_only_has_no_data_rows(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("subject,site,age\n")
    with pytest.raises(InputError, match="no data rows"):
        read_table(path)


def test_unparseable_csv_names_the_row(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("subject,site,age\na,x,1\nb,x,2,extra\n")
    with pytest.raises(InputError, match="could not be read as CSV") as err:
        read_table(path)
    assert err.value.problem.row == 2
    assert "manifest.csv, row 2" in str(err.value)


def test_repeated_header_name(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("subject,age,age\na,1,2\n")
    with pytest.raises(InputError, match="more than once") as err:
        read_table(path)
    assert err.value.problem.column == "age"


def test_not_utf8(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes("subject,site\nJos\xe9,x\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8"):
        read_table(path)


def test_tsv_is_read_tab_separated(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tage\nsub-01\t30\n")
    assert list(read_table(path).columns) == ["participant_id", "age"]


def test_ids_keep_leading_zeros(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("subject,age\n001,30\n002,31\n")
    assert read_table(path)["subject"].tolist() == ["001", "002"]


# ----------------------------------------------------------------------------- columns


def test_id_column_auto_detected_in_candidate_order():
    df = pd.DataFrame({"id": [1], "sub_id": ["a"], "age": [3]})
    assert resolve_id_column(df, None, "m.csv") == "sub_id"


def test_id_column_detected_ignoring_case():
    df = pd.DataFrame({"Subject": ["a"], "age": [3]})
    assert resolve_id_column(df, None, "m.csv") == "Subject"


def test_no_id_column_lists_columns():
    df = pd.DataFrame({"scan": ["a"], "age": [3]})
    with pytest.raises(InputError, match="no subject id column") as err:
        resolve_id_column(df, None, "m.csv")
    assert "columns are: scan, age" in str(err.value)


def test_requested_id_column_missing():
    df = pd.DataFrame({"scan": ["a"], "age": [3]})
    with pytest.raises(InputError, match="'subj', which is not in the manifest"):
        resolve_id_column(df, "subj", "m.csv")


def test_invalid_feature_regex():
    with pytest.raises(InputError, match="not a valid regular expression"):
        select_features(cohort(), "f_(", "m.csv")


def test_feature_regex_matching_nothing_lists_columns():
    with pytest.raises(InputError, match="matches no feature column") as err:
        select_features(cohort(), "^thickness", "m.csv")
    assert "columns are: subject, site, age" in str(err.value)


def test_long_column_list_is_truncated():
    df = pd.DataFrame({f"c{i}": [1.0] for i in range(30)})
    with pytest.raises(InputError) as err:
        select_features(df, "^zz", "m.csv")
    assert "c11 … (18 more)" in str(err.value)
    assert "c12" not in str(err.value)


def test_non_numeric_feature_names_column_and_first_bad_row(tmp_path):
    df = cohort()
    df["f_b"] = df["f_b"].astype(object)
    df.loc[4, "f_b"] = "1,5"
    problem = only_error(problems_for(tmp_path, df))
    assert_names(problem, row=5, column="f_b")
    assert "'1,5'" in problem.message


def test_features_exclude_named_columns():
    assert select_features(cohort(), ".", "m.csv", exclude=["subject", "site", "age"]) == [
        "sex",
        "f_a",
        "f_b",
        "f_c",
    ]


def test_no_regex_takes_numeric_columns():
    assert select_features(cohort(), None, "m.csv", exclude=["age"]) == ["sex", "f_a", "f_b", "f_c"]


# ----------------------------------------------------------------------------- find_problems


def test_target_column_missing(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort().rename(columns={"age": "Age"})))
    assert "data.target names column 'age', which is not in the manifest" in problem.message
    assert "did you mean 'Age'" in str(problem)
    assert_names(problem, row=None, column="age")


def test_site_column_missing(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort().drop(columns="site"), confounds=[]))
    assert "site column 'site' is not in the manifest" in problem.message
    assert_names(problem, row=None, column="site")


def test_confound_column_missing(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort(), confounds=["scanner"]))
    assert problem.message.startswith(
        "confounds.0.name names column 'scanner', which is not in the manifest; columns are: "
        "subject"
    )
    assert_names(problem, row=None, column="scanner")


def test_non_numeric_target(tmp_path):
    df = cohort().astype({"age": object})
    df.loc[2, "age"] = "forty"
    problem = only_error(problems_for(tmp_path, df))
    assert_names(problem, row=3, column="age")
    assert "'forty'" in problem.message


def test_empty_target_is_allowed(tmp_path):
    df = cohort()
    df.loc[[0, 5], "age"] = np.nan
    assert problems_for(tmp_path, df) == []


def test_infinite_target(tmp_path):
    df = cohort()
    df.loc[7, "age"] = np.inf
    problem = only_error(problems_for(tmp_path, df))
    assert "infinite" in problem.message
    assert_names(problem, row=8, column="age")


def test_all_targets_missing(tmp_path):
    df = cohort()
    df["age"] = np.nan
    problem = only_error(problems_for(tmp_path, df))
    assert "empty in every row" in problem.message
    assert_names(problem, row=None, column="age")


def test_nan_feature_names_row_and_column(tmp_path):
    df = cohort()
    df.loc[3, "f_c"] = np.nan
    problem = only_error(problems_for(tmp_path, df))
    assert_names(problem, row=4, column="f_c")
    assert "f_c (NaN)" in problem.message


def test_infinite_feature(tmp_path):
    df = cohort()
    df.loc[0, "f_a"] = -np.inf
    problem = only_error(problems_for(tmp_path, df))
    assert_names(problem, row=1, column="f_a")
    assert "f_a (inf)" in problem.message


def test_many_bad_feature_rows_end_in_one_summary(tmp_path):
    df = cohort(sites=3, per_site=10)
    df.loc[:24, "f_a"] = np.nan
    found = errors(problems_for(tmp_path, df))
    assert len(found) == 21
    assert [p.row for p in found[:20]] == list(range(1, 21))
    assert found[-1].message.startswith("… and 5 more rows")
    assert "21, 22, 23, 24, 25" in found[-1].message


def test_feature_empty_in_every_row_is_one_problem(tmp_path):
    df = cohort()
    df["f_b"] = np.nan
    problem = only_error(problems_for(tmp_path, df))
    assert "empty in every row" in problem.message
    assert problem.column == "f_b"


def test_duplicate_rows_name_both_rows(tmp_path):
    df = cohort()
    df = pd.concat([df, df.iloc[[2]]], ignore_index=True)
    problem = only_error(problems_for(tmp_path, df))
    assert_names(problem, row=13, column=None)
    assert "repeats row 3" in problem.message
    assert "remove one" in str(problem)


def test_repeat_session_with_identical_features_is_one_warning(tmp_path):
    df = cohort()
    again = df.iloc[[1, 5]].assign(age=lambda d: d["age"] + 1.0)
    problems = problems_for(tmp_path, pd.concat([df, again], ignore_index=True))
    assert errors(problems) == []
    (warning,) = problems
    assert warning.severity == "warning"
    assert warning.message.startswith("2 subject id(s)")
    assert "'s01' (rows 2, 13)" in warning.message


def test_id_at_two_sites_is_a_warning(tmp_path):
    df = cohort()
    df.loc[4, "subject"] = "s00"  # s00 is at site0, row 5 is at site1
    problems = problems_for(tmp_path, df, min_subjects_per_site=3)
    assert errors(problems) == []
    assert any("more than one site" in p.message for p in problems)


def test_small_site_names_site_count_and_rows(tmp_path):
    df = cohort(per_site=5)
    df.loc[[13, 14], "site"] = "tiny"
    df.loc[13, "subject"] = df.loc[14, "subject"]  # one subject, two scans
    problem = only_error(problems_for(tmp_path, df))
    assert "site 'tiny' has 1 subject(s) (rows 14, 15)" in problem.message
    assert "merge" in problem.hint
    assert_names(problem, row=14, column="site")


def test_empty_site_is_an_error_per_row(tmp_path):
    df = cohort(per_site=5)
    df.loc[[2, 6], "site"] = np.nan
    found = errors(problems_for(tmp_path, df))
    assert [(p.row, p.column) for p in found] == [(3, "site"), (7, "site")]
    assert_names(found[0], row=3, column="site")


def test_invalid_subset_query_names_confound_and_query(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort(), subsets={"site": "18 <= age <="}))
    assert "subset for confound 'site'" in problem.message
    assert "'18 <= age <='" in problem.message
    assert "not a valid condition" in problem.message
    assert "backticks" in problem.hint


def test_subset_query_on_unknown_column(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort(), subsets={"site": "weight > 3"}))
    assert "weight" in problem.message


def test_subset_query_selecting_nothing(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort(), subsets={"site": "age > 500"}))
    assert "selects no rows" in problem.message
    assert_names(problem, row=None, column="site")


def test_subset_for_a_column_not_unlearned(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort(), subsets={"sex": "age > 30"}))
    assert "not a confound" in problem.message


def test_confound_with_one_level(tmp_path):
    df = cohort().assign(sex=1)
    problem = only_error(problems_for(tmp_path, df, confounds=["site", "sex"]))
    assert "only one value" in problem.message
    assert_names(problem, row=None, column="sex")


def test_confound_equal_to_target(tmp_path):
    problem = only_error(problems_for(tmp_path, cohort(), confounds=["age"]))
    assert "names the target column 'age'" in problem.message


def test_feature_restating_a_confound(tmp_path):
    df = cohort().assign(f_sitenum=lambda d: d["site"].str[-1].astype(int))
    problem = only_error(problems_for(tmp_path, df))
    assert problem.column == "f_sitenum"
    assert "confound 'site'" in problem.message


def test_every_problem_is_reported_at_once(tmp_path):
    df = cohort().astype({"age": object})
    df.loc[0, "age"] = "x"
    df.loc[1, "f_a"] = np.nan
    found = errors(problems_for(tmp_path, df, confounds=["site", "scanner"]))
    assert {(p.row, p.column) for p in found} == {(1, "age"), (2, "f_a"), (None, "scanner")}


def test_prediction_needs_no_target_site_or_confounds(tmp_path):
    df = cohort().drop(columns=["age", "site"])
    path = write(tmp_path, df)
    found = find_problems(read_table(path), path, spec(target=None), training=False)
    assert found == []


# ----------------------------------------------------------------------------- load_table


def test_load_table_returns_frame_features_and_warnings(tmp_path):
    df = cohort()
    again = df.iloc[[1]].assign(age=99.0)
    path = write(tmp_path, pd.concat([df, again], ignore_index=True))
    frame, features, warnings = load_table(path, spec())
    assert isinstance(frame.index, pd.RangeIndex)
    assert features == ["f_a", "f_b", "f_c"]
    assert [w.severity for w in warnings] == ["warning"]


def test_load_table_raises_every_error(tmp_path):
    df = cohort()
    df.loc[[0, 1], "f_a"] = np.nan
    path = write(tmp_path, df)
    with pytest.raises(InputErrors) as err:
        load_table(path, spec())
    assert [p.row for p in err.value.problems] == [1, 2]
    assert "(and 1 more problem(s))" in str(err.value)


def test_bundled_data_loads_with_only_the_repeat_session_warning(tmp_path):
    path = write_openneuro_transfer(tmp_path / "manifest.csv")
    start = time.perf_counter()
    frame, features, warnings = load_table(path, spec(features=OPENNEURO_FEATURES))
    assert time.perf_counter() - start < 1.0
    assert frame.shape == (546, 250)
    assert len(features) == 245
    assert len(warnings) == 1
    assert warnings[0].message.startswith("28 subject id(s)")


# ----------------------------------------------------------------------------- check_new_data


def test_new_data_with_same_features_in_another_order_passes():
    df = cohort()[["subject", "f_c", "f_a", "f_b"]]
    assert check_new_data(df, "new.csv", ["f_a", "f_b", "f_c"], "^f_") is None  # no error


def test_new_data_lists_missing_and_extra_columns():
    df = cohort().drop(columns="f_b").assign(f_new=1.0)
    with pytest.raises(InputError) as err:
        check_new_data(df, "new.csv", ["f_a", "f_b", "f_c"], "^f_")
    text = str(err.value)
    assert "new.csv" in text
    assert "missing: f_b" in text
    assert "not trained on: f_new" in text


def test_new_data_excluded_columns_are_not_extra():
    df = cohort()
    result = check_new_data(
        df, "new.csv", ["sex", "f_a", "f_b", "f_c"], ".", exclude=["subject", "site", "age"]
    )
    assert result is None  # no error: excluded columns are not reported as extra
