"""What a run predicts, as a type: regression, classification or segmentation.

Each task holds what differs between them when a run trains and writes its outputs — the word
for a row's label, the task loss's class weights, the adversary memory's default, whether the
batch-norm statistics are recomputed by default, and the outputs a finished model writes
(predictions and embeddings, or Dice and pooled feature maps) — so ``fit`` asks its task instead
of branching on the task's name.

Examples:
    >>> task_of("segmentation").label_word, task_of("regression").label_word
    ('a label map', 'a target')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import torch

from neurounlearn.choices import check_choice
from neurounlearn.config import RunConfig
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.models.segmentation import SegmentationModel
from neurounlearn.training.erasing import EraserRefresh, erase_run
from neurounlearn.training.run import (
    embedding_frame,
    infer,
    point_frame,
    prediction_columns,
    segmentation_frame,
    segmentation_outputs,
)

if TYPE_CHECKING:
    from neurounlearn.models.unlearning import UnlearningModel

#: ``strategy.adversary_memory: auto`` for segmentation: rows, and the most memory they may take.
SEGMENTATION_MEMORY = 8
SEGMENTATION_MEMORY_BYTES = 512 * 2**20


@dataclass(frozen=True)
class Outputs:
    """What a finished model writes: ``predictions.csv``, ``embeddings.csv`` and, when the run
    erases, the eraser's record for ``run.json``."""

    predictions: pd.DataFrame
    embeddings: pd.DataFrame
    erasure: dict[str, Any] | None = None


class Task:
    """What every task shares; a task predicts a value per row and writes predictions and
    embeddings unless it says otherwise."""

    name: ClassVar[str]
    #: what a row without one lacks, in messages
    label_word: ClassVar[str] = "a target"
    #: recompute the batch-norm statistics after training when ``train.precise_bn: auto``
    precise_bn_default: ClassVar[bool] = False
    #: whether an image run of this task takes the image defaults where its settings say auto
    #: (``train.restore``, ``data.augment``, ``train.weight_decay``; see ``training.fit``)
    image_defaults: ClassVar[bool] = True

    def memory(self, setting: str | int) -> tuple[int, int | None]:
        """Rows of the adversary memory and its byte cap (``None``: as many bytes as it takes)."""
        return (0, None) if setting == "auto" else (int(setting), None)

    def class_weight(
        self, cfg: RunConfig, encoding: TableEncoding, y_train: np.ndarray
    ) -> torch.Tensor | None:
        """Per-class weights of the task loss (classification with ``train.class_balance:
        weighted``), else ``None``."""
        return None

    def memory_points(self, model: Any) -> list[str] | None:
        """The attach points whose features the adversary memory keeps (``None``: the
        embedding)."""
        return None

    def classes(self, encoding: TableEncoding) -> list[str] | None:
        """The class names ``run.json`` records (a segmentation's label classes)."""
        return None

    def outputs(
        self,
        cfg: RunConfig,
        model: UnlearningModel | SegmentationModel,
        encoding: TableEncoding,
        rows: Any,
        frame: pd.DataFrame,
        y: np.ndarray,
        row_split: pd.Series,
        *,
        ids: pd.DataFrame,
        preds: pd.DataFrame,
        device: str,
        callbacks: Sequence[Any] = (),
    ) -> Outputs:
        """Predictions and embeddings of every row (erased first when the run erases)."""
        assert not isinstance(model, SegmentationModel)
        erasure: dict[str, Any] | None = None
        if cfg.erase:  # the final eraser is fit on the encoder's own features
            model.eraser = None
        feats, pred = infer(model, rows.all(), batch_size=cfg.train.batch_size, device=device)
        if cfg.erase:
            feats, pred, erasure = erase_run(cfg, model, encoding, feats, frame, y, row_split)
            refresh = next((c for c in callbacks if isinstance(c, EraserRefresh)), None)
            if refresh is not None:  # erased during training too (this process's epochs)
                erasure["during_training"] = {
                    "refits": refresh.refits,
                    "seconds": refresh.seconds,
                }
        return Outputs(
            prediction_columns(preds, encoding, frame, pred), embedding_frame(ids, feats), erasure
        )


class RegressionTask(Task):
    """Regression: a number per row (brain age)."""

    name: ClassVar[str] = "regression"


class ClassificationTask(Task):
    """Classification: a class per row (sex, diagnosis); probabilities per class."""

    name: ClassVar[str] = "classification"

    def class_weight(
        self, cfg: RunConfig, encoding: TableEncoding, y_train: np.ndarray
    ) -> torch.Tensor | None:
        if cfg.train.class_balance != "weighted":
            return None
        return torch.as_tensor(encoding.task_class_weights(y_train), dtype=torch.float32)


class SegmentationTask(Task):
    """Segmentation: a label map per volume; Dice per class, features at every attach point."""

    name: ClassVar[str] = "segmentation"
    label_word: ClassVar[str] = "a label map"
    precise_bn_default: ClassVar[bool] = True
    image_defaults: ClassVar[bool] = False  # the segmentation figures were measured without

    def memory(self, setting: str | int) -> tuple[int, int | None]:
        if setting == "auto":
            return SEGMENTATION_MEMORY, SEGMENTATION_MEMORY_BYTES
        return int(setting), None

    def memory_points(self, model: Any) -> list[str] | None:
        return list(model.attach) if isinstance(model, SegmentationModel) else None

    def classes(self, encoding: TableEncoding) -> list[str] | None:
        return encoding.target_classes

    def outputs(
        self,
        cfg: RunConfig,
        model: UnlearningModel | SegmentationModel,
        encoding: TableEncoding,
        rows: Any,
        frame: pd.DataFrame,
        y: np.ndarray,
        row_split: pd.Series,
        *,
        ids: pd.DataFrame,
        preds: pd.DataFrame,
        device: str,
        callbacks: Sequence[Any] = (),
    ) -> Outputs:
        assert isinstance(model, SegmentationModel)
        labelled = np.isfinite(y)
        pooled, dice = segmentation_outputs(
            model,
            rows.all(),
            labelled,
            len(encoding.target_classes),
            batch_size=cfg.train.batch_size,
            device=device,
        )
        return Outputs(
            segmentation_frame(preds, labelled, dice, encoding.target_classes),
            point_frame(ids, pooled),
        )


TASKS: dict[str, Task] = {
    task.name: task for task in (RegressionTask(), ClassificationTask(), SegmentationTask())
}


def task_of(name: str) -> Task:
    """The task of a resolved ``data.task`` (not ``auto``)."""
    check_choice("task", name, TASKS)
    return TASKS[name]
