"""The one place that maps configuration names to classes, and builds what a configuration
names: its model (:func:`build_model`) and its strategy (:func:`build_strategy`).

The names themselves live in :mod:`neurounlearn.choices` (the configuration checks against
them); the tables below give each its class. The 3D CNN encoders' own table is
:data:`neurounlearn.models.encoders.CNN_ENCODERS`, which
:func:`~neurounlearn.models.encoders.build_encoder` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from torch import Tensor, nn

from neurounlearn.choices import EncoderName, StrategyName, check_choice
from neurounlearn.config import GRLStrategyConfig, IterativeStrategyConfig, RunConfig
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.errors import InputError
from neurounlearn.models.encoders import CNN_ENCODERS, build_encoder
from neurounlearn.models.segmentation import UNET_FEATURES, SegmentationModel, UNet3D
from neurounlearn.models.unlearning import MLPEncoder, UnlearningModel
from neurounlearn.training.strategies import (
    BaselineStrategy,
    GRLStrategy,
    IterativeStrategy,
    Strategy,
)

__all__ = [
    "ENCODERS",
    "STRATEGIES",
    "build_model",
    "build_segmentation_model",
    "build_strategy",
    "strategy_class",
]

#: ``strategy.name`` -> the strategy's class
STRATEGIES: dict[StrategyName, type[Strategy]] = {
    cls.name: cls for cls in (BaselineStrategy, IterativeStrategy, GRLStrategy)
}

#: ``model.encoder`` -> the encoder's class (``mlp`` for feature tables, ``unet`` the U-Net
#: of segmentation, the rest 3D CNNs)
ENCODERS: dict[EncoderName, type[nn.Module]] = {
    "mlp": MLPEncoder,
    **cast("dict[EncoderName, type[nn.Module]]", CNN_ENCODERS),
    "unet": UNet3D,
}


def strategy_class(name: str) -> type[Strategy]:
    check_choice("strategy", name, STRATEGIES)
    return STRATEGIES[name]  # type: ignore[index]


def build_strategy(
    cfg: RunConfig,
    *,
    task_kind: str,
    task_class_weight: Tensor | None = None,
    class_weights: Mapping[str, Tensor] | None = None,
    priors: Mapping[str, Tensor] | None = None,
    memory: int = 0,
    memory_points: Sequence[str] | None = None,
    memory_bytes: int | None = None,
) -> Strategy:
    """The strategy ``cfg.strategy`` names, with its settings and the confounds, task loss of
    ``cfg``, and what only the fitted data tells (see :class:`Strategy` for the arguments)."""
    s = cfg.strategy
    shared: dict[str, Any] = {
        "confounds": cfg.confounds,
        "task_loss": cfg.train.task_loss,
        "task_kind": task_kind,
        "task_class_weight": task_class_weight,
        "class_weights": class_weights,
        "priors": priors,
        "adversary_steps": s.adversary_steps,
        "memory": memory,
        "memory_points": memory_points,
        "memory_bytes": memory_bytes,
        "adversary_view": s.adversary_view,
    }
    if isinstance(s, IterativeStrategyConfig):
        return IterativeStrategy(mode=s.mode, pretrain_epochs=s.pretrain_epochs, **shared)
    if isinstance(s, GRLStrategyConfig):
        return GRLStrategy(lambda_max=s.lambda_max, **shared)
    return STRATEGIES[s.name](**shared)


def _confound_sizes(encoding: TableEncoding) -> tuple[dict[str, int], list[str]]:
    """Classes per confound, and the confounds whose head regresses the value."""
    sizes = {name: len(levels) for name, levels in encoding.confound_levels.items()}
    continuous = [n for n in encoding.confound_levels if encoding.method(n) == "correlation"]
    return sizes, continuous


def build_segmentation_model(cfg: RunConfig, encoding: TableEncoding) -> SegmentationModel:
    """The U-Net and its attach-point heads a segmentation configuration describes."""
    m = cfg.model
    if m.encoder not in ("auto", "unet"):
        raise InputError(
            f"model.encoder '{m.encoder}' cannot segment: segmentation uses the U-Net",
            hint="leave model.encoder at auto (or set it to unet) with data.task=segmentation",
        )
    try:
        unet = UNet3D(
            out_channels=len(encoding.target_classes),
            features=UNET_FEATURES if m.channels is None else tuple(m.channels),
        )
    except ValueError as err:
        raise InputError(
            f"cannot build the U-Net: {err}",
            hint="give model.channels six widths, e.g. model.channels=[8,16,32,32,64,8]",
        ) from None
    sizes, continuous = _confound_sizes(encoding)
    return SegmentationModel(
        unet,
        sizes,
        continuous=continuous,
        attach=m.attach,
        head_hidden=m.head_hidden,
        n_heads=m.adversary_heads,
    )


def build_model(
    cfg: RunConfig, encoding: TableEncoding, *, input_shape: Sequence[int] | None = None
) -> UnlearningModel | SegmentationModel:
    """The model a configuration describes, sized by the fitted encoding and the input shape.

    Args:
        cfg: the run configuration (``model`` section).
        encoding: fitted scaling and confound classes (sizes the MLP input and the heads).
        input_shape: shape of one input, ``(D, H, W)`` for volumes (the paper's CNN sizes its
            flatten layer from it); unused for tables.
    """
    if encoding.task == "segmentation":
        return build_segmentation_model(cfg, encoding)
    m = cfg.model
    encoder_name = m.encoder
    if encoder_name == "unet":
        raise InputError(
            "model.encoder 'unet' is for segmentation",
            hint="set data.task=segmentation with data.input=image, or choose another encoder",
        )
    if encoder_name == "auto":
        encoder_name = "compact" if cfg.data.input == "image" else "mlp"
    encoder: nn.Module
    if cfg.data.input == "features":
        if encoder_name != "mlp":
            raise InputError(
                f"model.encoder '{encoder_name}' is a 3D CNN, but the input is a feature table",
                hint="use model.encoder=mlp (or auto) with data.input=features",
            )
        encoder = MLPEncoder(
            in_features=len(encoding.feature_columns),
            hidden=m.hidden,
            embedding_dim=m.embedding_dim,
            dropout=m.dropout,
        )
    else:
        if encoder_name == "mlp":
            raise InputError(
                "model.encoder 'mlp' needs a feature table, but the input is images",
                hint="use model.encoder=compact, paper or sfcn (or auto) with data.input=image",
            )
        if input_shape is None:
            raise ValueError("an image model needs the input shape")
        try:
            encoder = build_encoder(
                encoder_name,
                input_shape=tuple(input_shape),
                embedding_dim=m.embedding_dim,
                channels=m.channels,
                strides=m.strides,
                dropout=m.dropout,
            )
        except ValueError as err:
            raise InputError(
                f"cannot build the '{encoder_name}' encoder: {err}",
                hint="check model.channels and model.strides (one stride per channel stage)",
            ) from None
    sizes, continuous = _confound_sizes(encoding)
    return UnlearningModel(
        encoder,
        nn.Linear(m.embedding_dim, encoding.n_outputs),
        sizes,
        continuous=continuous,
        conditions={
            name: encoding.condition_size(name)
            for name in encoding.confound_levels
            if encoding.condition_size(name)
        },
        head_hidden=m.head_hidden,
        n_heads=m.adversary_heads,
    )
