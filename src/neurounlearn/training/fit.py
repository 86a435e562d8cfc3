"""``fit``: validate the data, split it, train one strategy under Lightning, fill the run dir.

Everything that can be wrong with the input is checked before the run directory is created, so
a bad manifest leaves nothing behind. Each file in the run directory is written under a
temporary name and renamed, so none is ever half-written.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from neurounlearn.atomic import atomic_path, check_out, write_csv, write_json, write_text
from neurounlearn.config import RunConfig
from neurounlearn.data.inputs import load_inputs, row_data, table_spec
from neurounlearn.data.splits import make_splits, splits_frame
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.erasure import check_erase, erase_kinds
from neurounlearn.errors import InputError, Problem
from neurounlearn.models.segmentation import SegmentationModel
from neurounlearn.registry import strategy_class
from neurounlearn.training.batchnorm import recompute_batchnorm
from neurounlearn.training.checkpoints import AtomicCheckpointIO, ExactResume, read_weights
from neurounlearn.training.datamodule import TableDataModule
from neurounlearn.training.erasing import EraserRefresh, erase_run, training_eraser
from neurounlearn.training.run import (
    MODEL_FILE,
    RUN_INFO,
    build_model,
    embedding_frame,
    infer,
    point_frame,
    prediction_columns,
    save_model,
    segmentation_frame,
    segmentation_outputs,
    versions,
)
from neurounlearn.training.system import (
    STOP_METRIC,
    HistoryWriter,
    UnlearningSystem,
    set_memory_format,
)

CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"

__all__ = ["config_split", "fit", "table_spec"]


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


#: ``strategy.adversary_memory: auto`` for segmentation: rows, and the most memory they may take.
SEGMENTATION_MEMORY = 8
SEGMENTATION_MEMORY_BYTES = 512 * 2**20


def resolve_memory(memory: str | int, task: str) -> tuple[int, int | None]:
    """Rows of the adversary memory and its byte cap (``None``: as many bytes as it takes)."""
    if memory != "auto":
        return int(memory), None
    if task == "segmentation":
        return SEGMENTATION_MEMORY, SEGMENTATION_MEMORY_BYTES
    return 0, None


def _check_encoding(cfg: RunConfig, encoding: TableEncoding) -> None:
    """What only the training split can tell: classes and bins to unlearn or to predict."""
    if encoding.task == "classification" and len(encoding.target_classes) < 2:
        raise InputError(
            f"the training split holds fewer than 2 classes of '{cfg.data.target}'",
            file=cfg.data.path,
            column=cfg.data.target,
            hint="use data with at least two classes (with targets) in the training rows",
        )
    for c in cfg.confounds:
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
                hint="check the target column, or drop ':conditional'",
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
            hint="check the target for extreme values, lower the learning rate (--set "
            "train.lr=1e-4) or use train.precision=32-true",
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
    out = Path(out)
    ckpt_path: Path | None = None
    checkpoint: dict[str, Any] = {}
    check_out(out, folder=True)
    if resume:
        ckpt_path = out / CHECKPOINT_DIR / LAST_CKPT
        if not ckpt_path.is_file():
            raise InputError(
                f"nothing to resume: no {CHECKPOINT_DIR}/{LAST_CKPT}",
                file=out,
                hint="start the run without --resume",
            )
        checkpoint = read_checkpoint(ckpt_path)
    elif out.exists() and any(out.iterdir()):
        raise InputError(
            "the run directory already exists and is not empty",
            file=out,
            hint="choose a new --out, delete it, or pass --resume to continue an interrupted run",
        )
    if cfg.data.path is None:
        raise InputError("no data given", hint="pass --data MANIFEST.csv")
    if not cfg.confounds and cfg.strategy.name != "baseline":
        raise InputError(
            f"strategy '{cfg.strategy.name}' needs something to unlearn",
            hint="pass --unlearn COLUMN (e.g. --unlearn site), or --strategy baseline",
        )

    # -- everything checked before anything is written -----------------------------------------
    inputs = load_inputs(cfg, cfg.data.path)
    frame, id_column, _warnings = inputs.frame, inputs.id_column, inputs.warnings
    assert id_column is not None
    task = inputs.task
    if cfg.data.task == "auto":
        echo(f"task: {task} (inferred: '{cfg.data.target}' {inputs.task_reason}; --task sets it)")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"task": task})})
    t = cfg.train
    if resume and (out / "splits.csv").is_file():  # keep the interrupted run's split
        row_split = stored_split(out / "splits.csv", frame, id_column)
    elif split is not None:
        given = np.asarray(split, dtype=object)
        if len(given) != len(frame) or not set(given.tolist()) <= {"train", "val", "test"}:
            raise ValueError(
                f"split must give train/val/test for each of the {len(frame)} manifest rows"
            )
        row_split = pd.Series(given, index=frame.index, name="split")
    else:
        row_split = config_split(cfg, frame, id_column)
    train = (row_split == "train").to_numpy()
    val = (row_split == "val").to_numpy()
    encoding = TableEncoding.fit(
        frame,
        train,
        inputs.feature_columns,
        cfg.data.target,
        cfg.confounds,
        task=task,
        classes=inputs.classes,
    )
    _check_encoding(cfg, encoding)
    erase_during = bool(cfg.erase) and cfg.erasure.when == "during"
    erased_kinds = erase_kinds(cfg.erase, frame, {c.name: c.kind for c in cfg.confounds})
    if cfg.erase:
        check_erase(
            cfg.erase,
            frame,
            train,
            kinds=erased_kinds,
            target=cfg.data.target,
            task=task,
            embedding_dim=cfg.model.embedding_dim,
            path=cfg.data.path,
        )
    y = encoding.targets(frame)
    codes = encoding.codes(frame)
    what = "a label map" if task == "segmentation" else "a target"
    if not np.isfinite(y[train]).any():
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
        _warnings = [*_warnings, note]
    # images: decoded and preprocessed once into the memory-mapped cache (reused when present)
    rows = row_data(cfg, inputs, encoding, progress=t.progress_bar, echo=echo)

    L.seed_everything(t.seed, workers=True, verbose=False)
    model = build_model(cfg, encoding, input_shape=rows.input_shape)
    if erase_during:  # the layer exists before a checkpoint's weights are loaded
        training_eraser(model)
    s = cfg.strategy
    weights = encoding.class_weights(codes[train])
    priors = encoding.condition_priors(codes[train], encoding.conditions(frame)[train], weights)
    memory, memory_bytes = resolve_memory(s.adversary_memory, task)
    task_weight = None
    if task == "classification" and t.class_balance == "weighted":
        task_weight = torch.as_tensor(encoding.task_class_weights(y[train]), dtype=torch.float32)
    strategy = strategy_class(s.name)(
        confounds=cfg.confounds,
        task_loss=t.task_loss,
        task_kind=task,
        task_class_weight=task_weight,
        adversary_steps=s.adversary_steps,
        memory=memory,
        memory_points=model.attach if isinstance(model, SegmentationModel) else None,
        memory_bytes=memory_bytes,
        class_weights={k: torch.as_tensor(w, dtype=torch.float32) for k, w in weights.items()},
        priors={k: torch.as_tensor(p, dtype=torch.float32) for k, p in priors.items()},
        **({"mode": s.mode, "pretrain_epochs": s.pretrain_epochs} if s.name == "iterative" else {}),
        **({"lambda_max": s.lambda_max} if s.name == "grl" else {}),
    )
    precision = resolve_precision(t.precision, t.accelerator, cfg.data.input)
    channels_last = resolve_channels_last(
        cfg.model.channels_last, t.accelerator, cfg.data.input, precision
    )
    system = UnlearningSystem(
        model,
        strategy,
        lr=t.lr,
        weight_decay=t.weight_decay,
        adversary_lr=s.adversary_lr,
        channels_last=channels_last,
    )
    sites = frame[cfg.data.site_column].astype(str).to_numpy()
    train_rows = rows.subset(train, augment=cfg.data.augment)
    dm = TableDataModule(
        train_rows,
        rows.subset(val),
        batch_size=t.batch_size,
        seed=t.seed,
        num_workers=t.num_workers,
        balance_groups=sites[train] if t.sampling == "balanced" else None,
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
            rows.subset(train),
            frame.iloc[np.flatnonzero(train)],
            y[train],
            kinds=erased_kinds,
            task=task,
            batch_size=t.batch_size if cfg.data.input == "image" else max(t.batch_size, 256),
        )

    quiet_lightning()
    history = HistoryWriter(out / "history.csv", strategy)
    callbacks = [
        ModelCheckpoint(
            dirpath=out / CHECKPOINT_DIR,
            filename="last",
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
        history,
        *([refresh] if refresh is not None else []),
        ExactResume(
            {
                **({"memory": strategy.memory} if hasattr(strategy, "memory") else {}),
                **({"augment": train_rows} if cfg.data.augment != "none" else {}),
            }
        ),
        *callbacks,
    ]
    trainer = make_trainer(
        cfg,
        callbacks=callbacks,
        precision=precision,
        default_root_dir=out,
    )

    # -- the run directory: nothing is written before everything above has passed --------------
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        config_text = cfg.to_yaml()
        config_file = out / "config.yaml"
        if not config_file.is_file() or config_file.read_text() != config_text:
            write_text(config_text, config_file)
        if not (resume and (out / "splits.csv").is_file()):
            write_csv(
                splits_frame(frame, row_split, id_column, cfg.data.site_column),
                out / "splits.csv",
            )
        return _train_and_write(
            cfg,
            out,
            trainer,
            system,
            dm,
            rows,
            model,
            encoding,
            inputs,
            row_split,
            train=train,
            y=y,
            task=task,
            precision=precision,
            channels_last=channels_last,
            memory=memory,
            ckpt_path=ckpt_path,
            checkpoint=checkpoint,
            warnings_=_warnings,
        )
    except KeyboardInterrupt:
        raise  # the checkpoints stay: --resume goes on from the last one
    except BaseException:
        if created:  # a new run that failed leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise


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
    try:
        return L.Trainer(
            max_epochs=t.epochs,
            accelerator=t.accelerator,
            devices=t.devices,
            precision=cast(Any, precision),  # validated by Lightning itself
            # some CUDA kernels (3D max-pool backward) have no deterministic version: warn there
            deterministic=True if not uses_gpu(t.accelerator) else "warn",
            logger=False,
            callbacks=list(callbacks),
            plugins=[AtomicCheckpointIO()],
            enable_model_summary=False,
            enable_progress_bar=t.progress_bar,
            num_sanity_val_steps=0,
            default_root_dir=default_root_dir,
        )
    except (ValueError, TypeError, RuntimeError) as err:
        message = " ".join(str(err).split())
        raise InputError(
            f"Lightning refuses train.accelerator={t.accelerator!r}, train.devices={t.devices!r}, "
            f"precision {precision!r}: {message[:300]}",
            hint="e.g. --set train.accelerator=cpu (or gpu, auto), train.devices=1, "
            "train.precision=32-true (or bf16-mixed, 16-mixed, auto)",
        ) from None


def _train_and_write(
    cfg: RunConfig,
    out: Path,
    trainer: L.Trainer,
    system: UnlearningSystem,
    dm: TableDataModule,
    rows: Any,
    model: Any,
    encoding: TableEncoding,
    inputs: Any,
    row_split: pd.Series,
    *,
    train: np.ndarray,
    y: np.ndarray,
    task: str,
    precision: str,
    channels_last: bool,
    memory: int,
    ckpt_path: Path | None,
    checkpoint: dict[str, Any],
    warnings_: list[Problem],
) -> Path:
    t, s, frame, id_column = cfg.train, cfg.strategy, inputs.frame, inputs.id_column
    erasure: dict[str, Any] | None = None
    first_epoch = int(checkpoint["epoch"]) + 1 if checkpoint else 0
    start = time.perf_counter()
    trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - start
    if trainer.interrupted:  # Lightning caught Ctrl-C: the run is not finished
        raise KeyboardInterrupt
    device = "cuda" if uses_gpu(t.accelerator) else "cpu"
    precise_bn = t.precise_bn if t.precise_bn != "auto" else task == "segmentation"
    bn_batches = 0
    if precise_bn:
        # the statistics of the training volumes as they are: validation, test and predicted
        # volumes are never augmented (same rows, same batches, without the random changes)
        dm.train = rows.subset(train)
        bn_batches = recompute_batchnorm(
            model.encoder.to(device),
            (b["x"] for b in dm.train_dataloader(fresh=True)),
            device,
        )
    epochs_run = trainer.current_epoch
    seen = int(train.sum()) * max(epochs_run - first_epoch, 0)

    # -- outputs -------------------------------------------------------------------------------
    model.cpu()
    set_memory_format(model, channels_last=False)
    ids = pd.DataFrame(
        {
            id_column: frame[id_column].to_numpy(),
            cfg.data.site_column: frame[cfg.data.site_column].to_numpy(),
            "split": row_split.to_numpy(),
        }
    )
    preds = ids.copy()
    # the audit needs them; the run dir must not depend on the manifest
    for name in [*(c.name for c in cfg.confounds), *(e.name for e in cfg.erase)]:
        if name not in preds:
            preds[name] = frame[name].to_numpy()
    if isinstance(model, SegmentationModel):
        labelled = np.isfinite(y)
        pooled, dice = segmentation_outputs(
            model,
            rows.all(),
            labelled,
            len(encoding.target_classes),
            batch_size=t.batch_size,
            device=device,
        )
        preds = segmentation_frame(preds, labelled, dice, encoding.target_classes)
        embeddings = point_frame(ids, pooled)
    else:
        if cfg.erase:  # the final eraser is fit on the encoder's own features
            model.eraser = None
        feats, pred = infer(model, rows.all(), batch_size=t.batch_size, device=device)
        if cfg.erase:
            feats, pred, erasure = erase_run(cfg, model, encoding, feats, frame, y, row_split)
            callbacks = getattr(trainer, "callbacks", [])  # Lightning sets it at run time
            refresh = next((c for c in callbacks if isinstance(c, EraserRefresh)), None)
            if refresh is not None:  # erased during training too (this process's epochs)
                erasure["during_training"] = {
                    "refits": refresh.refits,
                    "seconds": refresh.seconds,
                }
        preds = prediction_columns(preds, encoding, frame, pred)
        embeddings = embedding_frame(ids, feats)
    check_finite(embeddings, preds, cfg, epochs_run)
    save_model(out / MODEL_FILE, model, cfg, encoding, input_shape=rows.input_shape)
    with atomic_path(out / "model.ckpt") as tmp:
        shutil.copyfile(out / CHECKPOINT_DIR / LAST_CKPT, tmp)
    write_csv(preds, out / "predictions.csv")
    write_csv(embeddings, out / "embeddings.csv")
    write_json(
        {
            "status": "finished",
            "id_column": id_column,
            "strategy": s.name,
            "fit_seconds": fit_seconds,
            "epochs_run": epochs_run,
            "samples_per_second": seen / fit_seconds if fit_seconds > 0 else None,
            "train_rows": int(train.sum()),
            "train_rows_labelled": int(np.isfinite(y[train]).sum()),
            "task": task,
            "classes": encoding.target_classes if task == "segmentation" else None,
            "hidden_targets": inputs.hidden_targets,
            "input": cfg.data.input,
            "input_shape": list(rows.input_shape),
            "precision": precision,
            "channels_last": channels_last,
            "adversary_memory": memory,
            "precise_bn_batches": bn_batches,
            "erasure": erasure,
            "cache": rows.cache_info,
            "warnings": [str(w) for w in warnings_],
            "versions": versions(),
        },
        out / RUN_INFO,
    )
    return out
