"""``fit``: validate the data, split it, train one strategy under Lightning, fill the run dir.

Everything that can be wrong with the input is checked before the run directory is created, so
a bad manifest leaves nothing behind. Each file in the run directory is written under a
temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from neurounlearn.atomic import atomic_path, check_out, write_csv, write_json, write_text
from neurounlearn.config import RunConfig
from neurounlearn.data.inputs import load_inputs, row_data, table_spec
from neurounlearn.data.overlap import entanglement_problem, unlearns_site_everywhere
from neurounlearn.data.splits import make_splits, splits_frame
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.erasure import check_erase, erase_kinds
from neurounlearn.errors import InputError, Problem
from neurounlearn.models.segmentation import SegmentationModel
from neurounlearn.registry import build_model, build_strategy
from neurounlearn.rundir import CHECKPOINT_DIR, LAST_CHECKPOINT, RunFiles
from neurounlearn.training.batchnorm import recompute_batchnorm
from neurounlearn.training.checkpoints import (
    AtomicCheckpointIO,
    BestWeights,
    ExactResume,
    read_weights,
)
from neurounlearn.training.datamodule import SplitDataModule
from neurounlearn.training.distributed import (
    in_cluster,
    is_follower,
    lightning_strategy,
    process_count,
)
from neurounlearn.training.erasing import EraserRefresh, training_eraser
from neurounlearn.training.run import save_model, versions
from neurounlearn.training.system import (
    STOP_METRIC,
    EpochBar,
    HistoryWriter,
    UnlearningSystem,
    set_memory_format,
)
from neurounlearn.training.tasks import Task, task_of

if TYPE_CHECKING:
    from neurounlearn.models.unlearning import UnlearningModel


__all__ = [
    "Prepared",
    "Trained",
    "config_split",
    "fit",
    "prepare",
    "table_spec",
    "train",
    "write_outputs",
]


def uses_gpu(accelerator: str) -> bool:
    """Whether Lightning's ``accelerator`` setting will put this run on a CUDA GPU."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str, input_kind: str = "image") -> str:
    """``auto``: bf16 autocast for 3D CNNs on a GPU that has it, float32 everywhere else.

    On a CPU with AVX512-BF16, bf16 autocast trained the compact 3D CNN 1.25-1.4x faster
    (benchmarks/image_speed.py), but together with channels-last it produced NaN losses within
    two epochs, so ``auto`` keeps float32 there. Feature-table MLPs are too small to gain
    anything from bf16.
    """
    if precision != "auto":
        return precision
    if input_kind == "image" and uses_gpu(accelerator) and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def resolve_channels_last(
    setting: str | bool, accelerator: str, input_kind: str, precision: str = "32-true"
) -> bool:
    """``auto``: channels-last memory format for 3D CNNs in float32 on CPU (measured 1.3-1.5x
    faster, benchmarks/image_speed.py). Not with bf16 on CPU, which gave NaN losses; not on GPUs
    either until it has been measured there."""
    if input_kind != "image":
        return False
    if setting != "auto":
        return bool(setting)
    return not uses_gpu(accelerator) and not precision.startswith("bf16")


def _check_encoding(cfg: RunConfig, encoding: TableEncoding) -> None:
    """What only the training split can tell: classes and bins to unlearn or to predict."""
    if encoding.task == "classification" and len(encoding.target_classes) < 2:
        raise InputError(
            f"the training split holds fewer than 2 classes of '{cfg.data.target}'",
            file=cfg.data.path,
            column=cfg.data.target,
            hint="use data with at least two classes (with targets) in the training rows",
        )
    for i, c in enumerate(cfg.confounds):
        method = encoding.method(c.name)
        where = f" within subset '{c.subset}'" if c.subset else ""
        if method == "binned" and len(encoding.confound_levels[c.name]) < 2:
            raise InputError(
                f"continuous confound '{c.name}' gives fewer than 2 distinct quantile bins in "
                f"the training split{where}: there is nothing to unlearn",
                column=c.name,
                file=cfg.data.path,
                hint="check the column, or use the correlation method",
            )
        if method == "categorical" and len(encoding.confound_levels[c.name]) < 2:
            raise InputError(
                f"confound '{c.name}' has fewer than 2 levels in the training split{where}: "
                "there is nothing to unlearn",
                column=c.name,
                file=cfg.data.path,
                hint="check the column and the subset query",
            )
        if c.conditional and encoding.condition_size(c.name) < 2:
            raise InputError(
                f"confound '{c.name}' is target-conditioned, but the training targets give "
                "fewer than 2 distinct bins",
                column=cfg.data.target,
                file=cfg.data.path,
                hint="check the target column, or unlearn it without target conditioning "
                f"(confounds.{i}.conditional=false)",
            )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A run's checkpoint, weights-only, with the fields ``--resume`` needs."""
    hint = (
        "the checkpoint is damaged (a run killed while writing it leaves the previous one; "
        "this one is not from this package); delete the run directory and start again"
    )
    checkpoint = read_weights(path, what="checkpoint", hint=hint)
    if (
        not isinstance(checkpoint, dict)
        or not isinstance(checkpoint.get("epoch"), int)
        or not isinstance(checkpoint.get("state_dict"), dict)
    ):
        raise InputError("the checkpoint holds no epoch and weights", file=path, hint=hint)
    return checkpoint


