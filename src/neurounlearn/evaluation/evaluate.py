"""``evaluate``: task metrics and the leakage audit of a finished run, into ``metrics.json``.

The audit trains fresh probes on the frozen embeddings of the *test* split (subjects the model
never trained on); the adversary's own accuracy during training proves little.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.atomic import write_json
from neurounlearn.data.manifest import read_table
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.erasure import erase_kinds
from neurounlearn.errors import InputError
from neurounlearn.evaluation.audit import audit_features, ridge_probe_mae
from neurounlearn.evaluation.scoring import scoring_of
from neurounlearn.evaluation.segmentation import evaluate_segmentation
from neurounlearn.results import LeakageResult
from neurounlearn.rundir import (
    EMBEDDINGS,
    METRICS,
    PREDICTIONS,
    REWRITE_HINT,
    read_output,
    run_facts,
)
from neurounlearn.training.predict import LoadedRun, load_run, predict_file
from neurounlearn.training.run import embedding_columns


def _task_block(
    encoding: TableEncoding,
    preds: pd.DataFrame,
    rows: np.ndarray,
    site: str,
    *,
    val: np.ndarray | None = None,
    truth: pd.Series | None = None,
) -> dict[str, Any]:
    """Task metrics over ``rows`` of ``preds`` (``truth``: true targets to use instead of the
    predictions file's own column)."""
    target = encoding.target
    assert target is not None
    true = preds[target] if truth is None else truth
    sites = preds.loc[rows, site].astype(str).to_numpy() if site in preds else None
    return scoring_of(encoding.task).run_metrics(
        true, preds, rows, sites, encoding.target_classes, target=target, val=val
    )


def _target_as_number(encoding: TableEncoding, values: pd.Series) -> np.ndarray:
    """The target as numbers for the audit's conditional block (class index for classes)."""
    return scoring_of(encoding.task).numbers(values.to_numpy(), encoding.target_classes)


def _read_labels(
    labels: str | Path, id_column: str, target: str, *, numeric: bool = False
) -> pd.Series:
    """True targets by subject id from a labels file (for sites unlabelled in training)."""
    frame = read_table(labels, text_columns=(id_column,))
    missing = [c for c in (id_column, target) if c not in frame]
    if missing:
        raise InputError(
            f"the labels file lacks column(s) {missing}",
            file=labels,
            column=missing[0],
            hint=f"give a CSV with the subject id column '{id_column}' and the target '{target}'",
        )
    if numeric:
        given = frame[target].notna().to_numpy()
        values = pd.to_numeric(frame[target], errors="coerce")
        bad = np.flatnonzero(given & values.isna().to_numpy())
        if bad.size:
            raise InputError(
                f"target '{target}' is not a number: {frame[target].iloc[bad[0]]!r}",
                file=labels,
                row=int(bad[0]) + 1,
                column=target,
                hint="write a number ('.' as the decimal point), or leave the cell empty",
            )
        frame = frame.assign(**{target: values})
    frame = frame.dropna(subset=[target])
    conflicting = frame.groupby(id_column)[target].nunique() > 1
    if conflicting.any():
        first = conflicting.index[conflicting.to_numpy()][0]
        row = int(np.flatnonzero((frame[id_column] == first).to_numpy())[0])
        raise InputError(
            f"subject {first!r} has two different targets",
            file=labels,
            row=int(frame.index[row]) + 1,
            column=target,
            hint="give one target per subject",
        )
    return frame.drop_duplicates(subset=[id_column]).set_index(id_column)[target]


def _unlabelled_block(
    run: LoadedRun, preds: pd.DataFrame, labels: str | Path | None
) -> dict[str, Any] | None:
    """Task metrics on the sites whose targets were hidden from training, from ``labels``."""
    cfg = run.config
    sites = list(cfg.data.unlabelled_sites)
    if not sites and labels is not None:
        raise InputError(
            "the labels file gives targets for the sites that were unlabelled in training, "
            "but this run has none (data.unlabelled_sites is empty)",
            file=labels,
            hint="leave out the labels file, or first fit with a site in data.unlabelled_sites",
        )
    if not sites:
        return None
    block: dict[str, Any] = {"sites": sites, "test": None, "all_rows": None}
    if labels is None:
        block["note"] = (
            "their targets were hidden from training; give a labels file (subject id and "
            "target) to evaluate them"
        )
        return block
    id_column = run.info.get("id_column") or "subject"
    truth_by_id = _read_labels(
        labels, id_column, cfg.data.target, numeric=scoring_of(run.encoding.task).numeric
    )
    ids = preds[id_column].astype(str)
    truth_by_id.index = truth_by_id.index.astype(str)
    truth = ids.map(truth_by_id)
    at_sites = preds[cfg.data.site_column].astype(str).isin(sites).to_numpy()
    found = at_sites & truth.notna().to_numpy()
    if not found.any():
        raise InputError(
            f"the labels file gives no target for any subject of the unlabelled site(s) "
            f"{', '.join(sites)}",
            file=labels,
            column=cfg.data.target,
            hint=f"match the subject ids in column '{id_column}' of the training manifest",
        )
    test = found & (preds["split"] == "test").to_numpy()
    block["test"] = _task_block(run.encoding, preds, test, cfg.data.site_column, truth=truth)
    block["all_rows"] = _task_block(run.encoding, preds, found, cfg.data.site_column, truth=truth)
    block["note"] = (
        "test: the unlabelled sites' test-split subjects, never used in training; all_rows: "
        "every subject of those sites (their inputs, never their targets, served the "
        "unlearning)"
    )
    return block


def evaluate(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    labels: str | Path | None = None,
) -> dict[str, Any]:
    """Compute and write ``RUN_DIR/metrics.json``; returns the metrics.

    Args:
        run_dir: a finished run.
        data: optional manifest of an external test set (with targets and confound columns);
            every row of it is then treated as test data. Default: the run's own test split.
        labels: optional CSV of subject ids and true targets for the sites whose targets were
            hidden from training (``data.unlabelled_sites``); adds ``unlabelled_sites``.

    A segmentation run gets Dice per class per site and an audit per attach point instead
    (:func:`neurounlearn.evaluation.segmentation.evaluate_segmentation`); ``data`` then needs
    label maps.
    """
    run = load_run(run_dir)
    if labels is not None and data is not None:
        raise InputError(
            "a labels file applies to the run's own unlabelled sites, not to external test data",
            file=labels,
            hint="give the targets in the external test manifest itself, or leave out the "
            "external test data",
        )
    if labels is not None and not Path(labels).is_file():
        raise InputError(
            "the labels file is not found", file=labels, hint="give the path of an existing CSV"
        )
    if run.encoding.task == "segmentation":
        if labels is not None:
            raise InputError(
                "a labels file is for regression and classification runs, not segmentation",
                file=labels,
                hint="leave out the labels file",
            )
        return evaluate_segmentation(run, data)
    cfg, run_dir, encoding = run.config, run.run_dir, run.encoding
    target, site = cfg.data.target, cfg.data.site_column
    id_column = run.info.get("id_column") or "subject"
    preds = read_output(run_dir, PREDICTIONS, dtype={target: object, id_column: str})
    if scoring_of(encoding.task).numeric:
        preds[target] = pd.to_numeric(preds[target], errors="coerce")
    emb = read_output(run_dir, EMBEDDINGS)
    if len(emb) != len(preds):
        raise InputError(
            f"{EMBEDDINGS} has {len(emb)} rows but {PREDICTIONS} {len(preds)}",
            file=run_dir / EMBEDDINGS,
            hint=REWRITE_HINT,
        )
    ecols = embedding_columns(emb)
    if data is not None:
        frame = read_table(data)
        missing = [c for c in [target, site, *[c.name for c in cfg.confounds]] if c not in frame]
        if missing:
            raise InputError(
                f"evaluation data lacks column(s) {missing}",
                file=data,
                hint="evaluate needs the target and the confound columns",
            )
        preds, emb = predict_file(run, data)
        test_mask = np.ones(len(preds), dtype=bool)
        val_mask = None
        meta = frame
    else:
        test_mask = (preds["split"] == "test").to_numpy()
        val_mask = (preds["split"] == "val").to_numpy()
        meta = preds  # fit stores the confound columns there
    task = _task_block(encoding, preds, test_mask, site, val=val_mask)
    y_num = _target_as_number(encoding, preds[target]) if target in preds else None
    feats = emb.loc[test_mask, ecols].to_numpy(dtype=float)
    test_meta = meta.loc[test_mask].reset_index(drop=True)
    confounds = [c.name for c in cfg.confounds] or [site]
    kinds: dict[str, str] = {c.name: c.kind for c in cfg.confounds}
    if cfg.erase:
        confounds += [e.name for e in cfg.erase if e.name not in confounds]
        kinds = {**erase_kinds(cfg.erase, meta, kinds), **kinds}
    leakage = audit_features(
        feats,
        test_meta,
        confounds,
        target=None if y_num is None else y_num[test_mask],
        audit=cfg.audit,
        seed=cfg.train.seed,
        kinds=kinds,
    )
    if cfg.erase and data is None:
        # where LEACE's guarantee holds: the rows the eraser was fit on (a linear probe there
        # reads no more than chance); beside it, the held-out figures above
        train_mask = (preds["split"] == "train").to_numpy()
        erased = [e.name for e in cfg.erase]
        leakage_train = audit_features(
            emb.loc[train_mask, ecols].to_numpy(dtype=float),
            meta.loc[train_mask].reset_index(drop=True),
            erased,
            target=None if y_num is None else y_num[train_mask],
            audit=cfg.audit.model_copy(update={"n_permutations": 0, "n_bootstrap": 0}),
            seed=cfg.train.seed,
            kinds=kinds,
        )
    else:
        leakage_train = None
    ridge_mae = (
        ridge_probe_mae(feats, y_num[test_mask], seed=cfg.train.seed)
        if y_num is not None and scoring_of(encoding.task).numeric
        else None
    )
    site_bacc = LeakageResult.from_dict(leakage.get(site)).probe("linear").balanced_accuracy
    metrics = {
        "run": str(run_dir),
        "strategy": cfg.strategy.name,
        "mode": cfg.strategy.mode if cfg.strategy.name == "iterative" else None,
        "evaluated_on": str(data) if data is not None else "test split",
        "n_test": int(test_mask.sum()),
        "task": task,
        "leakage": leakage,
        "erasure_training_rows": None
        if leakage_train is None
        else {
            "leakage": leakage_train,
            "note": "probes cross-validated on the erased training rows, the rows the eraser "
            "was fit on: the linear guarantee holds there (at chance); 'leakage' above is "
            "held-out",
        },
        "unlabelled_sites": _unlabelled_block(run, preds, labels) if data is None else None,
        "openbhb": {
            "ridge_age_probe_mae": ridge_mae,
            "site_probe_balanced_accuracy": site_bacc,
            "external_mae": None,
            "score": None,
            "note": "external-site MAE (and so the score) needs models trained without each "
            "site: run a comparison with the leave-one-site-out external view",
        },
        **run_facts(run.info),
    }
    write_json(metrics, run_dir / METRICS)
    return metrics
