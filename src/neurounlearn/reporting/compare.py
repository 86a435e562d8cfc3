"""``comparison.md`` and ``report.html`` of a ``compare`` run, rendered from the files it wrote.

:func:`~neurounlearn.evaluation.compare.compare` computes and writes ``comparison.json``,
``oof_predictions.csv``, ``folds.csv`` and each arm's fold-1 features; this module reads them
back (:func:`load_comparison`) and lays them out: the markdown table with how to read it, and the
HTML report with every arm's pooled out-of-fold figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.atomic import write_text
from neurounlearn.errors import InputError
from neurounlearn.evaluation.compare import MODEL_ARMS, UNSEEN_SITE
from neurounlearn.evaluation.metrics import headline
from neurounlearn.formatting import fmt_number, markdown_table
from neurounlearn.reporting.report import ReportArm, render_report
from neurounlearn.results import probe_cells
from neurounlearn.rundir import (
    COMPARISON_JSON,
    COMPARISON_MD,
    CONFIG,
    HISTORY,
    OOF_PREDICTIONS,
    REPORT,
)


@dataclass(frozen=True)
class ArmRecord:
    """One arm of ``comparison.json``: its pooled figures over the folds."""

    arm: str
    task: dict[str, Any] | None
    leakage: dict[str, Any]
    openbhb: dict[str, Any]
    external: dict[str, dict[str, Any]]
    seconds: float
    notes: list[str] = field(default_factory=list)
    external_vs_baseline: dict[str, Any] | None = None
    first_fold_run: str | None = None
    first_fold_embeddings: str | None = None

    @classmethod
    def from_dict(
        cls, arm: str, entry: dict[str, Any], first_fold: dict[str, Any] | None = None
    ) -> ArmRecord:
        """An arm's ``summaries`` entry, with its ``first_fold`` pointers (paths relative to
        the comparison's folder)."""
        first_fold = first_fold or {}
        return cls(
            arm=arm,
            task=entry.get("task"),
            leakage=entry.get("leakage") or {},
            openbhb=entry.get("openbhb") or {},
            external=entry.get("external") or {},
            external_vs_baseline=entry.get("external_vs_baseline"),
            seconds=float(entry.get("seconds") or 0.0),
            notes=list(entry.get("notes") or []),
            first_fold_run=first_fold.get("run"),
            first_fold_embeddings=first_fold.get("embeddings"),
        )

    @property
    def ridge_probe_mae(self) -> float | None:
        return self.openbhb.get("ridge_age_probe_mae")

    @property
    def external_mae(self) -> float | None:
        return self.openbhb.get("external_mae")

    @property
    def openbhb_score(self) -> float | None:
        return self.openbhb.get("score")


@dataclass(frozen=True)
class Comparison:
    """A finished ``compare`` output directory, read back."""

    out: Path
    task: str
    target: str
    site_column: str
    id_column: str
    classes: list[str]
    folds: int
    external: bool
    confounds: list[str]
    warnings: list[str]
    data: dict[str, Any]
    seed: int
    arms: list[ArmRecord]
    oof: pd.DataFrame


def _cell(value: Any, digits: int = 2) -> str:
    """A table cell: text as it is, a number with ``digits`` decimals, a dash when missing."""
    if isinstance(value, str):
        return value
    return fmt_number(value, digits, finite=True)


def load_comparison(out: str | Path) -> Comparison:
    """Read a ``compare`` output directory; a clear error when it holds no finished one."""
    out = Path(out)
    path = out / COMPARISON_JSON
    hint = "give the output directory of a finished comparison"
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("holds no finished comparison", file=path, hint=hint) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read: {err}", file=path, hint=hint) from None
    missing = [k for k in ("summaries", "task", "target", "site_column") if k not in result]
    if missing:
        raise InputError(
            f"is not a comparison this package wrote (no {', '.join(missing)})",
            file=path,
            hint="rerun the comparison",
        )
    id_column = result.get("id_column") or "subject"
    target, site = result["target"], result["site_column"]
    oof_path = out / OOF_PREDICTIONS
    classification = result["task"] == "classification"
    text = {id_column: str, site: str} | ({target: object} if classification else {})
    first_fold = result.get("first_fold") or {}
    arms = [ArmRecord.from_dict(a, e, first_fold.get(a)) for a, e in result["summaries"].items()]
    try:
        oof = pd.read_csv(
            oof_path,
            dtype=text | ({a.arm: object for a in arms} if classification else {}),
            float_precision="round_trip",
        )
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise InputError(f"cannot read: {err}", file=oof_path, hint=hint) from None
    return Comparison(
        out=out,
        task=result["task"],
        target=target,
        site_column=site,
        id_column=id_column,
        classes=list(result.get("classes") or []),
        folds=int(result.get("folds") or 0),
        external=bool(result.get("external")),
        confounds=list(result.get("confounds") or []),
        warnings=list(result.get("warnings") or []),
        data=result.get("data") or {},
        seed=int(result.get("seed") or 0),
        arms=arms,
        oof=oof,
    )


