"""Losses of the unlearning method (DESIGN §2), all on logits and all mask-aware.

Rows whose label is missing contribute nothing: a NaN task target, or a confound code of ``-1``
(missing value, a level unseen in training, or a row outside the confound's ``subset``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE = -1


def _zero_like_graph(x: Tensor) -> Tensor:
    # A zero that still belongs to the graph, so backward() on an all-masked batch is a no-op
    # rather than an error.
    return x.sum() * 0.0


def masked_regression_loss(pred: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """MSE or L1 over rows whose target is not NaN.

    Args:
        pred: ``(B,)`` predictions.
        target: ``(B,)`` targets, NaN where unknown.
        kind: ``"mse"`` or ``"l1"``.
    """
    mask = ~torch.isnan(target)
    if not bool(mask.any()):
        return _zero_like_graph(pred)
    diff = pred[mask] - target[mask]
    if kind == "mse":
        return (diff**2).mean()
    if kind == "l1":
        return diff.abs().mean()
    raise ValueError(f"task loss must be 'mse' or 'l1', got {kind!r}")


def adversary_loss(logits: Tensor, codes: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy of a confound head; rows with code ``-1`` are ignored.

    Args:
        logits: ``(B, K)`` confound-head logits.
        codes: ``(B,)`` class indices, ``-1`` to ignore.
        weight: optional ``(K,)`` class weights (inverse training frequency balances the sites).
    """
    if not bool((codes != IGNORE).any()):
        return _zero_like_graph(logits)
    return F.cross_entropy(logits, codes, weight=weight, ignore_index=IGNORE)


def confusion_loss(logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy of ``softmax(logits)`` against the uniform distribution.

    ``-(1/K) sum_i log p_i`` averaged over the (masked) batch, computed with ``log_softmax``
    (never ``log(softmax)``, which underflows). Its minimum, ``log K``, is reached exactly when
    the head's output is uniform: the head cannot tell the classes apart (Alvi et al. 2018;
    Dinsdale et al. 2021).

    Args:
        logits: ``(B, K)`` confound-head logits.
        mask: optional ``(B,)`` bool, rows that enter the loss.

    Examples:
        >>> import math
        >>> abs(float(confusion_loss(torch.zeros(4, 3))) - math.log(3)) < 1e-6
        True
    """
    per_row = -F.log_softmax(logits, dim=1).mean(dim=1)
    if mask is not None:
        if not bool(mask.any()):
            return _zero_like_graph(logits)
        per_row = per_row[mask]
    return per_row.mean()
