"""``evaluate`` for a segmentation run: Dice per class per site, and the leakage audit at every
attach point (probes on the pooled feature maps of held-out volumes at every point: the encoder
levels, the bottleneck and the final decoder features)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.atomic import write_json
from neurounlearn.choices import ATTACH_POINTS
from neurounlearn.errors import InputError
from neurounlearn.evaluation.audit import audit_features
from neurounlearn.evaluation.metrics import segmentation_metrics
from neurounlearn.rundir import EMBEDDINGS, METRICS, PREDICTIONS, run_facts
from neurounlearn.training.predict import LoadedRun
from neurounlearn.training.run import dice_columns, point_columns


def segmentation_task_block(
    preds: pd.DataFrame, rows: np.ndarray, classes: list[str], site: str
) -> dict[str, Any]:
    """Dice per foreground class, overall and per site, over the labelled ``rows``."""
    labelled = rows & preds["labelled"].to_numpy(dtype=bool)
    dice = preds.loc[labelled, dice_columns(classes)].to_numpy(dtype=float)
    sites = preds.loc[labelled, site].astype(str).to_numpy() if site in preds else None
    block = segmentation_metrics(dice, classes, sites)
    return {
        "kind": "segmentation",
        "classes": classes,
        "background_excluded": True,
        "n_unlabelled": int((rows & ~labelled).sum()),
        **block,
    }


def _labelled_training(preds: pd.DataFrame, site: str) -> dict[str, int]:
    """Labelled volumes per site in the training split (what the task loss saw)."""
    train = (preds["split"] == "train") & preds["labelled"].astype(bool)
    return {str(k): int(v) for k, v in preds.loc[train, site].astype(str).value_counts().items()}


def external_predictions(
    run: LoadedRun, data: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Dice and pooled features for an external manifest with label maps (``evaluate --data``).

    Returns ``(predictions, embeddings, manifest)`` in the shape ``fit`` writes them.
    """
    from neurounlearn.data.inputs import load_new_images, row_data
    from neurounlearn.training.predict import id_frame
    from neurounlearn.training.run import point_frame, segmentation_frame, segmentation_outputs

    cfg, enc = run.config, run.encoding
    path = Path(data)
    inputs = load_new_images(cfg, path, classes=enc.target_classes)
    frame = inputs.frame
    rows = row_data(cfg, inputs, enc, progress=False, confounds=False)
    labelled = np.isfinite(enc.targets(frame))
    if not labelled.any():
        raise InputError(
            f"no row has a label map in column '{cfg.data.target}': there is nothing to score",
            file=path,
            column=cfg.data.target,
            hint="external test data for evaluation needs label maps; predict volumes without "
            "them instead",
        )
    pooled, dice = segmentation_outputs(
        run.model,  # type: ignore[arg-type]
        rows.all(),
        labelled,
        len(enc.target_classes),
        batch_size=cfg.train.batch_size,
    )
    ids = id_frame(run, frame)
    preds = segmentation_frame(ids, labelled, dice, enc.target_classes)
    preds["split"] = "test"
    return preds, point_frame(ids, pooled), frame


def evaluate_segmentation(run: LoadedRun, data: str | Path | None = None) -> dict[str, Any]:
    """Compute and write ``RUN_DIR/metrics.json`` for a segmentation run."""
    cfg, run_dir, enc = run.config, run.run_dir, run.encoding
    site = cfg.data.site_column
    id_column = run.info.get("id_column") or "subject"
    preds = pd.read_csv(run_dir / PREDICTIONS, dtype={id_column: str})
    emb = pd.read_csv(run_dir / EMBEDDINGS, dtype={id_column: str})
    trained_with = _labelled_training(preds, site)
    meta = preds
    if data is not None:
        preds, emb, meta = external_predictions(run, data)
        missing = [c for c in [site, *[c.name for c in cfg.confounds]] if c not in meta]
        if missing:
            raise InputError(
                f"evaluation data lacks column(s) {missing}",
                file=data,
                hint="evaluate needs the site and the confound columns",
            )
    test = (preds["split"] == "test").to_numpy()
    task = segmentation_task_block(preds, test, enc.target_classes, site)
    audit = cfg.audit.model_copy(update={"band": None})  # no per-subject target to band on
    confounds = [c.name for c in cfg.confounds] or [site]
    test_meta = meta.loc[test].reset_index(drop=True)
    leakage: dict[str, Any] = {}
    attach = cfg.model.attach
    for point in ATTACH_POINTS:
        columns = point_columns(emb, point)
        if not columns:
            continue
        feats = emb.loc[test, columns].to_numpy(dtype=float)
        block = audit_features(
            feats,
            test_meta,
            confounds,
            target=None,
            audit=audit,
            seed=cfg.train.seed,
            kinds={c.name: c.kind for c in cfg.confounds},
        )
        for name, result in block.items():
            result["attach_point"] = point
            result["head_attached"] = point in attach
            leakage[f"{name}@{point}"] = result
    metrics = {
        "run": str(run_dir),
        "strategy": cfg.strategy.name,
        "mode": cfg.strategy.mode if cfg.strategy.name == "iterative" else None,
        "evaluated_on": str(data) if data is not None else "test split",
        "n_test": int(test.sum()),
        "task": task,
        "attach": attach,
        "labelled_training_volumes": trained_with,
        "leakage": leakage,
        "leakage_note": "probes on each attach point's pooled feature map (per-channel mean and "
        "standard deviation over the volume) of the held-out volumes; keys are confound@point",
        **run_facts(run.info),
    }
    write_json(metrics, run_dir / METRICS)
    return metrics