def stored_split(path: Path, frame: pd.DataFrame, id_column: str) -> pd.Series:
    """The split an interrupted run stored, checked against the manifest it resumes on."""
    try:
        stored = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(f"cannot read the stored split: {err}", file=path) from None
    hint = "resume with the manifest the run was started on, or start a new run"
    if "split" not in stored or len(stored) != len(frame):
        raise InputError(
            f"the run's split holds {len(stored)} rows, the manifest {len(frame)}",
            file=path,
            hint=hint,
        )
    if id_column in stored:
        given = frame[id_column].astype(str).to_numpy()
        kept = stored[id_column].astype(str).to_numpy()
        differ = np.flatnonzero(given != kept)
        if differ.size:
            row = int(differ[0])
            raise InputError(
                f"row {row + 1} of the manifest is subject {given[row]!r}, but the run was "
                f"started with {kept[row]!r} there",
                file=path,
                row=row + 1,
                column=id_column,
                hint=hint,
            )
    split = stored["split"].astype(str).to_numpy()
    if not set(split.tolist()) <= {"train", "val", "test"}:
        raise InputError("the stored split holds values other than train/val/test", file=path)
    return pd.Series(split, index=frame.index, name="split")


def check_finite(
    embeddings: pd.DataFrame, preds: pd.DataFrame, cfg: RunConfig, epochs: int
) -> None:
    """A run whose outputs are not finite has diverged: it is never marked finished.

    Dice is NaN by design on rows without a label map, so only predictions, probabilities and
    embeddings are checked.
    """
    outputs = [c for c in preds.columns if c == "prediction" or str(c).startswith("prob_")]
    values = preds[outputs].select_dtypes("number").to_numpy(dtype=np.float64)
    bad_preds = int((~np.isfinite(values)).sum())
    features = embeddings.select_dtypes("number").to_numpy(dtype=np.float64)
    bad_emb = int((~np.isfinite(features)).sum())
    if bad_preds or bad_emb:
        raise InputError(
            f"training diverged after {epochs} epochs: {bad_preds} predictions and {bad_emb} "
            "embedding values are not finite (NaN or infinite); the run is not written",
            file=cfg.data.path,
            column=cfg.data.target,
            hint="check the target for extreme values, lower the learning rate "
            "(train.lr=1e-4) or use train.precision=32-true",
        )


def config_split(cfg: RunConfig, frame: pd.DataFrame, id_column: str) -> pd.Series:
    """The train/val/test split a configuration gives (what ``fit`` writes to splits.csv)."""
    t = cfg.train
    return make_splits(
        frame,
        id_column=id_column,
        site_column=cfg.data.site_column,
        seed=t.seed,
        val_fraction=t.val_fraction,
        test_fraction=t.test_fraction,
    )


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (GPU available..., tips) out of the user's terminal."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # the system's hook (channels-last inputs) is meant to apply to the data module's batches
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")


def _silent(text: str) -> None:
    """Where a follower's messages go: the first process says them once."""


