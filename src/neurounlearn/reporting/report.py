"""A standalone HTML report comparing arms: figures embedded, opens offline.

An *arm* is one way of getting features for the task: a trained network (baseline, iterative
unlearning, GRL) or a reference without training (raw features, ComBat-harmonised features).
:func:`render_report` lays the arms side by side — summary, warnings, comparison table, leakage
audit, predictions, per-site error, embeddings, training curves — in one HTML file whose figures
are base64 PNGs, with no script, font or stylesheet fetched from anywhere.

The report also reads the numbers for problems (:func:`find_warnings`): a baseline with nothing
to unlearn, a confound still decodable after unlearning, accuracy lost, sites too small to say
anything. They appear in the report instead of vanishing.

Examples:
    >>> arm = ReportArm("baseline", strategy="baseline", task={"kind": "regression", "mae": 4.5})
    >>> find_warnings([arm])
    []
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

import neurounlearn.reporting.figures as figures
from neurounlearn.atomic import write_text
from neurounlearn.errors import InputError
from neurounlearn.formatting import DASH, as_number, fmt_number, is_missing
from neurounlearn.reporting.arms import ReportArm
from neurounlearn.results import (
    R2_DECODABLE,
    LeakageResult,
    ProbeResult,
    TaskResult,
    leakage_results,
)

__all__ = [
    "ReportArm",
    "comparison_table",
    "erasure_records",
    "fig_to_data_uri",
    "find_warnings",
    "format_score",
    "format_value",
    "render_report",
]

TEMPLATE = "report.html.j2"
#: Probes the leakage audit runs, in the order the report shows them.
PROBES = ("linear", "nonlinear")
#: An unlearned arm's MAE beyond this multiple of the baseline's is flagged.
MAE_RATIO = 1.2
#: An unlearned arm's balanced accuracy below this fraction of the baseline's is flagged.
BACC_RATIO = 0.9


# --- formatting ----------------------------------------------------------------------------------


def format_value(value: Any) -> str:
    """A table cell as text: :func:`~neurounlearn.formatting.fmt_number` with 1–3 decimals by
    the float's size, ``"—"`` for a missing value.

    Examples:
        >>> [format_value(v) for v in (0.64123, 4.4871, 123.456, 7, None, float("nan"), "n/a")]
        ['0.641', '4.49', '123.5', '7', '—', '—', 'n/a']
    """
    if is_missing(value):
        return DASH
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        size = abs(v)
        return fmt_number(v, 1 if size >= 100 else 2 if size >= 1 else 3)
    return str(value)


def _ci_text(ci: Sequence[Any] | None) -> str:
    if not ci or len(ci) != 2 or any(is_missing(c) for c in ci):
        return "no CI"
    return f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]"


def format_score(value: Any, ci: Sequence[Any] | None) -> str:
    """A probe score with its CI: ``"0.64 [0.56, 0.73]"`` (``"—"`` when not run).

    Examples:
        >>> format_score(0.641, [0.563, 0.729])
        '0.64 [0.56, 0.73]'
    """
    if is_missing(value):
        return "—"
    return fmt_number(value) if _ci_text(ci) == "no CI" else f"{fmt_number(value)} {_ci_text(ci)}"


@dataclass
class _Cell:
    text: str
    numeric: bool


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[_Cell]]


def _cell(value: Any) -> _Cell:
    numeric = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    return _Cell(format_value(value), numeric and not is_missing(value))


def _table(frame: pd.DataFrame) -> _Table:
    """A caller's table; a meaningful index (named, or not 0..n-1) becomes a column."""
    if not isinstance(frame.index, pd.RangeIndex) or frame.index.name is not None:
        frame = frame.reset_index()
    rows = [[_cell(v) for v in record] for record in frame.itertuples(index=False, name=None)]
    return _Table([str(c) for c in frame.columns], rows)


def _records_table(records: Sequence[dict[str, Any]]) -> _Table:
    """A table from dict rows, each value kept as it is (a DataFrame would make ints floats)."""
    headers: list[str] = []
    for record in records:
        headers.extend(k for k in record if k not in headers)
    return _Table(headers, [[_cell(r.get(h)) for h in headers] for r in records])


def fig_to_data_uri(fig: Figure, *, dpi: int = 100) -> str:
    """A figure as an inline PNG ``data:`` URI, for an ``<img src=...>`` that needs no file.

    Args:
        fig: the figure.
        dpi: resolution; at 100 a figure 11 inches wide is 1100 pixels.

    Returns:
        ``"data:image/png;base64,..."``.
    """
    buffer = io.BytesIO()
    # no "Software" tag: it would carry matplotlib's web address into an offline file
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --- warnings ------------------------------------------------------------------------------------


