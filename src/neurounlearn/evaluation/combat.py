"""The ComBat arm: site harmonisation with neuroHarmonize, as a scikit-learn-shaped estimator.

ComBat (Johnson et al. 2007; Fortin et al. 2017/2018) and ComBat-GAM (Pomponio et al. 2020) are
the field's reference harmonisers. This module only wraps neuroHarmonize's
``harmonizationLearn``/``harmonizationApply``; it never re-implements ComBat. The wrapper adds
what neuroHarmonize leaves to the caller: input checks with readable errors, unseen-site
detection, and a workaround for ``harmonizationApply`` failing unless every training site is
present in the data being transformed.

Examples:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(8, 3)); sites = ["a"] * 4 + ["b"] * 4
    >>> ComBatArm().fit(X, sites).transform(X, sites).shape
    (8, 3)
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from neurounlearn.errors import InputError, require

#: what needs neuroHarmonize, in the message when it is missing
COMBAT = "the ComBat arms"

SITE_COLUMN = "SITE"


class ComBatArm(TransformerMixin, BaseEstimator):
    """ComBat / ComBat-GAM harmonisation of tabular features or embeddings.

    Misuse that leaks:

    * Fit on the TRAINING split only, then transform validation and test. Fitting before the
      split (or on all subjects) lets test subjects shape the site parameters.
    * Covariates are preserved, not removed. Using the target (e.g. age) as a covariate needs
      the target of every subject you transform: at test time that is the answer itself, so
      the harmonised test features then leak the target. Prefer covariates known without the
      target (sex), or report the leak.

    ComBat needs every site seen at fit time: it has no batch parameters for an unseen site
    (a new scanner), unlike neurounlearn models, which need no site label at inference.

    Args:
        covariates: columns of ``covars`` whose effects ComBat must preserve; ``None`` means
            every column passed to :meth:`fit` (none when no ``covars`` is passed). Numeric
            only (encode sex as 0/1).
        smooth_terms: covariates modelled as smooth nonlinear terms (ComBat-GAM); must be a
            subset of ``covariates``.
        empirical_bayes: shrink site parameters across features (standard ComBat); ``False``
            uses the per-feature estimates.
        random_state: seeds the penalty search of ComBat-GAM (unused without ``smooth_terms``).

    Attributes:
        model_: the neuroHarmonize model dict.
        sites_: sorted training site labels (as ``str``).
        covariates_: covariate columns used, in order.
        n_features_in_: number of features seen by :meth:`fit`.

    Examples:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).normal(size=(8, 2)); s = ["a"] * 4 + ["b"] * 4
        >>> arm = ComBatArm().fit(X, s)
        >>> arm.sites_
        ['a', 'b']
    """

    def __init__(
        self,
        *,
        covariates: Sequence[str] | None = None,
        smooth_terms: Sequence[str] | None = None,
        empirical_bayes: bool = True,
        random_state: int | None = 0,
    ) -> None:
        self.covariates = covariates
        self.smooth_terms = smooth_terms
        self.empirical_bayes = empirical_bayes
        self.random_state = random_state

    def fit(
        self,
        X: np.ndarray | pd.DataFrame,
        y: Sequence[Any] | np.ndarray | pd.Series | None = None,
        covars: pd.DataFrame | None = None,
        *,
        sites: Sequence[Any] | np.ndarray | pd.Series | None = None,
    ) -> ComBatArm:
        """Learn site effects on the training split.

        The sites are scikit-learn's ``y`` (``fit(X, sites)``), so in a
        :class:`~sklearn.pipeline.Pipeline` ``pipe.fit(X, sites)`` reaches them; with metadata
        routing on, ``set_transform_request(sites=True, covars=True)`` lets
        ``pipe.transform(X, sites=..., covars=...)`` reach :meth:`transform`.

        Args:
            X: training features, shape ``(n_subjects, n_features)``.
            y: site label per subject, shape ``(n_subjects,)``; compared as strings.
            covars: covariates per subject (rows aligned with ``X``), or ``None``.
            sites: the same as ``y``, by name (give one of them).

        Returns:
            ``self``.

        Raises:
            InputError: non-finite or constant features, fewer than 2 sites, a site with a
                single subject, or missing/non-numeric covariates.
        """
        harmonizationLearn = require("neuroHarmonize", "combat", COMBAT).harmonizationLearn

        data = _as_matrix(X)
        if y is not None and sites is not None:
            raise InputError(
                "ComBat's fit got the sites twice (as y and as sites=)",
                hint="give them once: fit(X, sites) or fit(X, sites=sites)",
            )
        site_labels = _as_sites(_need_sites(y if sites is None else sites, "fit"), len(data))
        covariates = self._covariate_names(covars)
        frame = _covars_frame(site_labels, covars, covariates, len(data))

        counts = pd.Series(site_labels).value_counts()
        if len(counts) < 2:
            raise InputError(
                f"ComBat needs at least 2 sites to harmonise; got {len(counts)}",
                hint="there is nothing to harmonise within a single site",
            )
        singletons = sorted(counts.index[counts < 2])
        if singletons:
            # neuroHarmonize does not refuse this: the site variance is NaN and, with empirical
            # Bayes, the NaN spreads through the priors to every subject of every site.
            raise InputError(
                f"ComBat needs at least 2 subjects per site; these sites have 1: "
                f"{', '.join(singletons)}",
                hint="drop those subjects or merge the site with a similar scanner",
            )
        constant = np.flatnonzero(np.ptp(data, axis=0) == 0)
        if constant.size:
            # A zero pooled variance divides by zero and, through the empirical-Bayes priors,
            # turns every feature into NaN, not only the constant one.
            names = _feature_names(X, constant)
            raise InputError(
                f"ComBat cannot harmonise constant features: {names}",
                hint="drop features with the same value for every training subject",
            )

        # harmonizationLearn(seed=...) calls np.random.seed: restore the caller's global state.
        global_state = np.random.get_state()  # noqa: NPY002
        try:
            with _quiet():
                model, _ = harmonizationLearn(
                    data,
                    frame,
                    eb=self.empirical_bayes,
                    smooth_terms=list(self.smooth_terms or []),
                    seed=self.random_state if self.smooth_terms else None,
                )
        finally:
            np.random.set_state(global_state)  # noqa: NPY002
        self.model_ = model
        self.sites_ = [str(s) for s in model["SITE_labels"]]
        self.covariates_ = covariates
        self.n_features_in_ = data.shape[1]
        # Values for the padding rows added in transform; any value inside the training range
        # works (each row is adjusted independently), the median keeps splines in range.
        self._padding_covars_ = {c: float(frame[c].median()) for c in covariates}
        self._smooth_ranges_ = {
            c: (float(frame[c].min()), float(frame[c].max())) for c in self.smooth_terms or []
        }
        return self

    def transform(
        self,
        X: np.ndarray | pd.DataFrame,
        sites: Sequence[Any] | np.ndarray | pd.Series | None = None,
        covars: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """Harmonise features with the site effects learned by :meth:`fit`.

        Args:
            X: features, shape ``(n_subjects, n_features)``.
            sites: site label per subject; every site must have been seen by :meth:`fit`.
            covars: the covariate columns used at fit time, rows aligned with ``X``.

        Returns:
            Harmonised features, shape ``(n_subjects, n_features)``, ``float64``.

        Raises:
            NotFittedError: :meth:`fit` was not called.
            InputError: an unseen site, a feature-count mismatch, or missing covariates.
        """
        harmonizationApply = require("neuroHarmonize", "combat", COMBAT).harmonizationApply

        check_is_fitted(
            self,
            "model_",
            msg="This ComBatArm is not fitted yet. Call 'fit' with the training split before "
            "'transform'.",
        )
        data = _as_matrix(X)
        if data.shape[1] != self.n_features_in_:
            raise InputError(
                f"ComBat was fit on {self.n_features_in_} features but got {data.shape[1]}",
                hint="transform the same feature columns that were used for fit",
            )
        site_labels = _as_sites(_need_sites(sites, "transform"), len(data))
        unseen = sorted(set(site_labels.tolist()) - set(self.sites_))
        if unseen:
            raise _unseen_error(unseen)
        frame = _covars_frame(site_labels, covars, self.covariates_, len(data))
        for column, (low, high) in self._smooth_ranges_.items():
            outside = np.flatnonzero((frame[column] < low) | (frame[column] > high))
            if outside.size:
                # statsmodels' B-splines fail (NotImplementedError) outside the outer knots.
                raise InputError(
                    f"ComBat-GAM cannot extrapolate smooth term '{column}' beyond its training "
                    f"range [{low:g}, {high:g}]: {outside.size} subject(s) fall outside (first "
                    f"value {frame[column].iloc[outside[0]]:g})",
                    row=int(outside[0]),
                    column=column,
                    hint="fit on a training split covering that range, or make it a linear "
                    "covariate (drop it from smooth_terms)",
                )

        # harmonizationApply rebuilds the site one-hot from the sites present in its input, so
        # it fails (IndexError / shape mismatch) unless every training site occurs. One padding
        # row per training site makes them all present; rows are adjusted independently, so the
        # padding does not change the real rows, and it is dropped afterwards.
        padding = pd.DataFrame({SITE_COLUMN: self.sites_, **self._padding_covars_})
        padded_frame = pd.concat([frame, padding[frame.columns]], ignore_index=True)
        padded_data = np.vstack([data, np.zeros((len(self.sites_), data.shape[1]))])
        with _quiet():
            harmonised = harmonizationApply(padded_data, padded_frame, self.model_)
        harmonised = np.asarray(harmonised, dtype=np.float64)[: len(data)]

        bad = np.flatnonzero(~np.isfinite(harmonised).all(axis=1))
        if bad.size:
            bad_sites = sorted(set(site_labels[bad].tolist()))
            raise InputError(
                f"ComBat returned NaN for {bad.size} subject(s) of site(s) "
                f"{', '.join(bad_sites)} (first at row {int(bad[0])})",
                row=int(bad[0]),
                hint="check those subjects' features and covariates for extreme values",
            )
        return harmonised

    def fit_transform(  # type: ignore[override]
        self,
        X: np.ndarray | pd.DataFrame,
        y: Sequence[Any] | np.ndarray | pd.Series | None = None,
        covars: pd.DataFrame | None = None,
        *,
        sites: Sequence[Any] | np.ndarray | pd.Series | None = None,
    ) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` on the same (training) subjects."""
        self.fit(X, y, covars, sites=sites)
        return self.transform(X, y if sites is None else sites, covars)

    def _covariate_names(self, covars: pd.DataFrame | None) -> list[str]:
        if self.covariates is not None:
            names = [str(c) for c in self.covariates]
        elif covars is not None:
            names = [str(c) for c in covars.columns]
        else:
            names = []
        if SITE_COLUMN in names:
            raise InputError(
                f"covariate column '{SITE_COLUMN}' clashes with ComBat's site column",
                column=SITE_COLUMN,
                hint="pass sites separately and rename that covariate",
            )
        unknown_smooth = sorted(set(self.smooth_terms or []) - set(names))
        if unknown_smooth:
            raise InputError(
                f"smooth_terms {unknown_smooth} are not covariates; covariates are {names}",
                hint="every smooth term must also be listed in covariates",
            )
        return names


