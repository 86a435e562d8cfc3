"""Checkpoints that load weights-only, are written atomically, and resume a run exactly.

- :func:`read_weights` is the one way the package reads a ``.pt``/``.ckpt`` file:
  ``torch.load(weights_only=True)``, so a crafted file cannot run code; an empty, truncated or
  foreign file becomes an :class:`~neurounlearn.errors.InputError`.
- :class:`AtomicCheckpointIO` writes Lightning's checkpoints to a temporary name in the same
  folder, flushes it to disk and renames it: a kill or a full disk leaves the previous
  checkpoint whole.
- :class:`ExactResume` stores what a resumed run needs to continue as if never stopped: the
  torch, NumPy and Python random states and the adversary's feature memory. With the data
  module's generator state (:class:`~neurounlearn.training.datamodule.SplitDataModule`) a
  killed and resumed run gives the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

from neurounlearn.atomic import write_torch
from neurounlearn.errors import InputError
from neurounlearn.rng import pack_numpy_state, unpack_numpy_state


def read_weights(path: str | Path, *, what: str = "file", hint: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; any failure is an :class:`InputError`."""
    path = Path(path)
    fix = hint or "the file is damaged, incomplete or not one this package wrote; refit"
    if not path.is_file():
        raise InputError(f"the {what} is missing", file=path, hint=fix)
    if path.stat().st_size == 0:
        raise InputError(f"the {what} is empty (0 bytes)", file=path, hint=fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, EOFError, RuntimeError (zip), ValueError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text:
            first = "it holds Python objects other than weights, which are never unpickled"
        elif (
            "zip archive" in text
            or "Unsupported operand" in text  # a legacy pickle stream that is no pickle
            or isinstance(err, EOFError)
            or (isinstance(err, OSError) and err.errno == errno.EINVAL)  # seek past a cut end
        ):
            first = "the file is truncated or not a PyTorch file"
        elif "weights_only" in text or "Weights only" in text:
            first = "it holds Python objects other than weights, which are never unpickled"
        raise InputError(f"cannot read the {what}: {first[:200]}", file=path, hint=fix) from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: temporary file in the same folder, fsync, rename; reads
    weights-only."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_torch(checkpoint, path)

    def load_checkpoint(
        self,
        path: Any,
        map_location: Callable[..., Any] | None = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        loaded = read_weights(path, what="checkpoint")
        if not isinstance(loaded, dict):
            raise InputError("the checkpoint is not a Lightning checkpoint", file=path)
        return loaded


def random_states() -> dict[str, Any]:
    """The torch (CPU and CUDA), NumPy and Python random states, as weights-only types."""
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": pack_numpy_state(cast(tuple, np.random.get_state())),  # noqa: NPY002
        "python": [int(version), list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_states(state: dict[str, Any]) -> None:
    """Put back what :func:`random_states` returned."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(unpack_numpy_state(state["numpy"]))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(Callback):
    """Keeps the random states and the adversary's memory in every checkpoint and puts them back
    at the first epoch after a resume.

    The states are taken when the checkpoint is written (the end of an epoch) and applied at the
    start of the next epoch, the point an uninterrupted run goes on from.

    Args:
        stateful: objects with ``state_dict()``/``load_state_dict()`` whose state lives outside
            the model and optimisers (the strategy's feature memory).
    """

    def __init__(self, stateful: dict[str, Any] | None = None) -> None:
        self.stateful = dict(stateful or {})
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "random": random_states(),
            **{name: obj.state_dict() for name, obj in self.stateful.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        set_random_states(self._pending["random"])
        for name, obj in self.stateful.items():
            if name in self._pending:
                obj.load_state_dict(self._pending[name])
        self._pending = None


class BestWeights(Callback):
    """Keeps the model's weights from the epoch with the lowest ``monitor`` (the validation task
    loss once early stopping counts), so that training can end on them instead of the last
    epoch's (``train.restore: best``).

    The weights are held in memory and stored in every checkpoint, so a resumed run ends on the
    same epoch's weights as an uninterrupted one. Epochs that do not log ``monitor`` (the
    unlearning strategies' pretraining) are never chosen.

    Args:
        monitor: the logged value to minimise.
    """

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best: float | None = None
        self.epoch: int | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not bool(torch.isfinite(value)):
            return
        if self.best is None or float(value) < self.best:
            self.best, self.epoch = float(value), int(trainer.current_epoch)
            model = cast(Any, pl_module).model
            self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "epoch": self.epoch, "weights": self.weights}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.epoch = state_dict["best"], state_dict["epoch"]
        self.weights = state_dict["weights"]

    def restore(self, model: torch.nn.Module) -> int | None:
        """Load the best epoch's weights into ``model``; the epoch, or ``None`` if no epoch
        logged ``monitor`` (the model keeps its last weights)."""
        if self.weights is None:
            return None
        model.load_state_dict(self.weights)
        return self.epoch
