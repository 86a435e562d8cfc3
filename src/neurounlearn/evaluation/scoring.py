"""How a task's predictions are read and scored, as a type: regression and classification.

``compare`` and ``evaluate`` ask the run's scoring instead of branching on the task's name:
how the target becomes numbers, what an arm's predictions look like as an array, the score of
one fold, of the pooled predictions and of a held-out site, and the brain-age conventions that
only a numeric target has (bias corrections, the ridge probe's MAE, the OpenBHB score).
Segmentation is scored by :mod:`neurounlearn.evaluation.segmentation` (Dice per class).

Examples:
    >>> scoring_of("regression").headline.metric, scoring_of("classification").numeric
    ('mae', False)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from neurounlearn.choices import check_choice
from neurounlearn.errors import InputError
from neurounlearn.evaluation.metrics import (
    BIAS_CORRECTIONS,
    Headline,
    apply_bias_correction,
    classification_metrics,
    error_split,
    fit_bias_correction,
    headline,
    regression_metrics,
    task_metrics,
)


class Scoring:
    """A regression's scoring; :class:`ClassificationScoring` says what differs."""

    name: ClassVar[str] = "regression"
    headline: ClassVar[Headline] = headline("regression")
    #: whether the brain-age conventions apply: bias corrections, ridge probe MAE, OpenBHB score
    numeric: ClassVar[bool] = True

    def classes(self, target: pd.Series) -> list[str]:
        """The class names a target column holds (none for a number)."""
        return []

    def numbers(self, values: Sequence[Any] | np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """The target as numbers (``NaN``: missing)."""
        return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)

    def readout_classes(self, classes: Sequence[str]) -> list[str] | None:
        """The classes a linear readout predicts probabilities for (``None``: a ridge)."""
        return None

    def prediction_array(self, preds: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
        """A predictions file's predictions as numbers."""
        return preds["prediction"].to_numpy(dtype=float)

    def empty(self, n: int, classes: Sequence[str]) -> np.ndarray:
        """Room for ``n`` rows' predictions, all missing."""
        return np.full(n, np.nan)

    def predicted(self, predictions: np.ndarray) -> np.ndarray:
        """Which rows have a prediction."""
        return np.isfinite(predictions)

    def column(self, predictions: np.ndarray, classes: Sequence[str]) -> Any:
        """A prediction file's column."""
        return predictions

    def fold_score(
        self, y: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
    ) -> dict[str, Any]:
        """The headline figure of one fold (or held-out site) and its rows."""
        m = regression_metrics(y, predictions)
        return {"mae": m["mae"], "n": m["n"]}

    def pooled(
        self,
        y: np.ndarray,
        predictions: np.ndarray,
        sites: np.ndarray,
        classes: Sequence[str],
        *,
        target: str,
    ) -> dict[str, Any]:
        """The task metrics of pooled (out-of-fold) predictions of ``target``, per site too."""
        return {"target": target, **task_metrics(y, predictions, sites)}

    def run_metrics(
        self,
        truth: pd.Series,
        preds: pd.DataFrame,
        rows: np.ndarray,
        sites: np.ndarray | None,
        classes: Sequence[str],
        *,
        target: str,
        val: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """A finished run's task metrics over ``rows`` of its predictions file, against
        ``truth``; both bias corrections fit on the ``val`` rows where they are labelled."""
        y = self.numbers(truth.to_numpy(), classes)
        yhat = self.prediction_array(preds, classes)
        if val is not None and not np.isfinite(y[val]).any():
            val = None  # no labelled validation rows: no bias correction
        block = task_metrics(
            y[rows],
            yhat[rows],
            sites,
            y_true_val=None if val is None else y[val],
            y_pred_val=None if val is None else yhat[val],
        )
        return {
            "kind": "regression",
            "target": target,
            **{k: v for k, v in block.items() if k != "kind"},
        }

    def external(
        self, y: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
    ) -> dict[str, Any]:
        """The figures of a site held out of training: where its error comes from (offset,
        slope, spread)."""
        return error_split(y, predictions)

    def corrected(
        self, y: np.ndarray, predictions: np.ndarray, split: np.ndarray, test: np.ndarray
    ) -> list[np.ndarray | None]:
        """The test rows' predictions under each of :data:`BIAS_CORRECTIONS` (Cole's, the
        offset), fit on the labelled validation rows only (``None``: too few to fit)."""
        val = (split == "val") & np.isfinite(y)
        out: list[np.ndarray | None] = []
        for method in BIAS_CORRECTIONS:
            try:
                a, b = fit_bias_correction(y[val], predictions[val], method=method)
            except InputError:
                out.append(None)
                continue
            fixed = apply_bias_correction(predictions[test], a, b, method=method, y_true=y[test])
            out.append(fixed)
        return out

    def table_columns(self, task: dict[str, Any]) -> dict[str, Any]:
        """An arm's task figures as columns of ``comparison.csv``."""
        bias = task.get("bias") or {}
        return {
            "mae": task.get("mae"),
            "sd_over_folds": task.get("sd_over_folds"),
            "r2": task.get("r2"),
            "bias_slope": bias.get("slope"),
            "spearman_delta_target": bias.get("spearman_delta_age"),
            "bias_corrected_mae": task.get("bias_corrected_mae"),
        }


class ClassificationScoring(Scoring):
    """Classification: class indices as numbers, probabilities per class as predictions."""

    name: ClassVar[str] = "classification"
    headline: ClassVar[Headline] = headline("classification")
    numeric: ClassVar[bool] = False

    def classes(self, target: pd.Series) -> list[str]:
        """The labels found, as text, sorted."""
        return sorted(target.dropna().astype(str).unique())

    def numbers(self, values: Sequence[Any] | np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Each label's class index (``NaN``: missing, or a class not in ``classes``)."""
        lookup = {c: float(i) for i, c in enumerate(classes)}
        return np.array(
            [lookup.get(str(v), np.nan) if pd.notna(v) else np.nan for v in values], dtype=float
        )

    def labels(self, y: np.ndarray, classes: Sequence[str]) -> np.ndarray:
        """Class indices back to class names (``None``: missing)."""
        return np.array([classes[int(v)] if np.isfinite(v) else None for v in y], dtype=object)

    def readout_classes(self, classes: Sequence[str]) -> list[str] | None:
        return list(classes)

    def prediction_array(self, preds: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
        """The class probabilities in ``classes`` order (0 for a class the file lacks)."""
        prediction = np.zeros((len(preds), len(classes)))
        for k, name in enumerate(classes):
            if f"prob_{name}" in preds:
                prediction[:, k] = preds[f"prob_{name}"].to_numpy(dtype=float)
        return prediction

    def empty(self, n: int, classes: Sequence[str]) -> np.ndarray:
        return np.full((n, len(classes)), np.nan)

    def predicted(self, predictions: np.ndarray) -> np.ndarray:
        return ~np.isnan(predictions).any(axis=1)

    def column(self, predictions: np.ndarray, classes: Sequence[str]) -> Any:
        """Each row's most probable class (``None`` where the row has no prediction)."""
        return [None if np.isnan(p).any() else classes[int(p.argmax())] for p in predictions]

    def fold_score(
        self, y: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
    ) -> dict[str, Any]:
        m = classification_metrics(self.labels(y, classes), predictions, classes)
        return {"balanced_accuracy": m["balanced_accuracy"], "n": m["n"]}

    def pooled(
        self,
        y: np.ndarray,
        predictions: np.ndarray,
        sites: np.ndarray,
        classes: Sequence[str],
        *,
        target: str,
    ) -> dict[str, Any]:
        return {
            "kind": "classification",
            "target": target,
            **classification_metrics(self.labels(y, classes), predictions, classes, sites),
        }

    def run_metrics(
        self,
        truth: pd.Series,
        preds: pd.DataFrame,
        rows: np.ndarray,
        sites: np.ndarray | None,
        classes: Sequence[str],
        *,
        target: str,
        val: np.ndarray | None = None,
    ) -> dict[str, Any]:
        prob = self.prediction_array(preds, classes)
        block = classification_metrics(
            truth[rows].to_numpy(dtype=object), prob[rows], classes, sites
        )
        return {"kind": "classification", "target": target, **block}

    def external(
        self, y: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
    ) -> dict[str, Any]:
        return self.fold_score(y, predictions, classes)

    def corrected(
        self, y: np.ndarray, predictions: np.ndarray, split: np.ndarray, test: np.ndarray
    ) -> list[np.ndarray | None]:
        """No bias correction for classes."""
        return [None] * len(BIAS_CORRECTIONS)

    def table_columns(self, task: dict[str, Any]) -> dict[str, Any]:
        return {
            "balanced_accuracy": task.get("balanced_accuracy"),
            "sd_over_folds": task.get("sd_over_folds"),
            "auc": task.get("auc"),
            "chance": task.get("chance"),
        }


SCORINGS: dict[str, Scoring] = {s.name: s for s in (Scoring(), ClassificationScoring())}


def scoring_of(task: str) -> Scoring:
    """The scoring of a regression or classification run."""
    check_choice("task", task, SCORINGS)
    return SCORINGS[task]
