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


def confusion_loss(
    logits: Tensor, mask: Tensor | None = None, target: Tensor | None = None
) -> Tensor:
    """Cross-entropy of ``softmax(logits)`` against the uniform (or a given) distribution.

    ``-(1/K) sum_i log p_i`` averaged over the (masked) batch, computed with ``log_softmax``
    (never ``log(softmax)``, which underflows). Its minimum, ``log K``, is reached exactly when
    the head's output is uniform: the head cannot tell the classes apart (Alvi et al. 2018;
    Dinsdale et al. 2021).

    With ``target``, a ``(B, K)`` distribution per row, the loss is ``-sum_i q_i log p_i``,
    minimal when the head outputs ``q``: target-conditioned unlearning passes the training
    split's ``p(confound | target bin)`` there, so the head may know what the target explains
    and nothing more.

    Args:
        logits: ``(B, K)`` confound-head logits.
        mask: optional ``(B,)`` bool, rows that enter the loss.
        target: optional ``(B, K)`` distribution each row's output should match.

    Examples:
        >>> import math
        >>> abs(float(confusion_loss(torch.zeros(4, 3))) - math.log(3)) < 1e-6
        True
    """
    log_p = F.log_softmax(logits, dim=1)
    per_row = -log_p.mean(dim=1) if target is None else -(target * log_p).sum(dim=1)
    if mask is not None:
        if not bool(mask.any()):
            return _zero_like_graph(logits)
        per_row = per_row[mask]
    return per_row.mean()


def masked_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy of a classification task head over rows whose target is known.

    Args:
        logits: ``(B, K)`` task logits.
        target: ``(B,)`` class indices as floats, NaN where unknown.
        weight: optional ``(K,)`` class weights (inverse training frequency balances classes).
    """
    mask = ~torch.isnan(target)
    if not bool(mask.any()):
        return _zero_like_graph(logits)
    return F.cross_entropy(logits[mask], target[mask].long(), weight=weight)


def squared_correlation(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """Squared Pearson correlation of ``pred`` with ``target`` over rows where ``target`` is known.

    The encoder's loss for a continuous confound (CF-Net, Zhao et al. 2020): zero when the
    head's output carries no linear trace of the confound. Fewer than 3 known rows give a zero
    that still belongs to the graph.

    Examples:
        >>> t = torch.arange(6.0)
        >>> round(float(squared_correlation(2 * t + 1, t)), 4)
        1.0
    """
    mask = ~torch.isnan(target)
    if int(mask.sum()) < 3:
        return _zero_like_graph(pred)
    p, t = pred[mask], target[mask]
    p = p - p.mean()
    t = t - t.mean()
    r = (p * t).sum() / torch.sqrt((p * p).sum() * (t * t).sum() + eps)
    return r * r


def masked_segmentation_loss(logits: Tensor, labels: Tensor, y: Tensor) -> Tensor:
    """MONAI's soft Dice + cross-entropy over the rows that have a label map.

    Rows whose ``y`` is NaN have no label map (semi-supervised segmentation): they contribute
    nothing here and serve the unlearning only.

    Args:
        logits: ``(B, K, *spatial)`` class logits.
        labels: ``(B, *spatial)`` class ids (zeros where a row has no label map).
        y: ``(B,)``, finite where the row has a label map, NaN where not.
    """
    from monai.losses import DiceCELoss

    mask = ~torch.isnan(y)
    if not bool(mask.any()):
        return _zero_like_graph(logits)
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    return loss(logits[mask].float(), labels[mask].unsqueeze(1))
