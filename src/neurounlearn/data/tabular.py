"""Turn a validated table into model inputs, with every statistic fit on the training split only.

:class:`TableEncoding` is saved inside ``model.pt`` so that ``predict`` and ``embed`` apply the
very same scaling and confound coding to new data (which needs no site column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.config import ConfoundConfig
from neurounlearn.losses import IGNORE


def subset_mask(frame: pd.DataFrame, query: str | None) -> np.ndarray:
    """Rows selected by a pandas ``query`` (all rows when ``query`` is None)."""
    if not query:
        return np.ones(len(frame), dtype=bool)
    return frame.index.isin(frame.query(query).index)


@dataclass
class TableEncoding:
    """Feature scaling, target scaling and confound classes, fit on the training rows.

    Attributes:
        feature_columns: the training feature columns, in order.
        feature_mean, feature_scale: standardisation of each feature (train split).
        target: the target column (None when the run has none).
        target_mean, target_std: standardisation of the regression target (train split).
        confound_levels: per confound, its classes: the levels seen in the training rows that
            fall inside the confound's ``subset``. Other levels get code ``-1`` (ignored).
    """

    feature_columns: list[str]
    feature_mean: list[float]
    feature_scale: list[float]
    target: str | None
    target_mean: float = 0.0
    target_std: float = 1.0
    confound_levels: dict[str, list[str]] = field(default_factory=dict)
    confound_subsets: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        train: np.ndarray,
        feature_columns: Sequence[str],
        target: str | None,
        confounds: Sequence[ConfoundConfig],
    ) -> TableEncoding:
        x = frame.loc[train, list(feature_columns)].to_numpy(dtype=np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[~np.isfinite(scale) | (scale < 1e-12)] = 1.0
        t_mean, t_std = 0.0, 1.0
        if target is not None:
            y = pd.to_numeric(frame.loc[train, target], errors="coerce").to_numpy(dtype=float)
            y = y[np.isfinite(y)]
            if y.size:
                t_mean = float(y.mean())
                t_std = float(y.std()) if y.std() > 1e-12 else 1.0
        levels: dict[str, list[str]] = {}
        subsets: dict[str, str | None] = {}
        for c in confounds:
            inside = train & subset_mask(frame, c.subset)
            values = frame.loc[inside, c.name].dropna().astype(str)
            levels[c.name] = sorted(values.unique().tolist())
            subsets[c.name] = c.subset
        return cls(
            feature_columns=list(feature_columns),
            feature_mean=mean.tolist(),
            feature_scale=scale.tolist(),
            target=target,
            target_mean=t_mean,
            target_std=t_std,
            confound_levels=levels,
            confound_subsets=subsets,
        )

    # -- transforms ----------------------------------------------------------------------------
    def features(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame[self.feature_columns].to_numpy(dtype=np.float64)
        return ((x - np.asarray(self.feature_mean)) / np.asarray(self.feature_scale)).astype(
            np.float32
        )

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        """Standardised targets, NaN where missing (or where the frame has no target column)."""
        if self.target is None or self.target not in frame:
            return np.full(len(frame), np.nan, dtype=np.float32)
        y = pd.to_numeric(frame[self.target], errors="coerce").to_numpy(dtype=np.float64)
        return ((y - self.target_mean) / self.target_std).astype(np.float32)

    def unscale_target(self, y: np.ndarray) -> np.ndarray:
        return y * self.target_std + self.target_mean

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """``(N, C)`` confound classes; ``-1`` for missing, unseen or outside-subset rows."""
        out = np.full((len(frame), len(self.confound_levels)), IGNORE, dtype=np.int64)
        for j, (name, levels) in enumerate(self.confound_levels.items()):
            if name not in frame:
                continue
            lookup = {lvl: i for i, lvl in enumerate(levels)}
            inside = subset_mask(frame, self.confound_subsets.get(name))
            values = frame[name]
            for i, (v, ok) in enumerate(zip(values, inside, strict=True)):
                if ok and not pd.isna(v):
                    out[i, j] = lookup.get(str(v), IGNORE)
        return out

    def class_weights(self, codes: np.ndarray) -> dict[str, np.ndarray]:
        """Inverse-frequency weights per confound class over the given rows' codes."""
        weights = {}
        for j, (name, levels) in enumerate(self.confound_levels.items()):
            col = codes[:, j]
            counts = np.bincount(col[col != IGNORE], minlength=len(levels)).astype(float)
            n = counts.sum()
            w = np.where(counts > 0, n / (len(levels) * np.maximum(counts, 1)), 0.0)
            weights[name] = w
        return weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableEncoding:
        return cls(**d)