# -- comparison.md -------------------------------------------------------------------------------


def comparison_table(
    c: Comparison, summaries: list[ArmRecord], *, external: bool
) -> tuple[list[str], list[list[str]]]:
    """The main comparison table as text cells: ``(header, rows)``, one row per arm."""
    confounds = list(summaries[0].leakage) if summaries else []
    banded = {
        name
        for name in confounds
        if any((s.leakage.get(name) or {}).get("conditional") for s in summaries)
    }
    classification = c.task == "classification"
    head = ["arm"]
    if classification:
        head += ["BAcc (± sd over folds)", "AUC"]
    else:
        head += ["MAE (± sd over folds)", "bias slope", "ρ(delta, target)", "corrected MAE"]
    for name in confounds:
        head += [f"{name} linear [95% CI]", f"{name} nonlinear"]
        if name in banded:
            head += [f"{name} in band lin/nonlin"]
    if not classification:
        head += ["ridge probe MAE"]
        if external:
            head += ["external MAE", "score"]
    rows = []
    for s in summaries:
        t = s.task or {}
        main = t.get("balanced_accuracy" if classification else "mae")
        cells = [s.arm, f"{_cell(main)} ± {_cell(t.get('sd_over_folds'))}"]
        if classification:
            cells.append(_cell(t.get("auc")))
        else:
            bias = t.get("bias") or {}
            cells += [
                _cell(bias.get("slope")),
                _cell(bias.get("spearman_delta_age")),
                _cell(t.get("bias_corrected_mae")),
            ]
        for name in confounds:
            block = s.leakage.get(name)
            value, low, high = probe_cells(block, "linear")
            cells.append(f"{_cell(value)} [{_cell(low)}, {_cell(high)}]")
            cells.append(_cell(probe_cells(block, "nonlinear")[0]))
            if name in banded:
                cond = (block or {}).get("conditional")
                cells.append(
                    f"{_cell(probe_cells(cond, 'linear')[0])} / "
                    f"{_cell(probe_cells(cond, 'nonlinear')[0])}"
                )
        if not classification:
            cells.append(_cell(s.ridge_probe_mae))
            if external:
                unseen = any("error" in e for e in s.external.values())
                cells += [UNSEEN_SITE if unseen else _cell(s.external_mae), _cell(s.openbhb_score)]
        rows.append(cells)
    return head, rows


def comparison_notes(
    c: Comparison, summaries: list[ArmRecord], *, folds: int, external: bool
) -> list[str]:
    """How to read the comparison table."""
    site = c.site_column
    classification = c.task == "classification"
    chance = next(
        (
            (s.leakage.get(site) or {}).get("chance")
            for s in summaries
            if (s.leakage.get(site) or {}).get("chance")
        ),
        None,
    )
    notes = [
        f"{folds}-fold cross-fitting, site-stratified and subject-level; every subject is "
        "predicted once, by the fold model that never trained on it.",
        ("Balanced accuracy" if classification else "MAE")
        + " is computed on the pooled out-of-fold predictions; ± is the sd of the per-fold "
        "values.",
    ]
    if not classification:
        notes.append(
            "Bias slope: slope of (prediction − target) on the target; ρ: Spearman of the delta "
            "with the target (PAC-2019); corrected MAE: Cole's correction (prediction − b) / a, "
            "a and b fit on each fold's validation rows only and applied to its test rows; it "
            "stretches the predictions, so it can raise the MAE while it removes the delta's "
            "dependence on the target. The age-dependent offset correction (Beheshti et al. "
            "2019), which needs each subject's true target, is `offset_corrected_mae` in "
            "comparison.json."
        )
    notes.append(
        "Leakage: balanced accuracy (R² for a continuous confound) of fresh probes trained by "
        "cross-validation on each fold's held-out embeddings, mean over folds, with a "
        "t-interval of that mean across folds"
        + (f"; chance for {site} is {chance:.2f}." if chance else ".")
    )
    if not classification:
        notes.append(
            "Ridge probe MAE: a ridge regression of the target on the held-out embeddings "
            "(OpenBHB's age probe), cross-validated within each test fold, mean over folds."
        )
    if external:
        notes.append(
            "External: leave-one-site-out, each site held out in turn (a scanner never seen "
            "in training); external MAE is the mean of the per-site MAEs; score = external "
            f"MAE × (linear {site} BAcc)^0.3 (OpenBHB, Dufumier et al. 2022; lower is better). "
            f"ComBat arms {UNSEEN_SITE}."
        )
    return notes


