"""Figures of the HTML report: each function takes report arms and returns a matplotlib figure.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global figure registry, no display backend, nothing to close. A function returns ``None`` when
no arm has the data it plots; the report then says so in words.

Sites keep one colour in every figure: build the mapping once with :func:`site_colors` and pass
it to each function (each builds its own from the arms otherwise).

Examples:
    >>> site_colors(["b", "a", "b"])["a"] == site_colors(["a"])["a"]
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from neurounlearn.reporting.arms import ReportArm
from neurounlearn.results import LeakageResult, TaskResult, leakage_results

Color = tuple[float, float, float, float]
LegendLoc = Literal["outside right upper", "outside right lower"]

#: Widest figure, in inches: 1100 px at the report's 100 dpi, a laptop-width page.
MAX_WIDTH = 11.0
#: t-SNE is quadratic in the number of points; beyond this a seeded subsample is drawn.
TSNE_MAX_POINTS = 1000
PRETRAIN_SHADE = "#e8e8e8"
MISSING_COLOR: Color = (0.75, 0.75, 0.75, 1.0)
LEGEND_FONT = 7


# --- colours and shared helpers -----------------------------------------------------------------


def site_colors(sites: Iterable[Any]) -> dict[str, Color]:
    """One colour per site, the same whatever order the sites come in.

    Args:
        sites: site labels (compared as text; repeats are fine).

    Returns:
        ``{site: RGBA}`` over the sorted distinct sites: ``tab10`` up to 10 sites, ``tab20`` up
        to 20, evenly spaced ``turbo`` colours beyond.
    """
    names = sorted({str(s) for s in sites})
    if len(names) <= 10:
        cmap = colormaps["tab10"]
        return {s: cmap(i) for i, s in enumerate(names)}
    if len(names) <= 20:
        cmap = colormaps["tab20"]
        return {s: cmap(i) for i, s in enumerate(names)}
    cmap = colormaps["turbo"]
    return {s: cmap(x) for s, x in zip(names, np.linspace(0.05, 0.95, len(names)), strict=True)}


def arm_sites(arms: Sequence[ReportArm]) -> list[str]:
    """Every site any arm mentions (predictions, embeddings, per-site metrics), sorted."""
    found: set[str] = set()
    for arm in arms:
        for frame in (arm.predictions, arm.embedding_meta):
            if frame is not None and "site" in frame:
                found.update(frame["site"].dropna().astype(str))
        found.update(str(s) for s in TaskResult.from_dict(arm.task).per_site)
    return sorted(found)


def task_kind(arms: Sequence[ReportArm]) -> str:
    """``"classification"`` or ``"regression"``: from the arms' task blocks, else the labels."""
    for arm in arms:
        kind = TaskResult.from_dict(arm.task).kind
        if kind in ("classification", "regression"):
            return str(kind)
    for arm in arms:
        if arm.predictions is not None and "y_true" in arm.predictions:
            values = arm.predictions["y_true"].dropna()
            if len(values) and pd.to_numeric(values, errors="coerce").isna().any():
                return "classification"
    return "regression"


def _colors_for(arms: Sequence[ReportArm], colors: dict[str, Color] | None) -> dict[str, Color]:
    return colors if colors is not None else site_colors(arm_sites(arms))


def _site_handles(colors: dict[str, Color], sites: Iterable[str]) -> list[Line2D]:
    return [
        Line2D([], [], marker="o", linestyle="", color=colors.get(s, MISSING_COLOR), label=s)
        for s in sorted(set(sites))
    ]


def _figure_legend(fig: Figure, handles: Sequence[Artist], title: str, loc: LegendLoc) -> None:
    """A legend outside the axes on the right; two columns when the list is long."""
    fig.legend(
        handles=handles,
        loc=loc,
        title=title,
        fontsize=LEGEND_FONT,
        title_fontsize=LEGEND_FONT + 1,
        ncols=1 if len(handles) <= 14 else 2,
        frameon=False,
    )


def _arm_palette(n: int) -> list[Color]:
    cmap = colormaps["Set2"] if n <= 8 else colormaps["tab20b"]
    return [cmap(i % cmap.N) for i in range(n)]


