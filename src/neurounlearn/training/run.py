"""A run directory: what ``fit`` writes and ``evaluate``/``predict``/``embed`` read back.

``RUN_DIR/model.pt`` holds the weights *and* everything needed to rebuild the model and to
encode new data (configuration, feature columns, scaling, confound classes), so a run can be
used without the original manifest.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from neurounlearn.atomic import write_torch
from neurounlearn.config import RunConfig
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.models.unlearning import UnlearningModel
from neurounlearn.registry import build_model as build_model
from neurounlearn.registry import build_segmentation_model as build_segmentation_model
from neurounlearn.rundir import RunFiles

if TYPE_CHECKING:
    from neurounlearn.models.segmentation import SegmentationModel


def versions() -> dict[str, str]:
    import lightning
    import monai
    import sklearn

    from neurounlearn.version import __version__

    return {
        "neurounlearn": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
    }


def is_finished(run_dir: Path) -> bool:
    return RunFiles(run_dir).is_finished()


def save_model(
    path: Path,
    model: UnlearningModel | SegmentationModel,
    cfg: RunConfig,
    encoding: TableEncoding,
    *,
    input_shape: Sequence[int] | None = None,
) -> None:
    blob = {
        "state_dict": model.state_dict(),
        "config": json.dumps(cfg.model_dump(mode="json")),
        "encoding": json.dumps(encoding.to_dict()),
        "input_shape": list(input_shape) if input_shape is not None else None,
    }
    write_torch(blob, path)


@torch.no_grad()
def infer(
    model: UnlearningModel,
    data: Dataset | np.ndarray,
    *,
    batch_size: int = 256,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``f`` and task predictions (model units) for every row, in eval mode.

    Args:
        model: the trained model.
        data: a dataset of dict rows with ``"x"`` (tables or cached volumes), or an array.
        batch_size: rows per forward pass.
        device: where to run the model (it is moved back to the CPU afterwards).
    """
    if isinstance(data, np.ndarray):
        data = TensorDataset(torch.as_tensor(data, dtype=torch.float32))
    model.eval().to(device)
    feats, preds = [], []
    try:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            x = batch["x"] if isinstance(batch, dict) else batch[0]
            f = model.encode(x.to(device))
            feats.append(f.float().cpu().numpy())
            preds.append(model.predict_task(f).float().cpu().numpy())
    finally:
        model.cpu()
    if not feats:
        width = int(getattr(model.encoder, "out_features", 0))
        return np.zeros((0, width), np.float32), np.zeros(0, np.float32)
    return np.concatenate(feats), np.concatenate(preds)


@torch.no_grad()
def segment(
    model: SegmentationModel,
    data: Dataset,
    *,
    batch_size: int = 8,
    device: str = "cpu",
) -> Iterator[tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor | None]]:
    """Run the U-Net over ``data`` in eval mode, one batch at a time.

    Yields:
        ``(pooled, logits, labels)`` per batch: each attach point's pooled features
        ``(B, 2C)`` (channel means and standard deviations), the class logits ``(B, K, ...)``
        on the CPU, and the batch's true label maps when the data carries them.
    """
    model.eval().to(device)
    try:
        for batch in DataLoader(data, batch_size=batch_size, shuffle=False):
            f = model.encode(batch["x"].to(device))
            pooled = {k: v.cpu().numpy() for k, v in model.pooled_features(f).items()}
            yield pooled, f.logits.float().cpu(), batch.get("label")
    finally:
        model.cpu()


def point_columns(frame: pd.DataFrame, point: str) -> list[str]:
    """A segmentation run's embedding columns ``POINT_e0, POINT_e1, ...`` at one attach point."""
    prefix = f"{point}_e"
    columns = [
        c for c in frame.columns if str(c).startswith(prefix) and str(c)[len(prefix) :].isdigit()
    ]
    return sorted(columns, key=lambda c: int(str(c)[len(prefix) :]))


def point_frame(ids: pd.DataFrame, pooled: dict[str, np.ndarray]) -> pd.DataFrame:
    """Ids, then each attach point's pooled features as ``POINT_e0, POINT_e1, ...``."""
    cols = {
        f"{point}_e{i}": values[:, i]
        for point, values in pooled.items()
        for i in range(values.shape[1])
    }
    return pd.concat([ids.reset_index(drop=True), pd.DataFrame(cols)], axis=1)


