"""The leakage audit: how much confound information is left in frozen features.

An adversary that is fooled during training proves little: an encoder can fool one head. The
audit trains FRESH probes on frozen features of held-out subjects (the test split's
embeddings), with stratified K-fold cross-validation, so a high score means the information is
really there and decodable, not that one head was weak.

Categorical confound (e.g. site):
    * ``linear``: standardise + logistic regression, ``C`` picked by an inner CV inside each
      outer training fold (nested, so the score is honest);
    * ``nonlinear``: standardise + a small MLP (one hidden layer of 16, L2 ``alpha=1``, L-BFGS,
      50 iterations). Measured against HistGradientBoosting on ~100 subjects: 2-4x faster
      (boosting grows one tree per class per round), better on interaction (XOR-like) codes,
      worse on radial ones; the iteration cap is both the regulariser and the time budget.
    * balanced accuracy of the out-of-fold predictions, ``chance = 1/K``, a permutation p-value
      (:func:`scipy.stats.permutation_test`; labels permuted, the same CV; the hyperparameters
      picked on the real labels are reused for speed), and a bootstrap 95% CI (out-of-fold
      predictions resampled; BCa by :func:`scipy.stats.bootstrap`, percentile where BCa is
      undefined).
Continuous confound (e.g. age as a confound): ridge regression (``RidgeCV``) and an MLP
regressor, out-of-fold R², permutation p-value, bootstrap CI, plus the bias-corrected squared
distance correlation (:mod:`dcor`) of the standardised features with the confound (with its own
permutation p-value).
Conditional leakage (biased data, where the target and site are entangled): the same audit on
the rows whose target lies in a ``band`` shared by the sites, and the gain of a linear probe on
``[features, target]`` over one on ``[target]`` alone.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> site = np.repeat(["a", "b"], 20)
    >>> X = rng.normal(size=(40, 4)) + (site == "b")[:, None] * 3.0
    >>> LeakageAudit(n_permutations=9, probes=("linear",)).audit(X, site)["probe"]["linear"][
    ...     "balanced_accuracy"]
    1.0
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import pdist, squareform
from sklearn.base import BaseEstimator
from sklearn.compose import TransformedTargetRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from neurounlearn.errors import InputError
from neurounlearn.results import LeakageResult

PROBES = ("linear", "nonlinear")
KINDS = ("categorical", "continuous")
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: The one ridge penalty grid of the package (half-decade steps, 1e-3 to 1e4): the leakage
#: probes, the audit's ridge probe and the raw-feature readout all let their inner CV pick from it.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))
INNER_FOLDS = 3
MLP_HIDDEN = (16,)
MLP_ALPHA = 1.0
MLP_MAX_ITER = 50
DCOR_MAX_ROWS = 2000
CATEGORICAL_MAX_LEVELS = 10
_BOOTSTRAP_CHUNK = 200

Splits = list[tuple[np.ndarray, np.ndarray]]


class LeakageAudit(BaseEstimator):
    """Fresh-probe audit of confound information in frozen features.

    A scikit-learn estimator: ``clone``, ``get_params``/``set_params`` and ``check_is_fitted``
    work, and it can end a :class:`~sklearn.pipeline.Pipeline`
    (``make_pipeline(StandardScaler(), LeakageAudit()).fit(X, site)``); :meth:`fit` audits
    ``y`` and keeps the result in ``result_`` (a dict, as ``metrics.json`` stores it) and
    ``leakage_`` (typed).

    Args:
        folds: outer CV folds; reduced to the smallest class count when a class is smaller
            (recorded in ``warnings``).
        n_permutations: label permutations for the linear probe's p-value (0 disables it).
        n_permutations_nonlinear: permutations for the nonlinear probe, which costs ~5x more
            per fit; 30 still resolves p < 0.05 (the smallest p is 1/31).
        n_bootstrap: bootstrap resamples of the out-of-fold predictions for the 95% CI.
        probes: which probes to run, from ``("linear", "nonlinear")``.
        random_state: seeds folds, permutations, bootstrap and the MLP; the same seed gives the
            same result.

    Attributes:
        result_: the result of the last :meth:`audit` (or :meth:`fit`).
        leakage_: the same as a :class:`~neurounlearn.results.LeakageResult` (after
            :meth:`fit`).
        results_: the results of the last :meth:`audit_frame`, by confound.

    Examples:
        >>> audit = LeakageAudit(folds=5, n_permutations=100)
        >>> audit.folds
        5
    """

    def __init__(
        self,
        *,
        folds: int = 5,
        n_permutations: int = 100,
        n_permutations_nonlinear: int = 30,
        n_bootstrap: int = 1000,
        probes: Sequence[str] = PROBES,
        random_state: int = 0,
    ) -> None:
        self.folds = folds
        self.n_permutations = n_permutations
        self.n_permutations_nonlinear = n_permutations_nonlinear
        self.n_bootstrap = n_bootstrap
        self.probes = probes
        self.random_state = random_state

    def fit(
        self,
        X: np.ndarray | pd.DataFrame,
        y: np.ndarray | pd.Series | Sequence[Any],
        *,
        kind: str = "categorical",
        target: np.ndarray | pd.Series | Sequence[float] | None = None,
        band: Sequence[float] | None = None,
    ) -> LeakageAudit:
        """Audit the confound ``y`` in the features ``X`` (see :meth:`audit`); returns ``self``
        with ``result_`` and ``leakage_``.

        Examples:
            >>> from sklearn.pipeline import make_pipeline
            >>> from sklearn.preprocessing import StandardScaler
            >>> X = np.random.default_rng(0).normal(size=(40, 3)); X[20:, 0] += 5
            >>> site = np.repeat(["a", "b"], 20)
            >>> pipe = make_pipeline(StandardScaler(), LeakageAudit(n_permutations=0))
            >>> probe = pipe.fit(X, site)[-1].leakage_.probes["linear"]
            >>> probe.value > 0.9
            True
        """
        self.audit(X, y, kind=kind, target=target, band=band)
        self.leakage_ = LeakageResult.from_dict(self.result_)
        self.n_features_in_ = _as_features(X).shape[1]
        return self

    def audit(
        self,
        features: np.ndarray | pd.DataFrame,
        confound: np.ndarray | pd.Series | Sequence[Any],
        *,
        kind: str = "categorical",
        target: np.ndarray | pd.Series | Sequence[float] | None = None,
        band: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """Audit one confound.

        Args:
            features: frozen features of held-out subjects, shape ``(n, n_features)``.
            confound: the confound per subject, shape ``(n,)``; missing values (``NaN``/
                ``None``) mark unlabelled subjects, which are left out.
            kind: ``"categorical"`` or ``"continuous"``.
            target: the task target per subject (e.g. age); enables the ``conditional`` block
                (the gain of ``[features, target]`` over ``[target]``).
            band: ``[low, high]`` (inclusive) target band shared by the sites; adds the same
                audit restricted to the in-band subjects. Needs ``target``.

        Returns:
            The ``metrics.json`` leakage entry: ``{"kind", "n", "n_classes", "classes",
            "chance", "folds", "probe": {name: {"balanced_accuracy" | "r2", "chance",
            "p_value", "ci95", "n_permutations", "hyperparameters"}}, "conditional",
            "warnings"}``. Continuous results have ``r2`` and, in ``probe.linear``,
            ``distance_correlation`` and ``distance_correlation_p_value``.
        """
        self._check_params()
        X = _as_features(features)
        values = _as_column(confound, len(X), "confound")
        if kind not in KINDS:
            raise InputError(
                f"unknown confound kind {kind!r}; expected one of {list(KINDS)}",
                hint="use 'categorical' for labels such as site or sex, 'continuous' for age",
            )
        target_values = None if target is None else _as_target(target, len(X))
        if band is not None and target_values is None:
            raise InputError(
                "a band-conditional audit needs the target", hint="pass target= with band="
            )
        low_high = None if band is None else _as_band(band)
        seed = self._seed()

        with _quiet_sklearn():
            result = self._audit_kind(X, values, kind, seed)
            result["conditional"] = None
            if target_values is not None:
                result["conditional"] = self._conditional(
                    X, values, kind, target_values, low_high, seed
                )
        self.result_ = result
        return result

    def audit_frame(
        self,
        embeddings: np.ndarray | pd.DataFrame,
        frame: pd.DataFrame,
        confounds: Sequence[str] | str,
        *,
        target_column: str | None = None,
        band: Sequence[float] | None = None,
        kinds: Mapping[str, str] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Audit several confound columns of a table, rows aligned with ``embeddings``.

        Args:
            embeddings: features, shape ``(n, n_features)``.
            frame: one row per subject with the confound (and target) columns.
            confounds: confound column names.
            target_column: the target column, for the ``conditional`` block.
            band: ``[low, high]`` target band (needs ``target_column``).
            kinds: kind per confound; missing ones are inferred by :func:`infer_confound_kind`.

        Returns:
            ``{confound: audit result}``.
        """
        X = _as_features(embeddings)
        if len(frame) != len(X):
            raise InputError(
                f"the table has {len(frame)} rows but the embeddings have {len(X)}",
                hint="pass the table rows of the same subjects, in the same order",
            )
        names = [confounds] if isinstance(confounds, str) else list(confounds)
        for name in [*names, *([target_column] if target_column is not None else [])]:
            if name not in frame.columns:
                raise InputError(
                    f"column '{name}' not found; columns are {list(frame.columns)}",
                    column=name,
                )
        target = None if target_column is None else frame[target_column].to_numpy()
        results: dict[str, dict[str, Any]] = {}
        for name in names:
            kind = (kinds or {}).get(name) or infer_confound_kind(frame[name])
            results[name] = self.audit(
                X, frame[name].to_numpy(), kind=kind, target=target, band=band
            )
        self.results_ = results
        return results

    # --- one confound ---------------------------------------------------------------------

    def _audit_kind(
        self, X: np.ndarray, values: np.ndarray, kind: str, seed: int
    ) -> dict[str, Any]:
        if kind == "categorical":
            return self._categorical(X, values, seed)
        return self._continuous(X, values, seed)

    def _categorical(self, X: np.ndarray, values: np.ndarray, seed: int) -> dict[str, Any]:
        keep, y, classes, notes = _encode_classes(values)
        X, n_classes = X[keep], len(classes)
        result: dict[str, Any] = {
            "kind": "categorical",
            "n": len(y),
            "n_classes": n_classes,
            "classes": classes,
            "chance": 1.0 / n_classes if n_classes >= 2 else None,
            "folds": None,
            "probe": {},
            "warnings": notes,
        }
        if n_classes < 2:
            notes.append(
                f"fewer than 2 classes with at least 2 subjects ({n_classes}); nothing to probe"
            )
            result["probe"] = {name: _empty_probe("balanced_accuracy") for name in self.probes}
            return result
        folds = min(self.folds, int(np.bincount(y).min()))
        if folds < self.folds:
            notes.append(
                f"folds reduced from {self.folds} to {folds}: the smallest class has "
                f"{folds} subjects"
            )
        result["folds"] = folds
        for name in self.probes:
            result["probe"][name] = self._classifier_probe(name, X, y, n_classes, folds, seed)
        return result

    def _classifier_probe(
        self, name: str, X: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int
    ) -> dict[str, Any]:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
        hyper: dict[str, Any]
        if name == "linear":
            oof, chosen = _nested_logistic_oof(X, y, list(splitter.split(X, y)), seed)
            best_c = _most_common(chosen)
            make: Callable[[], BaseEstimator] = functools.partial(_logistic, best_c)
            hyper = {"C": best_c, "C_per_fold": chosen}
            n_perm = self.n_permutations
        else:
            make = functools.partial(_mlp_classifier, seed)
            oof = _oof_predict(make, X, y, list(splitter.split(X, y)))
            hyper = {"hidden_layer_sizes": list(MLP_HIDDEN), "alpha": MLP_ALPHA}
            n_perm = self.n_permutations_nonlinear
        score = _balanced_accuracy(y, oof, n_classes)

        def permuted(y_perm: np.ndarray) -> float:
            folds = list(splitter.split(X, y_perm))
            return _balanced_accuracy(y_perm, _oof_predict(make, X, y_perm, folds), n_classes)

        p_value = _permutation_p_value(permuted, y, score, n_perm, seed)
        ci = _bootstrap_ci(
            lambda idx: _balanced_accuracy_rows(y[idx], oof[idx], n_classes),
            len(y),
            self.n_bootstrap,
            seed,
        )
        return {
            "balanced_accuracy": score,
            "chance": 1.0 / n_classes,
            "p_value": p_value,
            "ci95": ci,
            "n_permutations": n_perm,
            "hyperparameters": hyper,
        }

    def _continuous(self, X: np.ndarray, values: np.ndarray, seed: int) -> dict[str, Any]:
        y, known = _as_numeric_confound(values)
        notes: list[str] = []
        if (~known).any():
            notes.append(f"{int((~known).sum())} subject(s) without a value were left out")
        X, y = X[known], y[known]
        result: dict[str, Any] = {
            "kind": "continuous",
            "n": len(y),
            "chance": 0.0,
            "folds": None,
            "probe": {},
            "warnings": notes,
        }
        if len(y) < 4 or np.ptp(y) == 0:
            notes.append(
                f"{len(y)} subject(s) with {'constant' if len(y) else 'no'} values; "
                "nothing to probe"
            )
            result["probe"] = {name: _empty_probe("r2") for name in self.probes}
            return result
        folds = min(self.folds, len(y) // 2)
        if folds < self.folds:
            notes.append(f"folds reduced from {self.folds} to {folds}: only {len(y)} subjects")
        result["folds"] = folds
        splitter = KFold(folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(X))
        for name in self.probes:
            result["probe"][name] = self._regressor_probe(name, X, y, splits, seed)
        if "linear" in result["probe"]:
            dcor, dcor_p, dcor_note = _distance_correlation_test(X, y, self.n_permutations, seed)
            result["probe"]["linear"]["distance_correlation"] = dcor
            result["probe"]["linear"]["distance_correlation_p_value"] = dcor_p
            if dcor_note:
                notes.append(dcor_note)
        return result

    def _regressor_probe(
        self, name: str, X: np.ndarray, y: np.ndarray, splits: Splits, seed: int
    ) -> dict[str, Any]:
        hyper: dict[str, Any]
        if name == "linear":
            models: list[BaseEstimator] = []
            oof = _oof_predict(_ridge, X, y, splits, fitted=models)
            make: Callable[[], BaseEstimator] = _ridge
            hyper = {"alpha_per_fold": [float(m[-1].alpha_) for m in models]}
            n_perm = self.n_permutations
        else:
            make = functools.partial(_mlp_regressor, seed)
            oof = _oof_predict(make, X, y, splits)
            hyper = {"hidden_layer_sizes": list(MLP_HIDDEN), "alpha": MLP_ALPHA}
            n_perm = self.n_permutations_nonlinear
        score = _r2(y, oof)
        # KFold ignores y, so the permuted labels see the very same folds.
        p_value = _permutation_p_value(
            lambda y_perm: _r2(y_perm, _oof_predict(make, X, y_perm, splits)),
            y,
            score,
            n_perm,
            seed,
        )
        ci = _bootstrap_ci(lambda idx: _r2_rows(y[idx], oof[idx]), len(y), self.n_bootstrap, seed)
        return {
            "r2": score,
            "chance": 0.0,
            "p_value": p_value,
            "ci95": ci,
            "n_permutations": n_perm,
            "hyperparameters": hyper,
        }

    # --- conditional leakage -------------------------------------------------------------

    def _conditional(
        self,
        X: np.ndarray,
        values: np.ndarray,
        kind: str,
        target: np.ndarray,
        band: tuple[float, float] | None,
        seed: int,
    ) -> dict[str, Any]:
        conditional: dict[str, Any] = {"band": None, "n": None, "probe": None, "warnings": []}
        if band is not None:
            low, high = band
            in_band = np.isfinite(target) & (target >= low) & (target <= high)
            banded = self._audit_kind(X[in_band], values[in_band], kind, seed)
            conditional.update(
                band=[low, high],
                n=banded["n"],
                n_in_band=int(in_band.sum()),
                probe=banded["probe"],
                warnings=[f"band [{low}, {high}]: {w}" for w in banded["warnings"]],
            )
            if kind == "categorical":
                conditional.update(
                    n_classes=banded["n_classes"],
                    classes=banded["classes"],
                    chance=banded["chance"],
                )
        conditional.update(self._target_gain(X, values, kind, target, seed))
        return conditional

    def _target_gain(
        self, X: np.ndarray, values: np.ndarray, kind: str, target: np.ndarray, seed: int
    ) -> dict[str, Any]:
        """How much a linear probe gains from the features over the target alone."""
        rows = np.isfinite(target)
        if kind == "categorical":
            keep, y, classes, _ = _encode_classes(values[rows])
            metric = "balanced_accuracy"
        else:
            numeric, keep = _as_numeric_confound(values[rows])
            y = numeric[keep]
            metric = "r2"
        t = target[rows][keep].reshape(-1, 1)
        features = np.hstack([X[rows][keep], t])
        gain: dict[str, Any] = {
            f"target_only_{metric}": None,
            f"features_and_target_{metric}": None,
            "gain": None,
            "gain_ci95": None,
            "gain_n": len(y),
        }
        if kind == "categorical":
            n_classes = len(classes)
            if n_classes < 2:
                return gain
            folds = min(self.folds, int(np.bincount(y).min()))
            splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(t, y))
            only, _ = _nested_logistic_oof(t, y, splits, seed)
            both, _ = _nested_logistic_oof(features, y, splits, seed)

            def score(idx: np.ndarray, pred: np.ndarray) -> np.ndarray:
                return _balanced_accuracy_rows(y[idx], pred[idx], n_classes)

        else:
            if len(y) < 4 or np.ptp(y) == 0:
                return gain
            folds = min(self.folds, len(y) // 2)
            splits = list(KFold(folds, shuffle=True, random_state=seed).split(t))
            only = _oof_predict(_ridge, t, y, splits)
            both = _oof_predict(_ridge, features, y, splits)

            def score(idx: np.ndarray, pred: np.ndarray) -> np.ndarray:
                return _r2_rows(y[idx], pred[idx])

        all_rows = np.arange(len(y))[None, :]
        only_score = float(score(all_rows, only)[0])
        both_score = float(score(all_rows, both)[0])
        gain.update(
            {
                f"target_only_{metric}": only_score,
                f"features_and_target_{metric}": both_score,
                "gain": both_score - only_score,
                "gain_ci95": _bootstrap_ci(
                    lambda idx: score(idx, both) - score(idx, only),
                    len(y),
                    self.n_bootstrap,
                    seed,
                ),
            }
        )
        return gain

    # --- helpers -------------------------------------------------------------------------

    def _check_params(self) -> None:
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown or not self.probes:
            raise InputError(
                f"unknown probe(s) {unknown or list(self.probes)}; expected some of {list(PROBES)}",
                hint="e.g. probes=('linear', 'nonlinear')",
            )
        if not isinstance(self.folds, int) or self.folds < 2:
            raise InputError(f"folds must be an integer >= 2; got {self.folds!r}")
        for name in ("n_permutations", "n_permutations_nonlinear", "n_bootstrap"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"{name} must be an integer >= 0; got {value!r}")

    def _seed(self) -> int:
        if self.random_state is None:
            return int(np.random.SeedSequence().generate_state(1)[0])
        return int(self.random_state)


def infer_confound_kind(values: pd.Series | np.ndarray | Sequence[Any]) -> str:
    """Guess whether a confound column is categorical or continuous.

    Text, boolean and category columns are categorical; so are numeric columns holding at most
    10 distinct whole numbers (sex coded 0/1, site coded 1..6). Everything else is continuous.

    Examples:
        >>> infer_confound_kind([0, 1, 1, 0]), infer_confound_kind([23.5, 41.0, 67.2])
        ('categorical', 'continuous')
    """
    series = pd.Series(values)
    if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
        return "categorical"
    known = series.dropna().to_numpy(dtype=float)
    whole = bool(np.all(np.mod(known, 1) == 0))
    if whole and len(np.unique(known)) <= CATEGORICAL_MAX_LEVELS:
        return "categorical"
    return "continuous"


def distance_correlation(x: np.ndarray, y: np.ndarray, *, bias_corrected: bool = True) -> float:
    """Squared distance correlation (Székely et al. 2007), by :mod:`dcor`: 0 iff independent
    (in the population), sensitive to any dependence, not only linear.

    The plain (V-statistic) estimate is biased upward in small samples: on independent data it
    reads about 0.37 at 110 rows. ``bias_corrected=True`` (the default, and what the audit
    reports) gives the U-centred estimate of Székely & Rizzo (2014), whose expectation is 0
    under independence; it can fall slightly below 0. O(n²) memory.

    Args:
        x: shape ``(n,)`` or ``(n, p)``.
        y: shape ``(n,)`` or ``(n, q)``.
        bias_corrected: the U-centred estimate; ``False``: the plain one, in ``[0, 1]``.

    Examples:
        >>> x = np.arange(10.0)
        >>> round(distance_correlation(x, x ** 2), 3) > 0.9
        True
    """
    import dcor  # imports numba: only when a continuous confound is audited

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if bias_corrected:
        return float(dcor.u_distance_correlation_sqr(x, y))
    return float(dcor.distance_correlation_sqr(x, y))


# --- probes -------------------------------------------------------------------------------


def _logistic(c: float) -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))


