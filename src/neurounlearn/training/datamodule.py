"""Lightning data module: train/val loaders over any dataset of dict rows (tables or volumes).

The datasets themselves live in the data layer:
:class:`~neurounlearn.data.datasets.TensorDictDataset` for tables,
:class:`~neurounlearn.data.volumes.CachedVolumes` for volumes.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler


class SplitDataModule(L.LightningDataModule):
    """Train/val loaders for one split.

    Args:
        train, val: the datasets.
        batch_size: rows per batch.
        seed: seeds the shuffling / sampling generator (same seed, same batches).
        balance_groups: optional per-train-row group labels (sites); when given, rows are drawn
            with probability inversely proportional to their group's size, so every site is
            equally likely in each batch.
        num_workers: DataLoader workers.
        val_batch_size: rows per validation batch (default: at least 256, right for tables; a
            batch of 256 volumes would not fit in memory).
    """

    def __init__(
        self,
        train: Dataset,
        val: Dataset,
        *,
        batch_size: int,
        seed: int,
        balance_groups: np.ndarray | None = None,
        num_workers: int = 0,
        val_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.val_batch_size = val_batch_size or max(batch_size, 256)
        self.train, self.val = train, val
        self.batch_size = batch_size
        self.seed = seed
        self.balance_groups = balance_groups
        self.num_workers = num_workers
        # one generator for the whole run, its state kept in checkpoints: a resumed run draws
        # the batches the uninterrupted run would have drawn, not epoch 0's again
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])

    def train_dataloader(self, *, fresh: bool = False) -> DataLoader:
        """The training loader; ``fresh``: from a new generator of the same seed (the order of
        the first epoch), leaving the run's own generator where it is."""
        generator = torch.Generator().manual_seed(self.seed) if fresh else self.generator
        n = len(self.train)  # type: ignore[arg-type]
        drop_last = n > self.batch_size
        if self.balance_groups is not None:
            _, inverse, counts = np.unique(
                self.balance_groups, return_inverse=True, return_counts=True
            )
            weights = (1.0 / counts[inverse]).tolist()
            sampler = WeightedRandomSampler(
                weights, num_samples=n, replacement=True, generator=generator
            )
            return DataLoader(
                self.train,
                batch_size=self.batch_size,
                sampler=sampler,
                drop_last=drop_last,
                **self._loader_options(),
            )
        return DataLoader(
            self.train,
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=drop_last,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val,
            batch_size=self.val_batch_size,
            shuffle=False,
            **self._loader_options(),
        )

    def _loader_options(self) -> dict[str, Any]:
        # workers live across epochs: re-forking them (and re-opening the memmap) every epoch
        # costs more than a small epoch of cached volumes takes
        return {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "pin_memory": torch.cuda.is_available(),
        }
