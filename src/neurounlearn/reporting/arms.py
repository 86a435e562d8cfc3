"""The report's arm: what one run (or a reference method) produced, for every section.

Its own module so that :mod:`neurounlearn.reporting.figures` and
:mod:`neurounlearn.reporting.report` both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["ReportArm"]


@dataclass
class ReportArm:
    """One arm of the report: what a run (or a reference method) produced.

    Args:
        name: label shown everywhere, e.g. ``"baseline"``, ``"raw + ComBat"`` or a run dir name.
        kind: ``"model"`` (a trained network) or ``"reference"`` (raw or ComBat features; no
            training history).
        strategy: ``baseline``, ``iterative``, ``grl``, or ``None`` for references.
        task: the ``task`` block of ``metrics.json``.
        leakage: the ``leakage`` block of ``metrics.json`` (confound -> audit).
        predictions: held-out rows only: ``site``, ``y_true``, ``y_pred`` (class labels as text
            for classification).
        embeddings: features for the embedding maps, shape ``(n, d)``.
        embedding_meta: ``n`` rows aligned with ``embeddings``: ``site``, ``y_true``.
        history: the run's ``history.csv``.
        config_text: YAML of the resolved configuration.
        info: free-form facts for the summary table, e.g. ``{"fit seconds": 31.2}``.
        openbhb: ``{"ridge_age_probe_mae", "site_probe_balanced_accuracy", "external_mae",
            "score"}``.
        erasure: for a run that erases: ``{"training_rows": leakage block of the erased
            training rows (metrics.json's ``erasure_training_rows``), "info": run.json's
            ``erasure``}``.
    """

    name: str
    kind: str = "model"
    strategy: str | None = None
    task: dict | None = None
    leakage: dict = field(default_factory=dict)
    predictions: pd.DataFrame | None = None
    embeddings: np.ndarray | None = None
    embedding_meta: pd.DataFrame | None = None
    history: pd.DataFrame | None = None
    config_text: str | None = None
    info: dict = field(default_factory=dict)
    openbhb: dict | None = None
    erasure: dict | None = None
