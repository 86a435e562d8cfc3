"""Concept erasure on top of unlearning: LEACE, conditional on the target.

Adversarial unlearning pushes a confound out of the embedding but leaves part of it readable.
LEACE (Belrose et al. 2023, "LEACE: Perfect linear concept erasure in closed form", the
``concept-erasure`` package) then removes, in closed form, every direction along which the
embedding covaries with the confound: after erasure no linear probe fit on the rows the eraser
saw reads the confound better than a constant. The eraser is an affine map
``x - (x - bias) @ proj_right.T @ proj_left.T`` of rank at most (levels - 1): applied at
inference, it needs no site column.

When site and target are entangled (one site holds only children), erasing all of site erases
age with it. Conditional erasure first residualises the confound coding on a smooth basis of the
target (cubic splines of a regression target, the classes of a classification target) and
erases only what remains: the confound information beyond what the target explains.

The guarantee holds on the rows the eraser was fit on. On new subjects the eraser's estimation
error can still be read: the confound's class means are estimated in every direction of the
embedding, so what is left grows with the number of directions over the number of fit rows.
``variance`` below 1 keeps only the principal components that hold that share of the fit rows'
variance (the low-variance rest set to its mean) and erases within them: fewer directions, less
estimation error, at some cost to the task. ``benchmarks/erasure_diagnostic.py`` measures both.

Examples:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> site = np.repeat(["a", "b", "c"], 50)
    >>> x = rng.normal(size=(150, 8)) + (site == "b")[:, None] * 2.0
    >>> eraser = ConceptEraser(conditional=False).fit(x, site)
    >>> erased = eraser.transform(x)
    >>> bool(np.abs(erased[site == "b"].mean(0) - erased[site == "a"].mean(0)).max() < 1e-6)
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from neurounlearn.errors import InputError

Kind = Literal["auto", "categorical", "continuous"]
#: A numeric confound with more distinct values than this is taken for continuous by ``auto``.
AUTO_CONTINUOUS_LEVELS = 20


def infer_kind(values: pd.Series) -> str:
    """``continuous`` for a numeric column with more than 20 distinct values, else
    ``categorical`` (site codes written as numbers stay categorical)."""
    numbers = pd.to_numeric(values, errors="coerce")
    numeric = numbers.notna().sum() == values.notna().sum()
    return "continuous" if numeric and numbers.nunique() > AUTO_CONTINUOUS_LEVELS else "categorical"


def target_basis(
    target: np.ndarray, *, task: str, n_knots: int = 5, fit_rows: np.ndarray | None = None
) -> tuple[np.ndarray, Any]:
    """A smooth basis of the target, with an intercept: cubic B-splines (regression, knots at
    quantiles of ``fit_rows``, constant beyond them) or one column per class (classification).
    Returns ``(basis of every row, the fitted transformer or the classes)``."""
    from sklearn.preprocessing import SplineTransformer

    rows = np.ones(len(target), bool) if fit_rows is None else fit_rows
    if task == "classification":
        classes = sorted(pd.unique(pd.Series(target[rows]).dropna()), key=str)
        basis = np.stack([(target == c).astype(float) for c in classes], axis=1)
        return basis, classes
    values = np.asarray(target, dtype=float).reshape(-1, 1)
    spline = SplineTransformer(
        n_knots=n_knots, degree=3, knots="quantile", extrapolation="constant"
    ).fit(values[rows])
    basis = spline.transform(np.nan_to_num(values, nan=float(np.nanmedian(values[rows]))))
    return np.hstack([np.ones((len(values), 1)), basis]), spline


def principal_directions(
    x: np.ndarray, variance: float, *, at_least: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of ``x`` ``(n, d)`` and its principal directions split in two: the leading ones
    that hold ``variance`` of the total (at least ``at_least`` of them), ``(d, m)``, and the
    rest, ``(d, d - m)``. ``variance=1`` keeps every direction."""
    mean = x.mean(axis=0)
    d = x.shape[1]
    if variance >= 1:
        return mean, np.eye(d), np.zeros((d, 0))
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False).reshape(d, d))
    values, vectors = np.clip(values[::-1], 0, None), vectors[:, ::-1]
    total = values.sum()
    share = np.cumsum(values) / total if total > 0 else np.ones(d)
    m = min(d, max(int(np.searchsorted(share, variance - 1e-12) + 1), at_least))
    return mean, vectors[:, :m], vectors[:, m:]