def _numeric(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.ravel()[used:]:
        ax.set_visible(False)


def _note(ax: Axes, text: str) -> None:
    """A panel with nothing to plot: say why, in grey, instead of empty axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", color="0.45", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


# --- training curves ------------------------------------------------------------------------------

_CONFOUND_PREFIXES = (
    "train_adv_acc_",
    "val_adv_acc_",
    "train_adv_r2_",
    "val_adv_r2_",
    "train_adv_loss_",
    "train_conf_loss_",
    "val_conf_loss_",
)


def _history_confounds(history: pd.DataFrame) -> list[str]:
    names: list[str] = []
    for column in history.columns:
        for prefix in _CONFOUND_PREFIXES:
            if column.startswith(prefix) and column[len(prefix) :] not in names:
                names.append(column[len(prefix) :])
    return names


def _curve(ax: Axes, epoch: np.ndarray, history: pd.DataFrame, column: str, **style: Any) -> bool:
    """Plot one history column against epoch, skipping its empty rows; ``False`` if all empty."""
    if column not in history:
        return False
    values = _numeric(history[column])
    ok = np.isfinite(values) & np.isfinite(epoch)
    if not ok.any():
        return False
    ax.plot(epoch[ok], values[ok], linewidth=1.2, **style)
    return True


def training_curves(arms: Sequence[ReportArm]) -> Figure | None:
    """Training history of each model arm: one row per arm, four panels.

    Panels: task loss (train solid, validation dashed); adversary accuracy per confound (R²
    for continuous confounds) with a dotted chance line where the leakage block gives chance;
    confusion loss per confound; the gradient-reversal weight λ (GRL only). Task-only
    pretraining epochs are shaded grey.

    Args:
        arms: report arms; those without a ``history`` are left out.

    Returns:
        The figure, or ``None`` when no arm has a history.
    """
    runs = [a for a in arms if a.history is not None and len(a.history)]
    if not runs:
        return None
    fig = Figure(figsize=(MAX_WIDTH, 2.5 * len(runs) + 0.2), layout="constrained")
    axes = fig.subplots(len(runs), 4, squeeze=False)
    for row, arm in zip(axes, runs, strict=True):
        assert arm.history is not None
        _curves_row(row, arm, arm.history)
    return fig


def _curves_row(axes: np.ndarray, arm: ReportArm, history: pd.DataFrame) -> None:
    epoch = (
        _numeric(history["epoch"]) if "epoch" in history else np.arange(len(history), dtype=float)
    )
    span: tuple[float, float] | None = None
    if "phase" in history:
        pretrain = (history["phase"].astype(str) == "pretrain").to_numpy()
        if pretrain.any():
            span = (np.nanmin(epoch[pretrain]) - 0.5, np.nanmax(epoch[pretrain]) + 0.5)
    confounds = _history_confounds(history)

    ax = axes[0]
    drawn = _curve(ax, epoch, history, "train_task_loss", color="C0", label="train")
    drawn |= _curve(ax, epoch, history, "val_task_loss", color="C0", ls="--", label="val")
    ax.set_title(f"{arm.name} · task loss", fontsize=9)
    _finish_panel(ax, drawn, "no task loss logged", span, first=True)

    ax, drawn = axes[1], False
    for i, name in enumerate(confounds):
        color = f"C{i % 10}"
        for metric, shown in (("acc", name), ("r2", f"{name} R²")):
            drawn |= _curve(
                ax, epoch, history, f"train_adv_{metric}_{name}", color=color, label=shown
            )
            drawn |= _curve(ax, epoch, history, f"val_adv_{metric}_{name}", color=color, ls="--")
    audits = leakage_results(arm.leakage)
    for i, name in enumerate(confounds):  # after every curve: set_ylim stops autoscaling
        audit = audits.get(name) or LeakageResult.from_dict(None)
        chance = audit.chance
        has_acc = any(f"{s}_adv_acc_{name}" in history for s in ("train", "val"))
        if drawn and chance is not None and has_acc and audit.kind != "continuous":
            color = f"C{i % 10}"
            ax.axhline(chance, color=color, linestyle=":", linewidth=1, label=f"{name} chance")
            low, high = ax.get_ylim()
            ax.set_ylim(min(low, chance - 0.03), max(high, chance + 0.03))  # off the frame
    ax.set_title(f"{arm.name} · adversary accuracy", fontsize=9)
    _finish_panel(ax, drawn, "no adversary logged", span)

    ax, drawn = axes[2], False
    for i, name in enumerate(confounds):
        color = f"C{i % 10}"
        drawn |= _curve(ax, epoch, history, f"train_conf_loss_{name}", color=color, label=name)
        drawn |= _curve(ax, epoch, history, f"val_conf_loss_{name}", color=color, ls="--")
    ax.set_title(f"{arm.name} · confusion loss", fontsize=9)
    _finish_panel(ax, drawn, "no confusion loss logged", span)

    ax = axes[3]
    drawn = _curve(ax, epoch, history, "train_lambda", color="C3", label="λ")
    ax.set_title(f"{arm.name} · GRL weight λ", fontsize=9)
    _finish_panel(ax, drawn, "no λ (not GRL)", span)


def _finish_panel(
    ax: Axes,
    drawn: bool,
    empty: str,
    pretrain: tuple[float, float] | None,
    *,
    first: bool = False,
) -> None:
    """Label a curves panel, shade pretraining; a panel with no curve says ``empty``."""
    if not drawn:
        _note(ax, empty)
        return
    if pretrain is not None:
        # the legend names the shade once per row, in the first panel
        ax.axvspan(*pretrain, color=PRETRAIN_SHADE, zorder=0, label="pretrain" if first else None)
    ax.set_xlabel("epoch", fontsize=8)
    ax.tick_params(labelsize=7)
    handles, labels = ax.get_legend_handles_labels()
    dashed = any(line.get_linestyle() == "--" for line in ax.get_lines())
    if dashed and "val" not in labels:
        handles.append(Line2D([], [], color="0.3", linestyle="--"))
        labels.append("dashed: val")
    if handles:
        ax.legend(handles, labels, fontsize=6, frameon=False)


# --- predictions ----------------------------------------------------------------------------------


def predicted_vs_true(
    arms: Sequence[ReportArm],
    target: str = "age",
    *,
    colors: dict[str, Color] | None = None,
    site_column: str = "site",
) -> Figure | None:
    """Predicted against true target on held-out subjects, one panel per arm, coloured by site.

    Args:
        arms: report arms; those without ``predictions`` are left out.
        target: name of the target, for the axis labels.
        colors: site colours from :func:`site_colors` (built from the arms if omitted).
        site_column: name of the site column, for the legend title.

    Returns:
        The figure; ``None`` for a classification task (see :func:`confusion_matrices`) or when
        no arm has predictions.
    """
    if task_kind(arms) == "classification":
        return None
    panels = [a for a in arms if a.predictions is not None and len(a.predictions)]
    if not panels:
        return None
    colors = _colors_for(arms, colors)
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(
        figsize=(min(MAX_WIDTH, 2.5 * ncols + 1.6), 2.6 * nrows + 0.5), layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    pairs = []
    for arm in panels:
        assert arm.predictions is not None
        y, yhat = _numeric(arm.predictions["y_true"]), _numeric(arm.predictions["y_pred"])
        pairs.append((y, yhat))
    known = np.concatenate([np.r_[y, yhat] for y, yhat in pairs])
    known = known[np.isfinite(known)]
    lo, hi = (known.min(), known.max()) if known.size else (0.0, 1.0)
    pad = 0.03 * (hi - lo or 1.0)
    seen_sites: set[str] = set()
    for ax, arm, (y, yhat) in zip(axes.ravel(), panels, pairs, strict=False):
        assert arm.predictions is not None
        sites = arm.predictions["site"].astype(str).to_numpy()
        ok = np.isfinite(y) & np.isfinite(yhat)
        seen_sites.update(sites[ok])
        ax.scatter(
            y[ok],
            yhat[ok],
            c=[colors.get(s, MISSING_COLOR) for s in sites[ok]],
            s=12,
            alpha=0.8,
            linewidths=0,
        )
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=1, ls="--")
        mae = TaskResult.from_dict(arm.task).mae
        if mae is None and ok.any():
            mae = float(np.mean(np.abs(yhat[ok] - y[ok])))
        ax.set_title(f"{arm.name} — MAE {mae:.2f}" if mae is not None else arm.name, fontsize=9)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    _hide_unused(axes, len(panels))
    fig.supxlabel(f"true {target}", fontsize=9)
    fig.supylabel(f"predicted {target}", fontsize=9)
    _figure_legend(fig, _site_handles(colors, seen_sites), site_column, "outside right upper")
    return fig


def confusion_matrices(arms: Sequence[ReportArm]) -> Figure | None:
    """Confusion matrix of held-out predictions, one panel per arm (classification tasks).

    Cells show counts; the colour is the fraction of each true class (rows sum to 1), so a
    rare class is as visible as a common one.

    Args:
        arms: report arms; those without ``predictions`` are left out.

    Returns:
        The figure, or ``None`` when no arm has predictions.
    """
    from sklearn.metrics import confusion_matrix

    panels = [a for a in arms if a.predictions is not None and len(a.predictions)]
    if not panels:
        return None
    classes: set[str] = set()
    for arm in panels:
        assert arm.predictions is not None
        for column in ("y_true", "y_pred"):
            classes.update(arm.predictions[column].dropna().astype(str))
        classes.update(str(c) for c in ((arm.task or {}).get("classes") or []))
    labels = sorted(classes)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    side = min(3.4, 1.6 + 0.3 * len(labels))
    fig = Figure(
        figsize=(min(MAX_WIDTH, side * ncols + 1.2), side * nrows + 0.4), layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, arm in zip(axes.ravel(), panels, strict=False):
        assert arm.predictions is not None
        p = arm.predictions.dropna(subset=["y_true", "y_pred"])
        counts = confusion_matrix(
            p["y_true"].astype(str), p["y_pred"].astype(str), labels=labels
        ).astype(float)
        totals = counts.sum(axis=1, keepdims=True)
        fraction = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
        if len(labels) <= 12:
            for (i, j), count in np.ndenumerate(counts):
                ax.text(
                    j,
                    i,
                    f"{int(count)}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if fraction[i, j] > 0.6 else "black",
                )
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        bacc = TaskResult.from_dict(arm.task).balanced_accuracy
        ax.set_title(f"{arm.name} — BAcc {bacc:.2f}" if bacc is not None else arm.name, fontsize=9)
    _hide_unused(axes, len(panels))
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="fraction of the true class")
    return fig


def site_error_boxplots(
    arms: Sequence[ReportArm],
    target: str = "age",
    *,
    site_column: str = "site",
) -> Figure | None:
    """Held-out error per site, arms side by side within each site's group.

    Regression: boxplots of the absolute error. Classification: bars of the balanced accuracy
    per site (a per-subject error has no spread worth a box). Tick labels give the number of
    held-out subjects per site: a site with a handful of subjects says little.

    Args:
        arms: report arms; those without ``predictions`` are left out.
        target: name of the target, for the axis label.
        site_column: name of the site column, for the axis label.

    Returns:
        The figure, or ``None`` when no arm has predictions.
    """
    panels = [a for a in arms if a.predictions is not None and len(a.predictions)]
    if not panels:
        return None
    classification = task_kind(arms) == "classification"
    per_arm: list[dict[str, np.ndarray]] = []
    for arm in panels:
        assert arm.predictions is not None
        per_arm.append(_site_scores(arm.predictions, classification))
    sites = sorted({s for scores in per_arm for s in scores})
    width_in = MAX_WIDTH if len(sites) * len(panels) > 12 else 7.5
    fig = Figure(figsize=(width_in, 3.9), layout="constrained")
    ax = fig.subplots()
    palette = _arm_palette(len(panels))
    step = 0.8 / len(panels)
    for j, (arm, scores) in enumerate(zip(panels, per_arm, strict=True)):
        offset = (j - (len(panels) - 1) / 2) * step
        xs = [i + offset for i, s in enumerate(sites) if s in scores and scores[s].size]
        values = [scores[s] for s in sites if s in scores and scores[s].size]
        if not values:
            continue
        if classification:
            ax.bar(xs, [v[0] for v in values], width=step * 0.9, color=palette[j], label=arm.name)
            continue
        box = ax.boxplot(
            values,
            positions=xs,
            widths=step * 0.8,
            patch_artist=True,
            manage_ticks=False,
            flierprops={"markersize": 2, "alpha": 0.6},
            medianprops={"color": "black", "linewidth": 1},
        )
        for patch in box["boxes"]:
            patch.set_facecolor(palette[j])
    counts = [_site_count(panels, s) for s in sites]
    many = len(sites) > 8
    separator = " " if many else "\n"
    labels = [f"{s}{separator}(n={n})" for s, n in zip(sites, counts, strict=True)]
    ax.set_xticks(
        range(len(sites)),
        labels,
        fontsize=7,
        rotation=45 if many else 0,
        ha="right" if many else "center",
    )
    ax.set_xlim(-0.6, len(sites) - 0.4)
    ax.set_xlabel(f"{site_column} (held-out subjects)", fontsize=8)
    if classification:
        ax.set_ylabel("balanced accuracy", fontsize=8)
        ax.set_ylim(0, 1)
    else:
        ax.set_ylabel(f"absolute error ({target})", fontsize=8)
        ax.set_ylim(bottom=0)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", color="0.9")
    ax.set_axisbelow(True)
    handles = [Patch(facecolor=palette[j], label=a.name) for j, a in enumerate(panels)]
    _figure_legend(fig, handles, "arm", "outside right upper")
    return fig


def _site_scores(predictions: pd.DataFrame, classification: bool) -> dict[str, np.ndarray]:
    """Absolute errors per site (regression) or the one-element balanced accuracy per site."""
    from sklearn.metrics import balanced_accuracy_score

    frame = predictions.dropna(subset=["y_true", "y_pred"])
    out: dict[str, np.ndarray] = {}
    for site, rows in frame.groupby(frame["site"].astype(str)):
        if classification:
            score = balanced_accuracy_score(rows["y_true"].astype(str), rows["y_pred"].astype(str))
            out[str(site)] = np.array([score])
        else:
            error = np.abs(_numeric(rows["y_pred"]) - _numeric(rows["y_true"]))
            out[str(site)] = error[np.isfinite(error)]
    return out


def _site_count(arms: Sequence[ReportArm], site: str) -> str:
    """Held-out subjects with a known target at ``site``: ``"12"``, or ``"10–12"`` across arms."""
    counts = set()
    for arm in arms:
        assert arm.predictions is not None
        p = arm.predictions.dropna(subset=["y_true"])
        counts.add(int((p["site"].astype(str) == site).sum()))
    low, high = min(counts), max(counts)
    return str(low) if low == high else f"{low}–{high}"


# --- embeddings ----------------------------------------------------------------------------------


def embedding_plots(
    arms: Sequence[ReportArm],
    method: str = "pca",
    seed: int = 0,
    *,
    target: str = "age",
    colors: dict[str, Color] | None = None,
    site_column: str = "site",
) -> Figure | None:
    """2-D maps of each arm's features, coloured by site (left) and by the target (right).

    Features are standardised first, so that no one dimension's scale dominates. A model that
    unlearned the site shows sites mixed on the left while the target still forms a gradient on
    the right. PCA is linear and exact; t-SNE is nonlinear, its distances between clusters mean
    little, and it runs on a seeded subsample of at most ``TSNE_MAX_POINTS`` points.

    Args:
        arms: report arms, one row each in the given order; those without embeddings are
            left out.
        method: ``"pca"`` or ``"tsne"``.
        seed: seeds the t-SNE subsample and optimisation.
        target: name of the target, for the colour bar.
        colors: site colours from :func:`site_colors` (built from the arms if omitted).
        site_column: name of the site column, for the legend title.

    Returns:
        The figure, or ``None`` when no arm has (at least 5 rows of) embeddings.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    colors = _colors_for(arms, colors)
    maps: list[tuple[ReportArm, np.ndarray, pd.DataFrame, tuple[str, str]]] = []
    for arm in arms:
        if arm.embeddings is None or arm.embedding_meta is None:
            continue
        projected = _project(arm.embeddings, arm.embedding_meta, method, seed)
        if projected is not None:
            maps.append((arm, *projected))
    if not maps:
        return None
    numeric_target = not any(
        "y_true" in meta and pd.to_numeric(meta["y_true"].dropna(), errors="coerce").isna().any()
        for _, _, meta, _ in maps
    )
    fig = Figure(figsize=(9.5, 3.3 * len(maps) + 0.2), layout="constrained")
    axes = fig.subplots(len(maps), 2, squeeze=False)
    norm, classes = _target_scale(maps, numeric_target)
    class_colors = {c: colormaps["Dark2"](i % 8) for i, c in enumerate(classes)}
    seen_sites: set[str] = set()
    name = "PCA" if method == "pca" else "t-SNE"
    for (ax_site, ax_target), (arm, xy, meta, axis_labels) in zip(axes, maps, strict=True):
        sites = meta["site"].astype(str).to_numpy() if "site" in meta else np.full(len(xy), "?")
        seen_sites.update(sites)
        ax_site.scatter(
            xy[:, 0],
            xy[:, 1],
            c=[colors.get(s, MISSING_COLOR) for s in sites],
            s=9,
            alpha=0.8,
            linewidths=0,
        )
        ax_site.set_title(f"{arm.name} · {name} · by {site_column}", fontsize=9)
        truth = meta["y_true"] if "y_true" in meta else pd.Series(np.nan, index=meta.index)
        if numeric_target:
            values = _numeric(truth)
            point_colors = [
                colormaps["viridis"](norm(v)) if np.isfinite(v) else MISSING_COLOR for v in values
            ]
        else:
            point_colors = [
                class_colors[str(v)] if not pd.isna(v) else MISSING_COLOR for v in truth
            ]
        ax_target.scatter(xy[:, 0], xy[:, 1], c=point_colors, s=9, alpha=0.8, linewidths=0)
        ax_target.set_title(f"{arm.name} · {name} · by {target}", fontsize=9)
        for ax in (ax_site, ax_target):
            ax.set_xlabel(axis_labels[0], fontsize=8)
            ax.set_ylabel(axis_labels[1], fontsize=8)
            ax.tick_params(labelsize=7)
    handles: list[Artist] = list(_site_handles(colors, seen_sites))
    if numeric_target:
        # one bar per row, on one shared scale: a single tall bar would stretch over all rows
        for ax in axes[:, 1]:
            bar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, fraction=0.05)
            bar.set_label(target, fontsize=8)
            bar.ax.tick_params(labelsize=7)
    else:
        # the classes go under the sites in one legend, headed by the target's name
        handles += [Line2D([], [], linestyle="", label=" "), Line2D([], [], ls="", label=target)]
        handles += [
            Line2D([], [], marker="o", linestyle="", color=class_colors[c], label=c)
            for c in classes
        ]
    _figure_legend(fig, handles, site_column, "outside right upper")
    return fig