def _need_sites(sites: Any, method: str) -> Any:
    if sites is None:
        raise InputError(
            f"ComBat's {method} needs each subject's site",
            hint=f"call {method}(X, sites), or in a Pipeline pass the sites as y to fit and, "
            "with metadata routing, as sites= to transform",
        )
    return sites


def _unseen_error(sites: list[str]) -> InputError:
    return InputError(
        f"ComBat cannot apply to an unseen site: {', '.join(sites)}; it has no batch "
        "parameters for them (neurounlearn models can)",
        hint="fit ComBat on data that includes these sites, or use an unlearning model",
    )


def _as_matrix(X: np.ndarray | pd.DataFrame) -> np.ndarray:
    try:
        data = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"ComBat features must be numeric: {err}", hint="select numeric feature columns"
        ) from err
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0:
        raise InputError(
            f"ComBat needs a (subjects, features) matrix; got shape {data.shape}",
            hint="reshape single-feature data to (n, 1)",
        )
    bad = np.argwhere(~np.isfinite(data))
    if bad.size:
        # One NaN turns the whole neuroHarmonize output into NaN.
        row, col = (int(v) for v in bad[0])
        raise InputError(
            f"ComBat features contain {len(bad)} NaN/infinite value(s), first at row {row}, "
            f"feature {_feature_names(X, np.array([col]))}",
            row=row,
            hint="impute or drop those subjects before harmonising",
        )
    return data


