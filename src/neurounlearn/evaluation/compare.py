"""``compare``: every arm on identical, seeded cross-fitting splits, side by side.

Arms:

* ``raw``: a linear readout (ridge; logistic regression for classification) of the raw
  features, fit on each fold's training rows.
* ``combat`` / ``combat-inference``: the same readout after ComBat (neuroHarmonize; ComBat-GAM
  with smooth terms), fit on the training rows only. ``combat`` harmonises test subjects with
  every covariate, the target included when it is one (the field's habit, which uses the test
  subjects' true target); ``combat-inference`` harmonises them with the target covariate set to
  its training mean, as at inference, where the target is what is being predicted.
* ``baseline``, ``iterative``, ``iterative-joint``, ``grl``: networks trained by ``fit``.
* ``baseline+combat`` / ``baseline+combat-inference``: ComBat on the baseline network's
  embeddings (fit on the training rows), then the linear readout.

With ``--folds K`` every subject is in exactly one test fold, so each arm gives an out-of-fold
prediction and embedding for every subject. Task metrics are computed on the pooled
out-of-fold predictions; the leakage audit probes each fold's test embeddings (a fresh probe per
fold) and reports the mean over folds with a t-interval across folds. With
``external="leave-one-site-out"`` each site is held out in turn: a scanner never seen in
training. ComBat has no parameters for an unseen site, so its arms say so instead of giving a
number.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from neurounlearn.atomic import atomic_path, check_out, write_csv, write_json, write_text
from neurounlearn.choices import MODEL_ARMS
from neurounlearn.config import RunConfig, switch_strategy
from neurounlearn.data.overlap import entanglement_problem, unlearns_site_everywhere
from neurounlearn.errors import InputError, require
from neurounlearn.evaluation.reference import ReferenceComBat, linear_readout
from neurounlearn.evaluation.scoring import Scoring, scoring_of
from neurounlearn.formatting import fmt_number
from neurounlearn.results import probe_cells
from neurounlearn.rundir import (
    COMPARISON_CSV,
    COMPARISON_JSON,
    CONFIG,
    EMBEDDINGS,
    EXTERNAL_PREDICTIONS,
    FIRST_FOLD_EMBEDDINGS,
    FOLDS,
    OOF_PREDICTIONS,
    PREDICTIONS,
)

#: Readouts of raw features.
RAW_ARMS = ("raw", "combat", "combat-inference")
#: ComBat on the baseline network's embeddings.
EMBEDDING_ARMS = ("baseline+combat", "baseline+combat-inference")
#: Concept erasure (LEACE, ``cfg.erase``; default: site, conditional) on the raw features, or
#: on a model arm's embedding with its task head refit: what ``fit --erase`` gives.
ERASE_ARMS = ("raw+erase", *(f"{arm}+erase" for arm in MODEL_ARMS))
ARM_NAMES = (*RAW_ARMS, *MODEL_ARMS, *EMBEDDING_ARMS, *ERASE_ARMS)
DEFAULT_ARMS = ("raw", "combat", "baseline", "baseline+combat", "iterative", "grl")
EXTERNAL_VIEWS = ("leave-one-site-out",)
UNSEEN_SITE = "cannot apply to an unseen site"


@dataclass(frozen=True)
class CombatSettings:
    """ComBat's covariates (preserved, not removed) and ComBat-GAM smooth terms."""

    covariates: tuple[str, ...] = ()
    smooth_terms: tuple[str, ...] = ()


@dataclass
class ArmFold:
    """One arm's result on one split (a fold or a held-out site)."""

    arm: str
    view: str  # "fold" | "external"
    key: str  # fold number ("1".."K") or held-out site
    test_rows: np.ndarray
    prediction: np.ndarray | None  # regression: (n_test,); classification: (n_test, K) probs
    corrected: np.ndarray | None = None  # regression: bias-corrected (fit on val rows)
    offset_corrected: np.ndarray | None = None  # regression: age-dependent offset removed
    leakage: dict[str, Any] | None = None
    ridge_probe_mae: float | None = None
    error: str | None = None
    seconds: float = 0.0
    run_dir: str | None = None
    embeddings: np.ndarray | None = None  # fold 1 only: every row, for the report's plots


@dataclass
class Job:
    """A unit of work for a worker: one model arm, or all raw-feature arms, on one split."""

    view: str
    key: str
    split: np.ndarray
    arms: tuple[str, ...]  # model arm (plus its embedding arms), or raw arms
    cfg: RunConfig
    run_dir: Path | None = None
    keep_embeddings: bool = False


@dataclass
class Context:
    """What every job needs besides its split: the checked data and the settings."""

    frame: pd.DataFrame
    feature_columns: list[str]
    task: str
    classes: list[str]
    confounds: list[str]
    kinds: dict[str, str]
    combat: CombatSettings
    target: str
    site_column: str
    cfg: RunConfig
    threads: int = 1

    @property
    def scoring(self) -> Scoring:
        """How this task's predictions are read and scored."""
        return scoring_of(self.task)


# -- checks --------------------------------------------------------------------------------------


def parse_arms(text: str | Sequence[str], *, erase_during: bool = False) -> list[str]:
    """``"raw,combat,baseline"`` -> arm names, checked; ``baseline+combat`` adds ``baseline``,
    ``iterative+erase`` adds ``iterative`` (whose fit it erases) unless ``erase_during``
    (erasure inside training: the erased arm is a fit of its own)."""
    items = text.split(",") if isinstance(text, str) else list(text)
    arms = [a.strip() for a in items if a.strip()]
    if not arms:
        raise InputError("no arms given", hint=f"e.g. the default arms {','.join(DEFAULT_ARMS)}")
    unknown = [a for a in arms if a not in ARM_NAMES]
    if unknown:
        raise InputError(
            f"unknown arm(s) {', '.join(repr(a) for a in unknown)}",
            hint=f"arms are {', '.join(ARM_NAMES)}",
        )
    out = list(dict.fromkeys(arms))
    if any(a in EMBEDDING_ARMS for a in out) and "baseline" not in out:
        out.insert(out.index(next(a for a in out if a in EMBEDDING_ARMS)), "baseline")
    for arm in [a for a in out if a.endswith("+erase") and a != "raw+erase"]:
        base = arm.removesuffix("+erase")
        if base not in out and not erase_during:  # the erased arm reuses its model arm's fit
            out.insert(out.index(arm), base)
    return out


