"""Unlearning strategies: one class each, one ``training_step``, the same interface.

A strategy owns the optimisers and the order of updates inside a batch; it knows nothing of files
or data loading. It runs inside :class:`neurounlearn.training.system.UnlearningSystem` (Lightning,
manual optimisation) through the small :class:`StepHost` protocol, so it can be tested with a
plain stand-in.

A batch is a dict: ``x`` ``(B, ...)`` inputs, ``y`` ``(B,)`` task targets (NaN: unknown),
``codes`` ``(B, C)`` long confound classes in the model's confound order (``-1``: ignore the row
for that confound — missing, unseen level, or outside the confound's ``subset``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Protocol, cast

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from neurounlearn.config import ConfoundConfig
from neurounlearn.losses import IGNORE, adversary_loss, confusion_loss, masked_regression_loss
from neurounlearn.models.grl import GradientReversal, ganin_lambda
from neurounlearn.models.unlearning import UnlearningModel

Batch = Mapping[str, Tensor]


class StepHost(Protocol):
    """What a strategy needs from the loop that runs it (Lightning's module provides it)."""

    @property
    def model(self) -> UnlearningModel: ...

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


def _as_list(opts: list[Optimizer] | Optimizer) -> list[Optimizer]:
    return list(opts) if isinstance(opts, (list, tuple)) else [opts]


def _adam(params: Iterator[nn.Parameter], lr: float, weight_decay: float) -> Optimizer:
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)


