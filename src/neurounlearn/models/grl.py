"""Gradient reversal (Ganin & Lempitsky 2015): identity forward, ``-weight * grad`` backward."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor, None]:
        (weight,) = ctx.saved_tensors
        return -weight * grad_outputs[0], None


class GradientReversal(nn.Module):
    """Gradient-reversal layer whose weight lives in a buffer (saved with the model, schedulable).

    Args:
        weight: initial reversal weight ``lambda``.

    Examples:
        >>> grl = GradientReversal(weight=0.5)
        >>> x = torch.ones(2, requires_grad=True)
        >>> grl(x).sum().backward()
        >>> x.grad.tolist()
        [-0.5, -0.5]
    """

    weight: Tensor

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(float(weight)))

    def set_weight(self, weight: float) -> None:
        self.weight.fill_(float(weight))

    def forward(self, x: Tensor) -> Tensor:
        return _ReverseGrad.apply(x, self.weight)


def ganin_lambda(progress: float, lambda_max: float = 1.0, gamma: float = 10.0) -> float:
    """Ganin et al.'s schedule ``lambda_max * (2 / (1 + exp(-gamma p)) - 1)``, ``p`` in [0, 1]."""
    p = min(max(progress, 0.0), 1.0)
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)
