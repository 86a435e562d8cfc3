"""The Lightning system: owns the optimisers and hands each batch to the strategy."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from torch import Tensor

from neurounlearn.atomic import write_csv
from neurounlearn.training.strategies import Model, Strategy

STOP_METRIC = "val/stop_loss"


def set_memory_format(module: torch.nn.Module, *, channels_last: bool) -> torch.nn.Module:
    """Put the module's 5D (3D conv) weights in channels-last or back in contiguous format."""
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    # Module.to accepts memory_format at run time; its type stubs do not list it
    return cast(Any, module).to(memory_format=fmt)


class UnlearningSystem(L.LightningModule):
    """Runs a :class:`Strategy` under Lightning's manual optimisation.

    Args:
        model: the :class:`~neurounlearn.models.unlearning.UnlearningModel`, or for
            segmentation the :class:`~neurounlearn.models.segmentation.SegmentationModel`.
        strategy: the unlearning strategy.
        lr, weight_decay: encoder and task-head optimiser settings.
        adversary_lr: confound-head learning rate.
        channels_last: keep 3D conv weights and input volumes in channels-last memory format
            (faster convolutions on GPUs).
    """

    def __init__(
        self,
        model: Model,
        strategy: Strategy,
        *,
        lr: float,
        weight_decay: float,
        adversary_lr: float,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        if channels_last:
            set_memory_format(model, channels_last=True)
        self.model = model
        self.strategy = strategy
        self.lr = lr
        self.weight_decay = weight_decay
        self.adversary_lr = adversary_lr
        self.automatic_optimization = False
        self._batch_index = 0

    def forward(self, x: Tensor) -> Any:
        return self.model(x)

    @property
    def progress(self) -> float:
        """Fraction of planned training done, in [0, 1] (drives the GRL schedule)."""
        trainer = self.trainer
        per_epoch = trainer.num_training_batches
        if not per_epoch or math.isinf(per_epoch) or not trainer.max_epochs:
            return 0.0
        done = self.current_epoch * per_epoch + self._batch_index
        return min(1.0, done / (trainer.max_epochs * per_epoch))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.channels_last and batch["x"].ndim == 5:
            batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last_3d)
        return batch

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._batch_index = batch_idx
        logs = self.strategy.training_step(self, batch)
        self.log_dict(
            {f"train/{k}": v for k, v in logs.items()},
            on_step=False,
            on_epoch=True,
            batch_size=len(batch["y"]),
            sync_dist=True,  # the mean over every process's rows (a no-op in one process)
        )

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        s = self.strategy
        f = self.model.encode(batch["x"])
        task = s.task_loss(self.model, f, batch)
        logits = s.confound_outputs(self.model, f, batch)
        n = len(batch["y"])
        logs: dict[str, Tensor] = {"val/task_loss": task}
        logs |= {f"val/{k}": v for k, v in s.adversary_metrics(logits, batch).items()}
        logs |= {f"val/conf_loss/{k}": v for k, v in s.confusion_losses(logits, batch).items()}
        if s.stopping_active(self.current_epoch):
            logs[STOP_METRIC] = task
        # synced: every process stops, and keeps its best epoch, on the same figures
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return self.strategy.configure_optimizers(
            self.model, lr=self.lr, weight_decay=self.weight_decay, adversary_lr=self.adversary_lr
        )


class HistoryWriter(Callback):
    """Writes ``history.csv``: one row per epoch with the epoch-mean of every logged value.

    On ``--resume`` the rows of epochs already done are kept and the rest rewritten.
    """

    def __init__(self, path: Path, strategy: Strategy) -> None:
        self.path = Path(path)
        self.strategy = strategy
        self.rows: list[dict[str, Any]] = []
        self._restored: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        # the rows travel in the checkpoint, so a resumed run rewrites history.csv exactly
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = [dict(r) for r in state_dict.get("rows", [])]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # on_train_start, not on_fit_start: a resumed loop knows its epoch only from here on
        if trainer.current_epoch == 0:
            self.rows = []
        elif self._restored is not None:
            self.rows = [r for r in self._restored if r["epoch"] < trainer.current_epoch]
        elif self.path.exists():  # a checkpoint written before the rows were kept in it
            old = pd.read_csv(self.path)
            self.rows = old[old["epoch"] < trainer.current_epoch].to_dict("records")
        else:
            self.rows = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so val/* values are in.
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "phase": self.strategy.phase(trainer.current_epoch),
        }
        for key, value in sorted(trainer.callback_metrics.items()):
            if key == STOP_METRIC:
                continue
            row[key.replace("/", "_")] = float(value)
        self.rows.append(row)
        if trainer.is_global_zero:  # one writer when several processes train
            write_csv(pd.DataFrame(self.rows), self.path)


class EpochBar(RichProgressBar):
    """Lightning's rich progress bar, counting epochs from 1 (``Epoch 1/40`` ... ``Epoch
    40/40``) as ``--epochs`` does, where Lightning's own shows ``Epoch 0/39``."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch + 1}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            text += f"/{self.trainer.max_epochs}"
        if len(self.validation_description) > len(text):  # as Lightning pads: no flicker
            text = f"{text:{len(self.validation_description)}}"
        return text
