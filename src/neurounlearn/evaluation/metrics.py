"""Task metrics: pure functions from arrays to JSON-ready dicts.

Every number is a plain Python ``float``/``int``; a value that is undefined (a correlation on
constant input, an R² with one subject) is ``None``, never ``NaN``, so ``metrics.json`` stays
valid JSON. Rows whose true value is ``NaN`` (unlabelled subjects) are ignored everywhere.

Examples:
    >>> regression_metrics([20.0, 30.0], [22.0, 27.0])["mae"]
    2.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from neurounlearn.choices import check_choice
from neurounlearn.errors import InputError
from neurounlearn.models.dice import dice_per_class

__all__ = [
    "BIAS_CORRECTIONS",
    "apply_bias_correction",
    "brain_age_bias",
    "classification_metrics",
    "dice_per_class",
    "fit_bias_correction",
    "headline",
    "regression_metrics",
    "segmentation_metrics",
    "task_metrics",
]

ArrayLike = Sequence[float] | np.ndarray


@dataclass(frozen=True)
class Headline:
    """The one figure a table leads with for a task: its key in the task metrics, its short and
    long names, and which way is better.

    Examples:
        >>> headline("classification").metric, headline("regression").lower_is_better
        ('balanced_accuracy', True)
    """

    metric: str
    label: str
    words: str
    lower_is_better: bool


HEADLINES = {
    "regression": Headline("mae", "MAE", "MAE", lower_is_better=True),
    "classification": Headline(
        "balanced_accuracy", "BAcc", "balanced accuracy", lower_is_better=False
    ),
}


def headline(task: str) -> Headline:
    """The :class:`Headline` of ``"regression"`` or ``"classification"``."""
    if task not in HEADLINES:
        raise ValueError(f"no headline figure for task {task!r}; one of {', '.join(HEADLINES)}")
    return HEADLINES[task]


def regression_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, sites: ArrayLike | Sequence[Any] | None = None
) -> dict[str, Any]:
    """MAE, RMSE, Pearson r, R² and (optionally) MAE per site.

    Args:
        y_true: true values, shape ``(n,)``; ``NaN`` marks an unlabelled row, which is ignored.
        y_pred: predictions, shape ``(n,)``; must be finite wherever ``y_true`` is known.
        sites: optional site label per row, shape ``(n,)``; adds ``per_site``.

    Returns:
        ``{"mae", "rmse", "pearson_r", "r2", "n"}`` plus ``per_site: {site: {"mae", "n"}}``
        (site keys as ``str``) when ``sites`` is given.

    Examples:
        >>> regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])["rmse"]  # doctest: +ELLIPSIS
        0.577...
    """
    true, pred, known = _paired(y_true, y_pred)
    t, p = true[known], pred[known]
    result: dict[str, Any] = {
        "mae": _float(np.mean(np.abs(p - t))) if t.size else None,
        "rmse": _float(np.sqrt(np.mean((p - t) ** 2))) if t.size else None,
        "pearson_r": _pearson(t, p),
        "r2": _r2(t, p),
        "n": int(t.size),
    }
    if sites is not None:
        site_labels = np.asarray(sites, dtype=object)
        if site_labels.shape != true.shape:
            raise InputError(
                f"sites has {site_labels.size} entries but y_true has {true.size}",
                hint="pass one site label per row",
            )
        keys = np.array([str(s) for s in site_labels], dtype=object)
        per_site: dict[str, dict[str, Any]] = {}
        for site in sorted(set(keys.tolist())):
            rows = known & (keys == site)
            n = int(rows.sum())
            per_site[site] = {
                "mae": _float(np.mean(np.abs(pred[rows] - true[rows]))) if n else None,
                "n": n,
            }
        result["per_site"] = per_site
    return result


def brain_age_bias(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, Any]:
    """The regression-to-the-mean bias of a brain-age model.

    Brain-age predictions shrink toward the training mean, so the delta (pred − true) falls
    with age: young subjects look old and old subjects look young. A slope of the delta on age
    near 0 means no such bias; PAC-2019 also asked for the Spearman rho of delta with age.

    Args:
        y_true: true ages, shape ``(n,)``; ``NaN`` rows are ignored.
        y_pred: predicted ages, shape ``(n,)``.

    Returns:
        ``{"slope", "intercept", "spearman_delta_age", "spearman_p_value", "n"}``; values are
        ``None`` when fewer than 3 known rows or constant ages make them undefined.

    Examples:
        >>> brain_age_bias([20.0, 40.0, 60.0], [30.0, 40.0, 50.0])["slope"]
        -0.5
    """
    true, pred, known = _paired(y_true, y_pred)
    t, p = true[known], pred[known]
    result: dict[str, Any] = {
        "slope": None,
        "intercept": None,
        "spearman_delta_age": None,
        "spearman_p_value": None,
        "n": int(t.size),
    }
    if t.size < 3 or np.ptp(t) == 0:
        return result
    delta = p - t
    slope, intercept = _line_fit(t, delta)
    result["slope"] = _float(slope)
    result["intercept"] = _float(intercept)
    if np.ptp(delta) > 0:
        rho, p_value = stats.spearmanr(delta, t)
        result["spearman_delta_age"] = _float(rho)
        result["spearman_p_value"] = _float(p_value)
    return result


def error_split(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, Any]:
    """Where the error on one group of subjects (a held-out site) comes from.

    The signed error ``pred − true`` is split into an **offset** (its mean: the whole site
    predicted too old or too young), a **slope** (its least-squares slope on the truth:
    negative when predictions regress to the training mean) and a **spread** (the sd of what
    is left). ``mae_without_offset`` is the MAE once the offset is removed: what recentring the
    site would give, so ``mae − mae_without_offset`` is the offset's share.

    Args:
        y_true: true values, shape ``(n,)``; ``NaN`` rows are ignored.
        y_pred: predictions, shape ``(n,)``.

    Returns:
        ``{"mae", "offset", "slope", "spread", "mae_without_offset", "n"}`` (all but ``n``
        ``None`` without a known row); ``slope`` is ``None`` when fewer than 3 known rows or a
        constant truth leave it undefined, and ``spread`` is then the sd around the offset.

    Examples:
        >>> s = error_split([20.0, 30.0, 40.0], [26.0, 33.0, 40.0])
        >>> s["offset"], s["slope"], s["spread"]
        (3.0, -0.3, 0.0)
    """
    true, pred, known = _paired(y_true, y_pred)
    t, p = true[known], pred[known]
    result: dict[str, Any] = {
        "mae": None,
        "offset": None,
        "slope": None,
        "spread": None,
        "mae_without_offset": None,
        "n": int(t.size),
    }
    if not t.size:
        return result
    error = p - t
    offset = float(error.mean())
    result |= {
        "mae": _float(np.mean(np.abs(error))),
        "offset": _float(offset),
        "mae_without_offset": _float(np.mean(np.abs(error - offset))),
        "spread": _float(error.std()),
    }
    if t.size >= 3 and np.ptp(t) > 0:
        slope, intercept = _line_fit(t, error)
        result["slope"] = _float(slope)
        result["spread"] = _float(np.std(error - (intercept + slope * t)))
    return result


def paired_sites(
    arm: dict[str, float | None], reference: dict[str, float | None], *, lower_is_better: bool
) -> dict[str, Any]:
    """An arm against a reference over the same held-out sites: wins, losses, the mean
    difference, an exact sign test and a Wilcoxon signed-rank test (both two-sided).

    Args:
        arm: the arm's figure per held-out site.
        reference: the reference arm's figure per held-out site (the baseline).
        lower_is_better: True for an error (MAE), False for an accuracy.

    Returns:
        ``{"sites", "wins", "losses", "ties", "mean_difference", "sign_p", "wilcoxon_p"}``;
        differences are arm − reference over the sites where both have a figure; the p-values
        are ``None`` with fewer than 2 such sites or no non-zero difference.

    Examples:
        >>> r = paired_sites({"a": 3.0, "b": 4.0}, {"a": 4.0, "b": 5.0}, lower_is_better=True)
        >>> r["wins"], r["losses"], r["mean_difference"]
        (2, 0, -1.0)
    """
    sites = [s for s in arm if arm[s] is not None and reference.get(s) is not None]
    diff = np.array([float(arm[s]) - float(reference[s]) for s in sites])  # type: ignore[arg-type]
    better = -diff if lower_is_better else diff
    wins, losses = int((better > 0).sum()), int((better < 0).sum())
    result: dict[str, Any] = {
        "sites": len(sites),
        "wins": wins,
        "losses": losses,
        "ties": len(sites) - wins - losses,
        "mean_difference": _float(diff.mean()) if diff.size else None,
        "sign_p": None,
        "wilcoxon_p": None,
    }
    if len(sites) >= 2 and wins + losses:
        result["sign_p"] = _float(stats.binomtest(wins, wins + losses).pvalue)
        result["wilcoxon_p"] = _float(stats.wilcoxon(diff[diff != 0]).pvalue)
    return result


#: The two published brain-age bias corrections (see :func:`fit_bias_correction`).
BIAS_CORRECTIONS = ("cole", "offset")


def fit_bias_correction(
    y_true_val: ArrayLike, y_pred_val: ArrayLike, *, method: str = "cole"
) -> tuple[float, float]:
    """Fit a linear age-bias correction on validation rows.

    * ``"cole"`` (Cole et al. 2018): ``pred = a * true + b``; :func:`apply_bias_correction`
      gives ``(pred - b) / a``. It needs no true age at test time, but dividing by a shallow
      slope ``a`` stretches the predictions, so the corrected MAE is often *higher* than the
      raw one; what it removes is the age dependence of the brain-age delta.
    * ``"offset"`` (Beheshti et al. 2019; de Lange & Cole 2020): ``pred - true = a * true + b``;
      :func:`apply_bias_correction` subtracts ``a * true + b`` from each prediction, which needs
      the subject's true age and lowers the MAE by construction.

    Fit it on the VALIDATION split only. Fitting on the test split uses the test subjects'
    true ages to adjust their own predictions: the corrected test MAE then leaks the target and
    is optimistic.

    Args:
        y_true_val: true ages of the validation subjects, shape ``(n,)``; ``NaN`` rows ignored.
        y_pred_val: the model's predictions for them, shape ``(n,)``.
        method: ``"cole"`` or ``"offset"``.

    Returns:
        ``(a, b)``: the slope and intercept of the prediction (``cole``) or of the delta
        (``offset``) on the true age.

    Raises:
        InputError: fewer than 2 known rows, constant ages, or (``cole``) a zero slope: a model
            that predicts the same value for everyone cannot be rescaled.

    Examples:
        >>> fit_bias_correction([20.0, 40.0, 60.0], [30.0, 40.0, 50.0])
        (0.5, 20.0)
        >>> fit_bias_correction([20.0, 40.0, 60.0], [30.0, 40.0, 50.0], method="offset")
        (-0.5, 20.0)
    """
    check_choice("bias correction", method, BIAS_CORRECTIONS)
    true, pred, known = _paired(y_true_val, y_pred_val)
    t, p = true[known], pred[known]
    if t.size < 2 or np.ptp(t) == 0:
        raise InputError(
            f"cannot fit the age-bias correction on {t.size} validation row(s) with "
            f"{'constant' if t.size else 'no'} ages",
            hint="the validation split needs at least 2 subjects of different ages",
        )
    if method == "offset":
        a, b = _line_fit(t, p - t)
        return float(a), float(b)
    a, b = _line_fit(t, p)
    if not np.isfinite(a) or abs(a) < 1e-12:
        raise InputError(
            "cannot fit the age-bias correction: predictions do not vary with age (slope 0)",
            hint="the model predicts the same value for everyone; train it longer or check it",
        )
    return float(a), float(b)


def apply_bias_correction(
    y_pred: ArrayLike,
    a: float,
    b: float,
    *,
    method: str = "cole",
    y_true: ArrayLike | None = None,
) -> np.ndarray:
    """Apply a correction fit by :func:`fit_bias_correction` with the same ``method``:
    ``(y_pred - b) / a`` (``cole``) or ``y_pred - (a * y_true + b)`` (``offset``).

    Args:
        y_pred: predictions, shape ``(n,)``.
        a: slope from :func:`fit_bias_correction` (fit on validation data, never test).
        b: intercept from :func:`fit_bias_correction`.
        method: ``"cole"`` or ``"offset"``.
        y_true: the subjects' true ages (``offset`` only).

    Returns:
        Corrected predictions, shape ``(n,)``.

    Examples:
        >>> apply_bias_correction([30.0, 50.0], 0.5, 20.0).tolist()
        [20.0, 60.0]
        >>> offset = apply_bias_correction([30, 50], -0.5, 20, method="offset", y_true=[20, 60])
        >>> offset.tolist()
        [20.0, 60.0]
    """
    check_choice("bias correction", method, BIAS_CORRECTIONS)
    if not math.isfinite(a) or not math.isfinite(b) or (method == "cole" and a == 0):
        raise InputError(
            f"invalid age-bias correction (a={a}, b={b})",
            hint="fit it with fit_bias_correction on the validation split",
        )
    pred = np.asarray(y_pred, dtype=float)
    if method == "offset":
        if y_true is None:
            raise InputError(
                "the offset bias correction needs each subject's true age",
                hint="pass y_true, or use method='cole', which needs none",
            )
        return pred - (a * np.asarray(y_true, dtype=float) + b)
    return (pred - b) / a


def task_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    sites: ArrayLike | Sequence[Any] | None,
    *,
    y_true_val: ArrayLike | None = None,
    y_pred_val: ArrayLike | None = None,
) -> dict[str, Any]:
    """All regression task metrics for ``metrics.json``.

    Both bias corrections (Cole's rescaling, ``bias_corrected_mae``, the one the tables show; the
    age-dependent offset, ``offset_corrected_mae``) are fit on the validation arrays only and
    applied to the test predictions; without validation arrays both are ``None``.

    Args:
        y_true: test-split true values, shape ``(n,)``.
        y_pred: test-split predictions, shape ``(n,)``.
        sites: test-split site labels, shape ``(n,)``, or ``None``.
        y_true_val: validation-split true values (for the bias correction).
        y_pred_val: validation-split predictions (for the bias correction).

    Returns:
        ``{"kind": "regression", "mae", "rmse", "pearson_r", "r2", "n", "per_site"?, "bias",
        "bias_correction": {"method", "a", "b"} | None, "bias_corrected_mae",
        "offset_correction": {"method", "a", "b"} | None, "offset_corrected_mae"}``.
    """
    if (y_true_val is None) != (y_pred_val is None):
        raise InputError(
            "the bias correction needs both y_true_val and y_pred_val",
            hint="pass both validation arrays, or neither",
        )
    result: dict[str, Any] = {"kind": "regression", **regression_metrics(y_true, y_pred, sites)}
    result["bias"] = brain_age_bias(y_true, y_pred)
    result["bias_correction"] = None
    result["bias_corrected_mae"] = None
    result["offset_correction"] = None
    result["offset_corrected_mae"] = None
    if y_true_val is not None and y_pred_val is not None:
        for method, key in (("cole", "bias"), ("offset", "offset")):
            a, b = fit_bias_correction(y_true_val, y_pred_val, method=method)
            corrected = apply_bias_correction(y_pred, a, b, method=method, y_true=y_true)
            result[f"{key}_correction"] = {"method": method, "a": a, "b": b}
            result[f"{key}_corrected_mae"] = regression_metrics(y_true, corrected)["mae"]
    return result


def classification_metrics(
    y_true: Sequence[Any] | np.ndarray,
    prob: np.ndarray,
    classes: Sequence[str],
    sites: ArrayLike | Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Balanced accuracy, accuracy, AUC and (optionally) balanced accuracy per site.

    Args:
        y_true: true class labels, shape ``(n,)``; missing values (``None``/``NaN``) and labels
            outside ``classes`` are ignored.
        prob: predicted probabilities, shape ``(n, K)``, columns in ``classes`` order.
        classes: the class labels (compared as text).
        sites: optional site label per row; adds ``per_site``.

    Returns:
        ``{"kind": "classification", "balanced_accuracy", "accuracy", "auc", "chance", "n",
        "classes", "confusion"}`` (``auc``: ROC AUC of the second class for two classes, the
        one-vs-rest macro average otherwise; ``None`` when a class is absent), plus
        ``per_site: {site: {"balanced_accuracy", "n"}}``.

    Examples:
        >>> p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
        >>> classification_metrics(["F", "M", "M", "M"], p, ["F", "M"])["balanced_accuracy"]
        0.8333333333333333
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    lookup = {str(c): i for i, c in enumerate(classes)}
    labels = [None if _missing(v) else lookup.get(str(v)) for v in y_true]
    known = np.array([v is not None for v in labels], dtype=bool)
    y = np.array([v if v is not None else -1 for v in labels], dtype=np.int64)
    prob = np.asarray(prob, dtype=float).reshape(len(y), -1)
    pred = prob.argmax(axis=1) if len(y) else np.zeros(0, np.int64)
    k = len(classes)
    result: dict[str, Any] = {
        "kind": "classification",
        "balanced_accuracy": None,
        "accuracy": None,
        "auc": None,
        "chance": 1.0 / k if k else None,
        "n": int(known.sum()),
        "classes": [str(c) for c in classes],
        "confusion": None,
    }
    yk, pk = y[known], pred[known]
    if yk.size:
        result["balanced_accuracy"] = _float(balanced_accuracy_score(yk, pk))
        result["accuracy"] = _float(np.mean(yk == pk))
        result["confusion"] = confusion_matrix(yk, pk, labels=list(range(k))).tolist()
        if len(np.unique(yk)) == k and k >= 2:
            scores = prob[known]
            result["auc"] = _float(
                roc_auc_score(yk, scores[:, 1])
                if k == 2
                else roc_auc_score(yk, scores, multi_class="ovr", labels=list(range(k)))
            )
    if sites is not None:
        keys = np.array([str(s) for s in np.asarray(sites, dtype=object)], dtype=object)
        per_site: dict[str, dict[str, Any]] = {}
        for site in sorted(set(keys.tolist())):
            rows = known & (keys == site)
            n = int(rows.sum())
            per_site[site] = {
                "balanced_accuracy": _float(balanced_accuracy_score(y[rows], pred[rows]))
                if n
                else None,
                "n": n,
            }
        result["per_site"] = per_site
    return result


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _paired(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D float arrays and the mask of rows whose true value is known."""
    true = np.asarray(y_true, dtype=float).reshape(-1)
    pred = np.asarray(y_pred, dtype=float).reshape(-1)
    if true.shape != pred.shape:
        raise InputError(
            f"y_true has {true.size} values but y_pred has {pred.size}",
            hint="pass one prediction per subject",
        )
    known = np.isfinite(true)
    bad = np.flatnonzero(known & ~np.isfinite(pred))
    if bad.size:
        raise InputError(
            f"{bad.size} prediction(s) are NaN or infinite for labelled subjects "
            f"(first at index {int(bad[0])})",
            hint="the model diverged or the predictions file is incomplete",
        )
    return true, pred, known


