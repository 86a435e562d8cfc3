"""Unlearning strategies: one class each, one ``training_step``, the same interface.

A strategy owns the optimisers and the order of updates inside a batch; it knows nothing of files
or data loading. It runs inside :class:`neurounlearn.training.system.UnlearningSystem` (Lightning,
manual optimisation) through the small :class:`StepHost` protocol, so it can be tested with a
plain stand-in.

A batch is a dict: ``x`` ``(B, ...)`` inputs, ``y`` ``(B,)`` task targets (NaN: unknown; a
class index for classification), ``codes`` ``(B, C)`` long confound classes in the model's
confound order (``-1``: ignore the row for that confound — missing, unseen level, outside the
confound's ``subset``, or a continuous confound), and optionally ``values`` ``(B, C)`` float
standardised values of continuous (correlation) confounds (NaN: ignore) and ``conditions``
``(B, C)`` long target bins for target-conditioned confounds (``-1``: none). Where a method takes
``batch``, a bare ``codes`` tensor is accepted too (categorical confounds only).

With an adversary memory (``memory > 0``), the confound heads also see the detached features of
the last training rows beside the batch's own (:class:`FeatureMemory`): their updates, and the
batch statistics their input standardisation takes, then rest on more than a few rows, which a
U-Net's batches of two to eight volumes cannot give. Only the batch's rows carry gradient to
the encoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol, cast

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from neurounlearn.choices import ADVERSARY_VIEWS, ITERATIVE_MODES, StrategyName, check_choice
from neurounlearn.config import ConfoundConfig
from neurounlearn.losses import (
    IGNORE,
    adversary_loss,
    confusion_loss,
    masked_cross_entropy,
    masked_regression_loss,
    masked_segmentation_loss,
    squared_correlation,
)
from neurounlearn.models.grl import GradientReversal, ganin_lambda
from neurounlearn.models.segmentation import SegFeatures, SegmentationModel
from neurounlearn.models.unlearning import UnlearningModel

Batch = Mapping[str, Tensor]
#: The models strategies train: a vector encoder, or a U-Net whose features are maps.
Model = UnlearningModel | SegmentationModel
#: What a model's ``encode`` returns: ``(B, D)`` features, or the U-Net's logits and maps.
Features = Tensor | SegFeatures
#: What the confound losses need from a batch: the batch itself, or just its ``codes``.
Targets = Batch | Tensor


def _unpack(batch: Targets) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(codes, values, conditions)`` of a batch (or of a bare codes tensor)."""
    if isinstance(batch, Tensor):
        return batch, None, None
    return batch["codes"], batch.get("values"), batch.get("conditions")


class StepHost(Protocol):
    """What a strategy needs from the loop that runs it (Lightning's module provides it)."""

    @property
    def model(self) -> Model: ...

    @property
    def current_epoch(self) -> int: ...

    @property
    def progress(self) -> float: ...

    def optimizers(self, *args: Any, **kwargs: Any) -> Any: ...

    def manual_backward(self, loss: Tensor) -> None: ...


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Let gradients flow *through* ``module`` to its inputs without computing its own grads."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


@contextmanager
def as_at_inference(module: nn.Module | None) -> Iterator[None]:
    """Run ``module`` as the audit and ``predict`` run it (batch norm on its running
    statistics, dropout off) while gradients still flow through it; its modes are restored."""
    if module is None:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.train(mode)


def _ensemble_correlation(pred: Tensor, values: Tensor) -> Tensor:
    """Squared correlation of a regression head's ``(B,)`` (or an ensemble's ``(H, B)``) output
    with the values, averaged over the heads."""
    preds = pred if pred.ndim == 2 else pred.unsqueeze(0)
    return torch.stack([squared_correlation(p, values) for p in preds]).mean()


def _as_list(opts: list[Optimizer] | Optimizer) -> list[Optimizer]:
    return list(opts) if isinstance(opts, (list, tuple)) else [opts]