def check_arms(cfg: RunConfig, arms: Sequence[str], *, external: str | None) -> None:
    """What ``compare`` can refuse from the settings alone, before reading any data."""
    if cfg.data.input == "image":
        raw = [a for a in arms if a in RAW_ARMS]
        if raw:
            raise InputError(
                f"arm(s) {', '.join(raw)} need a feature table, but the input is images: "
                "ComBat and the raw readout cannot use voxels as features",
                hint="use baseline+combat (ComBat on a baseline network's embeddings) instead",
            )
    if external is not None and external not in EXTERNAL_VIEWS:
        raise InputError(
            f"unknown external view '{external}'", hint=f"use {' or '.join(EXTERNAL_VIEWS)}"
        )
    unlearning = [a for a in arms if a in MODEL_ARMS and a != "baseline"]
    if unlearning and not cfg.confounds:
        raise InputError(
            f"arm(s) {', '.join(unlearning)} need something to unlearn",
            hint="give a confound to unlearn (e.g. confounds.0.name=site)",
        )


def check_data(
    cfg: RunConfig,
    arms: Sequence[str],
    frame: pd.DataFrame,
    id_column: str,
    *,
    folds: int,
    combat: CombatSettings,
) -> None:
    """What ``compare`` can refuse once the manifest is read: sites, folds, covariates."""
    site = cfg.data.site_column
    path = cfg.data.path
    sites = frame[site].dropna().astype(str).unique()
    if len(sites) < 2:
        raise InputError(
            f"compare needs at least two sites; '{site}' holds {len(sites)}"
            + (f" ({sites[0]})" if len(sites) else ""),
            file=path,
            column=site,
            hint="site harmonisation needs several sites; name the site column with "
            "data.site_column=COLUMN",
        )
    if folds < 2:
        raise InputError(f"the number of folds must be 2 or more, got {folds}", hint="e.g. 5 folds")
    per_site = frame.groupby(frame[site].astype(str))[id_column].nunique()
    smallest = int(per_site.min())
    if folds > smallest:
        raise InputError(
            f"{folds} folds are more than the smallest site holds: '{per_site.idxmin()}' has "
            f"{smallest} subject(s), and every fold needs a test subject of every site",
            file=path,
            column=site,
            hint=f"use {max(2, smallest)} folds or fewer, or drop or merge the smallest site",
        )
    if any(a in ("combat", "combat-inference", *EMBEDDING_ARMS) for a in arms):
        combat_covariates(frame, combat, path=path)  # raises on a bad covariate


def combat_covariates(
    frame: pd.DataFrame, combat: CombatSettings, *, path: Any = None
) -> pd.DataFrame:
    """The covariate columns ComBat gets: numbers as they are, categories one-hot (first level
    dropped), e.g. ``sex`` F/M -> ``sex=M`` 0/1."""
    out = pd.DataFrame(index=frame.index)
    for name in combat.covariates:
        if name not in frame:
            raise InputError(
                f"ComBat covariate '{name}' is not a column of the manifest",
                file=path,
                column=name,
                hint=f"columns are {', '.join(map(str, frame.columns[:12]))}...",
            )
        values = frame[name]
        numeric = pd.to_numeric(values, errors="coerce")
        if numeric.notna().sum() >= values.notna().sum():
            out[name] = numeric
            continue
        if name in combat.smooth_terms:
            bad = int(np.flatnonzero(values.notna() & numeric.isna())[0])
            raise InputError(
                f"smooth term '{name}' must be numeric, got {values.iloc[bad]!r}",
                file=path,
                row=bad + 1,
                column=name,
                hint="ComBat-GAM fits a spline of it; drop it from the smooth terms",
            )
        levels = sorted(values.dropna().astype(str).unique())
        for level in levels[1:]:
            out[f"{name}={level}"] = np.where(
                values.isna(), np.nan, (values.astype(str) == level).astype(float)
            )
    unknown = [s for s in combat.smooth_terms if s not in combat.covariates]
    if unknown:
        raise InputError(
            f"smooth term(s) {', '.join(unknown)} not among the ComBat covariates: a smooth "
            "term must also be a covariate",
            hint="list it among the covariates too, e.g. covariates age with smooth term age",
        )
    return out


# -- one job -------------------------------------------------------------------------------------

_CONTEXT: Context | None = None


def _init_worker(context: Context) -> None:
    global _CONTEXT
    _CONTEXT = context
    import torch

    torch.set_num_threads(context.threads)


def _target_number(ctx: Context, rows: np.ndarray) -> np.ndarray:
    return ctx.scoring.numbers(ctx.frame[ctx.target].to_numpy()[rows], ctx.classes)


def _readout(ctx: Context, x: np.ndarray, split: np.ndarray) -> np.ndarray:
    """The reference readout fit on the training rows: predictions for every row
    (classification: probabilities in ``ctx.classes`` order)."""
    y = _target_number(ctx, np.arange(len(split)))
    return linear_readout(x, y, split == "train", classes=ctx.scoring.readout_classes(ctx.classes))


