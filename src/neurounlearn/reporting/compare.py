"""The report of a ``compare`` run: every arm's pooled out-of-fold figures in one HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from neurounlearn.evaluation.compare import (
    MODEL_ARMS,
    ArmSummary,
    Context,
    comparison_notes,
    comparison_table,
    external_table,
)
from neurounlearn.reporting.report import ReportArm, render_report


def _arm(ctx: Context, s: ArmSummary) -> ReportArm:
    frame = ctx.frame
    sites = frame[ctx.site_column].astype(str).to_numpy()
    truth = frame[ctx.target]
    predictions = None
    if s.oof is not None:
        if ctx.task == "classification":
            have = ~np.isnan(s.oof).any(axis=1)
            y_pred = [ctx.classes[int(p.argmax())] for p in s.oof[have]]
            y_true = truth.astype(str).to_numpy()[have]
        else:
            y = pd.to_numeric(truth, errors="coerce").to_numpy(dtype=float)
            have = np.isfinite(s.oof) & np.isfinite(y)
            y_pred, y_true = s.oof[have], y[have]
        predictions = pd.DataFrame({"site": sites[have], "y_true": y_true, "y_pred": y_pred})
    first = s.first_fold
    history = config_text = None
    if first is not None and first.run_dir is not None:
        run_dir = Path(first.run_dir)
        if (run_dir / "history.csv").is_file():
            history = pd.read_csv(run_dir / "history.csv")
        config_text = (run_dir / "config.yaml").read_text()
    embeddings = first.embeddings if first is not None else None
    network = s.arm.removesuffix("+erase")  # a network's arm, erased or not
    return ReportArm(
        name=s.arm,
        kind="model" if network in MODEL_ARMS else "reference",
        strategy=MODEL_ARMS[network][0] if network in MODEL_ARMS else None,
        task=s.task,
        leakage=s.leakage,
        predictions=predictions,
        embeddings=embeddings,
        embedding_meta=pd.DataFrame({"site": sites, "y_true": truth.to_numpy()})
        if embeddings is not None
        else None,
        history=history,
        config_text=config_text,
        info={
            "folds": (s.task or {}).get("folds"),
            "seconds (all folds)": round(s.seconds, 1),
            "curves and embeddings from": "fold 1"
            + (f" ({first.run_dir})" if first is not None and first.run_dir else ""),
        },
        openbhb=s.openbhb(),
    )


def render_comparison(
    ctx: Context,
    summaries: list[ArmSummary],
    out: Path,
    *,
    folds: int,
    external: bool,
    warnings: list[str],
) -> Path:
    """Write the comparison's ``report.html``: predictions are the pooled out-of-fold ones;
    training curves and embeddings (every subject) come from each arm's fold-1 model."""
    head, rows = comparison_table(ctx, summaries, external=external)
    table = pd.DataFrame(rows, columns=head)
    if external:
        ext_head, ext_rows = external_table(ctx, summaries)
        table = table.merge(pd.DataFrame(ext_rows, columns=ext_head), on="arm")
    notes = comparison_notes(ctx, summaries, folds=folds, external=external)
    return render_report(
        [_arm(ctx, s) for s in summaries],
        out,
        title=f"neurounlearn compare: {ctx.target}, {len(summaries)} arms, {folds} folds",
        target=ctx.target,
        site_column=ctx.site_column,
        comparison=table,
        comparison_note=" ".join(notes),
        warnings=warnings,
        notes=[
            f"Data: {ctx.cfg.data.path} ({len(ctx.frame)} rows, "
            f"{ctx.frame[ctx.site_column].nunique()} sites); confounds audited: "
            f"{', '.join(ctx.confounds)}.",
            "Predicted-vs-true and per-site errors use every subject's out-of-fold prediction; "
            "training curves and embedding plots show each arm's fold-1 model (embeddings of "
            "every subject; raw and ComBat arms: the features themselves).",
        ],
        seed=ctx.cfg.train.seed,
    )