def _score(result: ProbeResult, metric: str) -> float | None:
    """The probe's figure in the confound's metric (R² for a continuous confound)."""
    return result.r2 if metric == "r2" else result.balanced_accuracy


def _probe_scores(audit: LeakageResult, metric: str) -> list[tuple[str, ProbeResult]]:
    """``[(probe, result)]`` for the probes that produced a score, in :data:`PROBES` order."""
    probes = audit.probes
    order = [p for p in PROBES if p in probes] + [p for p in probes if p not in PROBES]
    return [(p, probes[p]) for p in order if _score(probes[p], metric) is not None]


def _describe(probe: str, result: ProbeResult, metric: str) -> str:
    name = "BAcc" if metric == "balanced_accuracy" else "R²"
    return f"{probe} {name} {fmt_number(_score(result, metric))}, CI {_ci_text(result.ci95)}"


def _scopes(audit: LeakageResult) -> list[tuple[str, LeakageResult]]:
    """The audit block itself, plus its within-band (conditional) block when there is one."""
    scopes = [("", audit)]
    conditional = audit.conditional
    if conditional is not None and conditional.probes:
        band = conditional.band
        where = f"within band {band[0]:g}–{band[1]:g}" if len(band) == 2 else "within the band"
        scopes.append((where, conditional))
    return scopes


def _is_unlearned(arm: ReportArm, baseline: ReportArm | None) -> bool:
    """Arms that claim to remove confounds: non-baseline models and ComBat references."""
    if arm is baseline:
        return False
    if arm.kind == "reference":
        return "combat" in arm.name.lower()
    return arm.strategy != "baseline"


def find_warnings(
    arms: Sequence[ReportArm], *, baseline: str | None = None, min_site_n: int = 10
) -> list[str]:
    """Plain-English warnings about what the arms' numbers can and cannot show.

    Rules, each phrased with its numbers:

    1. the baseline's features hold no detectable categorical confound (every probe's CI
       reaches chance): unlearning has nothing to remove and low leakage proves nothing;
    2. a confound is still decodable after unlearning (a probe's CI lower bound above chance,
       or, for a continuous confound, an R² CI lower bound above 0.05), within the
       conditional band too; checked for non-baseline models and ComBat references;
    3. unlearning cost accuracy: MAE above 1.2 × the baseline's, or balanced accuracy below
       0.9 × the baseline's;
    4. sites with fewer than ``min_site_n`` held-out subjects, whose per-site figures are noise;
    5. the leakage audit's own warnings (too few subjects per class, ...).

    Args:
        arms: the report arms.
        baseline: name of the baseline arm; default: the first arm with strategy ``baseline``
            (rules 1 and 3 are skipped when there is none).
        min_site_n: smallest number of held-out subjects per site not worth a warning.

    Returns:
        The warnings, in rule order, without repeats.

    Raises:
        InputError: ``baseline`` names no arm.
    """
    base = _baseline_arm(arms, baseline)
    found: list[str] = []
    if base is not None:
        found += _baseline_without_confound(base)
    for arm in arms:
        if _is_unlearned(arm, base):
            found += _still_decodable(arm)
    if base is not None:
        for arm in arms:
            if arm is not base:
                found += _accuracy_cost(arm, base)
    found += _tiny_sites(arms, min_site_n)
    for arm in arms:
        for confound, audit in leakage_results(arm.leakage).items():
            for where, block in _scopes(audit):
                scope = f" ({where})" if where else ""
                found += [f"{arm.name}: {confound} audit{scope}: {w}" for w in block.warnings]
    return list(dict.fromkeys(found))


def _baseline_arm(arms: Sequence[ReportArm], name: str | None) -> ReportArm | None:
    if name is None:
        return next((a for a in arms if a.strategy == "baseline"), None)
    for arm in arms:
        if arm.name == name:
            return arm
    raise InputError(
        f"no arm is called {name!r}",
        hint=f"name the baseline as one of: {', '.join(repr(a.name) for a in arms)}",
    )


def _baseline_without_confound(base: ReportArm) -> list[str]:
    out = []
    who = "the baseline" if base.name == "baseline" else f"the baseline {base.name!r}"
    for confound, audit in leakage_results(base.leakage).items():
        if not audit.raw or audit.kind == "continuous":
            continue
        scored = [
            (probe, result, audit.chance_of(probe))
            for probe, result in _probe_scores(audit, "balanced_accuracy")
        ]
        if not scored or any(chance is None for _, _, chance in scored):
            continue
        if all(result.at_chance(chance) for _, result, chance in scored if chance is not None):
            chance = scored[0][2]
            numbers = "; ".join(_describe(p, r, "balanced_accuracy") for p, r, _ in scored)
            out.append(
                f"{who} itself holds no detectable {confound} information ({numbers}; chance "
                f"{fmt_number(chance)}): there is nothing for unlearning to remove, and a low "
                "leakage after unlearning proves nothing"
            )
    return out