def fit(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    echo: Callable[[str], Any] = print,
    callbacks: Sequence[Callback] = (),
    split: Sequence[str] | np.ndarray | None = None,
) -> Path:
    """Train one run and write its run directory; returns the directory.

    Three steps: :func:`prepare` checks everything and builds the model, the data and the
    trainer (writing nothing); :func:`train` runs Lightning; :func:`write_outputs` writes the
    model, predictions, embeddings and ``run.json``. A new run that fails leaves nothing behind.

    Args:
        cfg: the resolved configuration (``cfg.data.path`` is the manifest).
        out: the run directory.
        resume: continue the interrupted run in ``out`` from its last checkpoint (and its
            stored split). Pass the run's configuration (``RUN_DIR/config.yaml``), changed only
            where you mean to, e.g. more epochs.
        echo: where progress messages (cache built or reused) go.
        callbacks: extra Lightning callbacks (loggers of your own, timers, ...).
        split: ``"train"``/``"val"``/``"test"`` per manifest row, to use instead of the split
            the configuration's seed gives (``compare`` passes its cross-fitting folds).
    """
    if is_follower():  # one of several processes: trains its share, the first one writes the run
        run = prepare(cfg, out, resume=resume, echo=_silent, callbacks=callbacks, split=split)
        train(run)
        return run.out
    run = prepare(cfg, out, resume=resume, echo=echo, callbacks=callbacks, split=split)
    # -- the run directory: nothing is written before everything above has passed --------------
    out = run.out
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_start(run)
        return write_outputs(run, train(run))
    except KeyboardInterrupt:
        raise  # the checkpoints stay: --resume goes on from the last one
    except BaseException:
        if created:  # a new run that failed leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise


@dataclass
class Prepared:
    """A checked run, ready to train: what :func:`prepare` builds and nothing has written yet."""

    cfg: RunConfig  # data.task resolved
    out: Path
    task: Task
    inputs: Any  # data.inputs.Inputs
    encoding: TableEncoding
    row_split: pd.Series
    train_rows: np.ndarray  # bool per manifest row
    y: np.ndarray  # targets in model units (NaN: unlabelled)
    rows: Any  # data.inputs.RowData
    model: UnlearningModel | SegmentationModel
    system: UnlearningSystem
    datamodule: SplitDataModule
    trainer: L.Trainer
    precision: str
    channels_last: bool
    memory: int
    resume: bool
    ckpt_path: Path | None
    checkpoint: dict[str, Any]
    warnings: list[Problem]


@dataclass(frozen=True)
class Trained:
    """What :func:`train` measured."""

    fit_seconds: float
    epochs_run: int
    samples_seen: int
    precise_bn_batches: int
    restored_epoch: int | None = None  # the epoch whose weights the run kept (None: the last)