def _arm_fold(
    ctx: Context,
    arm: str,
    job: Job,
    features: np.ndarray,
    prediction: np.ndarray,
    *,
    seconds: float,
    run_dir: str | None = None,
) -> ArmFold:
    """Score one arm on one split from its features (every row) and predictions (every row)."""
    from neurounlearn.evaluation.audit import audit_features, ridge_probe_mae

    split = job.split
    test = np.flatnonzero(split == "test")
    y = _target_number(ctx, np.arange(len(split)))
    result = ArmFold(
        arm,
        job.view,
        job.key,
        test,
        prediction[test],
        seconds=seconds,
        run_dir=run_dir,
        embeddings=features if job.keep_embeddings else None,
    )
    result.corrected, result.offset_corrected = ctx.scoring.corrected(y, prediction, split, test)
    if job.view == "fold":
        from sklearn.preprocessing import StandardScaler

        feats = StandardScaler().fit(features[split == "train"]).transform(features[test])
        meta = ctx.frame.iloc[test].reset_index(drop=True)
        result.leakage = audit_features(
            feats,
            meta,
            ctx.confounds,
            target=y[test],
            audit=ctx.cfg.audit,
            seed=ctx.cfg.train.seed,
            kinds=ctx.kinds,
        )
        if ctx.scoring.numeric:
            result.ridge_probe_mae = ridge_probe_mae(feats, y[test], seed=ctx.cfg.train.seed)
    return result


def _combat_arms(
    ctx: Context, job: Job, names: Sequence[str], x: np.ndarray, prefix_seconds: float
) -> list[ArmFold]:
    """ComBat (fit on the training rows) then the readout, for each requested variant."""
    split = job.split
    train = split == "train"
    test = np.flatnonzero(split == "test")
    sites = ctx.frame[ctx.site_column].astype(str).to_numpy()
    covars = combat_covariates(ctx.frame, ctx.combat)
    fit_rows = train & covars.notna().all(axis=1).to_numpy()
    if set(sites[test]) - set(sites[fit_rows]):  # a held-out site: no batch parameters for it
        return [ArmFold(name, job.view, job.key, test, None, error=UNSEEN_SITE) for name in names]
    start = time.perf_counter()
    combat = ReferenceComBat(
        x,
        sites,
        covars,
        train,
        smooth_terms=ctx.combat.smooth_terms,
        seed=ctx.cfg.train.seed,
    )
    fit_seconds = time.perf_counter() - start
    target_columns = [
        c for c in covars.columns if c == ctx.target or c.startswith(f"{ctx.target}=")
    ]
    out: list[ArmFold] = []
    for name in names:
        t0 = time.perf_counter()
        # -inference: test subjects harmonised without their target, as at inference
        blind = target_columns if name.endswith("-inference") else []
        xh = combat.transform(x, sites, covars, blind=blind, blind_rows=~train)
        pred = _readout(ctx, xh, split)
        seconds = prefix_seconds + fit_seconds + time.perf_counter() - t0
        out.append(_arm_fold(ctx, name, job, xh, pred, seconds=seconds))
    return out


def run_job(job: Job, context: Context | None = None) -> list[ArmFold]:
    """Run one job (in a worker process, or here when ``context`` is given)."""
    ctx = context or _CONTEXT
    assert ctx is not None, "worker not initialised"
    if job.arms[0] in (*RAW_ARMS, "raw+erase"):
        x = ctx.frame[ctx.feature_columns].to_numpy(dtype=float)
        x = x[:, x[job.split == "train"].std(axis=0) > 0]
        out: list[ArmFold] = []
        if "raw" in job.arms:
            t0 = time.perf_counter()
            pred = _readout(ctx, x, job.split)
            out.append(_arm_fold(ctx, "raw", job, x, pred, seconds=time.perf_counter() - t0))
        if "raw+erase" in job.arms:
            out.append(_raw_erase_arm(ctx, job, x))
        combat = [a for a in job.arms if a not in ("raw", "raw+erase")]
        if combat:
            out += _combat_arms(ctx, job, combat, x, 0.0)
        return out
    return _model_job(ctx, job)


def _model_job(ctx: Context, job: Job) -> list[ArmFold]:
    from neurounlearn.training.fit import fit
    from neurounlearn.training.run import embedding_columns

    assert job.run_dir is not None
    arm = job.arms[0]
    t0 = time.perf_counter()
    fit(job.cfg, job.run_dir, echo=lambda _: None, split=job.split)
    seconds = time.perf_counter() - t0
    preds = pd.read_csv(job.run_dir / PREDICTIONS, dtype={ctx.target: object})
    emb = pd.read_csv(job.run_dir / EMBEDDINGS)
    features = emb[embedding_columns(emb)].to_numpy(dtype=float)
    prediction = _prediction_array(ctx, preds)
    out = [
        _arm_fold(ctx, arm, job, features, prediction, seconds=seconds, run_dir=str(job.run_dir))
    ]
    embedding_arms = [a for a in job.arms[1:] if a in EMBEDDING_ARMS]
    if embedding_arms:
        out += _combat_arms(ctx, job, embedding_arms, features, seconds)
    if f"{arm}+erase" in job.arms:
        out.append(_model_erase_arm(ctx, job, f"{arm}+erase", features, seconds))
    return out


def _prediction_array(ctx: Context, preds: pd.DataFrame) -> np.ndarray:
    """A run's predictions as numbers: the prediction, or the class probabilities in
    ``ctx.classes`` order."""
    return ctx.scoring.prediction_array(preds, ctx.classes)


def _erase_kinds(ctx: Context) -> dict[str, str]:
    from neurounlearn.erasure import erase_kinds

    unlearned = {c.name: c.kind for c in ctx.cfg.confounds}
    return erase_kinds(ctx.cfg.erase, ctx.frame, unlearned)