def _adam(params: Iterator[nn.Parameter], lr: float, weight_decay: float) -> Optimizer:
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)


def _rows(features: Features) -> int:
    """Rows (subjects) in a batch of features."""
    if isinstance(features, SegFeatures):
        return len(features.logits)
    return len(features)


class FeatureMemory:
    """The detached features and confound targets of the last ``size`` training rows.

    Newest rows first. Only what the confound heads read is kept: for a U-Net, the feature
    maps of ``points`` (the attach points; its logits are not stored). When ``max_bytes`` is
    given, fewer rows are kept where ``size`` of them would take more memory than that.

    Examples:
        >>> memory = FeatureMemory(3)
        >>> memory.push(torch.ones(2, 4), torch.tensor([[0], [1]]))
        >>> memory.push(torch.zeros(2, 4), torch.tensor([[1], [0]]))
        >>> features, targets = memory.combined(torch.full((1, 4), 2.0), torch.tensor([[1]]))
        >>> features[:, 0].tolist(), targets["codes"][:, 0].tolist()
        ([2.0, 0.0, 0.0, 1.0], [1, 1, 0, 0])
    """

    def __init__(
        self, size: int, *, points: Sequence[str] | None = None, max_bytes: int | None = None
    ) -> None:
        if size < 0:
            raise ValueError(f"memory size must be >= 0, got {size}")
        self.size = size
        self.points = None if points is None else list(points)
        self.max_bytes = max_bytes
        self.features: Features | None = None
        self.targets: dict[str, Tensor] = {}

    def __len__(self) -> int:
        if self.features is None:
            return 0
        if isinstance(self.features, SegFeatures):
            return len(next(iter(self.features.points.values())))
        return len(self.features)

    def clear(self) -> None:
        self.features, self.targets = None, {}

    def state_dict(self) -> dict[str, Any]:
        """The remembered rows as plain tensors (kept in checkpoints, so a resumed run goes on
        with the memory it had)."""
        if self.features is None:
            return {"kind": "empty"}
        if isinstance(self.features, SegFeatures):
            return {
                "kind": "points",
                "logits": self.features.logits,
                "points": dict(self.features.points),
                "targets": dict(self.targets),
            }
        return {"kind": "rows", "features": self.features, "targets": dict(self.targets)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") == "points":
            self.features = SegFeatures(state["logits"], dict(state["points"]))
        elif state.get("kind") == "rows":
            self.features = state["features"]
        else:
            self.clear()
            return
        self.targets = dict(state["targets"])

    def combined(self, features: Features, batch: Targets) -> tuple[Features, dict[str, Tensor]]:
        """The batch's rows (as given, gradient and all), then the remembered rows, with their
        confound targets (``codes`` and, where the batch has them, ``values``/``conditions``)."""
        current = _targets(batch)
        if self.features is None:
            return features, current
        remembered = self.features
        if isinstance(features, SegFeatures):
            assert isinstance(remembered, SegFeatures)
            joined: Features = SegFeatures(
                features.logits,
                {
                    k: torch.cat([v, remembered.points[k].to(v.device, v.dtype)])
                    for k, v in features.points.items()
                    if k in remembered.points
                },
            )
        else:
            assert isinstance(remembered, Tensor)
            joined = torch.cat([features, remembered.to(features.device, features.dtype)])
        targets = {
            k: torch.cat([v, self.targets[k].to(v.device)])
            for k, v in current.items()
            if k in self.targets
        }
        return joined, targets

    def push(self, features: Features, batch: Targets) -> None:
        """Remember the batch's rows (detached), dropping the oldest beyond the size."""
        if self.size == 0:
            return
        features = features.detach()
        if isinstance(features, SegFeatures):
            keep = self.points or list(features.points)
            features = SegFeatures(features.logits[:0], {k: features.points[k] for k in keep})
        joined, targets = self.combined(features, batch)
        n = self._capacity(features)
        if isinstance(joined, SegFeatures):
            self.features = SegFeatures(
                joined.logits[:0], {k: v[:n] for k, v in joined.points.items()}
            )
        else:
            self.features = joined[:n]
        self.targets = {k: v[:n] for k, v in targets.items()}

    def _capacity(self, features: Features) -> int:
        if self.max_bytes is None:
            return self.size
        if isinstance(features, SegFeatures):
            tensors = list(features.points.values())
        else:
            tensors = [features]
        per_row = sum(t[0].numel() * t.element_size() for t in tensors if len(t)) or 1
        return max(0, min(self.size, self.max_bytes // per_row))


def _targets(batch: Targets) -> dict[str, Tensor]:
    codes, values, conditions = _unpack(batch)
    out = {"codes": codes}
    if values is not None:
        out["values"] = values
    if conditions is not None:
        out["conditions"] = conditions
    return out


class Strategy(ABC):
    """Shared machinery: task loss, adversary step, confusion loss, logging values.

    Args:
        confounds: the confounds, in the model's confound order.
        task_loss: ``"mse"`` or ``"l1"`` (regression tasks).
        task_kind: ``"regression"``, ``"classification"`` (cross-entropy head) or
            ``"segmentation"`` (soft Dice + cross-entropy on the batch's ``label`` maps).
        task_class_weight: classification: ``(K,)`` weights of the task's cross-entropy
            (inverse training frequency, so a rare class counts as much as a common one).
        class_weights: per confound, ``(K,)`` weights of the adversary's cross-entropy
            (inverse training frequency, so every site counts equally).
        priors: per target-conditioned confound, ``(T, K)``: row ``b`` is the distribution the
            confusion loss asks of the head for a row in target bin ``b`` (the training split's
            ``p(confound | bin)``, reweighted by ``class_weights`` as the adversary's loss is).
        adversary_steps: confound-head updates per batch.
        memory: training rows whose detached features the confound heads see beside each batch
            (0: the batch only); see :class:`FeatureMemory`.
        memory_points: U-Net: the attach points whose maps the memory keeps (default: all).
        memory_bytes: keep fewer rows where ``memory`` of them would take more than this.
        adversary_view: ``"train"``: the confound heads, the confusion loss and the gradient
            reversal see the features of the task step's pass (batch statistics, dropout);
            ``"eval"``: of a pass with the encoder as at inference (running batch-norm
            statistics, no dropout), what the audit reads; it costs one more encoder pass per
            batch where the task step's features cannot be reused.
    """

    name: ClassVar[StrategyName]

    def __init__(
        self,
        *,
        confounds: Sequence[ConfoundConfig],
        task_loss: str = "mse",
        task_kind: str = "regression",
        task_class_weight: Tensor | None = None,
        class_weights: Mapping[str, Tensor] | None = None,
        priors: Mapping[str, Tensor] | None = None,
        adversary_steps: int = 1,
        memory: int = 0,
        memory_points: Sequence[str] | None = None,
        memory_bytes: int | None = None,
        adversary_view: str = "train",
    ) -> None:
        if task_kind not in ("regression", "classification", "segmentation"):
            raise ValueError(
                f"task_kind must be regression, classification or segmentation, got {task_kind!r}"
            )
        check_choice("adversary view", adversary_view, ADVERSARY_VIEWS)
        self.confounds = list(confounds)
        self.adversary_steps = adversary_steps
        self.adversary_view = adversary_view
        self.memory = FeatureMemory(memory, points=memory_points, max_bytes=memory_bytes)
        self.task_loss_kind = task_loss
        self.task_kind = task_kind
        self.task_class_weight = task_class_weight
        self.class_weights = dict(class_weights or {})
        self.priors = dict(priors or {})
        for c in self.confounds:
            if c.conditional and c.name not in self.priors:
                raise ValueError(f"confound '{c.name}' is target-conditioned: give its priors")

    # -- what the loop asks -------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        """``"train"``, or for strategies with a warm-up, ``"pretrain"`` then ``"unlearn"``."""
        return "train"

    def stopping_active(self, epoch: int) -> bool:
        """Whether early stopping may look at this epoch (not during a pretrain phase)."""
        return self.phase(epoch) != "pretrain"

    @abstractmethod
    def configure_optimizers(
        self, model: Model, *, lr: float, weight_decay: float, adversary_lr: float
    ) -> list[Optimizer]: ...

    @abstractmethod
    def training_step(self, host: StepHost, batch: Batch) -> dict[str, Tensor]:
        """One batch of updates; returns detached values to log."""

    # -- shared pieces ------------------------------------------------------------------------
    def adversary_input(
        self, model: Model, x: Tensor, features: Features | None, *, grad: bool
    ) -> Features:
        """The features the confound heads see: the task pass's ``features`` (view ``train``,
        or recomputed when ``None``), or a pass with the encoder as at inference (view
        ``eval``); ``grad=False`` where only the heads learn from them."""
        if self.adversary_view == "train" and features is not None:
            return features
        encoder = getattr(model, "encoder", None) if self.adversary_view == "eval" else None
        with as_at_inference(encoder), torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            return model.encode(x)

    def task_loss(self, model: Model, features: Features, batch: Batch) -> Tensor:
        """The task loss over the rows with a target (segmentation: with a label map)."""
        out = model.predict_task(features)  # type: ignore[arg-type]
        y = batch["y"]
        if self.task_kind == "segmentation":
            return masked_segmentation_loss(out, batch["label"], y)
        if self.task_kind == "classification":
            w = self.task_class_weight
            return masked_cross_entropy(out, y, None if w is None else w.to(out.device, out.dtype))
        return masked_regression_loss(out, y, self.task_loss_kind)

    @staticmethod
    def confound_outputs(
        model: Model, features: Features, batch: Targets, *, reverse: bool = False
    ) -> dict[str, Tensor]:
        """The confound heads' outputs, each conditioned on the row's target bin if it is."""
        return model.confound_logits(
            features,  # type: ignore[arg-type]  # a model gets the features it encoded
            reverse=reverse,
            conditions=_unpack(batch)[2],
        )

    def heads_on(
        self, model: Model, features: Features, batch: Targets, *, reverse: bool = False
    ) -> dict[str, Tensor]:
        """The confound heads' outputs for the batch's rows, computed over the batch and the
        memory together (so the heads' input standardisation sees all of them)."""
        if len(self.memory) == 0:
            return self.confound_outputs(model, features, batch, reverse=reverse)
        joined, targets = self.memory.combined(features, batch)
        outputs = self.confound_outputs(model, joined, targets, reverse=reverse)
        return self.first_rows(outputs, _rows(features))

    def first_rows(self, outputs: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
        """Each confound's outputs for its first ``n`` rows (``(B, ...)``, or ``(H, B, ...)``
        for an ensemble)."""
        out = {}
        for c in self.confounds:
            value = outputs[c.name]
            ensemble = value.ndim == (2 if c.head == "regress" else 3)
            out[c.name] = value[:, :n] if ensemble else value[:n]
        return out

    def _weight(self, name: str, logits: Tensor) -> Tensor | None:
        w = self.class_weights.get(name)
        return None if w is None else w.to(logits.device, logits.dtype)

    @staticmethod
    def _flat(logits: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        """An ensemble's ``(H, B, K)`` logits as ``(H*B, K)`` rows, codes repeated to match."""
        if logits.ndim == 3:
            return logits.reshape(-1, logits.shape[-1]), codes.repeat(logits.shape[0])
        return logits, codes

    def _column(self, i: int, c: ConfoundConfig, batch: Targets) -> Tensor:
        """Confound ``i``'s class per row, ``-1`` where the row sits out (also: no target bin)."""
        codes, _, conditions = _unpack(batch)
        col = codes[:, i]
        if c.conditional and conditions is not None:
            col = torch.where(conditions[:, i] >= 0, col, torch.full_like(col, IGNORE))
        return col

    def _values(self, i: int, c: ConfoundConfig, batch: Targets) -> Tensor:
        _, values, _ = _unpack(batch)
        if values is None:
            raise ValueError(f"continuous confound '{c.name}' needs the batch's 'values'")
        return values[:, i]

    def _prior_rows(self, i: int, c: ConfoundConfig, batch: Targets) -> Tensor | None:
        if not c.conditional:
            return None
        conditions = _unpack(batch)[2]
        if conditions is None:
            raise ValueError(f"confound '{c.name}' is target-conditioned: the batch needs them")
        prior = self.priors[c.name].to(conditions.device)
        return prior[conditions[:, i].clamp(min=0)]

    def adversary_losses(self, logits: Mapping[str, Tensor], batch: Targets) -> dict[str, Tensor]:
        """Per confound: weighted cross-entropy (classes) or MSE (a continuous confound)."""
        out = {}
        for i, c in enumerate(self.confounds):
            if c.head == "regress":
                pred = logits[c.name]
                v = self._values(i, c, batch)
                if pred.ndim == 2:  # ensemble (H, B)
                    pred, v = pred.reshape(-1), v.repeat(pred.shape[0])
                out[c.name] = masked_regression_loss(pred, v, "mse")
                continue
            flat, col = self._flat(logits[c.name], self._column(i, c, batch))
            out[c.name] = adversary_loss(flat, col, self._weight(c.name, flat))
        return out

    def confusion_losses(self, logits: Mapping[str, Tensor], batch: Targets) -> dict[str, Tensor]:
        """Per confound, what the encoder minimises: the confusion loss against the uniform
        distribution (or, target-conditioned, against ``p(confound | target bin)``), or for a
        continuous confound the squared correlation of the head's output with the value."""
        out = {}
        for i, c in enumerate(self.confounds):
            if c.head == "regress":
                out[c.name] = _ensemble_correlation(logits[c.name], self._values(i, c, batch))
                continue
            raw = logits[c.name]
            flat, col = self._flat(raw, self._column(i, c, batch))
            target = self._prior_rows(i, c, batch)
            if target is not None and raw.ndim == 3:
                target = target.repeat(raw.shape[0], 1)
            out[c.name] = confusion_loss(
                flat, col != IGNORE, None if target is None else target.to(flat.dtype)
            )
        return out

    def adversary_accuracy(self, logits: Mapping[str, Tensor], batch: Targets) -> dict[str, Tensor]:
        """Per categorical (or binned) confound, the heads' accuracy on the rows that count."""
        out = {}
        for i, c in enumerate(self.confounds):
            if c.head == "regress":
                continue
            flat, col = self._flat(logits[c.name], self._column(i, c, batch))
            mask = col != IGNORE
            if bool(mask.any()):
                hit = flat[mask].argmax(dim=1) == col[mask]
                out[c.name] = hit.float().mean().detach()
        return out

    def adversary_metrics(self, logits: Mapping[str, Tensor], batch: Targets) -> dict[str, Tensor]:
        """Values to log: ``adv_acc/NAME`` (classes) and ``adv_r2/NAME`` (squared correlation
        of a continuous confound's head with the value)."""
        logs = {f"adv_acc/{k}": v for k, v in self.adversary_accuracy(logits, batch).items()}
        for i, c in enumerate(self.confounds):
            if c.head == "regress":
                logs[f"adv_r2/{c.name}"] = _ensemble_correlation(
                    logits[c.name].detach(), self._values(i, c, batch)
                )
        return logs

    def adversary_step(
        self,
        host: StepHost,
        opt: Optimizer,
        features: Features,
        batch: Targets,
        steps: int | None = None,
    ) -> dict[str, Tensor]:
        """Confound heads step on ``sum_k alpha_k L_adv,k`` of *detached* features.

        Repeated ``steps`` (default ``adversary_steps``) times on the same features, and on the
        memory's rows beside them. Only the heads receive gradients, so ``opt`` may also hold
        other parameters: they stay put. The logged values are those of the batch's own rows
        before the first update (how well the heads did on this batch).
        """
        n_steps = self.adversary_steps if steps is None else steps
        if n_steps < 1:
            return {}
        n = _rows(features)
        detached, rows = self.memory.combined(features.detach(), batch)
        losses: dict[str, Tensor] = {}
        logits: dict[str, Tensor] = {}
        for i in range(n_steps):
            step_logits = self.confound_outputs(host.model, detached, rows)
            step_losses = self.adversary_losses(step_logits, rows)
            if i == 0:
                logits = self.first_rows(step_logits, n)
                losses = self.adversary_losses(logits, batch)
            total = sum((c.alpha * step_losses[c.name] for c in self.confounds), torch.zeros(()))
            opt.zero_grad()
            if not total.requires_grad:
                break
            host.manual_backward(total)
            opt.step()
        logs = {f"adv_loss/{k}": v.detach() for k, v in losses.items()}
        return logs | self.adversary_metrics(logits, batch)

    def weighted_confusion(
        self, model: Model, features: Features, batch: Targets
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``sum_k beta_k L_conf,k`` with the heads frozen, so only the encoder learns from it."""
        with frozen(model.confound_heads):
            logits = self.heads_on(model, features, batch)
        losses = self.confusion_losses(logits, batch)
        total = sum((c.beta * losses[c.name] for c in self.confounds), torch.zeros(()))
        return total, {f"conf_loss/{k}": v.detach() for k, v in losses.items()}


class BaselineStrategy(Strategy):
    """Task loss only — the honest reference.

    Per batch:
      1. encoder + task head step on ``L_task``;
      2. confound heads step on ``sum_k alpha_k L_adv,k`` of detached features. This never
         touches the encoder; it only shows, in ``history.csv``, how much the features leak.
    """

    name = "baseline"

    def configure_optimizers(self, model, *, lr, weight_decay, adversary_lr):  # type: ignore[override]
        opts = [_adam(model.task_parameters(), lr, weight_decay)]
        if self.confounds:  # with nothing to monitor there is no adversary to train
            opts.append(_adam(model.adversary_parameters(), adversary_lr, weight_decay))
        return opts

    def training_step(self, host: StepHost, batch: Batch) -> dict[str, Tensor]:
        opts = _as_list(host.optimizers())
        opt_task = opts[0]
        model = host.model
        f = model.encode(batch["x"])
        loss = self.task_loss(model, f, batch)
        opt_task.zero_grad()
        host.manual_backward(loss)
        opt_task.step()
        logs = {"task_loss": loss.detach()}
        if len(opts) > 1:
            seen = self.adversary_input(model, batch["x"], f, grad=False)
            logs |= self.adversary_step(host, opts[1], seen, batch)
            self.memory.push(seen, batch)
        return logs


class IterativeStrategy(Strategy):
    """Dinsdale et al. 2021 iterative unlearning.

    Phase 1, *pretrain* (``pretrain_epochs``): encoder + task head learn the task; the confound
    heads train alongside on detached features (the paper's author recommends it for stability).

    Phase 2, *unlearn*, per batch (``mode="sequential"``, faithful to the paper):
      1. encoder + task head step on ``L_task``;
      2. confound heads step on ``sum_k alpha_k L_adv,k`` (features detached);
      3. encoder step on ``sum_k beta_k L_conf,k`` — with features **recomputed** after step 1
         (the reference code reused stale features, which newer PyTorch rejects).

    ``mode="joint"`` fuses steps 1 and 3 into one encoder backward on
    ``L_task + sum_k beta_k L_conf,k`` after step 2: one encoder forward/backward per batch.

    Args:
        mode: ``"sequential"`` or ``"joint"``.
        pretrain_epochs: epochs of phase 1.
        confounds, task_loss, ...: as :class:`Strategy` takes them.
    """

    name = "iterative"

    def __init__(
        self,
        *,
        mode: str = "sequential",
        pretrain_epochs: int = 10,
        confounds: Sequence[ConfoundConfig],
        task_loss: str = "mse",
        task_kind: str = "regression",
        task_class_weight: Tensor | None = None,
        class_weights: Mapping[str, Tensor] | None = None,
        priors: Mapping[str, Tensor] | None = None,
        adversary_steps: int = 1,
        memory: int = 0,
        memory_points: Sequence[str] | None = None,
        memory_bytes: int | None = None,
        adversary_view: str = "train",
    ) -> None:
        super().__init__(
            confounds=confounds,
            task_loss=task_loss,
            task_kind=task_kind,
            task_class_weight=task_class_weight,
            class_weights=class_weights,
            priors=priors,
            adversary_steps=adversary_steps,
            memory=memory,
            memory_points=memory_points,
            memory_bytes=memory_bytes,
            adversary_view=adversary_view,
        )
        if mode not in ITERATIVE_MODES:
            raise ValueError(f"iterative mode must be 'sequential' or 'joint', got {mode!r}")
        self.mode = mode
        self.pretrain_epochs = pretrain_epochs

    def phase(self, epoch: int) -> str:
        return "pretrain" if epoch < self.pretrain_epochs else "unlearn"

    def configure_optimizers(self, model, *, lr, weight_decay, adversary_lr):  # type: ignore[override]
        opts = [
            _adam(model.task_parameters(), lr, weight_decay),
            _adam(model.adversary_parameters(), adversary_lr, weight_decay),
        ]
        if self.mode == "sequential":
            # the paper's third optimiser: encoder only, on the confusion loss
            opts.append(_adam(model.encoder.parameters(), lr, weight_decay))
        return opts

    def training_step(self, host: StepHost, batch: Batch) -> dict[str, Tensor]:
        opts = _as_list(host.optimizers())
        opt_task, opt_adv = opts[0], opts[1]
        model, x = host.model, batch["x"]

        if self.phase(host.current_epoch) == "pretrain" or self.mode == "sequential":
            # step 1: task
            f = model.encode(x)
            task = self.task_loss(model, f, batch)
            opt_task.zero_grad()
            host.manual_backward(task)
            opt_task.step()
            logs = {"task_loss": task.detach()}
            if self.phase(host.current_epoch) == "pretrain":
                seen = self.adversary_input(model, x, f, grad=False)
                logs |= self.adversary_step(host, opt_adv, seen, batch)
                self.memory.push(seen, batch)
                return logs
            # steps 2 and 3 share features recomputed after step 1 (step 2 leaves E unchanged)
            f = self.adversary_input(model, x, None, grad=True)
            logs |= self.adversary_step(host, opt_adv, f, batch)
            conf, conf_logs = self.weighted_confusion(model, f, batch)
            opt_conf = opts[2]
            opt_conf.zero_grad()
            if conf.requires_grad:
                host.manual_backward(conf)
                opt_conf.step()
            self.memory.push(f, batch)
            return logs | conf_logs

        # joint: step 2 first, then one backward on task + confusion
        f = model.encode(x)
        seen = self.adversary_input(model, x, f, grad=True)
        logs = self.adversary_step(host, opt_adv, seen, batch)
        task = self.task_loss(model, f, batch)
        conf, conf_logs = self.weighted_confusion(model, seen, batch)
        opt_task.zero_grad()
        host.manual_backward(task + conf)
        opt_task.step()
        self.memory.push(seen, batch)
        return logs | conf_logs | {"task_loss": task.detach()}


class GRLStrategy(Strategy):
    """Domain-adversarial training (Ganin et al. 2016) with a gradient-reversal layer.

    Per batch, one forward and one backward:
      1. set each confound's reversal weight to ``lambda(p) * beta_k / alpha_k`` where
         ``lambda(p) = lambda_max * (2 / (1 + exp(-10 p)) - 1)`` and ``p`` is training progress;
      2. loss = ``L_task + sum_k alpha_k L_adv,k(D_k(GRL_k(f)))``: the heads learn to predict
         the confounds while the encoder receives their gradient reversed, scaled so that it
         sees ``-lambda * beta_k`` times the adversary's gradient. A target-conditioned head
         sees the target bin beside the reversed features;
      3. one optimiser step over encoder, task head and confound heads.

    A continuous (correlation) confound's head learns its MSE without reversal (weight 0), and
    the encoder instead minimises ``lambda * beta_k`` times the squared correlation of the
    (frozen) head's output with the value: a reversed MSE gradient would push the head to
    anti-correlate with the confound rather than forget it.

    Args:
        lambda_max: the schedule's final weight.
        confounds, task_loss, ...: as :class:`Strategy` takes them.
    """

    name = "grl"

    def __init__(
        self,
        *,
        lambda_max: float = 1.0,
        confounds: Sequence[ConfoundConfig],
        task_loss: str = "mse",
        task_kind: str = "regression",
        task_class_weight: Tensor | None = None,
        class_weights: Mapping[str, Tensor] | None = None,
        priors: Mapping[str, Tensor] | None = None,
        adversary_steps: int = 1,
        memory: int = 0,
        memory_points: Sequence[str] | None = None,
        memory_bytes: int | None = None,
        adversary_view: str = "train",
    ) -> None:
        super().__init__(
            confounds=confounds,
            task_loss=task_loss,
            task_kind=task_kind,
            task_class_weight=task_class_weight,
            class_weights=class_weights,
            priors=priors,
            adversary_steps=adversary_steps,
            memory=memory,
            memory_points=memory_points,
            memory_bytes=memory_bytes,
            adversary_view=adversary_view,
        )
        self.lambda_max = lambda_max

    def configure_optimizers(self, model, *, lr, weight_decay, adversary_lr):  # type: ignore[override]
        return [
            torch.optim.AdamW(
                [
                    {"params": list(model.task_parameters()), "lr": lr},
                    {"params": list(model.adversary_parameters()), "lr": adversary_lr},
                ],
                lr=lr,
                weight_decay=weight_decay,
            )
        ]

    def training_step(self, host: StepHost, batch: Batch) -> dict[str, Tensor]:
        (opt,) = _as_list(host.optimizers())
        model = host.model
        lam = ganin_lambda(host.progress, self.lambda_max)
        for c in self.confounds:
            reversal = cast(GradientReversal, model.reversal[c.name])
            scaled = lam * c.beta / c.alpha if c.alpha > 0 else 0.0
            reversal.set_weight(0.0 if c.head == "regress" else scaled)
        f = model.encode(batch["x"])
        seen = self.adversary_input(model, batch["x"], f, grad=True)
        # extra head-only updates first; the joint step below is the adversary's last one
        self.adversary_step(host, opt, seen, batch, steps=self.adversary_steps - 1)
        task = self.task_loss(model, f, batch)
        logits = self.heads_on(model, seen, batch, reverse=True)
        adv = self.adversary_losses(logits, batch)
        total = task + sum((c.alpha * adv[c.name] for c in self.confounds), torch.zeros(()))
        logs: dict[str, Tensor] = {"task_loss": task.detach(), "lambda": torch.tensor(lam)}
        if any(c.head == "regress" for c in self.confounds):
            with frozen(model.confound_heads):
                plain = self.heads_on(model, seen, batch)
            corr = self.confusion_losses(plain, batch)
            total = total + sum(
                (lam * c.beta * corr[c.name] for c in self.confounds if c.head == "regress"),
                torch.zeros(()),
            )
        opt.zero_grad()
        host.manual_backward(total)
        opt.step()
        self.memory.push(seen, batch)
        detached = {k: v.detach() for k, v in logits.items()}
        logs |= {f"adv_loss/{k}": v.detach() for k, v in adv.items()}
        logs |= self.adversary_metrics(detached, batch)
        logs |= {
            f"conf_loss/{k}": v.detach() for k, v in self.confusion_losses(detached, batch).items()
        }
        return logs
