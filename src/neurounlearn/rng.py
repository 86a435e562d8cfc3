"""NumPy ``RandomState`` states as weights-only types, so checkpoints can carry them.

Below every layer: the data augmentation and the training checkpoints both use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def pack_numpy_state(state: tuple[Any, ...]) -> list[Any]:
    """A legacy ``RandomState`` state as weights-only types (its key array as a tensor)."""
    kind, keys, pos, has_gauss, gauss = state
    return [
        str(kind),
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        int(pos),
        int(has_gauss),
        float(gauss),
    ]


def unpack_numpy_state(packed: list[Any]) -> tuple[Any, ...]:
    """The ``RandomState`` state :func:`pack_numpy_state` packed."""
    kind, keys, pos, has_gauss, gauss = packed
    return (kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss)
