"""The run configuration: one pydantic model, read from YAML, overridden from the command line.

Precedence, lowest first: defaults, ``--config run.yaml``, the CLI's own flags
(``--epochs``, ``--seed``, ...), then ``--set key=value`` (dotted keys, YAML values).
The resolved configuration is written to the run directory as ``config.yaml``.

Examples:
    >>> cfg = RunConfig.model_validate({"data": {"target": "age"}, "confounds": [{"name": "site"}]})
    >>> cfg = apply_overrides(cfg, ["train.epochs=5", "confounds.0.subset=18 <= age <= 35"])
    >>> cfg.train.epochs, cfg.confounds[0].subset
    (5, '18 <= age <= 35')
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from neurounlearn.choices import (
    ATTACH_POINTS,
    STRATEGY_NAMES,
    AdversaryView,
    Augmentation,
    EncoderChoice,
    IterativeMode,
    StrategyName,
)
from neurounlearn.errors import InputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfoundConfig(_Strict):
    """One confound to unlearn.

    Args:
        name: manifest column holding the confound (e.g. ``site``, ``sex``, ``age``).
        kind: ``categorical`` (one class per level seen in the training split) or ``continuous``
            (a number, e.g. age or TIV, when it is not the target).
        method: continuous confounds only. ``correlation`` (CF-Net, Zhao et al. 2020): the head
            regresses the confound and the encoder minimises the squared Pearson correlation of
            the head's output with the true value; ``binned``: quantile bins fit on the training
            split, then the categorical confusion path.
        bins: ``binned`` only: number of quantile bins.
        alpha: weight of this confound's adversary loss (step 2 of the iterative strategy).
        beta: weight of this confound's confusion loss (step 3), or of its reversed gradient (grl).
        subset: query restricting which rows enter this confound's adversary and confusion
            losses, e.g. ``"18 <= age <= 35"`` (the paper's overlap trick for biased data);
            checked against the whitelist of :mod:`neurounlearn.query`, never run as code.
        conditional: target-conditioned unlearning (biased data): the adversary also sees the
            (binned) target and the confusion target is the training split's p(confound | target
            bin) instead of uniform, so only the confound information *beyond what the target
            explains* is removed. Categorical or binned confounds only.
        target_bins: ``conditional`` with a regression target: number of quantile bins of the
            target (required there; a classification target's classes are its bins).
    """

    name: str
    kind: Literal["categorical", "continuous"] = "categorical"
    method: Literal["correlation", "binned"] = "correlation"
    bins: int = Field(5, ge=2)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    subset: str | None = None
    conditional: bool = False
    target_bins: int | None = Field(None, ge=2)

    @field_validator("subset")
    @classmethod
    def _safe_query(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from neurounlearn.query import check

        try:
            check(v)
        except InputError as err:
            raise ValueError(str(err.problem)) from None
        return v

    @model_validator(mode="after")
    def _conditional_needs_classes(self) -> ConfoundConfig:
        if self.conditional and self.kind == "continuous" and self.method == "correlation":
            raise ValueError(
                f"confound '{self.name}': conditional unlearning needs classes; use "
                "method 'binned' for a continuous confound (its quantile bins as classes)"
            )
        return self

    @property
    def head(self) -> str:
        """What the confound's head does: ``classify`` (categorical, binned) or ``regress``."""
        if self.kind == "continuous" and self.method == "correlation":
            return "regress"
        return "classify"


class DataConfig(_Strict):
    """Where the data is and which columns mean what."""

    path: Path | None = None
    input: Literal["features", "image"] = Field(
        "features",
        description="features: a feature table (FreeSurfer volumes, thicknesses); "
        "image: one NIfTI volume per row, path in data.image_column",
    )
    features: str | None = Field(
        None,
        description="regex selecting the feature columns (re.search on each name); required "
        "for feature tables — never guessed, as a numeric column such as a site number or sex "
        "would silently become a feature",
    )
    image_column: str = Field("image", description="images: column holding each NIfTI path")
    label_column: str | None = Field(
        None, description="images: column holding each label map's path (segmentation)"
    )
    mask_column: str | None = Field(
        None, description="images: column holding each brain mask's path (voxels outside -> 0)"
    )
    shape: tuple[int, int, int] | None = Field(
        None,
        description="images: resize/pad every volume to this shape (an int means a cube); "
        "default: keep the images' own shape, which must then agree",
    )
    normalize: Literal["zscore", "minmax", "none"] = Field(
        "zscore", description="images: intensity normalisation (zscore over brain voxels)"
    )
    augment: Augmentation = Field(
        "auto",
        description="images: auto: spatial for image regression and classification, "
        "none for segmentation (its figures were measured without) and tables; "
        "intensity: every training volume, each time it is drawn, gets "
        "random scanner-like changes of its intensities (a gamma in 0.5-2, a smooth bias "
        "field, blur, noise), an alternative or a companion to unlearning the site; spatial: "
        "a random left-right flip and a small rotation, shift and scale (the label map moves "
        "along); intensity+spatial: both (see neurounlearn.data.augment); validation, test and "
        "predicted volumes are never changed",
    )
    cache_dir: Path | None = Field(
        None,
        description="images: folder of the preprocessed-volume cache; default "
        "$NEUROUNLEARN_CACHE_DIR, else ~/.cache/neurounlearn",
    )
    target: str = "age"
    target_range: Literal["auto"] | tuple[float, float] | None = Field(
        "auto",
        description="regression: the range a target value can plausibly take; a value outside "
        "it is an error naming the row (a typo, or a unit such as days or months). auto: "
        "[0, 120] when the target is an age (named age, age_at_scan, age_years, ...), else no "
        "range; null allows any finite value",
    )
    id_column: str | None = Field(
        None,
        description="subject id column; default: the first of subject, sub_id, "
        "participant_id, subject_id, id found in the manifest",
    )
    site_column: str = "site"
    task: Literal["auto", "regression", "classification", "segmentation"] = Field(
        "auto",
        description="regression (MSE/L1 head), classification (cross-entropy head) or "
        "segmentation (images only: the target column holds each label map's path; a 3D U-Net "
        "with soft Dice + cross-entropy); auto: classification when the target is not numeric "
        "or has only two values, else regression",
    )
    classes: list[str] | None = Field(
        None,
        description="segmentation: class names by label value, background (0) first, e.g. "
        "[background, CSF, GM, WM]; a label map holding a value past the last is an error. "
        "Default: 0 up to the largest value found in the label maps",
    )
    unlabelled_sites: list[str] = Field(
        default_factory=list,
        description="sites whose targets are hidden from training: their rows serve the "
        "unlearning only (e.g. a new scanner), and are kept out of the task metrics",
    )

    @field_validator("shape", mode="before")
    @classmethod
    def _cube(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return (v, v, v)
        if isinstance(v, (list, tuple)) and len(v) == 1:
            return (v[0], v[0], v[0])
        return v

    @field_validator("target_range")
    @classmethod
    def _ordered_range(
        cls, v: Literal["auto"] | tuple[float, float] | None
    ) -> Literal["auto"] | tuple[float, float] | None:
        if isinstance(v, tuple) and not v[0] < v[1]:
            raise ValueError(f"target_range must be [low, high] with low < high, got {list(v)}")
        return v

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 8:
            raise ValueError(f"every side of shape must be >= 8 voxels, got {list(v)}")
        return v


class ModelConfig(_Strict):
    """Encoder and heads."""

    encoder: EncoderChoice = Field(
        "auto",
        description="auto: mlp for feature tables, compact for images, unet for segmentation; "
        "compact: a small 3D CNN (the CPU default); paper: the VGG-like 3D CNN of Dinsdale et "
        "al. 2021; sfcn: the SFCN of Peng et al. 2021; unet: MONAI's BasicUNet (segmentation)",
    )
    attach: list[str] = Field(
        default_factory=lambda: ["bottleneck"],
        description="segmentation: where the confound heads attach: bottleneck (deepest "
        "encoder features; the default: in benchmarks/segmentation.py heads at final cost "
        "Dice on both sites), final (last decoder features, the paper's best), an encoder "
        "level encoder0 ... encoder3 (full resolution down to 1/8), or several of them",
    )

    @field_validator("attach", mode="before")
    @classmethod
    def _attach_list(cls, v: Any) -> Any:
        return [p.strip() for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    @field_validator("attach")
    @classmethod
    def _known_points(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in ATTACH_POINTS]
        if unknown or not v:
            raise ValueError(
                f"unknown attach point(s) {', '.join(unknown) or '(none given)'}; choose one or "
                f"more of {', '.join(ATTACH_POINTS)}"
            )
        return list(dict.fromkeys(v))

    hidden: list[int] = Field(default_factory=lambda: [128], description="mlp: hidden widths")
    channels: list[int] | None = Field(
        None,
        description="3D CNNs: channels per stage (default: the encoder's own); unet: six "
        "widths, five encoder levels then the last decoder block",
    )
    strides: list[int] | None = Field(
        None, description="compact: stride of each stage (default: 2 per stage)"
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto",
        description="3D CNNs: channels-last memory format (true/false); auto: on for float32 "
        "on CPU (measured faster, benchmarks/image_speed.py), off with bf16 on CPU (NaN losses "
        "seen) and on GPUs (not measured yet)",
    )

    embedding_dim: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    head_hidden: int = Field(32, ge=0, description="hidden width of confound heads (0: linear)")
    adversary_heads: int = Field(
        10,
        ge=1,
        description="independent adversary heads per confound (an ensemble is harder "
        "to fool than one head; the confusion loss averages over them)",
    )


class _StrategySettings(_Strict):
    """The ``strategy`` section's settings every strategy reads; one subclass per strategy adds
    its own, and :data:`StrategyConfig` picks the subclass by ``name``.

    The other strategies' settings (``mode`` and ``pretrain_epochs`` of the iterative strategy,
    ``lambda_max`` of grl) are accepted too, so that a configuration switches strategy by its
    ``name`` alone (``--strategy grl`` over a config file written for the iterative one): each
    is checked as its own strategy checks it, kept aside (no attribute: the strategy does not
    read it), and written back by :meth:`model_dump`, at its default where not given, so that
    ``config.yaml`` lists every strategy setting, in one order, whichever strategy runs.
    """

    _others: dict[str, Any] = PrivateAttr(default_factory=dict)

    adversary_lr: float = Field(1e-2, gt=0, description="learning rate of the confound heads")
    adversary_steps: int = Field(
        10,
        ge=1,
        description="confound-head updates per batch (a stronger adversary gives the "
        "encoder a more honest signal of what still leaks; with 5, a continuous age confound "
        "still leaked to a fresh ridge probe, R² 0.35-0.40, against 0.04 or less with 10)",
    )
    adversary_memory: Literal["auto"] | int = Field(
        "auto",
        description="training rows whose detached features the confound heads also see "
        "beside each batch (0: the batch only). A U-Net's batch of a few volumes is too few "
        "for the heads to learn from, or to standardise over: in benchmarks/segmentation.py "
        "grl's bottleneck still told the scanner apart without it. auto: 8 for "
        "segmentation (at most 512 MiB of feature maps), 0 otherwise (not yet measured there)",
    )

    adversary_view: AdversaryView = Field(
        "train",
        description="the features the confound heads, the confusion loss and the gradient "
        "reversal see: train, those of the task step's pass (batch-norm batch statistics, "
        "dropout); eval, those of a pass with the encoder as at inference (running "
        "statistics, no dropout), which is what the audit reads. On simulated images a "
        "baseline CNN's eval features told the site apart at 0.86, the train-mode features of "
        "augmented batches at 0.48; but grl with eval trained worse on 2 of 3 selection "
        "cohorts, so train stays the default (docs/guide/images.md)",
    )

    @field_validator("adversary_memory")
    @classmethod
    def _memory_size(cls, v: Literal["auto"] | int) -> Literal["auto"] | int:
        if v != "auto" and (isinstance(v, bool) or v < 0):
            raise ValueError(f"adversary_memory must be auto or a whole number >= 0, got {v!r}")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _set_aside_others(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(data, dict):
            return handler(data)
        others = {
            k: _checked_other(k, v)
            for k, v in data.items()
            if k in _OTHER_SETTINGS and k not in cls.model_fields
        }
        settings = handler({k: v for k, v in data.items() if k not in others})
        settings._others = others
        return settings

    @model_serializer(mode="wrap")
    def _every_setting(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        own: dict[str, Any] = handler(self)
        if info.include is not None or info.exclude is not None or info.exclude_defaults:
            return own
        given = (
            {k: owner.model_fields[k].default for k, owner in _OTHER_SETTINGS.items()}
            | self._others
            | own
        )
        ordered = {k: given[k] for k in _WRITE_ORDER if k in given}
        return ordered | {k: v for k, v in own.items() if k not in ordered}


class BaselineStrategyConfig(_StrategySettings):
    """The task loss only; the confound heads train on detached features, to show the leak."""

    name: Literal["baseline"] = "baseline"


class IterativeStrategyConfig(_StrategySettings):
    """Dinsdale et al. 2021's iterative unlearning."""

    name: Literal["iterative"] = "iterative"
    mode: IterativeMode = Field(
        "sequential",
        description="iterative only: sequential = the paper's three steps; "
        "joint = steps 1 and 3 fused into one encoder backward",
    )
    pretrain_epochs: int = Field(10, ge=0, description="iterative only: task-only epochs first")


class GRLStrategyConfig(_StrategySettings):
    """Domain-adversarial training with a gradient-reversal layer."""

    name: Literal["grl"] = "grl"
    lambda_max: float = Field(1.0, ge=0, description="grl only: final gradient-reversal weight")


#: the settings of one strategy that the others accept and set aside, and their strategy
_OTHER_SETTINGS: dict[str, type[_StrategySettings]] = {
    "mode": IterativeStrategyConfig,
    "pretrain_epochs": IterativeStrategyConfig,
    "lambda_max": GRLStrategyConfig,
}
#: the order ``config.yaml`` lists the strategy settings in
_WRITE_ORDER = (
    "name",
    "mode",
    "pretrain_epochs",
    "lambda_max",
    "adversary_lr",
    "adversary_steps",
    "adversary_memory",
)


def _checked_other(key: str, value: Any) -> Any:
    """Another strategy's setting ``key``, checked as that strategy checks it."""
    owner = _OTHER_SETTINGS[key]
    try:
        return getattr(owner.model_validate({key: value}), key)
    except ValidationError as err:
        raise PydanticCustomError(
            "strategy_setting",
            "{message}",
            {"setting": key, "given": value, "message": _message(err.errors()[0], value)},
        ) from None


def _named(data: Any) -> Any:
    """A ``strategy`` section without a name is the iterative strategy's (the default)."""
    if not isinstance(data, dict):
        return data
    name = data.get("name", "iterative")
    if name not in STRATEGY_NAMES:
        choices = ", ".join(repr(n) for n in STRATEGY_NAMES[:-1])
        raise PydanticCustomError(
            "strategy_setting",
            "{message}",
            {
                "setting": "name",
                "given": name,
                "message": f"Input should be {choices} or {STRATEGY_NAMES[-1]!r} (got {name!r})",
            },
        )
    return {**data, "name": name}


#: The ``strategy`` section: how the confounds are unlearned, one class per strategy, chosen
#: by ``name`` (default: ``iterative``).
StrategyConfig = Annotated[
    BaselineStrategyConfig | IterativeStrategyConfig | GRLStrategyConfig,
    Field(discriminator="name"),
    BeforeValidator(_named),
]
_STRATEGY = TypeAdapter[StrategyConfig](StrategyConfig)


def switch_strategy(settings: StrategyConfig, name: StrategyName, **changes: Any) -> StrategyConfig:
    """``settings`` switched to the strategy ``name``, with ``changes``, every other setting
    (the set-aside ones too) kept.

    Examples:
        >>> grl = switch_strategy(IterativeStrategyConfig(pretrain_epochs=1), "grl")
        >>> type(grl).__name__, grl.model_dump()["pretrain_epochs"]
        ('GRLStrategyConfig', 1)
    """
    return _STRATEGY.validate_python(settings.model_dump(mode="json") | changes | {"name": name})


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
"""Lightning's accelerator names (``gpu`` is its alias of ``cuda``)."""
PRECISIONS = (
    "auto",
    "32-true",
    "bf16-mixed",
    "16-mixed",
    "bf16-true",
    "16-true",
    "64-true",
    "32",
    "16",
    "bf16",
    "64",
)
"""Lightning's precision names, and ``auto`` (bf16-mixed for 3D CNNs on a capable GPU)."""


class TrainConfig(_Strict):
    """The training loop."""

    seed: int = Field(0, ge=0)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float | Literal["auto"] = Field(
        "auto",
        description="AdamW weight decay of the encoder and task head. auto: 0.05 for image "
        "regression and classification (a CNN on a few hundred volumes overfits), 1e-4 for "
        "tables and segmentation (their benchmark figures were measured so)",
    )
    patience: int = Field(
        50,
        ge=1,
        description="early stopping on validation task loss, counted from the first "
        "unlearning epoch (unlearning first costs some task loss, so allow it time); off, "
        "with a warning, when no validation row has a target",
    )
    task_loss: Literal["mse", "l1"] = Field("mse", description="regression task loss")
    class_balance: Literal["weighted", "none"] = Field(
        "weighted",
        description="classification: weight the cross-entropy by inverse class frequency "
        "(training split), so a rare class counts as much as a common one",
    )
    sampling: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="balanced: every site equally likely in each batch"
    )
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    accelerator: str = "auto"
    devices: int | str = Field(
        1,
        description="devices per node (processes, for the CPU): more than one trains with "
        "Lightning's DDP, one process per device, and only the first writes the run",
    )
    num_nodes: int = Field(1, ge=1, description="machines the run spans (torchrun, SLURM)")
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = Field(
        "auto",
        description="Lightning's distributed strategy (not the unlearning strategy): auto is "
        "DDP when devices or num_nodes ask for more than one process",
    )
    sync_batchnorm: Literal["auto"] | bool = Field(
        "auto",
        description="batch statistics over every process's share of a batch (PyTorch's "
        "SyncBatchNorm). auto: on for image runs on several GPUs, off otherwise",
    )
    precision: str = Field(
        "auto",
        description="Lightning precision, e.g. 32-true or bf16-mixed; auto: bf16-mixed for 3D "
        "CNNs on a GPU that supports it, else 32-true",
    )
    num_workers: int = Field(0, ge=0)
    progress_bar: bool = True
    precise_bn: Literal["auto"] | bool = Field(
        "auto",
        description="after training, recompute the encoder's batch-norm statistics over one "
        "pass through the training rows with the final weights (the moving averages a batch of "
        "a few volumes leaves are noisy: in benchmarks/segmentation.py a baseline U-Net's test "
        "Dice on site A went from 0.59 to 0.75 with them recomputed). auto: on for "
        "segmentation, off otherwise (not yet measured there); no effect on a model without "
        "batch norm",
    )
    restore: Literal["auto", "best", "last"] = Field(
        "auto",
        description="the weights a finished run keeps: best, those of the epoch with the lowest "
        "validation task loss (counted from the first unlearning epoch, as early stopping "
        "counts); last, the last epoch's. auto: best for image regression and classification "
        "(a CNN on a few hundred volumes overfits and its validation loss swings from epoch to "
        "epoch), last for tables and segmentation (their benchmark figures were measured so)",
    )

    @property
    def decay(self) -> float:
        """``weight_decay`` as a number, once a run has decided ``auto`` (``training.fit``)."""
        if isinstance(self.weight_decay, str):
            raise ValueError("train.weight_decay is still auto: a run decides it when it starts")
        return float(self.weight_decay)

    @field_validator("weight_decay")
    @classmethod
    def _non_negative_decay(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v < 0:
            raise ValueError(f"weight_decay must be 0 or more (or auto), got {v}")
        return v

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, v: str) -> str:
        if v not in ACCELERATORS:
            raise ValueError(f"unknown accelerator '{v}': use one of {', '.join(ACCELERATORS)}")
        return v

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, v: int | str) -> int | str:
        ok = (
            (isinstance(v, int) and (v >= 1 or v == -1))
            or v == "auto"
            or (isinstance(v, str) and re.fullmatch(r"-1|\d+|\d+(,\d+)*,?", v.strip()))
        )
        if not ok:
            raise ValueError(
                f"devices '{v}' is not a count (1, 2, -1 for all), 'auto' or a list of device "
                "indices like '0,1'"
            )
        return v

    @field_validator("precision", mode="before")
    @classmethod
    def _known_precision(cls, v: Any) -> str:
        if str(v) not in PRECISIONS:
            raise ValueError(f"unknown precision '{v}': use one of {', '.join(PRECISIONS)}")
        return str(v)


class AuditConfig(_Strict):
    """The leakage audit on held-out embeddings."""

    band: tuple[float, float] | None = Field(
        None, description="also probe within this target band, e.g. [18, 35]"
    )
    folds: int = Field(5, ge=2)
    n_permutations: int = Field(100, ge=0, description="permutations of the linear probe's test")
    n_permutations_nonlinear: int = Field(
        30, ge=0, description="permutations of the nonlinear probe's test (each refits an MLP)"
    )
    n_bootstrap: int = Field(1000, ge=0)

    @field_validator("band")
    @classmethod
    def _ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and v[0] >= v[1]:
            raise ValueError(f"band must be [low, high] with low < high, got {list(v)}")
        return v


class EraseConfig(_Strict):
    """One confound to erase from the trained embedding (LEACE, :mod:`neurounlearn.erasure`).

    Args:
        name: manifest column holding the confound (need not be unlearned too).
        mode: ``conditional`` (erase only the confound information beyond what a smooth basis of
            the target explains), ``plain`` (erase all of it) or ``auto`` (conditional: a run
            always has a target).
        kind: ``categorical`` (one-hot), ``continuous`` (its standardised value) or ``auto``:
            the unlearned confound's kind when it is unlearned, else continuous for a numeric
            column with more than 20 distinct values.
        n_knots: spline knots of the regression target's basis (conditional mode).
    """

    name: str
    mode: Literal["auto", "conditional", "plain"] = "auto"
    kind: Literal["auto", "categorical", "continuous"] = "auto"
    n_knots: int = Field(5, ge=2)

    @property
    def conditional(self) -> bool:
        return self.mode != "plain"


class ErasureConfig(_Strict):
    """How the ``erase`` confounds are erased (:mod:`neurounlearn.erasure`).

    Args:
        when: ``after`` training (the eraser fit once on the trained embeddings of the training
            rows) or ``during`` it too (an erasure layer between encoder and heads, refit on
            the training rows' features at the start of every epoch, so the heads train on
            erased features; then refit once more after training). Either way the task head is
            refit on the final erased training rows.
        variance: share of the training rows' embedding variance the eraser keeps (principal
            components), the low-variance rest set to its mean before erasing: fewer
            directions for the eraser's estimation error to show in on new subjects. ``1.0``
            (the default): plain LEACE over every direction.
    """

    when: Literal["after", "during"] = "after"
    variance: float = Field(1.0, gt=0, le=1)


class RunConfig(_Strict):
    """Everything a run needs; written resolved to ``RUN_DIR/config.yaml``."""

    data: DataConfig = Field(default_factory=DataConfig)
    confounds: list[ConfoundConfig] = Field(default_factory=list)
    erase: list[EraseConfig] = Field(
        default_factory=list,
        description="confounds erased from the embedding after training (LEACE), the task "
        "head refit on the erased training rows",
    )
    erasure: ErasureConfig = Field(default_factory=ErasureConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=IterativeStrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _message(error: ErrorDetails, given: Any) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if not (isinstance(given, str) and repr(given) in message):
        message += f" (got {given!r})"
    return message


def _setting(error: ErrorDetails) -> tuple[str, Any]:
    """The dotted key of the setting an error is about, and the value it was given."""
    loc = error["loc"]
    # a strategy's settings sit under the strategy's name, as pydantic places them: not a key
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if not (i > 0 and loc[i - 1] == "strategy" and p in STRATEGY_NAMES)
    ]
    ctx = error.get("ctx") or {}
    if error["type"] == "strategy_setting":
        return ".".join([*parts, ctx["setting"]]), ctx["given"]
    return ".".join(parts), error.get("input")


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    """The settings section (a model class) that holds the last part of ``loc``."""
    parts = [str(p) for p in loc[:-1] if not str(p).isdigit()]  # list entries: the list's model
    model: type[BaseModel] = RunConfig
    i = 0
    while i < len(parts):
        if model is RunConfig and parts[i] == "strategy":  # pydantic adds the strategy's name
            strategies = get_args(get_args(StrategyConfig)[0])  # the union's classes
            named = {c.model_fields["name"].default: c for c in strategies}
            chosen = named.get(parts[i + 1]) if i + 1 < len(parts) else None
            if chosen is None:
                return None
            model, i = chosen, i + 2
            continue
        field = model.model_fields.get(parts[i])
        if field is None:
            return None
        inner = [a for a in (field.annotation, *get_args(field.annotation)) if _is_model(a)]
        if not inner:
            return None
        model, i = inner[0], i + 1
    return model


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _did_you_mean(error: ErrorDetails, key: str) -> str:
    """`` — did you mean 'train.epochs'?`` for an unknown setting close to a known one."""
    if error["type"] != "extra_forbidden":
        return ""
    model = _model_at(error["loc"])
    if model is None:
        return ""
    close = difflib.get_close_matches(str(error["loc"][-1]), list(model.model_fields), n=1)
    prefix = key.rpartition(".")[0]
    return f" — did you mean '{prefix + '.' if prefix else ''}{close[0]}'?" if close else ""


def _validation_error(err: ValidationError, source: str) -> InputError:
    first = err.errors()[0]
    key, given = _setting(first)
    message = (first.get("ctx") or {}).get("message") or _message(first, given)
    message += _did_you_mean(first, key)
    own_hint = " — " in message  # a validator's message that already says how to fix it
    return InputError(
        f"invalid setting '{key}': {message}",
        file=source,
        hint=None
        if own_hint
        else "fix the value where it was given (the configuration file, or the override or "
        "command-line option that set it)",
    )


def validate_config(raw: dict[str, Any], source: str = "configuration") -> RunConfig:
    """Validate a raw dict, turning pydantic's errors into an :class:`InputError`."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise _validation_error(err, source) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML run configuration."""
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", file=path, hint="check the config file's path")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise InputError(f"not valid YAML: {err}", file=path) from None
    if not isinstance(raw, dict):
        raise InputError("a run config must be a YAML mapping (key: value)", file=path)
    return validate_config(raw, str(path))


def set_by_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``raw['a']['b'][0]['c'] = value`` for ``dotted = 'a.b.0.c'``, creating dicts.

    A list is indexed by a number only, and nothing is set below a plain value: both are an
    :class:`InputError` naming the setting (pydantic then checks the names that remain).
    """
    parts = dotted.split(".")
    if not all(parts):
        raise InputError(
            f"setting '{dotted}': empty part in the setting name", hint="e.g. train.patience=30"
        )
    node: Any = raw
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the configuration"
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise InputError(
                    f"setting '{dotted}': '{where}' is a list, so '{part}' must be a position "
                    f"(0 to {len(node) - 1})"
                    if node
                    else f"setting '{dotted}': '{where}' is an empty list",
                    hint=f"an entry is named by its position, from 0: {where}.0, {where}.1, ...",
                )
            idx = int(part)
            if idx >= len(node):
                raise InputError(
                    f"setting '{dotted}': index {idx} is past the end of a list of {len(node)}",
                    hint=f"'{where}' has {len(node)} entries, numbered from 0",
                )
            if last:
                node[idx] = value
                return
            node = node[idx]
            continue
        if not isinstance(node, dict):
            raise InputError(
                f"setting '{dotted}': '{where}' is a single value ({node!r}), it has no setting "
                f"'{part}'",
                hint=f"give it a value of its own, e.g. {where}=VALUE",
            )
        if last:
            node[part] = value
            return
        if part not in node or node[part] is None:
            node[part] = [] if parts[i + 1].isdigit() else {}
        node = node[part]


def apply_overrides(
    cfg: RunConfig, overrides: list[str], *, source: str = "overrides"
) -> RunConfig:
    """Apply ``key=value`` overrides (values parsed as YAML) and re-validate; ``source`` names
    where they came from in an invalid setting's error (the CLI: ``--set``)."""
    raw = cfg.model_dump(mode="json")
    for item in overrides:
        if "=" not in item:
            raise InputError(
                f"an override must be key=value, got '{item}'", hint="e.g. train.patience=30"
            )
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, (dict, list)) is False and value is not None and ":" in text:
            value = text  # a query like "a: b" must stay a string
        set_by_path(raw, key.strip(), value)
    return validate_config(raw, source)
