"""The leakage audit: fresh probes find planted confound codes and nothing in noise."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from neurounlearn.errors import InputError
from neurounlearn.evaluation.leakage import (
    LeakageAudit,
    distance_correlation,
    infer_confound_kind,
)

FAST = {"n_permutations": 9, "n_permutations_nonlinear": 4, "n_bootstrap": 200}
# Enough permutations for p < 0.05 to be reachable (the smallest p is 1 / (1 + n)).
SIGNIFICANCE = {**FAST, "n_permutations": 29}


def _sites(n: int = 60, k: int = 3, seed: int = 0) -> np.ndarray:
    labels = np.arange(n) % k
    np.random.default_rng(seed).shuffle(labels)
    return np.array([f"site{v}" for v in labels], dtype=object)


def _encoding(sites: np.ndarray, strength: float, n_features: int = 8, seed: int = 0):
    """Features whose first dimensions are one-hot site codes scaled by ``strength``."""
    rng = np.random.default_rng(seed)
    codes = np.unique(sites, return_inverse=True)[1]
    X = rng.normal(size=(len(sites), n_features))
    X[:, : codes.max() + 1] += strength * np.eye(codes.max() + 1)[codes]
    return X


def test_features_encoding_the_site_are_caught() -> None:
    sites = _sites()
    result = LeakageAudit(probes=("linear",), **SIGNIFICANCE).audit(_encoding(sites, 4.0), sites)
    probe = result["probe"]["linear"]
    assert probe["balanced_accuracy"] > 0.9
    assert probe["p_value"] < 0.05
    assert result["chance"] == pytest.approx(1 / 3)


def test_noise_features_score_near_chance() -> None:
    sites = _sites()
    result = LeakageAudit(probes=("linear",), **FAST).audit(_encoding(sites, 0.0), sites)
    probe = result["probe"]["linear"]
    assert abs(probe["balanced_accuracy"] - 1 / 3) < 0.2
    assert probe["p_value"] > 0.05


def test_confidence_interval_contains_the_estimate() -> None:
    sites = _sites()
    probe = LeakageAudit(probes=("linear",), **FAST).audit(_encoding(sites, 1.0), sites)["probe"][
        "linear"
    ]
    low, high = probe["ci95"]
    assert low <= probe["balanced_accuracy"] <= high
    assert high - low > 0.05


def test_nonlinear_probe_finds_an_xor_code_the_linear_one_misses() -> None:
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=(120, 2))
    X = np.hstack([signs * 1.5 + rng.normal(0, 0.3, (120, 2)), rng.normal(size=(120, 2))])
    label = (signs[:, 0] * signs[:, 1] > 0).astype(int)
    result = LeakageAudit(n_permutations=0, n_permutations_nonlinear=0, n_bootstrap=0).audit(
        X, label
    )
    linear = result["probe"]["linear"]["balanced_accuracy"]
    nonlinear = result["probe"]["nonlinear"]["balanced_accuracy"]
    assert nonlinear > 0.85
    assert nonlinear > linear + 0.25


def test_class_with_one_subject_is_dropped_with_a_warning() -> None:
    sites = _sites()
    sites[0] = "lonely"
    result = LeakageAudit(probes=("linear",), **FAST).audit(_encoding(sites, 2.0), sites)
    assert result["n"] == len(sites) - 1
    assert result["n_classes"] == 3
    assert any("lonely" in w for w in result["warnings"])


def test_single_class_gives_none_instead_of_crashing() -> None:
    sites = np.array(["a"] * 10 + ["b"], dtype=object)
    result = LeakageAudit(**FAST).audit(np.random.default_rng(0).normal(size=(11, 3)), sites)
    assert result["probe"]["linear"]["balanced_accuracy"] is None
    assert result["probe"]["nonlinear"]["balanced_accuracy"] is None
    assert any("fewer than 2 classes" in w for w in result["warnings"])


def test_folds_shrink_to_the_smallest_class() -> None:
    sites = np.array(["a"] * 20 + ["b"] * 3, dtype=object)
    result = LeakageAudit(probes=("linear",), **FAST).audit(_encoding(sites, 2.0), sites)
    assert result["folds"] == 3
    assert any("folds reduced" in w for w in result["warnings"])


def test_continuous_confound_r2_high_when_encoded_and_low_for_noise() -> None:
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, 80)
    noise = rng.normal(size=(80, 6))
    informative = noise.copy()
    informative[:, 0] += age / 5
    audit = LeakageAudit(probes=("linear",), **SIGNIFICANCE)
    encoded = audit.audit(informative, age, kind="continuous")["probe"]["linear"]
    unrelated = audit.audit(noise, age, kind="continuous")["probe"]["linear"]
    assert encoded["r2"] > 0.8
    assert encoded["p_value"] < 0.05
    assert encoded["distance_correlation"] > unrelated["distance_correlation"]
    assert encoded["distance_correlation_p_value"] < 0.05
    assert unrelated["r2"] < 0.1


def test_distance_correlation_sees_nonlinear_dependence() -> None:
    x = np.linspace(-1, 1, 101)
    assert np.corrcoef(x, x**2)[0, 1] == pytest.approx(0.0, abs=1e-9)
    # measured: 0.22 (bias-corrected squared), far from the 0 of independence
    assert distance_correlation(x, x**2) > 0.15
    assert distance_correlation(x, x) == pytest.approx(1.0)


def test_bias_corrected_distance_correlation_reads_zero_on_independent_data() -> None:
    rng = np.random.default_rng(0)
    features, values = rng.normal(size=(110, 32)), rng.normal(size=110)
    # the plain estimate looks like dependence at this size (measured 0.13); the corrected one
    # does not (measured -0.003)
    assert distance_correlation(features, values, bias_corrected=False) > 0.08
    assert abs(distance_correlation(features, values)) < 0.03


def test_band_conditional_uses_only_in_band_rows() -> None:
    sites = _sites(n=90)
    age = np.random.default_rng(1).uniform(10, 50, 90)
    in_band = int(((age >= 20) & (age <= 35)).sum())
    result = LeakageAudit(probes=("linear",), **FAST).audit(
        _encoding(sites, 3.0), sites, target=age, band=(20, 35)
    )
    conditional = result["conditional"]
    assert conditional["band"] == [20.0, 35.0]
    assert conditional["n"] == in_band < 90
    assert conditional["probe"]["linear"]["balanced_accuracy"] > 0.8


def test_features_beyond_the_target_show_a_gain() -> None:
    sites = _sites(n=90)
    age = np.random.default_rng(2).uniform(20, 80, 90)
    audit = LeakageAudit(probes=("linear",), **FAST)
    encoded = audit.audit(_encoding(sites, 3.0), sites, target=age)["conditional"]
    noise = audit.audit(_encoding(sites, 0.0), sites, target=age)["conditional"]
    assert encoded["band"] is None
    assert encoded["gain"] > 0.4
    assert encoded["gain_ci95"][0] > 0
    assert noise["gain_ci95"][0] <= 0.0


def test_same_seed_gives_the_same_result() -> None:
    sites = _sites()
    X = _encoding(sites, 0.7)
    first = LeakageAudit(random_state=3, **FAST).audit(X, sites)
    second = LeakageAudit(random_state=3, **FAST).audit(X, sites)
    assert first == second


def test_result_is_valid_json() -> None:
    sites = _sites()
    age = np.linspace(20, 80, len(sites))
    result = LeakageAudit(**FAST).audit(_encoding(sites, 1.0), sites, target=age, band=[30, 60])
    assert json.loads(json.dumps(result, allow_nan=False)) == json.loads(json.dumps(result))


def test_audit_frame_infers_kinds_per_column() -> None:
    sites = _sites()
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"site": sites, "sex": rng.integers(0, 2, len(sites)), "age": rng.uniform(20, 80, 60)}
    )
    results = LeakageAudit(probes=("linear",), **FAST).audit_frame(
        _encoding(sites, 2.0), frame, ["site", "sex", "age"]
    )
    assert {name: r["kind"] for name, r in results.items()} == {
        "site": "categorical",
        "sex": "categorical",
        "age": "continuous",
    }


def test_audit_frame_missing_column_raises() -> None:
    frame = pd.DataFrame({"site": _sites()})
    with pytest.raises(InputError, match="'scanner' not found"):
        LeakageAudit(**FAST).audit_frame(np.zeros((60, 2)), frame, ["scanner"])


def test_band_without_target_raises() -> None:
    sites = _sites()
    with pytest.raises(InputError, match="needs the target"):
        LeakageAudit(**FAST).audit(_encoding(sites, 1.0), sites, band=(20, 30))


def test_unknown_kind_lists_the_allowed_values() -> None:
    sites = _sites()
    with pytest.raises(InputError, match="categorical"):
        LeakageAudit(**FAST).audit(_encoding(sites, 1.0), sites, kind="ordinal")


def test_infer_confound_kind() -> None:
    assert infer_confound_kind(["M", "F", "F"]) == "categorical"
    assert infer_confound_kind([1, 2, 3, 2]) == "categorical"
    assert infer_confound_kind(np.linspace(20, 80, 30)) == "continuous"


def test_bootstrap_ci_is_scipys_bca_and_falls_back_to_percentile_where_bca_is_undefined() -> None:
    from scipy import stats

    from neurounlearn.evaluation.leakage import _bootstrap_ci, _r2_rows

    rng = np.random.default_rng(0)
    y = rng.normal(size=60)
    pred = y + rng.normal(size=60)
    ci = _bootstrap_ci(lambda idx: _r2_rows(y[idx], pred[idx]), 60, 500, seed=3)
    bca = stats.bootstrap(
        (y, pred),
        lambda a, b: _r2_rows(a[None, :], b[None, :])[0],
        paired=True,
        vectorized=False,
        n_resamples=500,
        random_state=np.random.default_rng([3, 2]),
    ).confidence_interval
    assert ci == pytest.approx([bca.low, bca.high], abs=0.02)
    # every resample scores 1: BCa divides by zero; the percentile interval is [1, 1]
    assert _bootstrap_ci(lambda idx: _r2_rows(y[idx], y[idx]), 60, 200, seed=0) == [1.0, 1.0]


@pytest.mark.parametrize(
    "check",
    [
        "check_no_attributes_set_in_init",
        "check_get_params_invariance",
        "check_set_params",
        "check_parameters_default_constructible",
        "check_dont_overwrite_parameters",
        "check_fit_check_is_fitted",
        "check_n_features_in",
        "check_fit_score_takes_y",
        "check_estimator_repr",
    ],
)
def test_audit_passes_the_applicable_scikit_learn_estimator_checks(
    check: str, estimator_check_failure: Callable[[str, object], str | None]
) -> None:
    audit = LeakageAudit(n_permutations=0, n_bootstrap=0, probes=("linear",))
    assert estimator_check_failure(check, audit) is None


def test_audit_ends_a_pipeline_and_keeps_a_typed_result() -> None:
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    site = np.repeat(["a", "b"], 30)
    X = rng.normal(size=(60, 4)) * 100
    X[30:, 1] += 500
    audit = LeakageAudit(n_permutations=0, probes=("linear",))
    pipe = make_pipeline(StandardScaler(), clone(audit)).fit(X, site)
    probe = pipe[-1].leakage_.probes["linear"]
    assert probe.value > 0.9
    assert pipe[-1].result_["probe"]["linear"]["balanced_accuracy"] == probe.value