def _still_decodable(arm: ReportArm) -> list[str]:
    out = []
    after = "after harmonisation" if arm.kind == "reference" else "after unlearning"
    for confound, audit in leakage_results(arm.leakage).items():
        if not audit.raw:
            continue
        metric = audit.metric
        for where, block in _scopes(audit):
            leaking = [
                (probe, result, block.chance_of(probe))
                for probe, result in _probe_scores(block, metric)
            ]
            leaking = [x for x in leaking if x[1].decodable(x[2])]
            if not leaking:
                continue
            numbers = "; ".join(_describe(p, r, metric) for p, r, _ in leaking)
            if metric == "balanced_accuracy":
                numbers += f"; chance {fmt_number(leaking[0][2])}"
            else:
                numbers += f"; decodable above R² {R2_DECODABLE:g}"
            scope = f" {where}" if where else ""
            out.append(f"{arm.name}: {confound} is still decodable {after}{scope} ({numbers})")
    return out


def _accuracy_cost(arm: ReportArm, base: ReportArm) -> list[str]:
    task, base_task = TaskResult.from_dict(arm.task), TaskResult.from_dict(base.task)
    if arm.kind == "model":
        cost = "unlearning cost accuracy"
    elif "combat" in arm.name.lower():
        cost = "harmonisation cost accuracy"
    else:
        cost = "it is less accurate than the baseline"
    mae, base_mae = task.mae, base_task.mae
    if mae is not None and base_mae is not None and base_mae > 0:
        if mae > MAE_RATIO * base_mae:
            return [
                f"{arm.name}: MAE {fmt_number(mae)} is {mae / base_mae:.2f} × the baseline's "
                f"{fmt_number(base_mae)}: {cost}"
            ]
    bacc, base_bacc = task.balanced_accuracy, base_task.balanced_accuracy
    if bacc is not None and base_bacc is not None and base_bacc > 0:
        if bacc < BACC_RATIO * base_bacc:
            return [
                f"{arm.name}: balanced accuracy {fmt_number(bacc)} is {bacc / base_bacc:.2f} × the "
                f"baseline's {fmt_number(base_bacc)}: {cost}"
            ]
    return []


def _tiny_sites(arms: Sequence[ReportArm], min_site_n: int) -> list[str]:
    smallest: dict[str, int] = {}
    for arm in arms:
        for site, block in TaskResult.from_dict(arm.task).per_site.items():
            n = as_number((block or {}).get("n"))
            if n is not None:
                smallest[str(site)] = min(int(n), smallest.get(str(site), int(n)))
    out = []
    for site, n in sorted(smallest.items()):
        if n == 0:
            out.append(f"site {site} has no held-out subjects: it has no per-site figures")
        elif n < min_site_n:
            noun = "subject" if n == 1 else "subjects"
            out.append(f"site {site} has only {n} held-out {noun}: its per-site figures are noise")
    return out


# --- tables --------------------------------------------------------------------------------------


def _main_metric(kind: str) -> tuple[str, str]:
    return (
        ("balanced_accuracy", "balanced accuracy") if kind == "classification" else ("mae", "MAE")
    )