def _raw_erase_arm(ctx: Context, job: Job, x: np.ndarray) -> ArmFold:
    """LEACE on the standardised raw features (fit on the training rows), then the readout."""
    from sklearn.preprocessing import StandardScaler

    from neurounlearn.erasure import fit_run_eraser

    t0 = time.perf_counter()
    train = job.split == "train"
    xs = StandardScaler().fit(x[train]).transform(x)
    eraser = fit_run_eraser(
        ctx.cfg.erase,
        xs,
        ctx.frame,
        train,
        kinds=_erase_kinds(ctx),
        target=_target_number(ctx, np.arange(len(x))),
        task=ctx.task,
        variance=ctx.cfg.erasure.variance,
    )
    xe = eraser.transform(xs)
    pred = _readout(ctx, xe, job.split)
    return _arm_fold(ctx, "raw+erase", job, xe, pred, seconds=time.perf_counter() - t0)


def _model_erase_arm(
    ctx: Context, job: Job, name: str, features: np.ndarray, fit_seconds: float
) -> ArmFold:
    """The model arm's run, erased as ``fit --erase`` erases: the eraser fit on the training
    rows' embeddings, the task head refit on them."""
    from neurounlearn.training.erasing import erase_run
    from neurounlearn.training.predict import load_run
    from neurounlearn.training.run import prediction_columns

    assert job.run_dir is not None
    t0 = time.perf_counter()
    run = load_run(job.run_dir)
    y = run.encoding.targets(ctx.frame)
    hidden = ctx.frame[ctx.site_column].astype(str).isin(ctx.cfg.data.unlabelled_sites)
    y[hidden.to_numpy()] = np.nan
    erased, pred, _ = erase_run(
        ctx.cfg,
        run.model,
        run.encoding,
        features.astype(np.float32),
        ctx.frame,
        y,
        pd.Series(job.split),
    )
    preds = prediction_columns(
        pd.DataFrame(index=range(len(ctx.frame))), run.encoding, ctx.frame, pred
    )
    seconds = fit_seconds + time.perf_counter() - t0
    return _arm_fold(
        ctx, name, job, erased.astype(float), _prediction_array(ctx, preds), seconds=seconds
    )


# -- aggregation ---------------------------------------------------------------------------------


def _t_interval(
    values: list[float], *, bounds: tuple[float, float] | None = None
) -> list[float] | None:
    """95% t-interval of the mean (clipped to ``bounds``: a balanced accuracy stays in [0, 1])."""
    if len(values) < 2:
        return None
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return [low, high]


