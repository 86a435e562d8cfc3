"""Dice of predicted label maps, per volume and foreground class: used while training (each
row's Dice in a segmentation run's predictions) and by the evaluation alike."""

from __future__ import annotations

from typing import Any

import numpy as np


def dice_per_class(pred: Any, true: Any, n_classes: int) -> np.ndarray:
    """Dice of each foreground class (background, label 0, excluded) for each volume.

    Uses MONAI's :func:`~monai.metrics.compute_dice`. A class absent from a volume's true label
    map gives ``NaN`` for that volume (it is left out of means, not counted as 0 or 1).

    Args:
        pred: ``(B, *spatial)`` predicted class ids (tensor or array).
        true: ``(B, *spatial)`` true class ids.
        n_classes: classes, background included.

    Returns:
        ``(B, n_classes - 1)`` float array.

    Examples:
        >>> import numpy as np
        >>> t = np.array([[[0, 1], [2, 2]]])
        >>> dice_per_class(t, t, 3).tolist()
        [[1.0, 1.0]]
    """
    import torch
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    p = torch.as_tensor(np.asarray(pred), dtype=torch.long).unsqueeze(1)
    t = torch.as_tensor(np.asarray(true), dtype=torch.long).unsqueeze(1)
    dice = compute_dice(
        one_hot(p, n_classes), one_hot(t, n_classes), include_background=False, ignore_empty=True
    )
    return dice.cpu().numpy().astype(np.float64)