def _line_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of ``y`` on ``x`` (``x`` not constant)."""
    x_mean, y_mean = x.mean(), y.mean()
    slope = float(np.sum((x - x_mean) * (y - y_mean)) / np.sum((x - x_mean) ** 2))
    return slope, float(y_mean - slope * x_mean)


def _float(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _pearson(t: np.ndarray, p: np.ndarray) -> float | None:
    if t.size < 2 or np.ptp(t) == 0 or np.ptp(p) == 0:
        return None
    return _float(np.corrcoef(t, p)[0, 1])


def _r2(t: np.ndarray, p: np.ndarray) -> float | None:
    if t.size < 2:
        return None
    total = np.sum((t - t.mean()) ** 2)
    if total == 0:
        return None
    return _float(1.0 - np.sum((t - p) ** 2) / total)


def segmentation_metrics(
    dice: np.ndarray, classes: Sequence[str], sites: ArrayLike | Sequence[Any] | None = None
) -> dict[str, Any]:
    """Mean Dice per foreground class, their mean, and the same per site.

    Args:
        dice: ``(n, K - 1)`` Dice per volume and foreground class (``NaN``: class absent).
        classes: all class names, background first (``K`` names).
        sites: optional site label per volume; adds ``per_site``.

    Returns:
        ``{"dice": {class: mean}, "mean_dice", "n"}`` plus ``per_site: {site: {"dice",
        "mean_dice", "n"}}``; a class never present gives ``None``.

    Examples:
        >>> out = segmentation_metrics(np.array([[0.8, 0.6], [0.9, 0.7]]), ["bg", "a", "b"])
        >>> out["dice"], round(out["mean_dice"], 2), out["n"]
        ({'a': 0.85, 'b': 0.65}, 0.75, 2)
    """
    dice = np.asarray(dice, dtype=np.float64).reshape(-1, len(classes) - 1)

    def block(d: np.ndarray) -> dict[str, Any]:
        means = [_float(np.nanmean(col)) if np.isfinite(col).any() else None for col in d.T]
        known = [m for m in means if m is not None]
        return {
            "dice": {name: _round(m) for name, m in zip(classes[1:], means, strict=True)},
            "mean_dice": _round(float(np.mean(known))) if known else None,
            "n": len(d),
        }

    out = block(dice)
    if sites is not None:
        labels = np.asarray([str(s) for s in sites], dtype=object)
        out["per_site"] = {str(s): block(dice[labels == s]) for s in sorted(set(labels.tolist()))}
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)
