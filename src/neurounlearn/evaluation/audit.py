"""The leakage block of ``metrics.json`` for a set of held-out rows, and the OpenBHB-style ridge
probe of the target: what ``evaluate``, ``compare`` and the segmentation evaluation share."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurounlearn.config import AuditConfig
from neurounlearn.evaluation.leakage import RIDGE_ALPHAS, LeakageAudit


def ridge_probe_mae(
    features: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0
) -> float | None:
    """Out-of-fold MAE of a ridge probe predicting the target from frozen features (OpenBHB)."""
    ok = np.isfinite(target)
    x, y = features[ok], target[ok]
    if len(y) < max(folds, 3):
        return None
    cv = KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    pred = cross_val_predict(probe, x, y, cv=cv)
    return float(np.mean(np.abs(pred - y)))


def audit_features(
    features: np.ndarray,
    frame: pd.DataFrame,
    confounds: list[str],
    *,
    target: np.ndarray | None,
    audit: AuditConfig,
    seed: int = 0,
    kinds: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The leakage block of ``metrics.json`` for the given (held-out) rows.

    Args:
        kinds: confound -> ``categorical`` or ``continuous`` (default categorical); a
            continuous confound is probed with ridge R² and distance correlation whichever way
            it was unlearned (correlation or binned).
    """
    auditor = LeakageAudit(
        folds=audit.folds,
        n_permutations=audit.n_permutations,
        n_permutations_nonlinear=min(audit.n_permutations, audit.n_permutations_nonlinear),
        n_bootstrap=audit.n_bootstrap,
        random_state=seed,
    )
    out: dict[str, Any] = {}
    for name in confounds:
        kind = (kinds or {}).get(name, "categorical")
        # raw values: the audit drops missing labels itself (astype(str) would make "nan" a class)
        values = (
            pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
            if kind == "continuous"
            else frame[name].to_numpy(dtype=object)
        )
        out[name] = auditor.audit(
            features,
            values,
            kind=kind,
            target=target,
            band=tuple(audit.band) if audit.band else None,
        )
    return out