def _project(
    embeddings: np.ndarray, meta: pd.DataFrame, method: str, seed: int
) -> tuple[np.ndarray, pd.DataFrame, tuple[str, str]] | None:
    """Standardised 2-D projection: ``(xy, meta rows kept, axis labels)``; ``None`` if too few."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.asarray(embeddings, dtype=float)
    if x.ndim != 2 or len(x) != len(meta):
        raise ValueError(
            f"embeddings have shape {x.shape} but embedding_meta has {len(meta)} rows; "
            "give one meta row per embedding row"
        )
    keep = np.flatnonzero(np.isfinite(x).all(axis=1))
    if method == "tsne" and keep.size > TSNE_MAX_POINTS:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(keep, TSNE_MAX_POINTS, replace=False))
    if keep.size < 5 or x.shape[1] < 2:
        return None
    z = StandardScaler().fit_transform(x[keep])
    rows = meta.iloc[keep].reset_index(drop=True)
    if method == "pca":
        pca = PCA(n_components=2, random_state=seed)
        xy = pca.fit_transform(z)
        share = pca.explained_variance_ratio_ * 100
        return xy, rows, (f"PC1 ({share[0]:.0f}% variance)", f"PC2 ({share[1]:.0f}% variance)")
    perplexity = min(30.0, (keep.size - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP thread: Barnes-Hut t-SNE opens a parallel region on each of its 1000
    # iterations, and on a small machine that is busy with anything else its threads spin-wait:
    # 60 points took 10 s with two threads beside a training run, 0.15 s with one.
    with threadpool_limits(1, user_api="openmp"):
        xy = tsne.fit_transform(z)
    return xy, rows, ("t-SNE 1", "t-SNE 2")


def _target_scale(
    maps: Sequence[tuple[ReportArm, np.ndarray, pd.DataFrame, tuple[str, str]]], numeric: bool
) -> tuple[Normalize, list[str]]:
    """One colour scale for the target across all rows, so that colours compare between arms."""
    if numeric:
        parts = [_numeric(meta["y_true"]) for _, _, meta, _ in maps if "y_true" in meta]
        values = np.concatenate(parts) if parts else np.zeros(0)
        values = values[np.isfinite(values)]
        if values.size:
            return Normalize(float(values.min()), float(values.max())), []
        return Normalize(0.0, 1.0), []
    classes = sorted(
        {str(v) for _, _, meta, _ in maps if "y_true" in meta for v in meta["y_true"].dropna()}
    )
    return Normalize(0.0, 1.0), classes


# --- leakage -------------------------------------------------------------------------------------

_PROBE_STYLE = {"linear": "C0", "nonlinear": "C1"}


def leakage_plot(arms: Sequence[ReportArm]) -> Figure | None:
    """Probe scores on held-out features with 95% CIs, one panel per confound.

    Rows are arm × probe (linear, nonlinear, and their within-band versions when the audit ran
    a conditional probe; hollow markers). The dashed line marks chance for each row: a CI
    entirely right of it means the confound can still be read from the features.

    Args:
        arms: report arms; those without a ``leakage`` block are left out.

    Returns:
        The figure, or ``None`` when no arm has a leakage block.
    """
    confounds: list[str] = []
    for arm in arms:
        confounds.extend(c for c in arm.leakage if c not in confounds)
    if not confounds:
        return None
    panels = [(c, _leakage_rows(arms, c)) for c in confounds]
    heights = [0.32 * len(rows) + 1.0 for _, rows in panels]
    fig = Figure(figsize=(8.5, sum(heights) + 0.3), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, (confound, rows) in zip(axes, panels, strict=True):
        _leakage_panel(ax, confound, rows)
    return fig


def _leakage_rows(arms: Sequence[ReportArm], confound: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for arm in arms:
        audit = LeakageResult.from_dict(arm.leakage.get(confound))
        if not audit.raw:
            continue
        metric = audit.metric
        scopes = [("", audit)]
        conditional = audit.conditional
        if conditional is not None and conditional.probes:
            band = conditional.band
            where = f" in band {band[0]:g}–{band[1]:g}" if len(band) == 2 else " in band"
            scopes.append((where, conditional))
        for where, block in scopes:
            for probe, result in block.probes.items():
                rows.append(
                    {
                        "arm": arm.name,
                        "label": f"{arm.name} · {probe}{where}",
                        "probe": probe,
                        "band": bool(where),
                        "value": result.r2 if metric == "r2" else result.balanced_accuracy,
                        "ci": result.ci95,
                        # the probe's own chance where its block states one, else the audit's
                        "chance": result.chance,
                        "metric": metric,
                    }
                )
    return rows


def _leakage_panel(ax: Axes, confound: str, rows: list[dict[str, Any]]) -> None:
    continuous = any(r["metric"] == "r2" for r in rows)
    lows = [0.0]
    for y, row in enumerate(rows):
        color = _PROBE_STYLE.get(row["probe"], "C2")
        if row["chance"] is not None:
            ax.plot([row["chance"]] * 2, [y - 0.5, y + 0.5], color="0.35", ls="--", lw=1)
        if row["value"] is None:
            ax.text(0.01, y, "not run", va="center", fontsize=7, color="0.45")
            continue
        ci = row["ci"]
        xerr = None
        if ci is not None and None not in ci:
            xerr = [[max(row["value"] - ci[0], 0.0)], [max(ci[1] - row["value"], 0.0)]]
            lows.append(ci[0])
        lows.append(row["value"])
        ax.errorbar(
            row["value"],
            y,
            xerr=xerr,
            fmt="o",
            color=color,
            markerfacecolor="white" if row["band"] else color,
            markersize=5,
            capsize=3,
            linewidth=1.2,
        )
    for y in range(1, len(rows)):
        if rows[y]["arm"] != rows[y - 1]["arm"]:
            ax.axhline(y - 0.5, color="0.85", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    if continuous:
        ax.set_xlim(max(-1.0, min(-0.1, min(lows) - 0.05)), 1.0)
        ax.set_xlabel("R² of the probe (out of fold)", fontsize=8)
    else:
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("balanced accuracy of the probe (out of fold)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", color="0.92")
    ax.set_axisbelow(True)
    ax.set_title(f"{confound}: how well fresh probes recover it from held-out features", fontsize=9)
    handles = [
        Line2D([], [], marker="o", ls="", color="C0", label="linear"),
        Line2D([], [], marker="o", ls="", color="C1", label="nonlinear"),
        Line2D([], [], color="0.35", ls="--", label="chance"),
    ]
    if any(r["band"] for r in rows):
        handles.append(
            Line2D([], [], marker="o", ls="", color="0.3", markerfacecolor="white", label="in band")
        )
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