def prepare(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    echo: Callable[[str], Any] = print,
    callbacks: Sequence[Callback] = (),
    split: Sequence[str] | np.ndarray | None = None,
) -> Prepared:
    """Check the configuration, the manifest and the run directory and build everything the run
    trains with; writes nothing (an image run's preprocessing cache aside, which is its own
    folder). Arguments as :func:`fit`."""
    out = Path(out)
    files = RunFiles(out)
    ckpt_path: Path | None = None
    checkpoint: dict[str, Any] = {}
    check_out(out, folder=True)
    if resume:
        ckpt_path = files.last_checkpoint
        if not ckpt_path.is_file():
            raise InputError(
                f"nothing to resume: no {CHECKPOINT_DIR}/{LAST_CHECKPOINT}",
                file=out,
                hint="start the run afresh (without resuming)",
            )
        checkpoint = read_checkpoint(ckpt_path)
    elif out.exists() and any(out.iterdir()) and not is_follower():  # the first process made it
        raise InputError(
            "the run directory already exists and is not empty",
            file=out,
            hint="choose a new run directory, delete it, or resume it to continue an interrupted "
            "run (fit with resume=True, or --resume)",
        )
    if cfg.data.path is None:
        raise InputError("no data given", hint="give the manifest CSV as data.path")
    if not cfg.confounds and cfg.strategy.name != "baseline":
        raise InputError(
            f"strategy '{cfg.strategy.name}' needs something to unlearn",
            hint="give a confound to unlearn (e.g. confounds.0.name=site), or use "
            "strategy.name=baseline",
        )

    inputs = load_inputs(cfg, cfg.data.path)
    frame, id_column, warnings_ = inputs.frame, inputs.id_column, inputs.warnings
    assert id_column is not None
    if cfg.data.task == "auto":
        echo(
            f"task: {inputs.task} (inferred: '{cfg.data.target}' {inputs.task_reason}; "
            "data.task sets it)"
        )
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"task": inputs.task})})
    task = task_of(inputs.task)
    cfg = resolve_auto(cfg, task)
    unlearning = cfg.strategy.name != "baseline"
    if inputs.task == "regression" and unlearning and unlearns_site_everywhere(cfg):
        entangled = entanglement_problem(
            frame, cfg.data.target, cfg.data.site_column, path=cfg.data.path
        )
        if entangled is not None:
            echo(f"warning: {entangled}")
            warnings_ = [*warnings_, entangled]
    t = cfg.train
    if resume and files.splits.is_file():  # keep the interrupted run's split
        row_split = stored_split(files.splits, frame, id_column)
    elif split is not None:
        given = np.asarray(split, dtype=object)
        if len(given) != len(frame) or not set(given.tolist()) <= {"train", "val", "test"}:
            raise ValueError(
                f"split must give train/val/test for each of the {len(frame)} manifest rows"
            )
        row_split = pd.Series(given, index=frame.index, name="split")
    else:
        row_split = config_split(cfg, frame, id_column)
    train_rows = (row_split == "train").to_numpy()
    val = (row_split == "val").to_numpy()
    encoding = TableEncoding.fit(
        frame,
        train_rows,
        inputs.feature_columns,
        cfg.data.target,
        cfg.confounds,
        task=task.name,
        classes=inputs.classes,
    )
    _check_encoding(cfg, encoding)
    erase_during = bool(cfg.erase) and cfg.erasure.when == "during"
    erased_kinds = erase_kinds(cfg.erase, frame, {c.name: c.kind for c in cfg.confounds})
    if cfg.erase:
        check_erase(
            cfg.erase,
            frame,
            train_rows,
            kinds=erased_kinds,
            target=cfg.data.target,
            task=task.name,
            embedding_dim=cfg.model.embedding_dim,
            path=cfg.data.path,
        )
    y = encoding.targets(frame)
    codes = encoding.codes(frame)
    what = task.label_word
    if not np.isfinite(y[train_rows]).any():
        raise InputError(
            f"no training row has {what}",
            file=cfg.data.path,
            column=cfg.data.target,
            hint=f"fill in {what} for some rows of the training split (rows without one serve "
            "the unlearning only)",
        )
    stopping = bool(np.isfinite(y[val]).any())
    if not stopping:
        note = Problem(
            f"no validation row has {what}: early stopping is off and all {t.epochs} epochs run",
            file=cfg.data.path,
            column=cfg.data.target,
            hint=f"give some validation rows {what} to let early stopping work",
            severity="warning",
        )
        echo(f"warning: {note}")
        warnings_ = [*warnings_, note]
    # images: decoded and preprocessed once into the memory-mapped cache (reused when present)
    rows = row_data(cfg, inputs, encoding, progress=t.progress_bar, echo=echo)

    L.seed_everything(t.seed, workers=True, verbose=False)
    model = build_model(cfg, encoding, input_shape=rows.input_shape)
    if erase_during:  # the layer exists before a checkpoint's weights are loaded
        training_eraser(model)
    s = cfg.strategy
    weights = encoding.class_weights(codes[train_rows])
    priors = encoding.condition_priors(
        codes[train_rows], encoding.conditions(frame)[train_rows], weights
    )
    memory, memory_bytes = task.memory(s.adversary_memory)
    strategy = build_strategy(
        cfg,
        task_kind=task.name,
        task_class_weight=task.class_weight(cfg, encoding, y[train_rows]),
        memory=memory,
        memory_points=task.memory_points(model),
        memory_bytes=memory_bytes,
        class_weights={k: torch.as_tensor(w, dtype=torch.float32) for k, w in weights.items()},
        priors={k: torch.as_tensor(p, dtype=torch.float32) for k, p in priors.items()},
    )
    precision = resolve_precision(t.precision, t.accelerator, cfg.data.input)
    channels_last = resolve_channels_last(
        cfg.model.channels_last, t.accelerator, cfg.data.input, precision
    )
    system = UnlearningSystem(
        model,
        strategy,
        lr=t.lr,
        weight_decay=t.decay,
        adversary_lr=s.adversary_lr,
        channels_last=channels_last,
    )
    sites = frame[cfg.data.site_column].astype(str).to_numpy()
    augmented = rows.subset(train_rows, augment=cfg.data.augment)
    dm = SplitDataModule(
        augmented,
        rows.subset(val),
        batch_size=t.batch_size,
        seed=t.seed,
        num_workers=t.num_workers,
        balance_groups=sites[train_rows] if t.sampling == "balanced" else None,
        val_batch_size=t.batch_size if cfg.data.input == "image" else None,
    )

    if checkpoint:
        try:
            system.load_state_dict(checkpoint["state_dict"])
        except (RuntimeError, KeyError, TypeError) as err:
            raise InputError(
                f"the checkpoint does not fit this run's model: {str(err).splitlines()[0][:200]}",
                file=ckpt_path,
                hint="resume with the run's own config.yaml (change only the epochs), or start "
                "a new run",
            ) from None

    refresh = None
    if erase_during:
        refresh = EraserRefresh(
            cfg,
            rows.subset(train_rows),
            frame.iloc[np.flatnonzero(train_rows)],
            y[train_rows],
            kinds=erased_kinds,
            task=task.name,
            batch_size=t.batch_size if cfg.data.input == "image" else max(t.batch_size, 256),
        )

    quiet_lightning()
    trainer = make_trainer(
        cfg,
        callbacks=[
            ModelCheckpoint(
                dirpath=files.checkpoints,
                filename=Path(LAST_CHECKPOINT).stem,  # Lightning adds the suffix
                monitor=None,
                save_top_k=1,
                every_n_epochs=1,
                enable_version_counter=False,
            ),
            *(
                [EarlyStopping(monitor=STOP_METRIC, patience=t.patience, mode="min", strict=False)]
                if stopping
                else []
            ),
            HistoryWriter(files.history, strategy),
            *([BestWeights(STOP_METRIC)] if cfg.train.restore == "best" else []),
            *([refresh] if refresh is not None else []),
            ExactResume(
                {
                    **({"memory": strategy.memory} if hasattr(strategy, "memory") else {}),
                    **({"augment": augmented} if cfg.data.augment != "none" else {}),
                }
            ),
            *callbacks,
        ],
        precision=precision,
        default_root_dir=out,
    )
    return Prepared(
        cfg=cfg,
        out=out,
        task=task,
        inputs=inputs,
        encoding=encoding,
        row_split=row_split,
        train_rows=train_rows,
        y=y,
        rows=rows,
        model=model,
        system=system,
        datamodule=dm,
        trainer=trainer,
        precision=precision,
        channels_last=channels_last,
        memory=memory,
        resume=resume,
        ckpt_path=ckpt_path,
        checkpoint=checkpoint,
        warnings=warnings_,
    )


