"""``evaluate``: task metrics and the leakage audit of a finished run, into ``metrics.json``.

The audit trains fresh probes on the frozen embeddings of the *test* split (subjects the model
never trained on); the adversary's own accuracy during training proves little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurounlearn.atomic import write_json
from neurounlearn.config import AuditConfig
from neurounlearn.data.manifest import read_table
from neurounlearn.errors import InputError
from neurounlearn.evaluation.leakage import LeakageAudit
from neurounlearn.evaluation.metrics import task_metrics
from neurounlearn.training.run import load_run


def ridge_probe_mae(
    features: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0
) -> float | None:
    """Out-of-fold MAE of a ridge probe predicting the target from frozen features (OpenBHB)."""
    ok = np.isfinite(target)
    x, y = features[ok], target[ok]
    if len(y) < max(folds, 3):
        return None
    cv = KFold(n_splits=min(folds, len(y)), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
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
) -> dict[str, Any]:
    """The leakage block of ``metrics.json`` for the given (held-out) rows."""
    auditor = LeakageAudit(
        folds=audit.folds,
        n_permutations=audit.n_permutations,
        n_permutations_nonlinear=min(audit.n_permutations, audit.n_permutations_nonlinear),
        n_bootstrap=audit.n_bootstrap,
        random_state=seed,
    )
    out: dict[str, Any] = {}
    for name in confounds:
        # raw values: the audit drops missing labels itself (astype(str) would make "nan" a class)
        values = frame[name].to_numpy(dtype=object)
        out[name] = auditor.audit(
            features,
            values,
            kind="categorical",
            target=target,
            band=tuple(audit.band) if audit.band else None,
        )
    return out


def evaluate(run_dir: str | Path, *, data: str | Path | None = None) -> dict[str, Any]:
    """Compute and write ``RUN_DIR/metrics.json``; returns the metrics.

    Args:
        run_dir: a finished run.
        data: optional manifest of an external test set (with targets and confound columns);
            every row of it is then treated as test data. Default: the run's own test split.
    """
    run = load_run(run_dir)
    cfg, run_dir = run.config, run.run_dir
    target, site = cfg.data.target, cfg.data.site_column
    preds = pd.read_csv(run_dir / "predictions.csv")
    emb = pd.read_csv(run_dir / "embeddings.csv")
    ecols = [c for c in emb.columns if c.startswith("e") and c[1:].isdigit()]
    if data is not None:
        from neurounlearn.training.predict import predict_file

        frame = read_table(data)
        missing = [c for c in [target, site, *[c.name for c in cfg.confounds]] if c not in frame]
        if missing:
            raise InputError(
                f"evaluation data lacks column(s) {missing}",
                file=data,
                hint="evaluate needs the target and the confound columns",
            )
        preds, emb = predict_file(run, data)
        test_mask = np.ones(len(preds), dtype=bool)
        meta = frame
    else:
        test_mask = (preds["split"] == "test").to_numpy()
        meta = preds  # fit stores the confound columns there
    val_mask = (
        (preds["split"] == "val").to_numpy() if "split" in preds else np.zeros(len(preds), bool)
    )

    y = pd.to_numeric(preds[target], errors="coerce").to_numpy(dtype=float)
    yhat = preds["prediction"].to_numpy(dtype=float)
    task = task_metrics(
        y[test_mask],
        yhat[test_mask],
        preds.loc[test_mask, site].astype(str).to_numpy(),
        y_true_val=y[val_mask] if val_mask.any() else None,
        y_pred_val=yhat[val_mask] if val_mask.any() else None,
    )
    task = {
        "kind": "regression",
        "target": target,
        **{k: v for k, v in task.items() if k != "kind"},
    }

    feats = emb.loc[test_mask, ecols].to_numpy(dtype=float)
    test_meta = meta.loc[test_mask].reset_index(drop=True)
    confounds = [c.name for c in cfg.confounds] or [site]
    leakage = audit_features(
        feats, test_meta, confounds, target=y[test_mask], audit=cfg.audit, seed=cfg.train.seed
    )
    ridge_mae = ridge_probe_mae(feats, y[test_mask], seed=cfg.train.seed)
    site_probe = ((leakage.get(site) or {}).get("probe") or {}).get("linear") or {}
    site_bacc = site_probe.get("balanced_accuracy")
    metrics = {
        "run": str(run_dir),
        "strategy": cfg.strategy.name,
        "mode": cfg.strategy.mode if cfg.strategy.name == "iterative" else None,
        "evaluated_on": str(data) if data is not None else "test split",
        "n_test": int(test_mask.sum()),
        "task": task,
        "leakage": leakage,
        "openbhb": {
            "ridge_age_probe_mae": ridge_mae,
            "site_probe_balanced_accuracy": site_bacc,
            "external_mae": None,
            "score": None,
            "note": "external-site MAE (and so the score) needs a leave-one-site-out "
            "comparison, which 'evaluate' does not run",
        },
        "timing": {
            "fit_seconds": run.info.get("fit_seconds"),
            "epochs_run": run.info.get("epochs_run"),
            "samples_per_second": run.info.get("samples_per_second"),
        },
        "warnings": run.info.get("warnings", []),
        "versions": run.info.get("versions", {}),
    }
    write_json(metrics, run_dir / "metrics.json")
    return metrics
