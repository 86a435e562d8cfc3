"""Report arms from finished run directories (what ``neurounlearn fit`` writes).

A run directory holds ``config.yaml``, ``run.json``, ``model.pt``, ``predictions.csv``,
``embeddings.csv``, ``history.csv`` and, once evaluated, ``metrics.json``. The report is a view
of those files: nothing is retrained or evaluated here. A run without ``metrics.json`` is
refused, unless the caller evaluates it first (``neurounlearn report`` does, through
``render_runs``'s ``on_missing_metrics``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from neurounlearn.atomic import check_out
from neurounlearn.errors import InputError
from neurounlearn.reporting.arms import ReportArm
from neurounlearn.reporting.report import render_report
from neurounlearn.results import TaskResult
from neurounlearn.rundir import (
    CONFIG,
    METRICS,
    MODEL_FILE,
    PREDICTIONS,
    RUN_INFO,
    RunFiles,
)

FINISH_HINT = (
    "give the directory of a finished run (or finish an interrupted one by resuming it: fit "
    "with resume=True, or --resume)"
)


@dataclass
class _Run:
    arm: ReportArm
    target: str
    site_column: str
    warnings: list[str]


def arm_from_run(run_dir: str | Path, *, name: str | None = None) -> ReportArm:
    """Read a finished, evaluated run directory into a :class:`ReportArm`.

    Args:
        run_dir: the directory of a finished run (what ``fit`` wrote).
        name: the arm's name; default: the directory's name.

    Returns:
        The arm: predictions of the test split only; embeddings of every row (all splits), with
        their site and true target.

    Raises:
        InputError: the directory is missing, holds no finished run, has no ``metrics.json``
            yet (``neurounlearn evaluate RUN`` writes it), or a file in it is unreadable or
            lacks a column.
    """
    return _load_run(Path(run_dir), name).arm


def render_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    title: str | None = None,
    tsne: bool = True,
    seed: int = 0,
    on_missing_metrics: Callable[[Path], object] | None = None,
) -> Path:
    """Write the HTML report comparing finished, evaluated runs of one target.

    The report renders what the runs stored: it never evaluates a run itself.

    Args:
        run_dirs: finished run directories, in display order (put the baseline first).
        out: the HTML file to write.
        title: the page title; default names the target and the runs.
        tsne: add t-SNE maps of the embeddings.
        seed: seeds t-SNE.
        on_missing_metrics: called with each run directory that has no ``metrics.json`` yet,
            once every run is checked and before any is read, to write it (the command line
            runs ``evaluate`` there).

    Returns:
        ``Path(out)``.

    Raises:
        InputError: no run given, a run missing, unfinished or without ``metrics.json``, or
            runs of different targets.
    """
    dirs = [Path(d) for d in run_dirs]
    check_out(out, folder=False)
    if not dirs:
        raise InputError("no run directories given", hint=FINISH_HINT)
    configs = []
    for run_dir in dirs:
        _check_finished(run_dir)
        configs.append(_read_config(run_dir)[1])
    for run_dir, cfg in zip(dirs, configs, strict=True):
        if _setting(cfg, "data", "task", "auto") == "segmentation":
            raise InputError(
                "the report does not show segmentation runs yet",
                file=run_dir,
                hint="read the run's metrics.json (Dice per class per site, leakage per attach "
                "point), or evaluate the run for a summary",
            )
    targets = [_setting(cfg, "data", "target", "age") for cfg in configs]
    for run_dir, target in zip(dirs, targets, strict=True):
        if target != targets[0]:
            raise InputError(
                f"runs predict different targets: {dirs[0]} predicts '{targets[0]}' but "
                f"{run_dir} predicts '{target}'",
                hint="report runs of one target together",
            )
    if on_missing_metrics is not None:
        for run_dir in dirs:
            if not RunFiles(run_dir).metrics.is_file():
                on_missing_metrics(run_dir)
    names = _unique_names(dirs)
    runs = [_load_run(d, n) for d, n in zip(dirs, names, strict=True)]
    warnings = list(dict.fromkeys(w for run in runs for w in run.warnings))
    listed = ", ".join(
        f"{n} ({d})" if n != str(d) else str(d) for n, d in zip(names, dirs, strict=True)
    )
    return render_report(
        [run.arm for run in runs],
        out,
        title=title or f"neurounlearn report: {runs[0].target}, {len(runs)} run(s)",
        target=runs[0].target,
        site_column=runs[0].site_column,
        warnings=warnings,
        notes=[f"Run directories: {listed}."],
        tsne=tsne,
        seed=seed,
    )


def _unique_names(dirs: Sequence[Path]) -> list[str]:
    """Directory names; repeated ones get their parent's name in front (``a/run``)."""
    base = [d.resolve().name for d in dirs]
    names = [
        f"{d.resolve().parent.name}/{b}" if base.count(b) > 1 else b
        for d, b in zip(dirs, base, strict=True)
    ]
    out: list[str] = []
    for name in names:
        unique, k = name, 2
        while unique in out:
            unique, k = f"{name} ({k})", k + 1
        out.append(unique)
    return out


