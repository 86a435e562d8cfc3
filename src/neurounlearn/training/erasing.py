"""Erasure inside a run: the eraser fit after training (and, with ``erasure.when=during``,
refit at the start of every epoch between encoder and heads), the task head refit on the erased
training rows."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from neurounlearn.config import RunConfig
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.erasure import EraserLayer, erase_kinds, fit_run_eraser, refit_head


def erase_run(
    cfg: RunConfig,
    model: Any,
    encoding: TableEncoding,
    feats: np.ndarray,
    frame: pd.DataFrame,
    y: np.ndarray,
    row_split: pd.Series,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fit the run's eraser on the training rows' embeddings, attach it to ``model`` (between
    encoder and heads), refit the task head on the erased training rows (validation rows for
    early stopping). Returns the erased embeddings, the new predictions (model units) and what
    ``run.json`` records of it."""
    start = time.perf_counter()
    train = (row_split == "train").to_numpy()
    val = (row_split == "val").to_numpy()
    task = encoding.task
    kinds = erase_kinds(cfg.erase, frame, {c.name: c.kind for c in cfg.confounds})
    eraser = fit_run_eraser(
        cfg.erase,
        feats.astype(np.float64),
        frame,
        train,
        kinds=kinds,
        target=y,  # model units; NaN where hidden (unlabelled sites) or missing
        task=task,
        variance=cfg.erasure.variance,
    )
    model.eraser = eraser.module()
    with torch.no_grad():
        erased = model.eraser(torch.as_tensor(feats, dtype=torch.float32))
    weight = None
    if task == "classification" and cfg.train.class_balance == "weighted":
        weight = torch.as_tensor(encoding.task_class_weights(y[train]), dtype=torch.float32)
    steps = refit_head(
        model.task_head,
        erased.numpy(),
        y,
        train,
        val,
        task=task,
        lr=cfg.train.lr,
        weight_decay=cfg.train.decay,
        seed=cfg.train.seed,
        class_weight=weight,
        task_loss=cfg.train.task_loss,
    )
    with torch.no_grad():
        pred = model.predict_task(erased).float().numpy()
    info = {
        "confounds": {
            e.name: {"kind": kinds[e.name], "mode": "conditional" if e.conditional else "plain"}
            for e in cfg.erase
        },
        "when": cfg.erasure.when,
        "variance": cfg.erasure.variance,
        "components_kept": eraser.n_components_,
        "rank": eraser.rank_,
        "fit_rows": eraser.n_fit_rows_,
        "head_steps": steps,
        "seconds": time.perf_counter() - start,
    }
    return erased.numpy(), pred, info


def training_eraser(model: Any) -> EraserLayer:
    """Attach an erasure layer for ``erasure.when=during``: as wide as the embedding (its rank
    changes from one refit to the next), the identity until the first refit."""
    dim = int(model.encoder.out_features)
    model.eraser = EraserLayer(dim, dim)
    return model.eraser


class EraserRefresh(Callback):
    """``erasure.when=during``: at the start of every epoch, refit the eraser on the encoder's
    features of the training rows (eval mode, no augmentation) and load it into the model's
    erasure layer, so the task head and the adversaries train on erased features.

    Args:
        cfg: the run configuration (``erase`` and ``erasure``).
        data: the training rows (as the model reads them, never augmented).
        frame: their manifest rows (the erased confounds), in the same order.
        target: their targets in model units (NaN where hidden or missing).
        kinds: each erased confound's kind (:func:`~neurounlearn.erasure.erase_kinds` of the
            whole manifest, as the final eraser sees it).
        task: ``regression`` or ``classification``.
        batch_size: rows per forward pass.
    """

    def __init__(
        self,
        cfg: RunConfig,
        data: Dataset,
        frame: pd.DataFrame,
        target: np.ndarray,
        *,
        kinds: dict[str, str],
        task: str,
        batch_size: int,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.frame = frame.reset_index(drop=True)
        self.target = target
        self.task = task
        self.batch_size = batch_size
        self.kinds = kinds
        #: refits done in this process, and their seconds (feature pass included)
        self.refits = 0
        self.seconds = 0.0

    @torch.no_grad()
    def features(self, model: Any, device: torch.device) -> np.ndarray:
        """The encoder's features of the training rows (before the erasure layer)."""
        was_training = model.training
        model.eval()
        out = []
        try:
            # its own generator: the loader draws its seed from it, not from the global stream
            loader = DataLoader(
                self.data, batch_size=self.batch_size, shuffle=False, generator=torch.Generator()
            )
            for batch in loader:
                out.append(model.encoder(batch["x"].to(device)).float().cpu().numpy())
        finally:
            model.train(was_training)
        return np.concatenate(out).astype(np.float64)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = time.perf_counter()
        model: Any = pl_module.model  # type: ignore[attr-defined]
        feats = self.features(model, pl_module.device)
        eraser = fit_run_eraser(
            self.cfg.erase,
            feats,
            self.frame,
            np.ones(len(feats), dtype=bool),
            kinds=self.kinds,
            target=self.target,
            task=self.task,
            variance=self.cfg.erasure.variance,
        )
        layer: Any = model.eraser
        layer.set(eraser.proj_left_, eraser.proj_right_, eraser.bias_)
        self.refits += 1
        self.seconds += time.perf_counter() - start