def _mlp_classifier(seed: int) -> Pipeline:
    return make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=MLP_HIDDEN,
            alpha=MLP_ALPHA,
            solver="lbfgs",
            max_iter=MLP_MAX_ITER,
            random_state=seed,
        ),
    )


def _ridge() -> Pipeline:
    return make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))


def _mlp_regressor(seed: int) -> Pipeline:
    mlp = MLPRegressor(
        hidden_layer_sizes=MLP_HIDDEN,
        alpha=MLP_ALPHA,
        solver="lbfgs",
        max_iter=MLP_MAX_ITER,
        random_state=seed,
    )
    return make_pipeline(
        StandardScaler(), TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler())
    )


def _oof_predict(
    make: Callable[[], BaseEstimator],
    X: np.ndarray,
    y: np.ndarray,
    splits: Splits,
    fitted: list[BaseEstimator] | None = None,
) -> np.ndarray:
    """Out-of-fold predictions (a lean cross_val_predict: no joblib, no cloning)."""
    oof = np.empty(len(y), dtype=y.dtype)
    for train, test in splits:
        model = make().fit(X[train], y[train])
        oof[test] = model.predict(X[test])
        if fitted is not None:
            fitted.append(model)
    return oof


def _nested_logistic_oof(
    X: np.ndarray, y: np.ndarray, splits: Splits, seed: int
) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold logistic predictions with ``C`` picked by inner CV in each training fold."""
    oof = np.empty_like(y)
    chosen: list[float] = []
    for train, test in splits:
        c = _select_c(X[train], y[train], seed)
        oof[test] = _logistic(c).fit(X[train], y[train]).predict(X[test])
        chosen.append(c)
    return oof, chosen


def _select_c(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    classes, counts = np.unique(y, return_counts=True)
    inner = min(INNER_FOLDS, int(counts.min()))
    if inner < 2:
        return 1.0
    y_local = np.searchsorted(classes, y)
    splits = list(StratifiedKFold(inner, shuffle=True, random_state=seed).split(X, y_local))
    best_c, best = C_GRID[0], -np.inf
    for c in C_GRID:  # ascending: ties keep the stronger regularisation
        oof = _oof_predict(functools.partial(_logistic, c), X, y_local, splits)
        score = _balanced_accuracy(y_local, oof, len(classes))
        if score > best + 1e-12:
            best_c, best = c, score
    return best_c


# --- statistics ---------------------------------------------------------------------------


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    return float(_balanced_accuracy_rows(y[None, :], pred[None, :], n_classes)[0])


def _balanced_accuracy_rows(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Balanced accuracy of each row of ``(B, n)`` label arrays (classes absent in a row skip)."""
    rows = y.shape[0]
    offsets = y + n_classes * np.arange(rows)[:, None]
    total = np.bincount(offsets.ravel(), minlength=rows * n_classes).reshape(rows, n_classes)
    hits = np.bincount(
        offsets.ravel(), weights=(y == pred).ravel(), minlength=rows * n_classes
    ).reshape(rows, n_classes)
    present = total > 0
    recall = np.divide(hits, total, out=np.zeros_like(hits), where=present)
    return recall.sum(axis=1) / present.sum(axis=1)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    return float(_r2_rows(y[None, :], pred[None, :])[0])


