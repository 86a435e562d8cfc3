"""The names a configuration chooses among, kept in one light module (no torch, no MONAI) that
every layer can read: the configuration checks against them, the modules that build the
chosen things import them from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args


def check_choice(what: str, value: object, allowed: Iterable[str]) -> None:
    """Raise ``ValueError`` naming the allowed values when ``value`` is not one of them.

    Examples:
        >>> check_choice("norm", "batch", ("batch", "instance"))
        >>> check_choice("norm", "group", ("batch", "instance"))
        Traceback (most recent call last):
        ...
        ValueError: unknown norm 'group'; choose one of: batch, instance
    """
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(allowed)}")


#: what ``data.augment`` can be
#: (``auto`` resolves to one of the others when a run starts, see ``training.fit``)
Augmentation = Literal["auto", "none", "intensity", "spatial", "intensity+spatial"]
AUGMENTATIONS: tuple[str, ...] = get_args(Augmentation)

#: Where confound heads can attach: an encoder level (``encoder0`` at the input's resolution,
#: after the first two convolutions, down to ``encoder3`` at 1/8 of it; their maps also reach
#: the decoder through the skip connections), the deepest encoder features (``bottleneck``,
#: 1/16), or the last decoder features (``final``, before the 1x1x1 classifier).
ATTACH_POINTS = ("encoder0", "encoder1", "encoder2", "encoder3", "bottleneck", "final")

#: Points at the input's full resolution, whose heads halve the map before pooling.
FULL_RESOLUTION = ("encoder0", "final")

#: what ``strategy.name`` can be (the registry maps each to its class)
StrategyName = Literal["baseline", "iterative", "grl"]
STRATEGY_NAMES: tuple[StrategyName, ...] = get_args(StrategyName)

#: what ``strategy.mode`` can be (the iterative strategy only)
IterativeMode = Literal["sequential", "joint"]
ITERATIVE_MODES: tuple[IterativeMode, ...] = get_args(IterativeMode)

#: what ``strategy.adversary_view`` can be: the features the confound heads see, from the task
#: step's pass (``train``) or from a pass with the encoder as at inference (``eval``)
AdversaryView = Literal["train", "eval"]
ADVERSARY_VIEWS: tuple[AdversaryView, ...] = get_args(AdversaryView)

#: the encoders the registry builds (``model.encoder`` also takes ``auto``): ``mlp`` for
#: feature tables, the 3D CNNs ``compact``, ``paper``, ``sfcn``, and ``unet`` (segmentation)
EncoderName = Literal["mlp", "compact", "paper", "sfcn", "unet"]
ENCODER_NAMES: tuple[EncoderName, ...] = get_args(EncoderName)
#: the 3D CNN encoders among them (what ``build_encoder`` builds)
CNNEncoderName = Literal["compact", "paper", "sfcn"]
CNN_ENCODER_NAMES: tuple[CNNEncoderName, ...] = get_args(CNNEncoderName)
#: what ``model.encoder`` can be
EncoderChoice = Literal["auto", EncoderName]

#: ``compare``'s model arms: arm name -> (strategy, iterative mode); the mode of a
#: non-iterative arm is written to its config.yaml but not used
MODEL_ARMS: dict[str, tuple[StrategyName, IterativeMode]] = {
    "baseline": ("baseline", "sequential"),
    "iterative": ("iterative", "sequential"),
    "iterative-joint": ("iterative", "joint"),
    "grl": ("grl", "sequential"),
}