def embedding_columns(frame: pd.DataFrame) -> list[str]:
    """The embedding columns ``e0, e1, ...`` of an ``embeddings.csv``, in order."""
    columns = [c for c in frame.columns if str(c).startswith("e") and str(c)[1:].isdigit()]
    return sorted(columns, key=lambda c: int(str(c)[1:]))


def embedding_frame(ids: pd.DataFrame, features: np.ndarray) -> pd.DataFrame:
    cols = {f"e{i}": features[:, i] for i in range(features.shape[1])}
    return pd.concat([ids.reset_index(drop=True), pd.DataFrame(cols)], axis=1)


def prediction_columns(
    preds: pd.DataFrame, encoding: TableEncoding, frame: pd.DataFrame, out: np.ndarray
) -> pd.DataFrame:
    """Add the target (when the frame has it) and the model's predictions to ``preds``.

    Regression: ``prediction`` in the target's units. Classification: ``prediction`` (the most
    probable class) and ``prob_CLASS`` for each class.
    """
    preds = preds.copy()
    target = encoding.target
    if encoding.task == "classification":
        if target is not None and target in frame:
            preds[target] = frame[target].to_numpy()
        logits = torch.as_tensor(out, dtype=torch.float32).reshape(len(out), -1)
        prob = torch.softmax(logits, dim=1).numpy()
        classes = np.asarray(encoding.target_classes, dtype=object)
        preds["prediction"] = classes[prob.argmax(axis=1)] if len(prob) else []
        for k, name in enumerate(encoding.target_classes):
            preds[f"prob_{name}"] = prob[:, k]
        return preds
    if target is not None and target in frame:
        preds[target] = pd.to_numeric(frame[target], errors="coerce").to_numpy()
    preds["prediction"] = encoding.unscale_target(out.astype(np.float64))
    return preds


def segmentation_outputs(
    model: SegmentationModel,
    data: Dataset,
    labelled: np.ndarray,
    n_classes: int,
    *,
    batch_size: int = 8,
    device: str = "cpu",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pooled features at every attach point, and each labelled row's Dice per foreground class.

    Args:
        data: rows with ``x`` and ``label`` (a dataset with labels).
        labelled: per row, whether its label map is real (others give ``NaN`` Dice).
        n_classes: classes, background included.

    Returns:
        ``(pooled, dice)``: point -> ``(N, 2C)``; ``(N, n_classes - 1)``.
    """
    from neurounlearn.models.dice import dice_per_class

    pooled: dict[str, list[np.ndarray]] = {}
    dice: list[np.ndarray] = []
    for batch_pooled, logits, labels in segment(model, data, batch_size=batch_size, device=device):
        for point, values in batch_pooled.items():
            pooled.setdefault(point, []).append(values)
        if labels is None:
            dice.append(np.full((len(logits), n_classes - 1), np.nan))
        else:
            dice.append(dice_per_class(logits.argmax(dim=1), labels, n_classes))
    scores = np.concatenate(dice) if dice else np.zeros((0, n_classes - 1))
    scores[~np.asarray(labelled, dtype=bool)] = np.nan
    return {k: np.concatenate(v) for k, v in pooled.items()}, scores


def dice_columns(classes: Sequence[str]) -> list[str]:
    """The Dice columns of a segmentation run's predictions.csv, one per foreground class."""
    return [f"dice_{name}" for name in classes[1:]]


def segmentation_frame(
    ids: pd.DataFrame, labelled: np.ndarray, dice: np.ndarray, classes: Sequence[str]
) -> pd.DataFrame:
    """``ids``, whether each row had a label map, and its Dice per foreground class."""
    out = ids.reset_index(drop=True).copy()
    out["labelled"] = np.asarray(labelled, dtype=bool)
    for j, column in enumerate(dice_columns(classes)):
        out[column] = dice[:, j]
    mean = np.full(len(dice), np.nan)
    known = np.isfinite(dice).any(axis=1)
    mean[known] = np.nanmean(dice[known], axis=1)
    out["dice_mean"] = mean
    return out