class Strategy(ABC):
    """Shared machinery: task loss, adversary step, confusion loss, logging values.

    Args:
        confounds: the confounds, in the model's confound order.
        task_loss: ``"mse"`` or ``"l1"``.
        class_weights: per confound, ``(K,)`` weights of the adversary's cross-entropy
            (inverse training frequency, so every site counts equally).
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        confounds: Sequence[ConfoundConfig],
        task_loss: str = "mse",
        class_weights: Mapping[str, Tensor] | None = None,
        adversary_steps: int = 1,
    ) -> None:
        self.confounds = list(confounds)
        self.adversary_steps = adversary_steps
        self.task_loss_kind = task_loss
        self.class_weights = dict(class_weights or {})

    # -- what the loop asks -------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        """``"train"``, or for strategies with a warm-up, ``"pretrain"`` then ``"unlearn"``."""
        return "train"

    def stopping_active(self, epoch: int) -> bool:
        """Whether early stopping may look at this epoch (not during a pretrain phase)."""
        return self.phase(epoch) != "pretrain"

    @abstractmethod
    def configure_optimizers(
        self, model: UnlearningModel, *, lr: float, weight_decay: float, adversary_lr: float
    ) -> list[Optimizer]: ...

    @abstractmethod
    def training_step(self, host: StepHost, batch: Batch) -> dict[str, Tensor]:
        """One batch of updates; returns detached values to log."""

    # -- shared pieces ------------------------------------------------------------------------
    def task_loss(self, model: UnlearningModel, features: Tensor, y: Tensor) -> Tensor:
        return masked_regression_loss(model.predict_task(features), y, self.task_loss_kind)

    def _weight(self, name: str, logits: Tensor) -> Tensor | None:
        w = self.class_weights.get(name)
        return None if w is None else w.to(logits.device, logits.dtype)

    @staticmethod
    def _flat(logits: Tensor, codes: Tensor) -> tuple[Tensor, Tensor]:
        """An ensemble's ``(H, B, K)`` logits as ``(H*B, K)`` rows, codes repeated to match."""
        if logits.ndim == 3:
            return logits.reshape(-1, logits.shape[-1]), codes.repeat(logits.shape[0])
        return logits, codes

    def adversary_losses(self, logits: Mapping[str, Tensor], codes: Tensor) -> dict[str, Tensor]:
        out = {}
        for i, c in enumerate(self.confounds):
            flat, col = self._flat(logits[c.name], codes[:, i])
            out[c.name] = adversary_loss(flat, col, self._weight(c.name, flat))
        return out

    def confusion_losses(self, logits: Mapping[str, Tensor], codes: Tensor) -> dict[str, Tensor]:
        out = {}
        for i, c in enumerate(self.confounds):
            flat, col = self._flat(logits[c.name], codes[:, i])
            out[c.name] = confusion_loss(flat, col != IGNORE)
        return out

    def adversary_accuracy(self, logits: Mapping[str, Tensor], codes: Tensor) -> dict[str, Tensor]:
        out = {}
        for i, c in enumerate(self.confounds):
            flat, col = self._flat(logits[c.name], codes[:, i])
            mask = col != IGNORE
            if bool(mask.any()):
                hit = flat[mask].argmax(dim=1) == col[mask]
                out[c.name] = hit.float().mean().detach()
        return out

    def adversary_step(
        self,
        host: StepHost,
        opt: Optimizer,
        features: Tensor,
        codes: Tensor,
        steps: int | None = None,
    ) -> dict[str, Tensor]:
        """Confound heads step on ``sum_k alpha_k L_adv,k`` of *detached* features.

        Repeated ``steps`` (default ``adversary_steps``) times on the same features. Only the
        heads receive gradients, so ``opt`` may also hold other parameters: they stay put. The
        logged values are those before the first update (how well the heads did on this batch).
        """
        n_steps = self.adversary_steps if steps is None else steps
        if n_steps < 1:
            return {}
        detached = features.detach()
        losses: dict[str, Tensor] = {}
        logits: dict[str, Tensor] = {}
        for i in range(n_steps):
            step_logits = host.model.confound_logits(detached)
            step_losses = self.adversary_losses(step_logits, codes)
            if i == 0:
                logits, losses = step_logits, step_losses
            total = sum((c.alpha * step_losses[c.name] for c in self.confounds), torch.zeros(()))
            opt.zero_grad()
            if not total.requires_grad:
                break
            host.manual_backward(total)
            opt.step()
        logs = {f"adv_loss/{k}": v.detach() for k, v in losses.items()}
        logs |= {f"adv_acc/{k}": v for k, v in self.adversary_accuracy(logits, codes).items()}
        return logs

    def weighted_confusion(
        self, model: UnlearningModel, features: Tensor, codes: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``sum_k beta_k L_conf,k`` with the heads frozen, so only the encoder learns from it."""
        with frozen(model.confound_heads):
            logits = model.confound_logits(features)
        losses = self.confusion_losses(logits, codes)
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
        loss = self.task_loss(model, f, batch["y"])
        opt_task.zero_grad()
        host.manual_backward(loss)
        opt_task.step()
        logs = {"task_loss": loss.detach()}
        if len(opts) > 1:
            logs |= self.adversary_step(host, opts[1], f, batch["codes"])
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
    """

    name = "iterative"

    def __init__(self, *, mode: str = "sequential", pretrain_epochs: int = 10, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        if mode not in ("sequential", "joint"):
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
        model, x, y, codes = host.model, batch["x"], batch["y"], batch["codes"]

        if self.phase(host.current_epoch) == "pretrain" or self.mode == "sequential":
            # step 1: task
            f = model.encode(x)
            task = self.task_loss(model, f, y)
            opt_task.zero_grad()
            host.manual_backward(task)
            opt_task.step()
            logs = {"task_loss": task.detach()}
            if self.phase(host.current_epoch) == "pretrain":
                return logs | self.adversary_step(host, opt_adv, f, codes)
            # steps 2 and 3 share features recomputed after step 1 (step 2 leaves E unchanged)
            f = model.encode(x)
            logs |= self.adversary_step(host, opt_adv, f, codes)
            conf, conf_logs = self.weighted_confusion(model, f, codes)
            opt_conf = opts[2]
            opt_conf.zero_grad()
            if conf.requires_grad:
                host.manual_backward(conf)
                opt_conf.step()
            return logs | conf_logs

        # joint: step 2 first, then one backward on task + confusion
        f = model.encode(x)
        logs = self.adversary_step(host, opt_adv, f, codes)
        task = self.task_loss(model, f, y)
        conf, conf_logs = self.weighted_confusion(model, f, codes)
        opt_task.zero_grad()
        host.manual_backward(task + conf)
        opt_task.step()
        return logs | conf_logs | {"task_loss": task.detach()}


class GRLStrategy(Strategy):
    """Domain-adversarial training (Ganin et al. 2016) with a gradient-reversal layer.

    Per batch, one forward and one backward:
      1. set each confound's reversal weight to ``lambda(p) * beta_k / alpha_k`` where
         ``lambda(p) = lambda_max * (2 / (1 + exp(-10 p)) - 1)`` and ``p`` is training progress;
      2. loss = ``L_task + sum_k alpha_k L_adv,k(D_k(GRL_k(f)))``: the heads learn to predict
         the confounds while the encoder receives their gradient reversed, scaled so that it
         sees ``-lambda * beta_k`` times the adversary's gradient;
      3. one optimiser step over encoder, task head and confound heads.

    Args:
        lambda_max: the schedule's final weight.
    """

    name = "grl"

    def __init__(self, *, lambda_max: float = 1.0, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
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
        model, codes = host.model, batch["codes"]
        lam = ganin_lambda(host.progress, self.lambda_max)
        for c in self.confounds:
            reversal = cast(GradientReversal, model.reversal[c.name])
            reversal.set_weight(lam * c.beta / c.alpha if c.alpha > 0 else 0.0)
        f = model.encode(batch["x"])
        # extra head-only updates first; the joint step below is the adversary's last one
        self.adversary_step(host, opt, f, codes, steps=self.adversary_steps - 1)
        task = self.task_loss(model, f, batch["y"])
        logits = model.confound_logits(f, reverse=True)
        adv = self.adversary_losses(logits, codes)
        total = task + sum((c.alpha * adv[c.name] for c in self.confounds), torch.zeros(()))
        opt.zero_grad()
        host.manual_backward(total)
        opt.step()
        detached = {k: v.detach() for k, v in logits.items()}
        logs: dict[str, Tensor] = {"task_loss": task.detach(), "lambda": torch.tensor(lam)}
        logs |= {f"adv_loss/{k}": v.detach() for k, v in adv.items()}
        logs |= {f"adv_acc/{k}": v for k, v in self.adversary_accuracy(detached, codes).items()}
        logs |= {
            f"conf_loss/{k}": v.detach() for k, v in self.confusion_losses(detached, codes).items()
        }
        return logs