def comparison_markdown(
    c: Comparison, summaries: list[ArmRecord], *, folds: int, external: bool
) -> str:
    """The ``comparison.md`` text: the main table, the held-out-site table, and how to read
    them."""
    text = markdown_table(*comparison_table(c, summaries, external=external))
    if external:
        text += "\n\n" + _external_markdown(c, summaries)
    notes = comparison_notes(c, summaries, folds=folds, external=external)
    return text + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def external_table(c: Comparison, summaries: list[ArmRecord]) -> tuple[list[str], list[list[str]]]:
    """Held-out-site error per arm (leave-one-site-out): ``(header, rows)``."""
    sites = sorted({k for s in summaries for k in s.external})
    metric = headline(c.task).metric
    rows = [
        [s.arm]
        + [
            (s.external.get(site) or {}).get("error")
            or _cell((s.external.get(site) or {}).get(metric))
            for site in sites
        ]
        for s in summaries
    ]
    return ["arm", *[f"{site} held out" for site in sites]], rows


SPLIT_TEXT = (
    "Where each held-out site's error comes from: offset (mean of prediction − truth) / "
    "slope (of that error on the truth; negative: regression to the training mean) / spread "
    "(sd of what is left)"
)
PAIRED_TEXT = (
    "Each arm against the baseline over the same held-out sites (Δ = arm − baseline; "
    "two-sided exact sign test and Wilcoxon signed-rank test; with few sites neither can "
    "reach small p-values)"
)


def external_split_table(
    c: Comparison, summaries: list[ArmRecord]
) -> tuple[list[str], list[list[str]]] | None:
    """Where each held-out site's error comes from, per arm: ``offset / slope / spread``
    (:func:`~neurounlearn.evaluation.metrics.error_split`); None for classification or
    when no arm has the split."""
    if c.task == "classification":
        return None
    sites = sorted({k for s in summaries for k in s.external})
    rows = []
    for s in summaries:
        cells = []
        for site in sites:
            e = s.external.get(site) or {}
            if "offset" not in e:
                cells.append(e.get("error") or "—")
                continue
            cells.append(
                f"{fmt_number(e['offset'], 1, signed=True)} / "
                f"{fmt_number(e.get('slope'), 2, signed=True)} / "
                f"{fmt_number(e.get('spread'), 1)}"
            )
        if any("/" in cell for cell in cells):
            rows.append([s.arm, *cells])
    if not rows:
        return None
    return ["arm", *[f"{site} held out" for site in sites]], rows


def external_paired_table(
    c: Comparison, summaries: list[ArmRecord]
) -> tuple[list[str], list[list[str]]] | None:
    """Each arm against the baseline over the held-out sites; None without the baseline."""
    rows = []
    for s in summaries:
        p = s.external_vs_baseline
        if not p or not p.get("sites"):
            continue
        rows.append(
            [
                s.arm,
                f"{p['wins']} / {p['losses']} of {p['sites']}",
                fmt_number(p.get("mean_difference"), 2, signed=True),
                fmt_number(p.get("sign_p"), 3),
                fmt_number(p.get("wilcoxon_p"), 3),
            ]
        )
    if not rows:
        return None
    label = headline(c.task).label
    head = ["arm", "better / worse than baseline", f"mean Δ{label}", "sign test p", "Wilcoxon p"]
    return head, rows


