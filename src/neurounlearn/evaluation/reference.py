"""The reference arms: a linear readout of the raw features, and the same after ComBat.

These need no deep model; they answer "what does the field's habit give on these subjects?".
One implementation serves ``compare`` (fit on each fold's training rows) and the demo (fit on
its split's training and validation rows): the rows they are fit on are a parameter.
ComBat (neuroHarmonize) is always fit on those rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurounlearn.config import AuditConfig
from neurounlearn.evaluation.audit import audit_features
from neurounlearn.evaluation.combat import ComBatArm
from neurounlearn.evaluation.leakage import RIDGE_ALPHAS
from neurounlearn.evaluation.metrics import task_metrics


def linear_readout(
    x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, *, classes: Sequence[str] | None = None
) -> np.ndarray:
    """A linear readout fit on ``fit_rows`` (where ``y`` is known): predictions for every row.

    Args:
        x: ``(n, d)`` features.
        y: ``(n,)`` target (regression) or class index (classification); ``NaN``: unknown.
        fit_rows: ``(n,)`` bool, the rows to fit on.
        classes: the class names for classification (then the result is ``(n, K)``
            probabilities in that order); ``None`` for regression (ridge).
    """
    fit = np.asarray(fit_rows, dtype=bool) & np.isfinite(y)
    if classes is not None:
        labels = y[fit].astype(int)
        model = make_pipeline(
            StandardScaler(),
            LogisticRegressionCV(
                Cs=8,
                cv=int(np.clip(np.bincount(labels).min(), 2, 5)),
                class_weight="balanced",
                max_iter=2000,
            ),
        ).fit(x[fit], labels)
        prob = np.zeros((len(x), len(classes)))
        prob[:, model.classes_.astype(int)] = model.predict_proba(x)
        return prob
    reg = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS)).fit(x[fit], y[fit])
    return reg.predict(x)


class ReferenceComBat:
    """ComBat fit on the fitting rows (those with every covariate known), for any rows.

    Features constant over the fitting rows are left out (ComBat cannot estimate a site effect
    of a feature that never varies; the bundled table has 34 all-zero columns).

    Args:
        x: ``(n, d)`` features; sites, covariates: per row.
        covariates: numeric covariate columns (:func:`~neurounlearn.evaluation.compare.
            combat_covariates`), preserved, not removed; may be empty.
        fit_rows: ``(n,)`` bool.
        smooth_terms: covariates ComBat-GAM models with splines.
        seed: seeds ComBat-GAM's penalty search.
    """

    def __init__(
        self,
        x: np.ndarray,
        sites: np.ndarray,
        covariates: pd.DataFrame,
        fit_rows: np.ndarray,
        *,
        smooth_terms: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        fit = np.asarray(fit_rows, dtype=bool) & covariates.notna().all(axis=1).to_numpy()
        self.columns_ = x[fit].std(axis=0) > 0
        self.has_covariates_ = len(covariates.columns) > 0
        self.arm_ = ComBatArm(
            covariates=list(covariates.columns) or None,
            smooth_terms=list(smooth_terms) or None,
            random_state=seed,
        )
        self.arm_.fit(
            x[fit][:, self.columns_],
            sites[fit],
            covariates.loc[fit] if self.has_covariates_ else None,
        )
        self.fit_rows_ = fit
        self.means_ = covariates.loc[fit].mean()
        # ComBat-GAM's splines cannot extrapolate: a subject beyond the fitting range is held at
        # its edge
        self.ranges_ = {c: covariates.loc[fit, c].agg(["min", "max"]) for c in smooth_terms}

    def transform(
        self,
        x: np.ndarray,
        sites: np.ndarray,
        covariates: pd.DataFrame,
        *,
        blind: Sequence[str] = (),
        blind_rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Harmonised features of every row. A row without a covariate (unlabelled) gets the
        fitting rows' mean, as at inference; so do the ``blind`` columns (the target) of the
        ``blind_rows`` (default: every row outside the fitting rows)."""
        given = covariates.fillna(self.means_)
        for column, (low, high) in self.ranges_.items():
            given[column] = given[column].clip(low, high)
        if blind:
            rows = ~self.fit_rows_ if blind_rows is None else np.asarray(blind_rows, dtype=bool)
            blind = list(blind)
            given.loc[rows, blind] = self.means_[blind].to_numpy()
        return self.arm_.transform(
            x[:, self.columns_], sites, given if self.has_covariates_ else None
        )


def _audited_arm(
    features: np.ndarray,
    prediction: np.ndarray,
    frame: pd.DataFrame,
    fit_rows: np.ndarray,
    test_rows: np.ndarray,
    *,
    target: str,
    site_column: str,
    confounds: list[str],
    audit: AuditConfig,
    seed: int,
) -> dict[str, Any]:
    """Task metrics on the test rows, and the audit of their features (standardised on the
    fitting rows), as for a model's embeddings."""
    test = frame.loc[test_rows].reset_index(drop=True)
    y_test = pd.to_numeric(test[target], errors="coerce").to_numpy(dtype=float)
    scaler = StandardScaler().fit(features[fit_rows])
    return {
        "task": task_metrics(
            y_test, prediction[test_rows], test[site_column].astype(str).to_numpy()
        ),
        "leakage": audit_features(
            scaler.transform(features[test_rows]),
            test,
            confounds,
            target=y_test,
            audit=audit,
            seed=seed,
        ),
    }


def reference_arms(
    frame: pd.DataFrame,
    feature_columns: list[str],
    split: pd.Series,
    *,
    target: str,
    site_column: str,
    confounds: list[str],
    audit: AuditConfig,
    seed: int = 0,
    combat_covariates: tuple[str, ...] = ("age",),
) -> dict[str, dict[str, Any]]:
    """``{"raw ridge": {...}, "raw + ComBat": {...}}`` with ``task`` and ``leakage`` blocks.

    Both arms are fit on the train + validation rows (ridge tunes its own penalty by inner CV);
    the audit probes the test rows' features exactly as for a model's embeddings. ComBat uses
    ``combat_covariates`` (default: age, to protect it); harmonising test data with the target
    as a covariate uses the test target (``compare``'s ``combat-inference`` arm does not).
    """
    fit_rows = split.isin(["train", "val"]).to_numpy()
    test_rows = (split == "test").to_numpy()
    x = frame[feature_columns].to_numpy(dtype=float)
    x = x[:, x[fit_rows].std(axis=0) > 0]
    y = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=float)
    kw: dict[str, Any] = dict(
        target=target, site_column=site_column, confounds=confounds, audit=audit, seed=seed
    )
    arms = {
        "raw ridge": _audited_arm(
            x, linear_readout(x, y, fit_rows), frame, fit_rows, test_rows, **kw
        )
    }
    covs = [c for c in combat_covariates if c in frame]
    covars = frame[covs].apply(pd.to_numeric, errors="coerce")
    sites = frame[site_column].astype(str).to_numpy()
    combat = ReferenceComBat(x, sites, covars, fit_rows, seed=seed)
    xh = combat.transform(x, sites, covars)
    fit_ok = combat.fit_rows_
    arms["raw + ComBat"] = _audited_arm(
        xh, linear_readout(xh, y, fit_ok), frame, fit_ok, test_rows, **kw
    )
    return arms
