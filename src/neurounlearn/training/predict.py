"""``predict`` and ``embed``: apply a finished run to new data (no site column needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neurounlearn.data.manifest import check_new_data, read_table
from neurounlearn.training.run import LoadedRun, embedding_frame, infer


def predict_table(
    run: LoadedRun, frame: pd.DataFrame, path: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings for every row of ``frame``.

    The feature columns must be exactly those the run was trained on; bad values are reported
    with their row and column. Site and target columns are carried over when present.
    """
    enc = run.encoding
    cfg = run.config
    never_features = [
        run.info.get("id_column"),
        cfg.data.site_column,
        cfg.data.target,
        *(c.name for c in cfg.confounds),
    ]
    check_new_data(
        frame,
        path,
        enc.feature_columns,
        cfg.data.features,
        exclude=[c for c in never_features if c],
    )
    x = enc.features(frame)
    feats, pred = infer(run.model, x)
    keep = [c for c in (run.info.get("id_column"), cfg.data.site_column) if c and c in frame]
    ids = frame[keep].reset_index(drop=True)
    preds = ids.copy()
    target = cfg.data.target
    if target in frame:
        preds[target] = pd.to_numeric(frame[target], errors="coerce").to_numpy()
    preds["prediction"] = enc.unscale_target(pred.astype(np.float64))
    return preds, embedding_frame(ids, feats)


def predict_file(run: LoadedRun, data: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return predict_table(run, read_table(data), data)