def comparison_table(arms: Sequence[ReportArm]) -> pd.DataFrame:
    """The default comparison: one row per arm, task metrics and leakage with CIs.

    Args:
        arms: the report arms.

    Returns:
        Columns ``arm``, the main task metric (MAE or balanced accuracy), for regression
        ``bias slope``, ``bias-corrected MAE`` (Cole's rescaling) and ``offset-corrected MAE``
        (the age-dependent offset; see ``evaluation.metrics.fit_bias_correction``), then per
        confound and probe the score with its CI as text (``"0.64 [0.56, 0.73]"``), within-band
        probes too when audited.
    """
    kind = figures.task_kind(arms)
    key, label = _main_metric(kind)
    probe_columns: list[tuple[str, str, str]] = []  # (confound, scope, probe)
    for arm in arms:
        for confound, audit in leakage_results(arm.leakage).items():
            for where, block in _scopes(audit):
                for probe in block.probes:
                    column = (confound, "in band" if where else "", probe)
                    if column not in probe_columns:
                        probe_columns.append(column)
    records = []
    for arm in arms:
        # the task's figures as stored: the table prints an int as an int
        task = arm.task or {}
        record: dict[str, Any] = {"arm": arm.name, label: task.get(key)}
        if kind == "regression":
            record["bias slope"] = (task.get("bias") or {}).get("slope")
            record["bias-corrected MAE"] = task.get("bias_corrected_mae")
            record["offset-corrected MAE"] = task.get("offset_corrected_mae")
        audits = leakage_results(arm.leakage)
        for confound, scope, probe in probe_columns:
            audit = audits.get(confound) or LeakageResult.from_dict(None)
            metric = audit.metric
            block = audit if not scope else (audit.conditional or LeakageResult.from_dict(None))
            result = block.probe(probe)
            shown = "R²" if metric == "r2" else "BAcc"
            record[f"{confound} · {probe}{' in band' if scope else ''} {shown}"] = format_score(
                _score(result, metric), result.ci95
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def erasure_records(arms: Sequence[ReportArm]) -> list[dict[str, Any]]:
    """Per erasing arm and erased confound, the probes on the rows the eraser was fit on (where
    LEACE's linear guarantee holds) beside the same probes on held-out subjects."""
    records = []
    for arm in arms:
        if not arm.erasure:
            continue
        info = arm.erasure.get("info") or {}
        for confound, fit_audit in leakage_results(arm.erasure.get("training_rows")).items():
            for rows, audit in (
                ("training rows (the eraser's fit rows)", fit_audit),
                ("held-out subjects", LeakageResult.from_dict(arm.leakage.get(confound))),
            ):
                record: dict[str, Any] = {"arm": arm.name, "confound": confound, "rows": rows}
                for where, block in _scopes(audit):
                    for probe in PROBES:
                        name = f"{probe}{' in band' if where else ''}"
                        record[name] = _score(block.probe(probe), audit.metric)
                record["chance"] = audit.chance
                record["erased when"] = info.get("when", "after")
                records.append(record)
    return records


def _chance_note(arms: Sequence[ReportArm]) -> str | None:
    parts = []
    for arm in arms:
        for confound, audit in leakage_results(arm.leakage).items():
            chance = audit.chance
            if audit.raw and audit.kind != "continuous" and chance is not None:
                text = f"{confound} {fmt_number(chance)}"
                if text not in parts:
                    parts.append(text)
    return f"Chance balanced accuracy: {', '.join(parts)}." if parts else None


def _summary_records(arms: Sequence[ReportArm], kind: str) -> list[dict[str, Any]]:
    key, label = _main_metric(kind)
    openbhb_names = {
        "ridge_age_probe_mae": "ridge age-probe MAE",
        "site_probe_balanced_accuracy": "site-probe BAcc",
        "external_mae": "external-site MAE",
        "score": "OpenBHB score",
    }
    records = []
    for arm in arms:
        task = arm.task or {}
        record: dict[str, Any] = {
            "arm": arm.name,
            "kind": arm.kind,
            "strategy": arm.strategy,
            "held-out n": task.get("n"),
            label: task.get(key),
            **arm.info,
        }
        for k, shown in openbhb_names.items():
            record[shown] = (arm.openbhb or {}).get(k)
        records.append(record)
    empty = [c for c in openbhb_names.values() if all(is_missing(r[c]) for r in records)]
    return [{k: v for k, v in r.items() if k not in empty} for r in records]


def _per_site_records(arms: Sequence[ReportArm], kind: str) -> list[dict[str, Any]]:
    key, label = _main_metric(kind)
    by_arm = {a.name: (a.task or {}).get("per_site") or {} for a in arms}
    sites = sorted({str(s) for per_site in by_arm.values() for s in per_site})
    records: list[dict[str, Any]] = []
    for site in sites:
        counts = {
            int(per_site[site]["n"])
            for per_site in by_arm.values()
            if site in per_site and not is_missing((per_site[site] or {}).get("n"))
        }
        # one count when the arms agree (they do when they share a split), else the range
        n: int | str | None = min(counts) if len(counts) == 1 else None
        if len(counts) > 1:
            n = f"{min(counts)}–{max(counts)}"
        record: dict[str, Any] = {"site": site, "held-out n": n}
        for name, per_site in by_arm.items():
            if per_site:
                record[f"{name} {label}"] = (per_site.get(site) or {}).get(key)
        records.append(record)
    return records


# --- the report ----------------------------------------------------------------------------------


def _template() -> jinja2.Template:
    text = (
        resources.files("neurounlearn.reporting")
        .joinpath("templates", TEMPLATE)
        .read_text(encoding="utf-8")
    )
    env = jinja2.Environment(
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
    )
    return env.from_string(text)


def _uri(fig: Figure | None) -> str | None:
    return None if fig is None else fig_to_data_uri(fig)


def render_report(
    arms: Sequence[ReportArm],
    out: str | Path,
    *,
    title: str,
    target: str = "age",
    site_column: str = "site",
    comparison: pd.DataFrame | None = None,
    comparison_note: str | None = None,
    warnings: Sequence[str] | None = None,
    notes: Sequence[str] | None = None,
    tsne: bool = True,
    seed: int = 0,
    more_tables: Sequence[tuple[str, pd.DataFrame]] = (),
) -> Path:
    """Write the HTML report of ``arms`` to ``out`` (atomically) and return its path.

    Sections: summary, warnings (the caller's plus :func:`find_warnings`), comparison table,
    leakage audit, predicted vs true (confusion matrices for classification), per-site error,
    embeddings (PCA, and t-SNE unless ``tsne=False``), training curves, configurations. A
    section without data says so instead of failing.

    Args:
        arms: the arms to compare, in display order (put the baseline first).
        out: the HTML file to write.
        title: the page title.
        target: name of the target, for labels.
        site_column: name of the site column, for labels.
        comparison: a ready-made comparison table; ``None`` builds :func:`comparison_table`.
            Floats are shown with 2–3 decimals, missing values as ``"—"``, text as given.
        comparison_note: a paragraph shown under the comparison table.
        more_tables: ``(explanation, table)`` pairs shown after it (e.g. the held-out-site
            error split), each under its explanation.
        warnings: the caller's warnings, shown before the report's own.
        notes: paragraphs shown under the title.
        tsne: add t-SNE maps (slower than PCA: a few seconds per 1000 points).
        seed: seeds t-SNE.

    Returns:
        ``Path(out)``.

    Raises:
        InputError: no arms, or two arms with one name.
    """
    arms = list(arms)
    if not arms:
        raise InputError("nothing to report: no arms given", hint="pass at least one run")
    names = [a.name for a in arms]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(
            f"two arms share the name {repeated[0]!r}", hint="give every arm its own name"
        )
    out = Path(out)
    kind = figures.task_kind(arms)
    colors = figures.site_colors(figures.arm_sites(arms))
    table = comparison if comparison is not None else comparison_table(arms)
    if comparison is None and comparison_note is None:
        comparison_note = _chance_note(arms)
    predictions = (
        figures.confusion_matrices(arms)
        if kind == "classification"
        else figures.predicted_vs_true(arms, target, colors=colors, site_column=site_column)
    )
    per_site = _per_site_records(arms, kind)
    context = {
        "title": title,
        "generated": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "version": _version(),
        "notes": list(notes or []),
        "target": target,
        "site_column": site_column,
        "classification": kind == "classification",
        "summary": _records_table(_summary_records(arms, kind)),
        "warnings": list(dict.fromkeys([*(warnings or []), *find_warnings(arms)])),
        "comparison": _table(table),
        "comparison_note": comparison_note,
        "more_tables": [(text, _table(frame)) for text, frame in more_tables],
        "leakage": _uri(figures.leakage_plot(arms)),
        "ci_method": _ci_method(arms),
        "predictions": _uri(predictions),
        "site_errors": _uri(figures.site_error_boxplots(arms, target, site_column=site_column)),
        "per_site": _records_table(per_site) if per_site else None,
        "pca": _uri(
            figures.embedding_plots(
                arms, "pca", seed, target=target, colors=colors, site_column=site_column
            )
        ),
        "tsne": _uri(
            figures.embedding_plots(
                arms, "tsne", seed, target=target, colors=colors, site_column=site_column
            )
        )
        if tsne
        else None,
        "tsne_requested": tsne,
        "erasure": _records_table(erasure_records(arms)) if any(a.erasure for a in arms) else None,
        "curves": _uri(figures.training_curves(arms)),
        "configs": [(a.name, a.config_text) for a in arms if a.config_text],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(_template().render(**context), out)
    return out


def _ci_method(arms: Sequence[ReportArm]) -> str:
    """How the leakage intervals were made: the audit's bootstrap, unless the blocks say
    otherwise (``compare`` gives a t-interval across folds)."""
    for arm in arms:
        for audit in leakage_results(arm.leakage).values():
            for probe in audit.probes.values():
                if probe.ci_method:
                    return f"95% {probe.ci_method}"
    return "95% bootstrap intervals of the out-of-fold predictions"


def _version() -> str:
    from neurounlearn.version import __version__

    return __version__
