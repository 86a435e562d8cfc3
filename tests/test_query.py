"""Row queries are checked against a whitelist and evaluated without pandas' ``query``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from neurounlearn.config import validate_config
from neurounlearn.errors import InputError
from neurounlearn.query import check, select


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [10.0, 20.0, 30.0, np.nan],
            "site": ["a", "b", "c", "a"],
            "age-years": [1, 2, 3, 4],
            "patient": [True, False, True, False],
        }
    )


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("18 <= age <= 35", [False, True, True, False]),
        ("age > 15 and site == 'c'", [False, False, True, False]),
        ("age < 15 or site != 'a'", [True, True, True, False]),
        ("not (age > 15)", [True, False, False, True]),
        ("site in ['a', 'b']", [True, True, False, True]),
        ("site not in ('a',)", [False, True, True, False]),
        ("site == ['b', 'c']", [False, True, True, False]),
        ("`age-years` >= 3", [False, False, True, True]),
        ("age * 2 - 10 > 25", [False, True, True, False]),
        ("age % 20 == 10", [True, False, True, False]),
        ("(age > 15) & ~(site == 'b')", [False, False, True, False]),
        ("(age < 15) | (site == 'b')", [True, True, False, False]),
        ("patient", [True, False, True, False]),
        ("patient == True and age > -1", [True, False, True, False]),
        ('site == "a"', [True, False, False, True]),
    ],
)
def test_allowed_queries_select_the_rows_pandas_would(frame, query, expected) -> None:
    assert select(frame, query).tolist() == expected


@pytest.mark.parametrize(
    ("query", "part"),
    [
        ("index == index + @pd.io.common.os.system('touch /tmp/x')", "@pd.io.common.os.system"),
        ("age > @limit", "@limit"),
        ("__import__('os').system('true') == 0", "__import__('os').system('true')"),
        ("age.__class__ == 1", "age.__class__"),
        ("site.str.len() > 1", "site.str.len()"),
        ("age[0] > 1", "age[0]"),
        ("__builtins__ == 1", "__builtins__"),
        ("(lambda: 1)() == 1", "(lambda: 1)()"),
        ("site in [x for x in 'ab']", "[x for x in 'ab']"),
        ("site in [age]", "[age]"),
        ("age is None", "age is None"),
        ("age > b'1'", "b'1'"),
        ("age << 2 > 1", "age << 2"),
    ],
)
def test_anything_outside_the_whitelist_is_refused_naming_the_part(query, part) -> None:
    with pytest.raises(InputError) as err:
        check(query)
    assert repr(query) in str(err.value)
    assert repr(part) in str(err.value)


def test_a_refused_query_never_runs_its_payload(tmp_path, frame) -> None:
    marker = tmp_path / "pwned"
    payload = f"index == index + @pd.io.common.os.system('touch {marker}')"
    with pytest.raises(InputError):
        select(frame, payload)
    assert not marker.exists()


def test_unknown_column_names_the_column(frame) -> None:
    with pytest.raises(InputError, match="names column 'height'") as err:
        select(frame, "height > 1")
    assert err.value.problem.column == "height"


@pytest.mark.parametrize("query", ["age >", "'open", "`open", "", "  ", "age > 1 1"])
def test_malformed_queries_are_input_errors(query) -> None:
    with pytest.raises(InputError, match="query"):
        check(query)


def test_a_very_long_or_deep_query_is_refused_not_crashing() -> None:
    with pytest.raises(InputError, match="characters long"):
        check("age > 1 and " * 400 + "age > 1")
    with pytest.raises(InputError):
        check("(" * 300 + "age" + ")" * 300 + " > 1")
    with pytest.raises(InputError):
        check("~" * 1990 + "patient")


def test_config_subset_is_checked_when_the_config_is_validated() -> None:
    raw = {"confounds": [{"name": "site", "subset": "age > @pd.io.common.os.getcwd()"}]}
    with pytest.raises(InputError, match=r"confounds\.0\.subset.*'@pd\.io\.common\.os\.getcwd'"):
        validate_config(raw)