def _r2_rows(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """R² of each row of ``(B, n)`` arrays; a constant-``y`` row scores 0 (no better than mean)."""
    total = np.sum((y - y.mean(axis=1, keepdims=True)) ** 2, axis=1)
    residual = np.sum((y - pred) ** 2, axis=1)
    safe = np.where(total > 0, total, 1.0)
    return np.where(total > 0, 1.0 - residual / safe, 0.0)


def _permutation_p_value(
    statistic: Callable[[np.ndarray], float], y: np.ndarray, score: float, n: int, seed: int
) -> float | None:
    """One-sided permutation p-value of ``score`` = ``statistic(y)`` by
    :func:`scipy.stats.permutation_test`: ``y`` permuted ``n`` times against fixed features,
    ``(1 + #{null >= score}) / (1 + n)`` (never 0); ``None`` when ``n`` is 0.

    Every probe draws from the same seed, so the nonlinear probe's permutations are the first
    of the linear probe's.
    """
    if n == 0:
        return None
    observed = [score]

    def on_labels(labels: np.ndarray) -> float:
        # scipy scores the unpermuted labels first: that score is known
        if observed:
            return observed.pop()
        return statistic(labels)

    result = stats.permutation_test(
        (y,),
        on_labels,
        permutation_type="pairings",
        vectorized=False,
        n_resamples=n,
        alternative="greater",
        random_state=np.random.default_rng([seed, 1]),
    )
    return float(result.pvalue)


def _bootstrap_ci(
    statistic: Callable[[np.ndarray], np.ndarray], n: int, n_bootstrap: int, seed: int
) -> list[float] | None:
    """95% CI of ``statistic`` over rows resampled with replacement, by
    :func:`scipy.stats.bootstrap`: BCa, or the percentile interval where BCa is undefined (every
    resample scores the same, or the jackknife is degenerate).

    ``statistic`` takes ``(B, m)`` row indices and returns ``B`` values.
    """
    if n_bootstrap == 0 or n == 0:
        return None

    def on_rows(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx, dtype=np.intp), axis, -1)
        return statistic(idx.reshape(-1, idx.shape[-1])).reshape(idx.shape[:-1])

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns, then returns NaN, where BCa fails
            interval = stats.bootstrap(
                (np.arange(n),),
                on_rows,
                n_resamples=n_bootstrap,
                batch=_BOOTSTRAP_CHUNK,
                vectorized=True,
                method=method,
                random_state=np.random.default_rng([seed, 2]),
            ).confidence_interval
        low, high = float(interval.low), float(interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return [low, high]
    return None


def _distance_correlation_test(
    X: np.ndarray, y: np.ndarray, n_permutations: int, seed: int
) -> tuple[float, float | None, str | None]:
    """The bias-corrected squared distance correlation of the standardised features with ``y``
    and its permutation p-value (``y`` permuted; the U-centred distance matrices are computed
    once and permuted, which is what recomputing them on permuted rows gives)."""
    import dcor  # imports numba: only when a continuous confound is audited

    note = None
    if len(y) > DCOR_MAX_ROWS:
        rows = np.random.default_rng([seed, 3]).choice(len(y), DCOR_MAX_ROWS, replace=False)
        X, y = X[rows], y[rows]
        note = f"distance correlation computed on a random {DCOR_MAX_ROWS} of the subjects"
    # Standardised, so that no single feature's scale dominates the distances.
    scale = X.std(axis=0)
    Z = (X - X.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    a = dcor.u_centered(squareform(pdist(Z)))
    b = dcor.u_centered(squareform(pdist(np.asarray(y, dtype=float).reshape(len(y), -1))))

    # permuting rows and columns alike leaves each matrix's own product unchanged
    denom = float(np.sqrt(dcor.u_product(a, a) * dcor.u_product(b, b)))

    def u_dcor_sqr(b: np.ndarray) -> float:
        return float(dcor.u_product(a, b)) / denom if denom > 0 else 0.0

    value = u_dcor_sqr(b)
    p_value = _permutation_p_value(
        lambda order: u_dcor_sqr(b[np.ix_(order, order)]),
        np.arange(len(y)),
        value,
        n_permutations,
        seed,
    )
    return value, p_value, note


# --- input checks -------------------------------------------------------------------------


def _as_features(features: np.ndarray | pd.DataFrame) -> np.ndarray:
    try:
        X = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"features must be numeric: {err}", hint="pass only the embedding/feature columns"
        ) from err
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2 or X.shape[1] == 0:
        raise InputError(f"features must be a (subjects, features) matrix; got shape {X.shape}")
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        raise InputError(
            f"features contain {len(bad)} NaN/infinite value(s), first at row {int(bad[0][0])}",
            row=int(bad[0][0]),
            hint="the encoder diverged or the embeddings file is incomplete",
        )
    return X


def _as_column(values: Any, n: int, name: str) -> np.ndarray:
    column = np.asarray(values, dtype=object).reshape(-1)
    if column.size != n:
        raise InputError(
            f"{name} has {column.size} values but the features have {n} rows",
            hint="pass one value per subject, in the same order as the features",
        )
    return column


def _as_target(target: Any, n: int) -> np.ndarray:
    column = _as_column(target, n, "target")
    numeric = pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isnan(numeric) & ~pd.isna(column))
    if bad.size:
        raise InputError(
            f"the target must be numeric for a conditional audit; row {int(bad[0])} has "
            f"{column[bad[0]]!r}",
            row=int(bad[0]),
        )
    return numeric