def _external_markdown(c: Comparison, summaries: list[ArmRecord]) -> str:
    text = f"Held-out site {headline(c.task).words} (leave-one-site-out):\n\n" + markdown_table(
        *external_table(c, summaries)
    )
    split = external_split_table(c, summaries)
    if split is not None:
        text += f"\n\n{SPLIT_TEXT}:\n\n" + markdown_table(*split)
    paired = external_paired_table(c, summaries)
    if paired is not None:
        text += f"\n\n{PAIRED_TEXT}:\n\n" + markdown_table(*paired)
    return text


# -- report.html ---------------------------------------------------------------------------------


def _arm(c: Comparison, s: ArmRecord) -> ReportArm:
    oof = c.oof
    sites = oof[c.site_column].astype(str).to_numpy()
    truth = oof[c.target]
    predictions = None
    if s.arm in oof:
        if c.task == "classification":
            labels = oof[s.arm]
            have = labels.notna().to_numpy()
            y_pred = labels.to_numpy(dtype=object)[have].tolist()
            y_true = truth.astype(str).to_numpy()[have]
        else:
            pred = oof[s.arm].to_numpy(dtype=float)
            y = pd.to_numeric(truth, errors="coerce").to_numpy(dtype=float)
            have = np.isfinite(pred) & np.isfinite(y)
            y_pred, y_true = pred[have], y[have]
        predictions = pd.DataFrame({"site": sites[have], "y_true": y_true, "y_pred": y_pred})
    history = config_text = None
    if s.first_fold_run is not None:
        run_dir = c.out / s.first_fold_run
        if (run_dir / HISTORY).is_file():
            history = pd.read_csv(run_dir / HISTORY)
        if (run_dir / CONFIG).is_file():
            config_text = (run_dir / CONFIG).read_text()
    embeddings = None
    if s.first_fold_embeddings is not None:
        embeddings = np.load(c.out / s.first_fold_embeddings, allow_pickle=False)
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
            + (f" ({s.first_fold_run})" if s.first_fold_run else ""),
        },
        openbhb=s.openbhb,
    )


def render_comparison(out: str | Path, *, html: bool = True) -> Comparison:
    """Write ``comparison.md`` (and ``report.html`` unless ``html`` is False) into a finished
    ``compare`` directory, from the files it holds. Predictions are the pooled out-of-fold
    ones; training curves and embeddings (every subject) come from each arm's fold-1 model."""
    c = load_comparison(out)
    write_text(
        comparison_markdown(c, c.arms, folds=c.folds, external=c.external), c.out / COMPARISON_MD
    )
    if not html:
        return c
    head, rows = comparison_table(c, c.arms, external=c.external)
    table = pd.DataFrame(rows, columns=head)
    if c.external:
        ext_head, ext_rows = external_table(c, c.arms)
        table = table.merge(pd.DataFrame(ext_rows, columns=ext_head), on="arm")
    notes = comparison_notes(c, c.arms, folds=c.folds, external=c.external)
    more = []
    split = external_split_table(c, c.arms) if c.external else None
    if split is not None:
        more.append((SPLIT_TEXT, pd.DataFrame(split[1], columns=split[0])))
    paired = external_paired_table(c, c.arms) if c.external else None
    if paired is not None:
        more.append((PAIRED_TEXT, pd.DataFrame(paired[1], columns=paired[0])))
    render_report(
        [_arm(c, s) for s in c.arms],
        c.out / REPORT,
        title=f"neurounlearn compare: {c.target}, {len(c.arms)} arms, {c.folds} folds",
        target=c.target,
        site_column=c.site_column,
        comparison=table,
        comparison_note=" ".join(notes),
        warnings=c.warnings,
        notes=[
            f"Data: {c.data.get('path')} ({c.data.get('rows')} rows, "
            f"{c.data.get('sites')} sites); confounds audited: {', '.join(c.confounds)}.",
            "Predicted-vs-true and per-site errors use every subject's out-of-fold prediction; "
            "training curves and embedding plots show each arm's fold-1 model (embeddings of "
            "every subject; raw and ComBat arms: the features themselves).",
        ],
        seed=c.seed,
        more_tables=more,
    )
    return c