def _check_finished(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise InputError("run directory not found", file=run_dir, hint=FINISH_HINT)
    if not RunFiles(run_dir).is_finished():
        raise InputError(
            f"holds no finished run (no {MODEL_FILE} and {RUN_INFO})",
            file=run_dir,
            hint=FINISH_HINT,
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(
            f"cannot read: {err}", file=path, hint="the file is damaged; rerun what wrote it"
        ) from None
    if not isinstance(value, dict):
        raise InputError("is not a JSON object", file=path, hint="rerun what wrote it")
    return value


def _read_config(run_dir: Path) -> tuple[str, dict[str, Any]]:
    path = RunFiles(run_dir).config
    try:
        text = path.read_text()
        cfg = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as err:
        raise InputError(
            f"cannot read the run's configuration: {err}",
            file=path,
            hint=f"every finished run writes {CONFIG}; refit if it is lost",
        ) from None
    return text, cfg if isinstance(cfg, dict) else {}


def _setting(cfg: dict[str, Any], section: str, key: str, default: Any) -> Any:
    value = (cfg.get(section) or {}).get(key)
    return default if value is None else value


def _read_csv(path: Path, text_columns: Sequence[str]) -> pd.DataFrame:
    """A run's CSV with the given columns kept as text (ids like ``007`` stay ``007``)."""
    try:
        header = pd.read_csv(path, nrows=0).columns
        return pd.read_csv(path, dtype={c: str for c in text_columns if c in header})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise InputError(
            f"cannot read: {err}", file=path, hint="the file is damaged; refit the run"
        ) from None


def _require(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame]
    if missing:
        raise InputError(
            f"lacks column(s) {missing}",
            file=path,
            column=missing[0],
            hint="the file is not the one fit wrote; refit the run",
        )


def _load_run(run_dir: Path, name: str | None) -> _Run:
    _check_finished(run_dir)
    config_text, cfg = _read_config(run_dir)
    files = RunFiles(run_dir)
    info = _read_json(files.info)
    target = str(_setting(cfg, "data", "target", "age"))
    site = str(_setting(cfg, "data", "site_column", "site"))
    id_column = str(info.get("id_column") or _setting(cfg, "data", "id_column", "subject"))
    strategy = (cfg.get("strategy") or {}).get("name") or info.get("strategy")

    if not files.metrics.is_file():
        raise InputError(
            f"the run has no {METRICS} yet: the report shows stored results only",
            file=files.metrics,
            hint=f"evaluate {run_dir} first (the report command does it for you)",
        )
    metrics = _read_json(files.metrics)
    task = metrics.get("task")
    classification = TaskResult.from_dict(task).kind == "classification" or (
        info.get("task") == "classification"
    )

    text = (id_column, site, *((target, "prediction") if classification else ()))
    pred_path = files.predictions
    preds = _read_csv(pred_path, text)
    _require(preds, [site, "split", "prediction"], pred_path)
    truth = (
        preds[target]
        if target in preds
        else pd.Series(np.nan, index=preds.index, dtype=object if classification else float)
    )
    if not classification:
        truth = pd.to_numeric(truth, errors="coerce")
    rows = pd.DataFrame(
        {
            "site": preds[site].astype(str),
            "y_true": truth,
            "y_pred": preds["prediction"]
            if classification
            else pd.to_numeric(preds["prediction"], errors="coerce"),
        }
    )
    test = (preds["split"].astype(str) == "test").to_numpy()

    from neurounlearn.training.run import embedding_columns

    emb_path = files.embeddings
    emb = _read_csv(emb_path, (id_column, site))
    columns = embedding_columns(emb)
    if not columns:
        raise InputError(
            "has no embedding columns (e0, e1, ...)",
            file=emb_path,
            hint="the file is not the one fit wrote; refit the run",
        )
    if len(emb) != len(preds) or (
        id_column in emb
        and id_column in preds
        and not emb[id_column].astype(str).equals(preds[id_column].astype(str))
    ):
        raise InputError(
            f"rows do not match {PREDICTIONS} ({len(emb)} vs {len(preds)} rows, or other ids)",
            file=emb_path,
            hint="fit writes both files in one row order; refit the run",
        )

    history_path = files.history
    has_history = history_path.is_file() and history_path.stat().st_size > 0
    history = _read_csv(history_path, ()) if has_history else None

    mode = (cfg.get("strategy") or {}).get("mode") if strategy == "iterative" else None
    details = {
        "input": info.get("input"),
        "epochs": info.get("epochs_run"),
        "fit seconds": info.get("fit_seconds"),
        "samples / s": info.get("samples_per_second"),
    }
    arm = ReportArm(
        name=name or run_dir.resolve().name,
        kind="model",
        strategy=strategy,
        task=task,
        leakage=metrics.get("leakage") or {},
        predictions=rows.loc[test].reset_index(drop=True),
        embeddings=emb[columns].to_numpy(dtype=float),
        embedding_meta=rows[["site", "y_true"]].reset_index(drop=True),
        history=history,
        config_text=config_text,
        # "mode" always, so that its column sits beside the strategy whichever run comes first
        info={"mode": mode, **{k: v for k, v in details.items() if v is not None}},
        openbhb=metrics.get("openbhb"),
        erasure={
            "training_rows": (metrics.get("erasure_training_rows") or {}).get("leakage") or {},
            "info": info.get("erasure") or {},
        }
        if info.get("erasure")
        else None,
    )
    warnings = [str(w) for w in metrics.get("warnings") or []]
    return _Run(arm, target, site, warnings)
