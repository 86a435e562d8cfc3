"""``predict`` and ``embed``: apply a finished run to new data (no site column needed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.data.manifest import check_new_data, read_table
from neurounlearn.errors import InputError
from neurounlearn.training.run import LoadedRun, embedding_frame, infer, prediction_columns


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
    feats, pred = infer(run.model, enc.features(frame))
    return _frames(run, frame, feats, pred)


def _frames(
    run: LoadedRun, frame: pd.DataFrame, feats: np.ndarray, pred: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings frames, with the id and site columns carried over if present."""
    cfg, enc = run.config, run.encoding
    keep = [c for c in (run.info.get("id_column"), cfg.data.site_column) if c and c in frame]
    if cfg.data.input == "image" and cfg.data.image_column in frame:
        keep.append(cfg.data.image_column)
    ids = frame[keep].reset_index(drop=True)
    preds = prediction_columns(ids, enc, frame.reset_index(drop=True), pred)
    return preds, embedding_frame(ids, feats)


def predict_images(
    run: LoadedRun, data: str | Path, *, echo: Callable[[str], Any] = print
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings for every volume listed in the manifest ``data``.

    The volumes are checked and preprocessed with the run's own settings (through the same
    cache as training, so volumes seen before are not decoded again).
    """
    from neurounlearn.data.inputs import load_new_images, row_data

    inputs = load_new_images(run.config, data)
    rows = row_data(run.config, inputs, run.encoding, progress=False, echo=echo)
    if tuple(rows.input_shape) != tuple(run.info.get("input_shape") or rows.input_shape):
        raise InputError(
            f"the volumes preprocess to shape {list(rows.input_shape)}, but the model was "
            f"trained on {run.info.get('input_shape')}",
            file=data,
            column=run.config.data.image_column,
            hint="train with data.shape set (e.g. --set data.shape=48) so that every volume is "
            "resized to one shape",
        )
    feats, pred = infer(run.model, rows.all(), batch_size=run.config.train.batch_size)
    return _frames(run, inputs.frame, feats, pred)


def predict_file(
    run: LoadedRun, data: str | Path, *, echo: Callable[[str], Any] = print
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings for the manifest ``data`` (a feature table or images)."""
    if run.config.data.input == "image":
        return predict_images(run, data, echo=echo)
    return predict_table(run, read_table(data), data)
