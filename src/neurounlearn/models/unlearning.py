"""The model: an encoder, a task head and one head per confound (DESIGN §2).

Models know nothing of optimisation: strategies decide which parts step on which loss.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurounlearn.models.grl import GradientReversal


def head_sizes(confounds: Mapping[str, int], continuous: Sequence[str]) -> dict[str, int]:
    """Outputs of each confound's head: its classes, or 1 for a continuous confound's regression.

    The order is that of ``confounds`` (the columns of codes/conditions), with continuous
    confounds not named there appended.

    Raises:
        ValueError: a categorical confound with fewer than 2 classes.
    """
    for name, k in confounds.items():
        if k < 2 and name not in continuous:
            raise ValueError(f"confound '{name}' needs at least 2 classes, got {k}")
    sizes = {name: 1 if name in continuous else k for name, k in confounds.items()}
    return sizes | {name: 1 for name in continuous if name not in sizes}


def make_head(in_features: int, out_features: int, hidden: int = 0) -> nn.Module:
    """A linear head, or a one-hidden-layer MLP head when ``hidden > 0``."""
    if hidden <= 0:
        return nn.Linear(in_features, out_features)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))


class ConfoundHead(nn.Module):
    """``n_heads`` independent predictors of one confound over batch-standardised features.

    The input is standardised over the batch (``BatchNorm1d`` without affine parameters): without
    it the encoder can "confuse" its adversary by shrinking the confound's directions to a tiny
    variance the head cannot use, while a fresh probe that standardises its inputs still reads
    them. Several heads (an ensemble of adversaries, Elazar & Goldberg 2018) are harder to fool
    all at once than one.

    A target-conditioned head (``n_conditions > 0``) also sees the one-hot target bin of each
    row, concatenated after the standardisation: it may use what the target explains.

    Returns ``(B, K)`` outputs for one head, ``(H, B, K)`` for ``H > 1`` (``K = 1`` for a
    continuous confound's regression head).
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        *,
        hidden: int = 32,
        n_heads: int = 1,
        n_conditions: int = 0,
    ) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        # BatchNorm's default eps: a much smaller one would blow up directions the encoder has
        # collapsed to (near) zero variance into unit-variance noise
        self.norm = nn.BatchNorm1d(in_features, affine=False)
        self.n_conditions = n_conditions
        self.heads = nn.ModuleList(
            make_head(in_features + n_conditions, n_classes, hidden) for _ in range(n_heads)
        )

    def forward(self, features: Tensor, condition: Tensor | None = None) -> Tensor:
        z = self.norm(features)
        if self.n_conditions:
            if condition is None:
                raise ValueError("a target-conditioned head needs each row's target bin")
            # rows without a bin (-1) get an all-zero one-hot; they are left out of its losses
            onehot = F.one_hot(condition.clamp(min=0), self.n_conditions).to(z.dtype)
            z = torch.cat([z, onehot * (condition >= 0).unsqueeze(1).to(z.dtype)], dim=1)
        if len(self.heads) == 1:
            return self.heads[0](z)
        return torch.stack([head(z) for head in self.heads])