def _aggregate_probe(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    metric = "r2" if any("r2" in b for b in blocks) else "balanced_accuracy"
    values = [b.get(metric) for b in blocks]
    known = [float(v) for v in values if v is not None]
    chance = next((b.get("chance") for b in blocks if b.get("chance") is not None), None)
    return {
        metric: float(np.mean(known)) if known else None,
        "sd": float(np.std(known, ddof=1)) if len(known) > 1 else None,
        "chance": chance,
        "ci95": _t_interval(known, bounds=(0.0, 1.0) if metric == "balanced_accuracy" else None),
        "ci_method": "t-interval of the mean over folds",
        "p_value": None,
        "per_fold": values,
        "p_value_per_fold": [b.get("p_value") for b in blocks],
    }


def aggregate_leakage(per_fold: list[dict[str, Any]]) -> dict[str, Any]:
    """Fold audits -> one block shaped like ``metrics.json``'s ``leakage``: the mean over folds
    of each probe's score, and a t-interval across folds as its 95% CI."""
    out: dict[str, Any] = {}
    if not per_fold:
        return out
    for name in per_fold[0]:
        blocks = [f[name] for f in per_fold if name in f]
        first = blocks[0]
        entry: dict[str, Any] = {
            "kind": first.get("kind"),
            "chance": first.get("chance"),
            "n": int(sum(b.get("n") or 0 for b in blocks)),
            "folds": len(blocks),
            "probe": {
                p: _aggregate_probe([(b.get("probe") or {}).get(p) or {} for b in blocks])
                for p in (first.get("probe") or {})
            },
            "conditional": None,
        }
        conds = [b["conditional"] for b in blocks if b.get("conditional")]
        if conds and any(c.get("probe") for c in conds):
            entry["conditional"] = {
                "band": conds[0].get("band"),
                "chance": conds[0].get("chance"),
                "probe": {
                    p: _aggregate_probe([(c.get("probe") or {}).get(p) or {} for c in conds])
                    for p in (conds[0].get("probe") or {})
                },
            }
        out[name] = entry
    return out


@dataclass
class ArmSummary:
    """An arm's figures over all folds (and held-out sites)."""

    arm: str
    task: dict[str, Any] | None
    leakage: dict[str, Any]
    oof: np.ndarray | None  # regression: (n,), classification: (n, K); NaN where missing
    oof_corrected: np.ndarray | None
    ridge_probe_mae: float | None
    site_bacc: float | None  # the linear site probe, mean over folds
    # held-out site -> {"balanced_accuracy", "n"} or error_split's {"mae", "offset", ...}
    external: dict[str, dict[str, Any]]
    external_mae: float | None
    openbhb_score: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    first_fold: ArmFold | None = None
    # every row's prediction by the model whose held-out site it belongs to (NaN: none)
    external_oof: np.ndarray | None = None

    def openbhb(self) -> dict[str, float | None]:
        """The OpenBHB sub-scores and score (``metrics.json``'s ``openbhb`` keys)."""
        return {
            "ridge_age_probe_mae": self.ridge_probe_mae,
            "site_probe_balanced_accuracy": self.site_bacc,
            "external_mae": self.external_mae,
            "score": self.openbhb_score,
        }


def summarise(ctx: Context, arm: str, results: list[ArmFold]) -> ArmSummary:
    """Pool one arm's fold results into its summary."""
    from neurounlearn.evaluation.metrics import regression_metrics

    sc = ctx.scoring
    n = len(ctx.frame)
    folds = sorted((r for r in results if r.view == "fold"), key=lambda r: int(r.key))
    y = _target_number(ctx, np.arange(n))
    sites = ctx.frame[ctx.site_column].astype(str).to_numpy()
    oof = sc.empty(n, ctx.classes)
    corrected = np.full(n, np.nan) if sc.numeric else None
    offset_corrected = np.full(n, np.nan) if sc.numeric else None
    fold_scores: list[float | None] = []
    for r in folds:
        if r.prediction is None:
            continue
        oof[r.test_rows] = r.prediction
        if corrected is not None and r.corrected is not None:
            corrected[r.test_rows] = r.corrected
        if offset_corrected is not None and r.offset_corrected is not None:
            offset_corrected[r.test_rows] = r.offset_corrected
        fold_scores.append(
            sc.fold_score(y[r.test_rows], r.prediction, ctx.classes)[sc.headline.metric]
        )
    have = sc.predicted(oof)
    task: dict[str, Any] | None = None
    if have.any():
        task = sc.pooled(y[have], oof[have], sites[have], ctx.classes, target=ctx.target)
        if corrected is not None and offset_corrected is not None:
            task["bias_correction"] = "cole; fit per fold on that fold's validation rows"
            task["offset_correction"] = "offset; fit per fold on that fold's validation rows"
            for key, values in (
                ("bias_corrected_mae", corrected),
                ("offset_corrected_mae", offset_corrected),
            ):
                ok = have & np.isfinite(values)
                task[key] = (
                    regression_metrics(y[ok], values[ok])["mae"] if ok.sum() == have.sum() else None
                )
        task["folds"] = len(folds)
        known = [s for s in fold_scores if s is not None]
        task["per_fold"] = fold_scores
        task["sd_over_folds"] = float(np.std(known, ddof=1)) if len(known) > 1 else None
    leakage = aggregate_leakage([r.leakage for r in folds if r.leakage])
    probes = [r.ridge_probe_mae for r in folds if r.ridge_probe_mae is not None]
    external: dict[str, dict[str, Any]] = {}
    external_oof = np.full_like(oof, np.nan)
    for r in (r for r in results if r.view == "external"):
        if r.prediction is None:
            external[r.key] = {"error": r.error or "not available", "n": len(r.test_rows)}
            continue
        external_oof[r.test_rows] = r.prediction
        # regression: where the unseen site's error comes from (offset, slope, spread)
        external[r.key] = sc.external(y[r.test_rows], r.prediction, ctx.classes)
    metric = sc.headline.metric
    ext_values = [e[metric] for e in external.values() if e.get(metric) is not None]
    external_mae = (
        float(np.mean(ext_values))
        if sc.numeric and ext_values and len(ext_values) == len(external)
        else None
    )
    site_bacc = probe_cells(leakage.get(ctx.site_column), "linear")[0]
    openbhb = (
        external_mae * site_bacc**0.3
        if external_mae is not None and site_bacc is not None
        else None
    )
    notes = []
    if any(e.get("error") == UNSEEN_SITE for e in external.values()):
        notes.append(f"{arm}: {UNSEEN_SITE} (ComBat has no parameters for a scanner it never saw)")
    return ArmSummary(
        arm,
        task,
        leakage,
        oof,
        corrected,
        float(np.mean(probes)) if probes else None,
        site_bacc,
        external,
        external_mae,
        openbhb,
        float(sum(r.seconds for r in results)),
        notes,
        next((r for r in folds if r.key == "1"), None),
        external_oof if external else None,
    )


def external_paired(ctx: Context, summaries: list[ArmSummary]) -> dict[str, dict[str, Any]]:
    """Each arm against the baseline over the held-out sites (:func:`paired_sites`); empty
    without the baseline arm or the external view."""
    from neurounlearn.evaluation.metrics import paired_sites

    reference = next((s for s in summaries if s.arm == "baseline"), None)
    if reference is None or not reference.external:
        return {}
    head = ctx.scoring.headline

    def figures(s: ArmSummary) -> dict[str, float | None]:
        return {site: e.get(head.metric) for site, e in s.external.items()}

    return {
        s.arm: paired_sites(figures(s), figures(reference), lower_is_better=head.lower_is_better)
        for s in summaries
        if s.arm != "baseline" and s.external
    }


def external_frame(ctx: Context, summaries: list[ArmSummary], id_column: str) -> pd.DataFrame:
    """``external_predictions.csv``: every subject's prediction by each arm's model that never
    saw its site (leave-one-site-out)."""
    frame = ctx.frame
    out = pd.DataFrame(
        {
            id_column: frame[id_column].to_numpy(),
            ctx.site_column: frame[ctx.site_column].to_numpy(),
            ctx.target: frame[ctx.target].to_numpy(),
        }
    )
    for s in summaries:
        if s.external_oof is not None and not np.isnan(s.external_oof).all():
            out[s.arm] = _prediction_column(ctx, s.external_oof)
    return out


def _prediction_column(ctx: Context, predictions: np.ndarray) -> Any:
    """A prediction file's column: the numbers for regression; for classification each row's
    most probable class (None where the row has no prediction)."""
    return ctx.scoring.column(predictions, ctx.classes)


# -- the comparison table (comparison.csv) ---------------------------------------------------


def comparison_frame(ctx: Context, summaries: list[ArmSummary]) -> pd.DataFrame:
    """One row per arm: task figures, brain-age conventions, leakage, OpenBHB figures."""
    rows = []
    for s in summaries:
        t = s.task or {}
        row: dict[str, Any] = {"arm": s.arm, **ctx.scoring.table_columns(t)}
        for name, block in s.leakage.items():
            for probe in ("linear", "nonlinear"):
                value, low, high = probe_cells(block, probe)
                row[f"{name}_{probe}"] = value
                row[f"{name}_{probe}_ci_low"] = low
                row[f"{name}_{probe}_ci_high"] = high
                if block.get("conditional"):
                    value, low, high = probe_cells(block["conditional"], probe)
                    row[f"{name}_{probe}_band"] = value
        if ctx.scoring.numeric:
            row["ridge_probe_mae"] = s.ridge_probe_mae
        if s.external:
            row["external_mae"] = s.external_mae
            if ctx.scoring.numeric:
                row["openbhb_score"] = s.openbhb_score
            for site, e in s.external.items():
                row[f"external_{site}"] = e.get("error") or e.get(ctx.scoring.headline.metric)
        row["seconds"] = s.seconds
        row["note"] = "; ".join(s.notes) or None
        rows.append(row)
    return pd.DataFrame(rows)


# -- the whole comparison -----------------------------------------------------------------------


def default_jobs(input_kind: str) -> int:
    """Parallel fits: tables train one small MLP per core (measured 2x on 2 cores: a single
    thread trains them as fast as two); images train one at a time with every thread."""
    if input_kind == "image":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


def compare(
    cfg: RunConfig,
    out: str | Path,
    *,
    arms: Sequence[str] = DEFAULT_ARMS,
    folds: int = 5,
    external: str | None = None,
    combat: CombatSettings | None = None,
    jobs: int | None = None,
    echo: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run every arm on the same seeded folds and write the comparison into ``out``:
    ``comparison.json`` (every arm's pooled figures), ``comparison.csv``,
    ``oof_predictions.csv``, ``folds.csv``, ``config.yaml`` and each arm's fold-1 features.
    :func:`neurounlearn.reporting.compare.render_comparison` then renders ``comparison.md`` and
    ``report.html`` from those files.

    Args:
        cfg: the base configuration (data, confounds, model, training); each model arm sets
            its own strategy.
        out: the output directory (created; must be new or empty).
        arms: arm names (:data:`ARM_NAMES`).
        folds: K of the cross-fitting.
        external: ``"leave-one-site-out"`` adds the unseen-site view.
        combat: ComBat covariates and smooth terms; default: the target as covariate.
        jobs: parallel worker processes (default :func:`default_jobs`).
        echo: where progress lines go.

    Returns:
        The ``comparison.json`` content.
    """
    from neurounlearn.data.inputs import load_inputs
    from neurounlearn.data.splits import kfold_splits, leave_one_site_out_splits

    start = time.perf_counter()
    out = Path(out)
    arms = parse_arms(arms, erase_during=cfg.erasure.when == "during")
    if any("combat" in a for a in arms):  # before any arm trains
        from neurounlearn.evaluation.combat import COMBAT

        require("neuroHarmonize", "combat", COMBAT)
    check_out(out, folder=True)
    if out.exists() and any(out.iterdir()):
        raise InputError(
            "the output directory already exists and is not empty",
            file=out,
            hint="choose a new output directory, or delete it",
        )
    if any(a in ERASE_ARMS for a in arms) and not cfg.erase:
        from neurounlearn.config import EraseConfig

        cfg = cfg.model_copy(update={"erase": [EraseConfig(name=cfg.data.site_column)]})
    if cfg.data.path is None:
        raise InputError("no data given", hint="give the manifest CSV as data.path")
    if cfg.data.task == "segmentation":
        raise InputError(
            "compare does not handle segmentation runs yet",
            hint="fit each strategy as a run of its own (data.task=segmentation) and read "
            "each run's metrics.json (Dice per class per site, leakage per attach point); "
            "benchmarks/segmentation.py compares them on fixed splits",
        )
    from neurounlearn.training.distributed import process_count

    if process_count(cfg.train.devices, cfg.train.accelerator) > 1 or cfg.train.num_nodes > 1:
        raise InputError(
            f"compare trains each arm on one device (train.devices={cfg.train.devices!r}, "
            f"train.num_nodes={cfg.train.num_nodes} asked for more)",
            hint="give train.devices=1 (compare runs folds side by side in worker processes "
            "instead, see its jobs setting); fit trains one run over several devices",
        )
    combat = combat or CombatSettings(covariates=(cfg.data.target,))
    check_arms(cfg, arms, external=external)
    inputs = load_inputs(cfg, cfg.data.path)
    frame, id_column = inputs.frame, inputs.id_column
    assert id_column is not None
    check_data(cfg, arms, frame, id_column, folds=folds, combat=combat)
    if any(a in ERASE_ARMS for a in arms):
        from neurounlearn.erasure import check_erase, erase_kinds

        check_erase(
            cfg.erase,
            frame,
            np.ones(len(frame), bool),
            kinds=erase_kinds(cfg.erase, frame, {c.name: c.kind for c in cfg.confounds}),
            target=cfg.data.target,
            task=inputs.task,
            embedding_dim=cfg.model.embedding_dim,
            path=cfg.data.path,
        )
    n_jobs = jobs or default_jobs(cfg.data.input)
    if cfg.data.input == "image" and n_jobs > 1:
        # one 3D CNN uses every core (and the GPU); parallel fits would also race on the cache
        echo(f"images train one at a time: {n_jobs} parallel jobs ignored")
        n_jobs = 1
    from neurounlearn.training.fit import resolve_auto
    from neurounlearn.training.tasks import task_of

    # one progress bar per fit when fits run one at a time; parallel fits print a line each
    cfg = cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"task": inputs.task}),
            "train": cfg.train.model_copy(
                update={"progress_bar": cfg.train.progress_bar and n_jobs == 1}
            ),
        }
    )
    cfg = resolve_auto(cfg, task_of(inputs.task))  # as fit decides them: every arm alike
    site = cfg.data.site_column
    fold_splits = kfold_splits(
        frame,
        id_column=id_column,
        site_column=site,
        folds=folds,
        seed=cfg.train.seed,
        val_fraction=cfg.train.val_fraction,
    )
    ext_splits = (
        leave_one_site_out_splits(
            frame,
            id_column=id_column,
            site_column=site,
            seed=cfg.train.seed,
            val_fraction=cfg.train.val_fraction,
        )
        if external
        else {}
    )
    confounds = [c.name for c in cfg.confounds]
    if site not in confounds:
        confounds.append(site)  # the site probe is always reported (OpenBHB)
    kinds: dict[str, str] = {c.name: c.kind for c in cfg.confounds}
    if any(a in ERASE_ARMS for a in arms):  # erased confounds are audited too
        from neurounlearn.erasure import erase_kinds

        kinds = {**erase_kinds(cfg.erase, frame, kinds), **kinds}
        confounds += [e.name for e in cfg.erase if e.name not in confounds]
    classes = scoring_of(inputs.task).classes(frame[cfg.data.target])
    ctx = Context(
        frame=frame,
        feature_columns=inputs.feature_columns,
        task=inputs.task,
        classes=classes,
        confounds=confounds,
        kinds=kinds,
        combat=combat,
        target=cfg.data.target,
        site_column=site,
        cfg=cfg,
        threads=1 if n_jobs > 1 else max(1, _torch_threads()),
    )

    warnings = compare_warnings(ctx, arms)
    for warning in warnings:  # before the long part, and in the report
        echo(f"warning: {warning}")

    # -- the jobs -------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    write_text(cfg.to_yaml(), out / CONFIG)
    fold_of = np.zeros(len(frame), dtype=int)
    for k, s in enumerate(fold_splits, start=1):
        fold_of[(s == "test").to_numpy()] = k
    write_csv(
        pd.DataFrame(
            {
                "row": np.arange(1, len(frame) + 1),
                id_column: frame[id_column].to_numpy(),
                site: frame[site].to_numpy(),
                "fold": fold_of,
            }
        ),
        out / FOLDS,
    )
    views = [("fold", str(k), s.to_numpy()) for k, s in enumerate(fold_splits, start=1)]
    views += [("external", key, s.to_numpy()) for key, s in ext_splits.items()]
    jobs_list = make_jobs(cfg, arms, views, out / "runs")
    echo(
        f"compare: {len(arms)} arm(s) x {folds} folds"
        + (f" + {len(ext_splits)} held-out sites" if ext_splits else "")
        + f" = {len(jobs_list)} job(s), {n_jobs} at a time; task: {inputs.task}"
    )
    results = _run_jobs(jobs_list, ctx, n_jobs, echo)

    # -- summaries and files (the report and comparison.md are rendered from these) ----------
    summaries = [summarise(ctx, arm, [r for r in results if r.arm == arm]) for arm in arms]
    write_csv(comparison_frame(ctx, summaries), out / COMPARISON_CSV)
    write_csv(oof_frame(ctx, summaries, id_column, fold_of), out / OOF_PREDICTIONS)
    embedding_files = _write_first_embeddings(out, summaries)
    paired = external_paired(ctx, summaries)
    if external:
        write_csv(external_frame(ctx, summaries, id_column), out / EXTERNAL_PREDICTIONS)
    result = {
        "arms": arms,
        "folds": folds,
        "external": external,
        "task": inputs.task,
        "target": cfg.data.target,
        "site_column": site,
        "id_column": id_column,
        "classes": classes,
        "confounds": confounds,
        "combat": {
            "covariates": list(combat.covariates),
            "smooth_terms": list(combat.smooth_terms),
        },
        "jobs": n_jobs,
        "data": {
            "path": str(cfg.data.path),
            "rows": len(frame),
            "sites": int(frame[site].nunique()),
        },
        "seed": cfg.train.seed,
        "summaries": {
            s.arm: {
                "task": s.task,
                "leakage": s.leakage,
                "openbhb": s.openbhb(),
                "external": s.external,
                "external_vs_baseline": paired.get(s.arm),
                "seconds": s.seconds,
                "notes": s.notes,
            }
            for s in summaries
        },
        # where the report finds each arm's fold-1 curves, configuration and embeddings
        # (relative to this folder, so that it can be moved)
        "first_fold": {
            s.arm: {
                "run": _relative(s.first_fold.run_dir, out) if s.first_fold is not None else None,
                "embeddings": embedding_files.get(s.arm),
            }
            for s in summaries
        },
        "warnings": warnings,
        "seconds": time.perf_counter() - start,
    }
    write_json(result, out / COMPARISON_JSON)
    return result


def _relative(path: str | None, out: Path) -> str | None:
    """``path`` relative to ``out`` when it lies inside it (as is), else as given."""
    if path is None:
        return None
    try:
        return Path(path).resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return path


def _write_first_embeddings(out: Path, summaries: list[ArmSummary]) -> dict[str, str]:
    """Each arm's fold-1 features of every subject (``.npy``, no pickles), for the report's
    embedding plots: arm -> path relative to ``out``."""
    files: dict[str, str] = {}
    for s in summaries:
        first = s.first_fold
        if first is None or first.embeddings is None:
            continue
        name = f"{FIRST_FOLD_EMBEDDINGS}/{_safe(s.arm)}.npy"
        (out / FIRST_FOLD_EMBEDDINGS).mkdir(exist_ok=True)
        with atomic_path(out / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(first.embeddings, dtype=np.float64), allow_pickle=False)
        files[s.arm] = name
    return files


def make_jobs(
    cfg: RunConfig, arms: Sequence[str], views: list[tuple[str, str, np.ndarray]], runs: Path
) -> list[Job]:
    """One job per model arm and split (the baseline's job also runs the ComBat-on-embedding
    arms, a network's job its ``+erase`` arm), and one per split for all raw-feature arms. With
    ``erasure.when=during`` a ``+erase`` arm is a fit of its own (erasing inside training)."""
    raw_arms = tuple(a for a in arms if a in RAW_ARMS or a == "raw+erase")
    emb_arms = tuple(a for a in arms if a in EMBEDDING_ARMS)
    during = cfg.erasure.when == "during"
    networks = [a for a in MODEL_ARMS if a in arms or f"{a}+erase" in arms]
    jobs: list[Job] = []
    for view, key, split in views:
        first = view == "fold" and key == "1"  # its embeddings go into the report
        label = f"fold{key}" if view == "fold" else f"external/{_safe(key)}"
        for arm in networks:
            strategy, mode = MODEL_ARMS[arm]
            job_cfg = cfg.model_copy(
                update={
                    "strategy": switch_strategy(cfg.strategy, strategy, mode=mode),
                    "erase": [],  # the +erase arm erases the saved run's embedding itself
                }
            )
            erased = (f"{arm}+erase",) if f"{arm}+erase" in arms and not during else ()
            if arm in arms:
                own = (arm, *(emb_arms if arm == "baseline" else ()), *erased)
                jobs.append(Job(view, key, split, own, job_cfg, runs / label / arm, first))
            if during and f"{arm}+erase" in arms:  # erasure inside training: a fit of its own
                erase_cfg = job_cfg.model_copy(update={"erase": cfg.erase})
                name = f"{arm}+erase"
                jobs.append(Job(view, key, split, (name,), erase_cfg, runs / label / name, first))
        if raw_arms:
            jobs.append(Job(view, key, split, raw_arms, cfg, keep_embeddings=first))
    return jobs


def oof_frame(
    ctx: Context, summaries: list[ArmSummary], id_column: str, fold_of: np.ndarray
) -> pd.DataFrame:
    """``oof_predictions.csv``: every subject's out-of-fold prediction by each arm (and the
    bias-corrected one for regression)."""
    frame = ctx.frame
    oof = pd.DataFrame(
        {
            id_column: frame[id_column].to_numpy(),
            ctx.site_column: frame[ctx.site_column].to_numpy(),
            "fold": fold_of,
            ctx.target: frame[ctx.target].to_numpy(),
        }
    )
    for s in summaries:
        if s.oof is None:
            continue
        oof[s.arm] = _prediction_column(ctx, s.oof)
        if s.oof_corrected is not None:  # regression only
            oof[f"{s.arm} (corrected)"] = s.oof_corrected
    return oof


def compare_warnings(ctx: Context, arms: Sequence[str]) -> list[str]:
    """Warnings only the comparison's settings can give (the report adds its own)."""
    out = []
    uses_combat = [a for a in arms if "combat" in a and not a.endswith("-inference")]
    if uses_combat and ctx.target in ctx.combat.covariates:
        out.append(
            f"ComBat arm(s) {', '.join(uses_combat)} use the target '{ctx.target}' as a "
            "covariate: harmonising a test subject then uses its true target, which leaks the "
            "answer into the features (an optimistic score). The -inference variants harmonise "
            "test subjects without it, as at inference."
        )
    unlearning = [a for a in arms if a.removesuffix("+erase") in MODEL_ARMS and a != "baseline"]
    if ctx.scoring.numeric and unlearning and unlearns_site_everywhere(ctx.cfg):
        entangled = entanglement_problem(ctx.frame, ctx.target, ctx.site_column)
        if entangled is not None:
            out.append(f"{entangled.message} (arms {', '.join(unlearning)}); {entangled.hint}")
    return out


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _describe(ctx: Context, r: ArmFold) -> str:
    where = f"fold {r.key}" if r.view == "fold" else f"{r.key} held out"
    if r.error:
        return f"{where} · {r.arm}: {r.error}"
    assert r.prediction is not None
    score = ctx.scoring.fold_score(_target_number(ctx, r.test_rows), r.prediction, ctx.classes)
    head = ctx.scoring.headline
    text = f"{head.label} {fmt_number(score[head.metric])}"
    site = (r.leakage or {}).get(ctx.site_column)
    if site:
        text += f", {ctx.site_column} BAcc {fmt_number(probe_cells(site, 'linear')[0])}"
    return f"{where} · {r.arm}: {text} ({r.seconds:.0f} s)"


def _run_jobs(
    jobs: list[Job], ctx: Context, n_jobs: int, echo: Callable[[str], Any]
) -> list[ArmFold]:
    results: list[ArmFold] = []
    total = len(jobs)

    def report(done: int, items: list[ArmFold]) -> None:
        for r in items:
            echo(f"[{done:>{len(str(total))}}/{total}] {_describe(ctx, r)}")

    if n_jobs <= 1:
        for i, job in enumerate(jobs, start=1):
            items = run_job(job, ctx)
            results += items
            report(i, items)
        return results
    pool = ProcessPoolExecutor(
        max_workers=min(n_jobs, total),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(ctx,),
    )
    try:
        # models first (the long jobs), so the quick raw-feature jobs fill the gaps at the end
        order = sorted(jobs, key=lambda j: j.arms[0] in (*RAW_ARMS, "raw+erase"))
        pending: set[Future[list[ArmFold]]] = {pool.submit(run_job, j) for j in order}
        done_count = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                items = future.result()
                done_count += 1
                results += items
                report(done_count, items)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results
