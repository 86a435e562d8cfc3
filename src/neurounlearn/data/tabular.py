"""Turn a validated table into model inputs, with every statistic fit on the training split only.

:class:`TableEncoding` is saved inside ``model.pt`` so that ``predict`` and ``embed`` apply the
very same scaling and confound coding to new data (which needs no site column).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.config import ConfoundConfig
from neurounlearn.losses import IGNORE
from neurounlearn.query import select


def subset_mask(frame: pd.DataFrame, query: str | None) -> np.ndarray:
    """Rows selected by a whitelisted ``query`` (all rows when ``query`` is None)."""
    return select(frame, query)


def _numeric(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner edges of ``bins`` quantile bins of the finite ``values`` (ties merged).

    Examples:
        >>> quantile_edges(np.arange(10.0), 2)
        [4.5]
    """
    v = values[np.isfinite(values)]
    if v.size == 0:
        return []
    edges = np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1])
    inner = np.unique(edges)
    # an edge at the minimum would leave its lower bin empty
    return [float(e) for e in inner if e > v.min()]


def _bin_labels(edges: Sequence[float]) -> list[str]:
    bounds = ["-inf", *(f"{e:.4g}" for e in edges), "inf"]
    return [f"[{lo}, {hi})" for lo, hi in itertools.pairwise(bounds)]