class MLPEncoder(nn.Module):
    """MLP encoder for feature tables: ``Linear -> LayerNorm -> ReLU -> Dropout`` blocks.

    Args:
        in_features: number of input features.
        hidden: widths of the hidden layers.
        embedding_dim: width of the output features ``f`` (the harmonised embedding).
        dropout: dropout after each hidden block.

    Examples:
        >>> import torch
        >>> MLPEncoder(in_features=10, hidden=[16], embedding_dim=4)(torch.zeros(3, 10)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        *,
        in_features: int,
        hidden: Sequence[int] = (128,),
        embedding_dim: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers += [nn.Linear(width, embedding_dim), nn.LayerNorm(embedding_dim)]
        self.net = nn.Sequential(*layers)
        self.out_features = embedding_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class ModelOutput:
    """Named outputs of :class:`UnlearningModel`."""

    features: Tensor
    task: Tensor
    confounds: dict[str, Tensor]


class UnlearningModel(nn.Module):
    """Encoder ``E``, task head ``T`` and one confound head ``D_k`` per confound.

    Args:
        encoder: any module mapping inputs to ``(B, D)`` features; must expose ``out_features``.
        task_head: module mapping features to the task output (``(B, 1)`` for regression,
            ``(B, K)`` logits for classification).
        confounds: confound name -> number of classes (categorical or binned confounds), in
            the order of the batch's confound columns.
        continuous: names of confounds whose head regresses the value (one output each; the
            correlation method). Their entry in ``confounds`` (if any) only fixes their order.
        conditions: confound name -> number of target bins, for target-conditioned heads.
        head_hidden: hidden width of each confound head (0: linear).
        n_heads: adversaries per confound (an ensemble; see :class:`ConfoundHead`).

    Examples:
        >>> import torch
        >>> enc = MLPEncoder(in_features=8, hidden=[16], embedding_dim=4)
        >>> model = UnlearningModel(enc, nn.Linear(4, 1), confounds={"site": 3},
        ...                         continuous=["tiv"])
        >>> out = model(torch.zeros(2, 8))
        >>> out.task.shape, out.confounds["site"].shape, out.confounds["tiv"].shape
        (torch.Size([2]), torch.Size([2, 3]), torch.Size([2]))
    """

    def __init__(
        self,
        encoder: nn.Module,
        task_head: nn.Module,
        confounds: Mapping[str, int],
        *,
        continuous: Sequence[str] = (),
        conditions: Mapping[str, int] | None = None,
        head_hidden: int = 32,
        n_heads: int = 1,
    ) -> None:
        super().__init__()
        dim = int(getattr(encoder, "out_features", 0))
        if dim < 1:
            raise ValueError("encoder must expose a positive 'out_features' (its feature width)")
        sizes = head_sizes(confounds, continuous)
        conditions = dict(conditions or {})
        self.encoder = encoder
        self.task_head = task_head
        self.continuous = list(continuous)
        self.confound_names = list(sizes)
        self.confound_heads = nn.ModuleDict(
            {
                name: ConfoundHead(
                    dim,
                    k,
                    hidden=head_hidden,
                    n_heads=n_heads,
                    n_conditions=conditions.get(name, 0),
                )
                for name, k in sizes.items()
            }
        )
        self.reversal = nn.ModuleDict({name: GradientReversal(0.0) for name in sizes})
        #: A fitted concept eraser (:class:`neurounlearn.erasure.EraserLayer`) between the
        #: encoder and the heads, attached after training when the run erases; else ``None``.
        self.eraser: nn.Module | None = None

    def encode(self, x: Tensor) -> Tensor:
        f = self.encoder(x)
        return self.eraser(f) if self.eraser is not None else f

    def predict_task(self, features: Tensor) -> Tensor:
        out = self.task_head(features)
        return out.squeeze(-1) if out.ndim == 2 and out.shape[-1] == 1 else out

    def confound_logits(
        self,
        features: Tensor,
        *,
        reverse: bool = False,
        conditions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Each confound head's output; with ``reverse`` through that confound's reversal layer.

        Args:
            features: ``(B, D)`` encoder features.
            reverse: pass the features through each confound's gradient-reversal layer.
            conditions: ``(B, C)`` target bin of each row per confound (``-1``: none), in
                :attr:`confound_names` order; needed by target-conditioned heads only.

        Returns:
            name -> ``(B, K)`` / ``(H, B, K)`` logits, or ``(B,)`` / ``(H, B)`` values for a
            continuous confound's regression head.
        """
        out = {}
        for j, (name, head) in enumerate(self.confound_heads.items()):
            f = self.reversal[name](features) if reverse else features
            cond = None
            if cast(ConfoundHead, head).n_conditions:
                if conditions is None:
                    raise ValueError(f"confound '{name}' is target-conditioned: pass conditions")
                cond = conditions[:, j]
            value = head(f, cond)
            out[name] = value.squeeze(-1) if name in self.continuous else value
        return out

    def forward(self, x: Tensor, conditions: Tensor | None = None) -> ModelOutput:
        f = self.encode(x)
        return ModelOutput(f, self.predict_task(f), self.confound_logits(f, conditions=conditions))

    def task_parameters(self) -> Iterator[nn.Parameter]:
        """Encoder and task head (step 1 of the iterative strategy)."""
        yield from self.encoder.parameters()
        yield from self.task_head.parameters()

    def adversary_parameters(self) -> Iterator[nn.Parameter]:
        """All confound heads (step 2)."""
        yield from self.confound_heads.parameters()
