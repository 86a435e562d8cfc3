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
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from neurounlearn.atomic import atomic_path, write_csv, write_json, write_text
from neurounlearn.config import RunConfig
from neurounlearn.data.manifest import TableSpec, load_table, resolve_id_column
from neurounlearn.data.splits import make_splits, splits_frame
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.errors import InputError
from neurounlearn.registry import strategy_class
from neurounlearn.training.datamodule import TableDataModule, TensorDictDataset
from neurounlearn.training.run import (
    MODEL_FILE,
    RUN_INFO,
    build_model,
    embedding_frame,
    infer,
    save_model,
    versions,
)
from neurounlearn.training.system import (
    STOP_METRIC,
    HistoryWriter,
    UnlearningSystem,
)

CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"


def table_spec(cfg: RunConfig, *, training: bool = True) -> TableSpec:
    if not cfg.data.features:
        raise InputError(
            "no feature columns given",
            hint="pass --features REGEX (e.g. --features '_thickness$|Vol$'), or data.features "
            "in the config",
        )
    return TableSpec(
        target=cfg.data.target if training else None,
        confounds=[c.name for c in cfg.confounds] if training else [],
        subsets={c.name: c.subset for c in cfg.confounds if c.subset} if training else {},
        features=cfg.data.features,
        id_column=cfg.data.id_column,
        site_column=cfg.data.site_column,
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


def fit(cfg: RunConfig, out: str | Path, *, resume: bool = False) -> Path:
    """Train one run and write its run directory; returns the directory.

    Args:
        cfg: the resolved configuration (``cfg.data.path`` is the manifest).
        out: the run directory.
        resume: continue the interrupted run in ``out`` from its last checkpoint (and its
            stored split). Pass the run's configuration (``RUN_DIR/config.yaml``), changed only
            where you mean to, e.g. more epochs.
    """
    out = Path(out)
    ckpt_path: Path | None = None
    if resume:
        ckpt_path = out / CHECKPOINT_DIR / LAST_CKPT
        if not ckpt_path.is_file():
            raise InputError(
                f"nothing to resume: no {CHECKPOINT_DIR}/{LAST_CKPT}",
                file=out,
                hint="start the run without --resume",
            )
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
    frame, feature_columns, _warnings = load_table(cfg.data.path, table_spec(cfg))
    id_column = resolve_id_column(frame, cfg.data.id_column, cfg.data.path)
    t = cfg.train
    if resume and (out / "splits.csv").is_file():  # keep the interrupted run's split
        stored = pd.read_csv(out / "splits.csv")
        split = pd.Series(stored["split"].to_numpy(), index=frame.index)
    else:
        split = config_split(cfg, frame, id_column)
    train = (split == "train").to_numpy()
    val = (split == "val").to_numpy()
    encoding = TableEncoding.fit(frame, train, feature_columns, cfg.data.target, cfg.confounds)
    for c in cfg.confounds:
        if len(encoding.confound_levels[c.name]) < 2:
            where = f" within subset '{c.subset}'" if c.subset else ""
            raise InputError(
                f"confound '{c.name}' has fewer than 2 levels in the training split{where}: "
                "there is nothing to unlearn",
                column=c.name,
                file=cfg.data.path,
                hint="check the column and the subset query",
            )

    x = encoding.features(frame)
    y = encoding.targets(frame)
    codes = encoding.codes(frame)
    if not np.isfinite(y[train]).any():
        raise InputError("no training row has a target", file=cfg.data.path, column=cfg.data.target)

    L.seed_everything(t.seed, workers=True, verbose=False)
    model = build_model(cfg, encoding)
    s = cfg.strategy
    strategy = strategy_class(s.name)(
        confounds=cfg.confounds,
        task_loss=t.task_loss,
        adversary_steps=s.adversary_steps,
        class_weights={
            k: torch.as_tensor(w, dtype=torch.float32)
            for k, w in encoding.class_weights(codes[train]).items()
        },
        **({"mode": s.mode, "pretrain_epochs": s.pretrain_epochs} if s.name == "iterative" else {}),
        **({"lambda_max": s.lambda_max} if s.name == "grl" else {}),
    )
    system = UnlearningSystem(
        model, strategy, lr=t.lr, weight_decay=t.weight_decay, adversary_lr=s.adversary_lr
    )
    sites = frame[cfg.data.site_column].astype(str).to_numpy()
    dm = TableDataModule(
        TensorDictDataset(x[train], y[train], codes[train]),
        TensorDictDataset(x[val], y[val], codes[val]),
        batch_size=t.batch_size,
        seed=t.seed,
        num_workers=t.num_workers,
        balance_groups=sites[train] if t.sampling == "balanced" else None,
    )

    # -- the run directory ---------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    write_text(cfg.to_yaml(), out / "config.yaml")
    write_csv(splits_frame(frame, split, id_column, cfg.data.site_column), out / "splits.csv")

    quiet_lightning()
    callbacks = [
        ModelCheckpoint(
            dirpath=out / CHECKPOINT_DIR,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            enable_version_counter=False,
        ),
        EarlyStopping(monitor=STOP_METRIC, patience=t.patience, mode="min", strict=False),
        HistoryWriter(out / "history.csv", strategy),
    ]
    trainer = L.Trainer(
        max_epochs=t.epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        precision=cast(Any, t.precision),  # validated by Lightning itself
        deterministic=True,
        logger=False,
        callbacks=callbacks,
        enable_model_summary=False,
        enable_progress_bar=t.progress_bar,
        num_sanity_val_steps=0,
        default_root_dir=out,
    )
    first_epoch = 0
    if ckpt_path is not None:
        first_epoch = (
            int(torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"]) + 1
        )
    start = time.perf_counter()
    trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - start
    epochs_run = trainer.current_epoch
    seen = int(train.sum()) * max(epochs_run - first_epoch, 0)

    # -- outputs -------------------------------------------------------------------------------
    model.cpu()
    save_model(out / MODEL_FILE, model, cfg, encoding)
    with atomic_path(out / "model.ckpt") as tmp:
        shutil.copyfile(out / CHECKPOINT_DIR / LAST_CKPT, tmp)
    feats, pred = infer(model, x)
    ids = pd.DataFrame(
        {
            id_column: frame[id_column].to_numpy(),
            cfg.data.site_column: frame[cfg.data.site_column].to_numpy(),
            "split": split.to_numpy(),
        }
    )
    preds = ids.copy()
    for c in cfg.confounds:  # the audit needs them; the run dir must not depend on the manifest
        if c.name not in preds:
            preds[c.name] = frame[c.name].to_numpy()
    preds[cfg.data.target] = pd.to_numeric(frame[cfg.data.target], errors="coerce").to_numpy()
    preds["prediction"] = encoding.unscale_target(pred.astype(np.float64))
    write_csv(preds, out / "predictions.csv")
    write_csv(embedding_frame(ids, feats), out / "embeddings.csv")
    write_json(
        {
            "status": "finished",
            "id_column": id_column,
            "strategy": s.name,
            "fit_seconds": fit_seconds,
            "epochs_run": epochs_run,
            "samples_per_second": seen / fit_seconds if fit_seconds > 0 else None,
            "train_rows": int(train.sum()),
            "warnings": [str(w) for w in _warnings],
            "versions": versions(),
        },
        out / RUN_INFO,
    )
    return out