def write_start(run: Prepared) -> None:
    """``config.yaml`` and ``splits.csv``: what the run was started with (kept on resume)."""
    cfg, files = run.cfg, RunFiles(run.out)
    config_text = cfg.to_yaml()
    config_file = files.config
    if not config_file.is_file() or config_file.read_text() != config_text:
        write_text(config_text, config_file)
    if not (run.resume and files.splits.is_file()):
        frame, id_column = run.inputs.frame, run.inputs.id_column
        write_csv(splits_frame(frame, run.row_split, id_column, cfg.data.site_column), files.splits)


def train(run: Prepared) -> Trained:
    """Train under Lightning (from the checkpoint when resuming), then recompute the batch-norm
    statistics when the run asks for it."""
    t = run.cfg.train
    first_epoch = int(run.checkpoint["epoch"]) + 1 if run.checkpoint else 0
    start = time.perf_counter()
    run.trainer.fit(
        run.system, datamodule=run.datamodule, ckpt_path=run.ckpt_path, weights_only=True
    )
    fit_seconds = time.perf_counter() - start
    if run.trainer.interrupted:  # Lightning caught Ctrl-C: the run is not finished
        raise KeyboardInterrupt
    if is_follower():  # the first process restores, recomputes and writes
        return Trained(fit_seconds, run.trainer.current_epoch, 0, 0)
    callbacks = getattr(run.trainer, "callbacks", [])  # Lightning sets it at run time
    best = next((c for c in callbacks if isinstance(c, BestWeights)), None)
    restored_epoch = best.restore(run.model) if best is not None else None
    precise_bn = t.precise_bn if t.precise_bn != "auto" else run.task.precise_bn_default
    bn_batches = 0
    if precise_bn:
        # the statistics of the training volumes as they are: validation, test and predicted
        # volumes are never augmented (same rows, same batches, without the random changes)
        dm = run.datamodule
        dm.train = run.rows.subset(run.train_rows)
        device = _device(run.cfg)
        bn_batches = recompute_batchnorm(
            run.model.encoder.to(device),
            (b["x"] for b in dm.train_dataloader(fresh=True)),
            device,
        )
    epochs_run = run.trainer.current_epoch
    return Trained(
        fit_seconds=fit_seconds,
        epochs_run=epochs_run,
        samples_seen=int(run.train_rows.sum()) * max(epochs_run - first_epoch, 0),
        precise_bn_batches=bn_batches,
        restored_epoch=restored_epoch,
    )


