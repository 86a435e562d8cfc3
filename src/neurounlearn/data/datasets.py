"""Torch datasets of table rows: the dict batches (``x``, ``y``, ``codes``, and optionally the
confounds' ``values`` and ``conditions``) that the training strategies expect.

The volume dataset, which serves rows of the image cache in the same form, is
:class:`~neurounlearn.data.volumes.CachedVolumes`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class TensorDictDataset(Dataset):
    """Rows of ``x``, ``y`` and ``codes`` (and optionally the continuous confounds' ``values``
    and the target bins ``conditions``) returned as the dict batches strategies expect."""

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        codes: np.ndarray,
        *,
        values: np.ndarray | None = None,
        conditions: np.ndarray | None = None,
    ) -> None:
        self.x = torch.as_tensor(x, dtype=torch.float32)
        self.y = torch.as_tensor(y, dtype=torch.float32)
        self.codes = torch.as_tensor(codes, dtype=torch.long)
        self.extra = confound_extras(values, conditions)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"x": self.x[i], "y": self.y[i], "codes": self.codes[i]}
        return item | {k: v[i] for k, v in self.extra.items()}


def confound_extras(
    values: np.ndarray | None, conditions: np.ndarray | None
) -> dict[str, torch.Tensor]:
    """The optional per-row confound tensors of a batch (``values``, ``conditions``)."""
    extra = {}
    if values is not None:
        extra["values"] = torch.as_tensor(values, dtype=torch.float32)
    if conditions is not None:
        extra["conditions"] = torch.as_tensor(conditions, dtype=torch.long)
    return extra
