"""Reference arms on the same split as the models: ridge on raw features, and raw + ComBat.

These need no deep model; they answer "what does the field's habit give on these subjects?".
ComBat (neuroHarmonize) is fit on the training rows only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurounlearn.config import AuditConfig
from neurounlearn.evaluation.combat import ComBatArm
from neurounlearn.evaluation.evaluate import audit_features
from neurounlearn.evaluation.metrics import task_metrics

ALPHAS = np.logspace(-2, 4, 13)


def _ridge_arm(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_test: np.ndarray,
    test: pd.DataFrame,
    *,
    target: str,
    site_column: str,
    confounds: list[str],
    audit: AuditConfig,
    seed: int,
) -> dict[str, Any]:
    ok = np.isfinite(y_fit)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(x_fit[ok], y_fit[ok])
    y_test = pd.to_numeric(test[target], errors="coerce").to_numpy(dtype=float)
    pred = model.predict(x_test)
    scaler = StandardScaler().fit(x_fit)
    return {
        "task": task_metrics(y_test, pred, test[site_column].astype(str).to_numpy()),
        "leakage": audit_features(
            scaler.transform(x_test), test, confounds, target=y_test, audit=audit, seed=seed
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

    Features constant over the fitting rows are left out of both arms.

    Ridge is fit on train + validation rows (it tunes its own penalty by inner CV); the audit
    probes the test rows' features exactly as for a model's embeddings. ComBat uses
    ``combat_covariates`` (default: age, to protect it) on both fit and test rows; note that
    harmonising test data with the target as a covariate uses the test target.
    """
    fit_rows = split.isin(["train", "val"]).to_numpy()
    test_rows = (split == "test").to_numpy()
    x = frame[feature_columns].to_numpy(dtype=float)
    # ComBat cannot estimate a site effect of a feature that never varies (the bundled table
    # has 34 all-zero columns); such a feature carries nothing for ridge either.
    x = x[:, x[fit_rows].std(axis=0) > 0]
    y = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=float)
    test = frame.loc[test_rows].reset_index(drop=True)
    kw: dict[str, Any] = dict(
        target=target, site_column=site_column, confounds=confounds, audit=audit, seed=seed
    )
    arms = {"raw ridge": _ridge_arm(x[fit_rows], y[fit_rows], x[test_rows], test, **kw)}

    covs = [c for c in combat_covariates if c in frame]
    sites = frame[site_column].astype(str).to_numpy()
    covars = frame[covs].apply(pd.to_numeric, errors="coerce") if covs else None
    fit_ok = fit_rows & (np.isfinite(covars.to_numpy()).all(axis=1) if covars is not None else True)
    combat = ComBatArm(covariates=covs or None).fit(
        x[fit_ok], sites[fit_ok], covars.loc[fit_ok] if covars is not None else None
    )
    xh_fit = combat.transform(
        x[fit_ok], sites[fit_ok], covars.loc[fit_ok] if covars is not None else None
    )
    xh_test = combat.transform(
        x[test_rows], sites[test_rows], covars.loc[test_rows] if covars is not None else None
    )
    arms["raw + ComBat"] = _ridge_arm(xh_fit, y[fit_ok], xh_test, test, **kw)
    return arms