#: What ``auto`` means for an image regression or classification run: weights of the best
#: validation epoch, augmentation and weight decay. Chosen on the validation rows of cohorts
#: simulated with seeds 100 and 101 (docs/guide/images.md), which no benchmark reports.
IMAGE_DEFAULTS = {"restore": "best", "augment": "spatial", "weight_decay": 0.05}
#: ... and for tables and segmentation, whose benchmark figures were measured with these.
OTHER_DEFAULTS = {"restore": "last", "augment": "none", "weight_decay": 1e-4}


def resolve_auto(cfg: RunConfig, task: Task) -> RunConfig:
    """The configuration with ``train.restore``, ``data.augment`` and ``train.weight_decay``
    decided where they say ``auto`` (the run's ``config.yaml`` records the decision)."""
    chosen = IMAGE_DEFAULTS if cfg.data.input == "image" and task.image_defaults else OTHER_DEFAULTS
    t, d = cfg.train, cfg.data
    return cfg.model_copy(
        update={
            "train": t.model_copy(
                update={
                    "restore": chosen["restore"] if t.restore == "auto" else t.restore,
                    "weight_decay": (
                        chosen["weight_decay"] if t.weight_decay == "auto" else t.weight_decay
                    ),
                }
            ),
            "data": d.model_copy(
                update={"augment": chosen["augment"] if d.augment == "auto" else d.augment}
            ),
        }
    )


def _device(cfg: RunConfig) -> str:
    return "cuda" if uses_gpu(cfg.train.accelerator) else "cpu"


def make_trainer(
    cfg: RunConfig,
    *,
    callbacks: Sequence[Callback] = (),
    precision: str = "32-true",
    default_root_dir: str | Path | None = None,
) -> L.Trainer:
    """The Lightning trainer of a run; a bad accelerator, device count or precision is an
    :class:`InputError` (raised before the run directory is written)."""
    t = cfg.train
    processes = process_count(t.devices, t.accelerator)
    _check_processes(cfg, processes)
    try:
        return L.Trainer(
            max_epochs=t.epochs,
            accelerator=t.accelerator,
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=lightning_strategy(t.strategy, processes, t.num_nodes),
            sync_batchnorm=sync_batchnorm(cfg, processes),
            precision=cast(Any, precision),  # validated by Lightning itself
            # some CUDA kernels (3D max-pool backward) have no deterministic version: warn there
            deterministic=True if not uses_gpu(t.accelerator) else "warn",
            logger=False,
            callbacks=[*callbacks, *([EpochBar()] if t.progress_bar else [])],
            plugins=[AtomicCheckpointIO()],
            enable_model_summary=False,
            enable_progress_bar=t.progress_bar,
            num_sanity_val_steps=0,
            default_root_dir=default_root_dir,
        )
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as err:
        message = " ".join(str(err).split())
        raise InputError(
            f"Lightning refuses train.accelerator={t.accelerator!r}, train.devices={t.devices!r}, "
            f"precision {precision!r}: {message[:300]}",
            hint="e.g. train.accelerator=cpu (or gpu, auto), train.devices=1, "
            "train.precision=32-true (or bf16-mixed, 16-mixed, auto)",
        ) from None