def _as_band(band: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in band)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"band must be [low, high]; got {band!r}", hint="e.g. band: [18, 30]"
        ) from err
    if not low <= high:
        raise InputError(f"band must have low <= high; got [{low}, {high}]")
    return low, high


def _as_numeric_confound(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    numeric = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(np.isnan(numeric) & ~pd.isna(values))
    if bad.size:
        raise InputError(
            f"a continuous confound must be numeric; row {int(bad[0])} has {values[bad[0]]!r}",
            row=int(bad[0]),
            hint="audit it with kind='categorical' if it is a label",
        )
    return numeric, np.isfinite(numeric)


def _encode_classes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Integer labels for the rows to keep: labelled rows of classes with >= 2 subjects."""
    notes: list[str] = []
    known = ~pd.isna(values)
    if (~known).any():
        notes.append(f"{int((~known).sum())} subject(s) without a label were left out")
    names = np.array([str(v) for v in values], dtype=object)
    classes, counts = np.unique(names[known], return_counts=True)
    small = classes[counts < 2]
    if small.size:
        notes.append(
            f"class(es) {', '.join(map(str, small))} have fewer than 2 subjects and were left out"
        )
    kept = classes[counts >= 2]
    keep = known & np.isin(names, kept)
    y = np.searchsorted(kept, names[keep]).astype(np.int64)
    return keep, y, [str(c) for c in kept], notes


def _empty_probe(metric: str) -> dict[str, Any]:
    return {metric: None, "chance": None, "p_value": None, "ci95": None, "n_permutations": 0}


def _most_common(values: list[float]) -> float:
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


@contextlib.contextmanager
def _quiet_sklearn() -> Iterator[None]:
    """Silence sklearn warnings the result already reports (tiny folds); use one BLAS thread."""
    # One BLAS thread: the probes make thousands of tiny BLAS calls, and with 2+ threads the
    # thread hand-offs cost more than the maths (10x slower on a busy 2-core laptop).
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        yield