def _as_sites(sites: Sequence[Any] | np.ndarray | pd.Series, n: int) -> np.ndarray:
    labels = np.asarray(sites, dtype=object).reshape(-1)
    if labels.size != n:
        raise InputError(
            f"got {labels.size} site labels for {n} subjects", hint="pass one site per row"
        )
    missing = np.flatnonzero(pd.isna(labels))
    if missing.size:
        raise InputError(
            f"{missing.size} subject(s) have no site label (first at row {int(missing[0])})",
            row=int(missing[0]),
            hint="ComBat needs a site for every subject it harmonises",
        )
    # Strings, so that 1 and "1" (CSV vs code) are the same site and labels sort stably.
    return np.array([str(s) for s in labels], dtype=object)


def _covars_frame(
    sites: np.ndarray, covars: pd.DataFrame | None, covariates: list[str], n: int
) -> pd.DataFrame:
    """The ``SITE`` + numeric covariates frame neuroHarmonize expects (default RangeIndex)."""
    frame = pd.DataFrame({SITE_COLUMN: sites})
    if not covariates:
        return frame
    if covars is None:
        raise InputError(
            f"ComBat was configured with covariates {covariates} but no covars were passed",
            hint="pass a DataFrame with those columns, rows aligned with X",
        )
    if len(covars) != n:
        raise InputError(f"covars has {len(covars)} rows for {n} subjects")
    for column in covariates:
        if column not in covars.columns:
            raise InputError(
                f"covariate column '{column}' is missing; columns are {list(covars.columns)}",
                column=column,
            )
        values = pd.to_numeric(covars[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(
                f"covariate must be numeric and known for every subject; {bad.size} value(s) "
                f"are missing or not numbers (first: {covars[column].iloc[bad[0]]!r})",
                row=int(bad[0]),
                column=column,
                hint="encode categories as numbers (e.g. sex as 0/1) and fill or drop gaps",
            )
        frame[column] = values
    return frame


def _feature_names(X: np.ndarray | pd.DataFrame, columns: np.ndarray) -> str:
    if isinstance(X, pd.DataFrame):
        return ", ".join(str(X.columns[c]) for c in columns[:10])
    return ", ".join(f"#{int(c)}" for c in columns[:10])


@contextlib.contextmanager
def _quiet():
    """Silence neuroHarmonize's prints and numpy.matrix deprecation warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