def _bins(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each value (``-1`` where it is not finite)."""
    out = np.digitize(values, np.asarray(edges, dtype=float)).astype(np.int64)
    out[~np.isfinite(values)] = IGNORE
    return out


def has_path(values: pd.Series) -> np.ndarray:
    """Whether each cell holds a path (non-empty text), e.g. a label map for segmentation."""
    return values.map(lambda v: isinstance(v, str) and bool(v.strip())).to_numpy(dtype=bool)


def _index_codes(index: np.ndarray) -> np.ndarray:
    """Float class indices (NaN: none) as integer codes (``-1``: none)."""
    return np.where(np.isfinite(index), np.nan_to_num(index), IGNORE).astype(np.int64)


def _inverse_frequency(codes: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(codes[codes != IGNORE], minlength=n_classes).astype(float)
    n = counts.sum()
    return np.where(counts > 0, n / (n_classes * np.maximum(counts, 1)), 0.0)


@dataclass
class TableEncoding:
    """Feature scaling, target coding and confound coding, fit on the training rows.

    Attributes:
        feature_columns: the training feature columns, in order.
        feature_mean, feature_scale: standardisation of each feature (train split).
        target: the target column (None when the run has none).
        task: ``regression``, ``classification`` or ``segmentation``.
        target_mean, target_std: standardisation of a regression target (train split).
        target_classes: a classification target's classes (as text), seen in the train split;
            a segmentation's class names by label value (background first).
        confound_levels: per confound, its classes: the levels seen in the training rows that
            fall inside the confound's ``subset`` (or, binned, one label per quantile bin; empty
            for a correlation confound). Other levels get code ``-1`` (ignored).
        confound_methods: per confound, ``categorical``, ``binned`` or ``correlation``.
        confound_edges: binned confounds: inner quantile edges (training split).
        confound_stats: correlation confounds: ``[mean, std]`` (training split).
        condition_edges: target-conditioned confounds with a regression target: inner quantile
            edges of the target (training split); with a classification target, none (the
            classes are the bins).
    """

    feature_columns: list[str]
    feature_mean: list[float]
    feature_scale: list[float]
    target: str | None
    target_mean: float = 0.0
    target_std: float = 1.0
    confound_levels: dict[str, list[str]] = field(default_factory=dict)
    confound_subsets: dict[str, str | None] = field(default_factory=dict)
    task: str = "regression"
    target_classes: list[str] = field(default_factory=list)
    confound_methods: dict[str, str] = field(default_factory=dict)
    confound_edges: dict[str, list[float]] = field(default_factory=dict)
    confound_stats: dict[str, list[float]] = field(default_factory=dict)
    condition_edges: dict[str, list[float] | None] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        train: np.ndarray,
        feature_columns: Sequence[str],
        target: str | None,
        confounds: Sequence[ConfoundConfig],
        *,
        task: str = "regression",
        classes: Sequence[str] = (),
    ) -> TableEncoding:
        """Fit on the ``train`` rows; ``classes``: a segmentation's class names by label value."""
        x = frame.loc[train, list(feature_columns)].to_numpy(dtype=np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[~np.isfinite(scale) | (scale < 1e-12)] = 1.0
        t_mean, t_std = 0.0, 1.0
        names: list[str] = []
        y_train = np.zeros(0)
        if task == "segmentation":
            names = list(classes)
        elif target is not None and task == "classification":
            known = frame.loc[train, target].dropna()
            names = sorted(known.astype(str).unique().tolist())
        elif target is not None:
            y_train = _numeric(frame.loc[train, target])
            y = y_train[np.isfinite(y_train)]
            if y.size:
                t_mean = float(y.mean())
                t_std = float(y.std()) if y.std() > 1e-12 else 1.0
        levels: dict[str, list[str]] = {}
        subsets: dict[str, str | None] = {}
        methods: dict[str, str] = {}
        edges: dict[str, list[float]] = {}
        stats: dict[str, list[float]] = {}
        conditions: dict[str, list[float] | None] = {}
        for c in confounds:
            inside = train & subset_mask(frame, c.subset)
            subsets[c.name] = c.subset
            if c.kind == "categorical":
                methods[c.name] = "categorical"
                values = frame.loc[inside, c.name].dropna().astype(str)
                levels[c.name] = sorted(values.unique().tolist())
            elif c.method == "binned":
                methods[c.name] = "binned"
                edges[c.name] = quantile_edges(_numeric(frame.loc[inside, c.name]), c.bins)
                levels[c.name] = _bin_labels(edges[c.name])
            else:
                methods[c.name] = "correlation"
                v = _numeric(frame.loc[inside, c.name])
                v = v[np.isfinite(v)]
                std = float(v.std()) if v.size and v.std() > 1e-12 else 1.0
                stats[c.name] = [float(v.mean()) if v.size else 0.0, std]
                levels[c.name] = []
            if c.conditional:
                if task == "classification":
                    conditions[c.name] = None
                else:
                    conditions[c.name] = quantile_edges(y_train, c.target_bins or 0)
        return cls(
            feature_columns=list(feature_columns),
            feature_mean=mean.tolist(),
            feature_scale=scale.tolist(),
            target=target,
            target_mean=t_mean,
            target_std=t_std,
            confound_levels=levels,
            confound_subsets=subsets,
            task=task,
            target_classes=names,
            confound_methods=methods,
            confound_edges=edges,
            confound_stats=stats,
            condition_edges=conditions,
        )

    # -- what the model needs ------------------------------------------------------------------
    def method(self, name: str) -> str:
        return self.confound_methods.get(name, "categorical")

    @property
    def n_outputs(self) -> int:
        """Width of the task head: 1 for regression, the number of classes otherwise."""
        return len(self.target_classes) if self.task != "regression" else 1

    def condition_size(self, name: str) -> int:
        """Target bins a target-conditioned confound's head sees (0: not conditioned)."""
        if name not in self.condition_edges:
            return 0
        edges = self.condition_edges[name]
        return len(self.target_classes) if edges is None else len(edges) + 1

    # -- transforms ----------------------------------------------------------------------------
    def features(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame[self.feature_columns].to_numpy(dtype=np.float64)
        return ((x - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)).astype(
            np.float32
        )

    def class_index(self, values: pd.Series) -> np.ndarray:
        """Class index of each label of a classification target (NaN: missing or unseen)."""
        lookup = {c: float(i) for i, c in enumerate(self.target_classes)}
        return np.array(
            [np.nan if pd.isna(v) else lookup.get(str(v), np.nan) for v in values],
            dtype=np.float64,
        )

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised regression targets or class indices; NaN where missing (or where the
        frame has no target column, or a class unseen in training)."""
        if self.target is None or self.target not in frame:
            return np.full(len(frame), np.nan, dtype=np.float32)
        if self.task == "segmentation":  # 1 where the row has a label map
            return np.where(has_path(frame[self.target]), 1.0, np.nan).astype(np.float32)
        if self.task == "classification":
            return self.class_index(frame[self.target]).astype(np.float32)
        y = _numeric(frame[self.target])
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def unscale_target(self, y: np.ndarray) -> np.ndarray:
        return y * self.target_std + self.target_mean

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """``(N, C)`` confound classes; ``-1`` for missing, unseen or outside-subset rows, and
        for correlation confounds (see :meth:`values`)."""
        out = np.full((len(frame), len(self.confound_levels)), IGNORE, dtype=np.int64)
        for j, (name, levels) in enumerate(self.confound_levels.items()):
            if name not in frame:
                continue
            inside = subset_mask(frame, self.confound_subsets.get(name))
            method = self.method(name)
            if method == "correlation":
                continue
            if method == "binned":
                out[:, j] = np.where(
                    inside, _bins(_numeric(frame[name]), self.confound_edges[name]), IGNORE
                )
                continue
            lookup = {lvl: i for i, lvl in enumerate(levels)}
            values = frame[name]
            for i, (v, ok) in enumerate(zip(values, inside, strict=True)):
                if ok and not pd.isna(v):
                    out[i, j] = lookup.get(str(v), IGNORE)
        return out

    def values(self, frame: pd.DataFrame) -> np.ndarray:
        """``(N, C)`` standardised values of correlation confounds; NaN elsewhere."""
        out = np.full((len(frame), len(self.confound_levels)), np.nan, dtype=np.float32)
        for j, name in enumerate(self.confound_levels):
            if self.method(name) != "correlation" or name not in frame:
                continue
            mean, std = self.confound_stats[name]
            v = (_numeric(frame[name]) - mean) / std
            inside = subset_mask(frame, self.confound_subsets.get(name))
            out[:, j] = np.where(inside, v, np.nan)
        return out

    def conditions(self, frame: pd.DataFrame) -> np.ndarray:
        """``(N, C)`` target bin of each row for target-conditioned confounds; ``-1`` where the
        confound is not conditioned or the row has no target."""
        out = np.full((len(frame), len(self.confound_levels)), IGNORE, dtype=np.int64)
        if self.target is None or self.target not in frame:
            return out
        for j, name in enumerate(self.confound_levels):
            if name not in self.condition_edges:
                continue
            edges = self.condition_edges[name]
            if edges is None:
                idx = self.class_index(frame[self.target])
                out[:, j] = _index_codes(idx)
            else:
                out[:, j] = _bins(_numeric(frame[self.target]), edges)
        return out

    def class_weights(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """Inverse-frequency weights per confound class over the given rows' codes (classes of
        categorical and binned confounds only)."""
        return {
            name: _inverse_frequency(codes[:, j], len(levels))
            for j, (name, levels) in enumerate(self.confound_levels.items())
            if self.method(name) != "correlation"
        }

    def task_class_weights(self, y: np.ndarray) -> np.ndarray:
        """Inverse-frequency weights of a classification target's classes over rows ``y``."""
        return _inverse_frequency(_index_codes(y), len(self.target_classes))

    def condition_priors(
        self, codes: np.ndarray, conditions: np.ndarray, weights: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Per target-conditioned confound, ``(T, K)``: ``p(confound | target bin)`` over the
        given (training) rows, reweighted by the adversary's class ``weights`` and renormalised
        (the weighted cross-entropy's optimum when the features add nothing to the bin). A bin
        without rows gets the uniform distribution."""
        priors = {}
        for j, (name, levels) in enumerate(self.confound_levels.items()):
            size = self.condition_size(name)
            if not size:
                continue
            k = len(levels)
            ok = (codes[:, j] != IGNORE) & (conditions[:, j] >= 0)
            counts = np.zeros((size, k))
            np.add.at(counts, (conditions[ok, j], codes[ok, j]), 1.0)
            weighted = counts * weights.get(name, np.ones(k))[None, :]
            totals = weighted.sum(axis=1, keepdims=True)
            priors[name] = np.where(totals > 0, weighted / np.maximum(totals, 1e-12), 1.0 / k)
        return priors

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableEncoding:
        return cls(**d)