def sync_batchnorm(cfg: RunConfig, processes: int) -> bool:
    """``train.sync_batchnorm``, decided: ``auto`` is on for an image run on several GPUs (a 3D
    CNN's batch per GPU is a few volumes, too few for batch statistics of their own), off
    otherwise (PyTorch's synchronised batch norm needs a GPU)."""
    t = cfg.train
    if t.sync_batchnorm != "auto":
        return bool(t.sync_batchnorm)
    several = processes > 1 or t.num_nodes > 1
    gpu = t.accelerator in ("gpu", "cuda") or uses_gpu(t.accelerator)
    return several and cfg.data.input == "image" and gpu


def _check_processes(cfg: RunConfig, processes: int) -> None:
    """More CPU processes than cores, or several machines without a launcher to join them, stop
    the run before anything starts (Lightning itself would start them and wait for ever)."""
    t = cfg.train
    cores = os.cpu_count() or 1
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not uses_gpu("auto"))
    if on_cpu and processes > cores:
        raise InputError(
            f"train.devices={t.devices!r} asks for {processes} training processes but this "
            f"machine has {cores} CPU cores",
            hint=f"give train.devices={cores} or fewer (each CPU process is one device)",
        )
    if t.num_nodes > 1 and not in_cluster():
        raise InputError(
            f"train.num_nodes={t.num_nodes} needs a launcher that starts the run on every "
            "machine and tells each where the first one is",
            hint="run it under torchrun (--nnodes, --rdzv-endpoint) or SLURM's srun, or set "
            "MASTER_ADDR, MASTER_PORT and NODE_RANK on each machine; on one machine give "
            "train.num_nodes=1",
        )


def write_outputs(run: Prepared, trained: Trained) -> Path:
    """The finished run's files: ``model.pt``, ``model.ckpt``, ``predictions.csv``,
    ``embeddings.csv`` and ``run.json`` (a diverged run writes none of them)."""
    cfg, model, encoding, rows = run.cfg, run.model, run.encoding, run.rows
    files = RunFiles(run.out)
    frame, id_column = run.inputs.frame, run.inputs.id_column
    model.cpu()
    set_memory_format(model, channels_last=False)
    ids = pd.DataFrame(
        {
            id_column: frame[id_column].to_numpy(),
            cfg.data.site_column: frame[cfg.data.site_column].to_numpy(),
            "split": run.row_split.to_numpy(),
        }
    )
    preds = ids.copy()
    # the audit needs them; the run dir must not depend on the manifest
    for name in [*(c.name for c in cfg.confounds), *(e.name for e in cfg.erase)]:
        if name not in preds:
            preds[name] = frame[name].to_numpy()
    outputs = run.task.outputs(
        cfg,
        model,
        encoding,
        rows,
        frame,
        run.y,
        run.row_split,
        ids=ids,
        preds=preds,
        device=_device(cfg),
        callbacks=getattr(run.trainer, "callbacks", []),  # Lightning sets it at run time
    )
    check_finite(outputs.embeddings, outputs.predictions, cfg, trained.epochs_run)
    save_model(files.model, model, cfg, encoding, input_shape=rows.input_shape)
    with atomic_path(files.checkpoint) as tmp:
        shutil.copyfile(files.last_checkpoint, tmp)
    write_csv(outputs.predictions, files.predictions)
    write_csv(outputs.embeddings, files.embeddings)
    seconds = trained.fit_seconds
    write_json(
        {
            "status": "finished",
            "id_column": id_column,
            "strategy": cfg.strategy.name,
            "fit_seconds": seconds,
            "epochs_run": trained.epochs_run,
            "samples_per_second": trained.samples_seen / seconds if seconds > 0 else None,
            "train_rows": int(run.train_rows.sum()),
            "train_rows_labelled": int(np.isfinite(run.y[run.train_rows]).sum()),
            "task": run.task.name,
            "classes": run.task.classes(encoding),
            "hidden_targets": run.inputs.hidden_targets,
            "input": cfg.data.input,
            "input_shape": list(rows.input_shape),
            "precision": run.precision,
            "channels_last": run.channels_last,
            "adversary_memory": run.memory,
            "precise_bn_batches": trained.precise_bn_batches,
            "restored_epoch": trained.restored_epoch,
            "erasure": outputs.erasure,
            "cache": rows.cache_info,
            "warnings": [str(w) for w in run.warnings],
            "versions": versions(),
        },
        files.info,
    )
    return run.out