class ConceptEraser(TransformerMixin, BaseEstimator):
    """A scikit-learn transformer that erases one or several confounds from features (LEACE).

    Args:
        conditional: residualise the confound coding on a smooth basis of ``target`` before
            fitting, so that only the confound information beyond the target is erased
            (``fit`` then needs ``target``).
        kind: ``categorical`` (one-hot coding), ``continuous`` (the standardised value) or
            ``auto`` (:func:`infer_kind`: continuous for a numeric column with more than 20
            distinct values); a dict
            gives one kind per confound column.
        target_task: ``regression`` (spline basis) or ``classification`` (class basis) for the
            conditional coding; ``auto``: classification when the target is not numeric.
        n_knots: spline knots of the regression target basis.
        svd_tol: singular values of the whitened cross-covariance below this are not erased
            (``concept-erasure``'s own default).
        variance: share of the fit rows' variance the kept principal components hold, in
            (0, 1]; the other directions are set to their mean before erasing. ``1.0`` (the
            default) keeps every direction: plain LEACE. At least one more component than the
            confounds need is kept, so erasing never removes everything.

    Fitted attributes: ``levels_`` (confound -> levels, or ``None`` for a continuous one),
    ``proj_left_`` ``(d, R)``, ``proj_right_`` ``(R, d)``, ``bias_`` ``(d,)`` (the map
    ``x - (x - bias) @ proj_right.T @ proj_left.T``), ``n_components_`` (principal directions
    kept), ``rank_`` (confound directions erased within them), ``n_features_in_``,
    ``n_fit_rows_``.
    """

    def __init__(
        self,
        conditional: bool = True,
        kind: Kind | Mapping[str, Kind] = "auto",
        target_task: Literal["auto", "regression", "classification"] = "auto",
        n_knots: int = 5,
        svd_tol: float = 0.01,
        variance: float = 1.0,
    ) -> None:
        self.conditional = conditional
        self.kind = kind
        self.target_task = target_task
        self.n_knots = n_knots
        self.svd_tol = svd_tol
        self.variance = variance

    # -- coding -------------------------------------------------------------------------------
    def _frame(self, confound: Any) -> pd.DataFrame:
        if isinstance(confound, pd.DataFrame):
            return confound.reset_index(drop=True)
        if isinstance(confound, pd.Series):
            return confound.reset_index(drop=True).to_frame(confound.name or "confound")
        array = np.asarray(confound, dtype=object)
        if array.ndim == 1:
            return pd.DataFrame({"confound": array})
        return pd.DataFrame(array, columns=[f"confound{i}" for i in range(array.shape[1])])

    def _coding(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The concept matrix of every row and which rows have every confound."""
        blocks, present = [], np.ones(len(frame), bool)
        for name, levels in self.levels_.items():
            column = frame[name]
            present &= column.notna().to_numpy()
            if levels is None:
                mean, sd = self.scales_[name]
                values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
                blocks.append(((values - mean) / sd)[:, None])
            else:
                text = column.astype(str).to_numpy()
                blocks.append(np.stack([text == level for level in levels], 1).astype(float))
        return np.nan_to_num(np.hstack(blocks)), present

    # -- scikit-learn API -----------------------------------------------------------------------
    def fit(self, X: Any, confound: Any, target: Any = None) -> ConceptEraser:
        """Fit the eraser on rows ``X`` ``(n, d)`` with their confound value(s) (a column, or a
        DataFrame of several) and, for conditional erasure, their target. Rows with a missing
        confound (or target) are left out of the fit."""
        from concept_erasure import LeaceFitter

        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise InputError(f"erasure needs a non-empty 2-D feature array, got shape {x.shape}")
        frame = self._frame(confound)
        if len(frame) != len(x):
            raise InputError(f"{len(frame)} confound values for {len(x)} feature rows")
        kinds = self.kind if isinstance(self.kind, Mapping) else {}
        self.levels_: dict[str, list[str] | None] = {}
        self.scales_: dict[str, tuple[float, float]] = {}
        rows = np.isfinite(x).all(axis=1)
        for name in frame.columns:
            column = frame[name]
            kind = kinds.get(name, "auto") if kinds else str(self.kind)
            kind = infer_kind(column) if kind == "auto" else kind
            seen = column[rows & column.notna().to_numpy()]
            if kind == "continuous":
                values = pd.to_numeric(seen, errors="coerce").dropna().to_numpy(dtype=float)
                sd = float(values.std()) if len(values) else 0.0
                if sd == 0:
                    raise InputError(
                        f"confound '{name}' is constant on the rows the eraser is fit on: "
                        "nothing to erase",
                        column=str(name),
                        hint="erase a confound that varies, or leave it out",
                    )
                self.levels_[name] = None
                self.scales_[name] = (float(values.mean()), sd)
            else:
                levels = sorted({str(v) for v in seen})
                if len(levels) < 2:
                    raise InputError(
                        f"confound '{name}' has {len(levels)} level(s) on the rows the eraser "
                        "is fit on: nothing to erase",
                        column=str(name),
                        hint="erase a confound with at least two levels among the training rows",
                    )
                self.levels_[name] = levels
        concept, present = self._coding(frame)
        rows &= present
        if self.conditional:
            if target is None:
                raise InputError(
                    "conditional erasure needs the target",
                    hint="pass the target, or erase with conditional=False",
                )
            y = np.asarray(target, dtype=object)
            task = self.target_task
            if task == "auto":
                numeric = pd.to_numeric(pd.Series(y), errors="coerce")
                task = (
                    "regression"
                    if numeric.notna().sum() == pd.notna(y).sum()
                    else ("classification")
                )
            if task == "regression":
                yv = pd.to_numeric(pd.Series(y), errors="coerce").to_numpy(dtype=float)
                rows &= np.isfinite(yv)
                basis, _ = target_basis(yv, task=task, n_knots=self.n_knots, fit_rows=rows)
            else:
                rows &= pd.notna(pd.Series(y)).to_numpy()
                basis, _ = target_basis(y, task=task, fit_rows=rows)
            beta, *_ = np.linalg.lstsq(basis[rows], concept[rows], rcond=None)
            concept = concept - basis @ beta
        if rows.sum() < 2:
            raise InputError("erasure needs at least two rows with the confound (and target)")
        if not 0 < self.variance <= 1:
            raise InputError(
                f"variance must be in (0, 1], got {self.variance}",
                hint="e.g. 0.95 (keep the components holding 95 % of the variance) or 1.0",
            )
        needed = sum(1 if lv is None else max(len(lv) - 1, 1) for lv in self.levels_.values())
        mean, kept, dropped = principal_directions(x[rows], self.variance, at_least=needed + 1)
        coords = (x[rows] - mean) @ kept
        fitter = LeaceFitter.fit(
            torch.from_numpy(coords),
            torch.from_numpy(concept[rows]),
            svd_tol=self.svd_tol,
        )
        eraser = fitter.eraser
        left = eraser.proj_left.numpy()
        right = eraser.proj_right.numpy()
        inner_bias = eraser.bias.numpy() if eraser.bias is not None else np.zeros(kept.shape[1])
        # x - (x - b) @ M.T with M = dropped @ dropped.T + kept @ left @ right @ kept.T: the
        # dropped directions go to their mean, LEACE acts within the kept ones
        strength = np.linalg.norm(left, axis=0) * np.linalg.norm(right, axis=1)
        active = strength > 1e-10
        self.proj_left_ = np.hstack([dropped, kept @ left[:, active]])
        self.proj_right_ = np.vstack([dropped.T, right[active] @ kept.T])
        self.bias_ = mean + kept @ inner_bias
        self.rank_ = int(active.sum())
        self.n_components_ = int(kept.shape[1])
        self.n_features_in_ = x.shape[1]
        self.n_fit_rows_ = int(rows.sum())
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Erase the fitted confound(s) from ``X`` ``(n, d)``; needs no confound value."""
        check_is_fitted(self, "proj_left_")
        x = np.asarray(X, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise InputError(
                f"the eraser was fit on {self.n_features_in_} features, got shape {x.shape}"
            )
        return x - ((x - self.bias_) @ self.proj_right_.T) @ self.proj_left_.T

    def fit_transform(self, X: Any, confound: Any = None, target: Any = None, **_: Any) -> Any:
        return self.fit(X, confound, target).transform(X)

    def module(self) -> EraserLayer:
        """The fitted eraser as a torch layer (buffers only, saved with a model's weights)."""
        check_is_fitted(self, "proj_left_")
        layer = EraserLayer(self.n_features_in_, self.proj_left_.shape[1])
        layer.set(self.proj_left_, self.proj_right_, self.bias_)
        return layer


class EraserLayer(nn.Module):
    """``x - (x - bias) @ proj_right.T @ proj_left.T``: a fitted eraser inside a model, between
    the encoder and the heads. Its tensors are buffers, so ``state_dict`` holds them and a
    weights-only load restores them."""

    proj_left: torch.Tensor
    proj_right: torch.Tensor
    bias: torch.Tensor

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.register_buffer("proj_left", torch.zeros(dim, rank))
        self.register_buffer("proj_right", torch.zeros(rank, dim))
        self.register_buffer("bias", torch.zeros(dim))

    def set(self, left: np.ndarray, right: np.ndarray, bias: np.ndarray) -> None:
        """Load a fitted eraser. A layer at least as wide as the eraser's rank keeps its shape,
        the unused directions zero (the layer of ``erasure.when=during`` is as wide as the
        embedding, so its buffers keep one shape in every checkpoint); a narrower one takes the
        eraser's."""
        device, width = self.proj_left.device, self.proj_left.shape[1]
        if left.shape[1] <= width:
            pad = width - left.shape[1]
            left = np.hstack([left, np.zeros((left.shape[0], pad))])
            right = np.vstack([right, np.zeros((pad, right.shape[1]))])
        self.proj_left = torch.as_tensor(left, dtype=torch.float32, device=device)
        self.proj_right = torch.as_tensor(right, dtype=torch.float32, device=device)
        self.bias = torch.as_tensor(bias, dtype=torch.float32, device=device)

    @property
    def rank(self) -> int:
        return int(self.proj_left.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = (x - self.bias.to(x.dtype)) @ self.proj_right.to(x.dtype).T
        return x - delta @ self.proj_left.to(x.dtype).T


def erasure_rank_problem(dim: int, levels: Sequence[int]) -> str | None:
    """Why an embedding of width ``dim`` cannot hold the erasure of confounds with these level
    counts (a continuous confound counts 2), or ``None``."""
    rank = sum(max(k - 1, 1) for k in levels)
    if rank >= dim:
        return (
            f"erasing needs {rank} direction(s) (levels - 1 per categorical confound, 1 per "
            f"continuous one) but the embedding has only {dim}: nothing would be left"
        )
    return None


# -- inside a run ---------------------------------------------------------------------------------
def erase_kinds(
    erase: Sequence[Any], frame: pd.DataFrame, unlearned: Mapping[str, str]
) -> dict[str, str]:
    """Each erased confound's kind: as configured, else the unlearned confound's, else inferred
    from the column (continuous for a numeric one with more than 20 distinct values)."""
    out = {}
    for e in erase:
        if e.kind != "auto":
            out[e.name] = e.kind
        elif e.name in unlearned:
            out[e.name] = unlearned[e.name]
        elif e.name not in frame.columns:  # check_erase names the missing column
            out[e.name] = "categorical"
        else:
            out[e.name] = infer_kind(frame[e.name])
    return out


def check_erase(
    erase: Sequence[Any],
    frame: pd.DataFrame,
    train: np.ndarray,
    *,
    kinds: Mapping[str, str],
    target: str,
    task: str,
    embedding_dim: int,
    path: Any,
) -> None:
    """Every problem that would stop the erasure, raised before training starts."""
    if not erase:
        return
    if task == "segmentation":
        raise InputError(
            "erasure applies to regression and classification runs, not segmentation",
            file=path,
            hint="erase nothing (leave the erase list empty)",
        )
    names = [e.name for e in erase]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(
            f"the erase list names '{repeated[0]}' twice",
            hint="name each confound to erase once",
        )
    levels = []
    for i, e in enumerate(erase):
        if e.name not in frame.columns:
            raise InputError(
                f"confound to erase '{e.name}': no such column",
                file=path,
                column=e.name,
                hint=f"columns are: {', '.join(map(str, frame.columns[:12]))}"
                + (", ..." if len(frame.columns) > 12 else ""),
            )
        if e.name == target:
            raise InputError(
                f"confound to erase '{e.name}': that is the target; erasing it leaves nothing "
                "to predict",
                file=path,
                column=e.name,
                hint="erase a confound, not the target",
            )
        column = frame.loc[train, e.name].dropna()
        if kinds[e.name] == "continuous":
            values = pd.to_numeric(column, errors="coerce")
            if values.isna().any():
                raise InputError(
                    f"confound to erase '{e.name}': continuous, but a training row is not a "
                    f"number ({column[values.isna()].iloc[0]!r})",
                    file=path,
                    column=e.name,
                    hint=f"erase it as categorical (erase.{i}.kind=categorical) or fix it",
                )
            if values.nunique() < 2:
                raise InputError(
                    f"confound to erase '{e.name}': constant on the training rows, nothing to "
                    "erase",
                    file=path,
                    column=e.name,
                    hint="erase a confound that varies, or leave it out",
                )
            levels.append(2)
        else:
            k = column.astype(str).nunique()
            if k < 2:
                raise InputError(
                    f"confound to erase '{e.name}': {k} level(s) among the training rows, "
                    "nothing to erase",
                    file=path,
                    column=e.name,
                    hint="erase a confound with at least two levels among the training rows",
                )
            levels.append(k)
    problem = erasure_rank_problem(embedding_dim, levels)
    if problem:
        raise InputError(
            problem,
            file=path,
            hint=f"raise model.embedding_dim above {sum(max(k - 1, 1) for k in levels)} "
            "(e.g. model.embedding_dim=64), or erase fewer confounds",
        )


def fit_run_eraser(
    erase: Sequence[Any],
    features: np.ndarray,
    frame: pd.DataFrame,
    fit_rows: np.ndarray,
    *,
    kinds: Mapping[str, str],
    target: np.ndarray,
    task: str,
    variance: float,
) -> ConceptEraser:
    """The eraser of a run: fit on ``fit_rows`` (the training rows) of every erased confound
    at once. Conditional when any erased confound asks for it."""
    conditional = any(e.conditional for e in erase)
    confounds = frame[[e.name for e in erase]].iloc[np.flatnonzero(fit_rows)]
    return ConceptEraser(
        conditional=conditional,
        kind={e.name: kinds[e.name] for e in erase},  # type: ignore[misc]
        target_task="classification" if task == "classification" else "regression",
        n_knots=max(e.n_knots for e in erase),
        variance=variance,
    ).fit(features[fit_rows], confounds, target[fit_rows] if conditional else None)


#: The head refit: at most this many full-batch steps, stopping after this many without a
#: better validation loss.
HEAD_STEPS, HEAD_PATIENCE = 2000, 100


def refit_head(
    head: nn.Module,
    features: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    *,
    task: str,
    lr: float,
    weight_decay: float,
    seed: int,
    class_weight: torch.Tensor | None = None,
    task_loss: str = "mse",
) -> int:
    """Refit the task head on erased embeddings: full-batch Adam from its trained weights, the
    best validation loss kept (the training loss when no validation row has a target). Returns
    the steps run."""
    from neurounlearn.losses import masked_cross_entropy, masked_regression_loss

    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    target = torch.as_tensor(y, dtype=torch.float32)
    fit_rows = torch.as_tensor(train & np.isfinite(y))
    val_rows = torch.as_tensor(val & np.isfinite(y))
    watch = val_rows if bool(val_rows.any()) else fit_rows

    def loss(rows: torch.Tensor) -> torch.Tensor:
        out = head(x[rows])
        out = out.squeeze(-1) if out.ndim == 2 and out.shape[-1] == 1 else out
        if task == "classification":
            return masked_cross_entropy(out, target[rows], class_weight)
        return masked_regression_loss(out, target[rows], task_loss)

    optimiser = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, since, steps = float("inf"), None, 0, 0
    for steps in range(1, HEAD_STEPS + 1):  # noqa: B007 - the count is returned
        head.train()
        optimiser.zero_grad()
        loss(fit_rows).backward()
        optimiser.step()
        head.eval()
        with torch.no_grad():
            now = float(loss(watch))
        if now < best - 1e-7:
            best, since = now, 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            since += 1
            if since >= HEAD_PATIENCE:
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return steps
