"""Unseen scanners: leave-one-site-out on the shipped table, the recommended unlearning
configuration against the baseline, with the diagnosis of where each held-out site's error
comes from.

Each variant is one ``neurounlearn compare --external leave-one-site-out`` run (5 within-site
folds for the leakage audit, then every site held out in turn), as a user runs it:

* ``recommended`` (the default, seeds 0 1 2): what the docs tell users to run on a table whose
  sites cover different ages: site unlearned where the sites' ages overlap (``--unlearn-where
  '18 <= age <= 35'``), erased after training (``--erase site``, conditional on age),
  audited within the band (``--band 18 35``); arms ``raw``, ``baseline``, ``iterative+erase``
  (and ``iterative``, whose fit it erases).
* ``every-age`` (``--variants every-age``, about 11 min a seed): site unlearned over every
  age, as ``benchmarks/compare_openneuro.py`` does; arms ``baseline``, ``iterative``, ``grl``.
* ``balanced``, ``weaker`` (``--variants``, about 6 min a seed): the recommended configuration
  with site-balanced batches (``train.sampling=balanced``) or half the adversary's weight
  (``alpha = beta = 0.5``), arm ``iterative+erase`` only. Measured on the reported sites, they
  are candidates to look at, not to choose a default by (that needs a nested selection on
  inner held-out sites).

For every held-out site and arm the table gives the MAE split into offset (mean signed error),
slope (of the error on age) and spread; the diagnosis adds, per network arm and held-out site,
from the embeddings of the model that never saw that site: how well a fresh probe separates the
held-out site from age-matched training rows ("domain probe"), how well it reads site among the
training sites within 18-35 (what the adversary was asked to remove), and the ridge R² of age on
the training sites' validation rows.

The four held-out sites whose ages other sites cover (ds000115, ds003469, ds003653, ds003826)
make the acceptance figures; ds000222 (ages 20-73, the only subjects over 45) and ds003416
(the only children, 5-8 years) are reported separately: a model trained without them has to
extrapolate in age.

Writes ``benchmarks/results/unseen_sites.{json,md}``.

    python benchmarks/unseen_sites.py                            # recommended, 3 seeds (~28 min)
    python benchmarks/unseen_sites.py --variants every-age --seeds 0 --update
    python benchmarks/unseen_sites.py --render                   # re-render the markdown
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurounlearn.data.bundled import OPENNEURO_FEATURES, openneuro_transfer
from neurounlearn.evaluation.leakage import RIDGE_ALPHAS
from neurounlearn.evaluation.metrics import paired_sites
from neurounlearn.formatting import fmt_number, markdown_table, mean_sd
from neurounlearn.results import LeakageResult
from neurounlearn.training.run import embedding_columns

RESULTS = Path(__file__).parent / "results"
CLI = str(Path(sys.executable).with_name("neurounlearn"))
QUIET = ["--set", "train.progress_bar=false"]
COVERED = ("ds000115", "ds003469", "ds003653", "ds003826")
EXTRAPOLATED = {
    "ds000222": "ages 20-73, the only site with subjects over 45: "
    "a model without it extrapolates upward",
    "ds003416": "ages 5-8, the only children: a model without it extrapolates downward",
}
BAND = ["--band", "18", "35"]
IN_BAND = ["--unlearn-where", "18 <= age <= 35"]
RECOMMENDED_ARM = "iterative+erase"
VARIANTS: dict[str, list[str]] = {
    "recommended": [*IN_BAND, *BAND, "--erase", "site", "--arms", "raw,baseline,iterative+erase"],
    "every-age": [*BAND, "--arms", "baseline,iterative,grl"],
    "balanced": [
        *IN_BAND, *BAND, "--erase", "site", "--arms", "iterative+erase",
        "--set", "train.sampling=balanced",
    ],
    "weaker": [
        *IN_BAND, *BAND, "--erase", "site", "--arms", "iterative+erase",
        "--set", "confounds.0.alpha=0.5", "--set", "confounds.0.beta=0.5",
    ],
}  # fmt: skip
DEFAULT_VARIANTS = ["recommended"]


def run_compare(name: str, seed: int, data: Path, out: Path) -> dict[str, Any]:
    command = [
        CLI, "compare", "--data", str(data), "--features", OPENNEURO_FEATURES,
        "--target", "age", "--unlearn", "site", *VARIANTS[name], "--folds", "5",
        "--external", "leave-one-site-out", "--set", f"train.seed={seed}", *QUIET,
        "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
    seconds = time.perf_counter() - start
    result = json.loads((out / "comparison.json").read_text())
    names = {str(data): "openneuro_transfer.csv", str(out): f"{name}-seed{seed}"}
    shown = [names.get(c, c) for c in command[1:]]  # no temporary paths
    return {
        "variant": name,
        "seed": seed,
        "command": " ".join(f"'{c}'" if any(ch in c for ch in " |()$<=") else c for c in shown),
        "wall_seconds": seconds,
        "summaries": result["summaries"],
        "diagnosis": diagnose(out, result),
    }


# -- the diagnosis from the held-out-site runs' embeddings ---------------------------------------


def _bacc(x: np.ndarray, y: np.ndarray, seed: int) -> float | None:
    """Cross-validated balanced accuracy of a fresh logistic probe (None: too few rows)."""
    counts = pd.Series(y).value_counts()
    if len(counts) < 2 or counts.min() < 5:
        return None
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    )
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, x, y, cv=folds, scoring="balanced_accuracy").mean())


def _age_r2(x: np.ndarray, age: np.ndarray, seed: int) -> float:
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    bins = np.digitize(age, np.quantile(age, [0.2, 0.4, 0.6, 0.8]))
    pred = cross_val_predict(model, x, age, cv=folds.split(x, bins))
    return float(1 - np.sum((age - pred) ** 2) / np.sum((age - age.mean()) ** 2))


def diagnose(out: Path, result: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per network arm and held-out site: the domain probe, the training sites' in-band site
    probe and the age R² (embeddings of the model that never saw the site). Erased arms
    (``+erase``) are erased inside ``compare`` and have no embeddings file: the arm they erase
    stands for them."""
    seed = int(result.get("seed") or 0)
    target, site_column = result["target"], result["site_column"]
    diagnosis: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in result["arms"]:
        if arm in ("raw", "combat") or "+" in arm:
            continue
        per_site: dict[str, dict[str, Any]] = {}
        for held in sorted(result["summaries"][arm]["external"]):
            run = out / "runs" / "external" / held / arm
            emb = pd.read_csv(run / "embeddings.csv", dtype={site_column: str})
            pred = pd.read_csv(run / "predictions.csv", dtype={site_column: str})
            x = emb[embedding_columns(emb)].to_numpy(dtype=float)
            age = pred[target].to_numpy(dtype=float)
            sites = emb[site_column].to_numpy()
            is_held = sites == held
            low, high = np.quantile(age[is_held], [0.05, 0.95])
            matched = ~is_held & (age >= low) & (age <= high)
            rows = is_held | matched
            band = ~is_held & (age >= 18) & (age <= 35)
            val = ~is_held & (emb["split"].to_numpy() == "val")
            split = emb["split"].to_numpy()
            unseen = is_held | (matched & val)
            seen = matched & (split == "train")
            per_site[held] = {
                "domain_probe": _bacc(x[rows], is_held[rows].astype(int), seed),
                # the same against validation rows only (never trained on), and its control:
                # training against validation rows of the training sites, same ages -- what a
                # probe reads from "trained on or not" alone
                "domain_probe_val": _bacc(x[unseen], is_held[unseen].astype(int), seed),
                "trained_vs_val_control": _bacc(
                    x[seen | (matched & val)],
                    (matched & val)[seen | (matched & val)].astype(int),
                    seed,
                ),
                "matched_training_rows": int(matched.sum()),
                "training_site_probe_in_band": _bacc(x[band], sites[band], seed),
                "age_r2_training_val": _age_r2(x[val], age[val], seed),
                # the held-out site's offset against the age-matched training rows' own
                # (validation rows: not trained on) -- what the readout makes of the shift
                "offset_vs_matched_val": float(
                    (pred["prediction"] - pred[target])[is_held].mean()
                    - (pred["prediction"] - pred[target])[matched & val].mean()
                )
                if (matched & val).any()
                else None,
            }
        diagnosis[arm] = per_site
    return diagnosis


# -- acceptance and the tables -------------------------------------------------------------------


def _ext(summary: dict[str, Any], site: str, key: str = "mae") -> float | None:
    value = ((summary.get("external") or {}).get(site) or {}).get(key)
    return None if value is None else float(value)


def _in_band(summary: dict[str, Any], probe: str) -> float | None:
    band = LeakageResult.from_dict((summary.get("leakage") or {}).get("site")).conditional
    return None if band is None else band.probe(probe).balanced_accuracy


def _runs(payload: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    return [r for r in payload["runs"] if r["variant"] == variant]


def _mean(values: list[float | None]) -> float | None:
    return mean_sd(values).mean


def per_site_means(runs: list[dict[str, Any]], arm: str) -> dict[str, float | None]:
    """An arm's held-out MAE per site, mean over seeds."""
    sites = sorted({s for r in runs for s in r["summaries"].get(arm, {}).get("external", {})})
    return {s: _mean([_ext(r["summaries"].get(arm, {}), s) for r in runs]) for s in sites}


#: what the erasure work reached on this table (benchmarks/results/erasure.md,
#: iterative+erase after training, 18-35): in-band linear / nonlinear site BAcc
ERASURE_REACHED = (0.27, 0.30)


def acceptance(payload: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []

    def check(what: str, value: float | None, target: str, ok: bool | None) -> None:
        rows.append(
            [what, fmt_number(value), target, "—" if ok is None else ("met" if ok else "missed")]
        )

    runs = _runs(payload, "recommended")
    if not runs:
        return rows
    arm = RECOMMENDED_ARM
    base = per_site_means(runs, "baseline")
    mine = per_site_means(runs, arm)
    base_cov = _mean([base.get(s) for s in COVERED])
    mine_cov = _mean([mine.get(s) for s in COVERED])
    check(
        f"1. {arm}: external MAE, mean over the 4 covered sites (baseline {fmt_number(base_cov)})",
        mine_cov,
        "≤ baseline's",
        None if mine_cov is None or base_cov is None else mine_cov <= base_cov,
    )
    for s in COVERED:
        ratio = mine[s] / base[s] if mine.get(s) is not None and base.get(s) else None
        check(
            f"1. {arm}: {s} held out, MAE / baseline's",
            ratio,
            "≤ 1.10",
            None if ratio is None else ratio <= 1.10,
        )
    for probe, reached in zip(("linear", "nonlinear"), ERASURE_REACHED, strict=True):
        value = _mean([_in_band(r["summaries"][arm], probe) for r in runs])
        check(
            f"2. {arm}: in-band {probe} site BAcc, within-fold test rows",
            value,
            f"≤ {reached:.2f} (erasure)",
            None if value is None else round(value, 2) <= reached,
        )
    for s in EXTRAPOLATED:  # reported, not judged: no harmonisation removes an extrapolation
        check(
            f"3. {s} held out (extrapolated in age): MAE of {arm} (baseline "
            f"{fmt_number(base.get(s))})",
            mine.get(s),
            "reported apart",
            None,
        )
    return rows


def _split_cell(runs: list[dict[str, Any]], arm: str, site: str) -> str:
    def mean(key: str) -> float | None:
        return _mean([_ext(r["summaries"].get(arm, {}), site, key) for r in runs])

    return (
        f"{fmt_number(mean('mae'))} ({fmt_number(mean('offset'), 1, signed=True)} / "
        f"{fmt_number(mean('slope'), 2, signed=True)} / {fmt_number(mean('spread'), 1)})"
    )


def variant_tables(payload: dict[str, Any], variant: str) -> list[str]:
    runs = _runs(payload, variant)
    if not runs:
        return []
    arms = [a for a in runs[0]["summaries"] if runs[0]["summaries"][a].get("external")]
    arms = [a for a in arms if any(_ext(runs[0]["summaries"][a], s) for s in COVERED)]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    lines = [
        f"## {variant}",
        "",
        f"`neurounlearn {runs[0]['command']}` (seeds {seeds}; wall time "
        f"{sum(r['wall_seconds'] for r in runs) / 60:.1f} min)",
        "",
        "Held-out site MAE, mean over seeds, with (offset / slope / spread) — offset: mean of "
        "prediction − age, years; slope: of that error on age (negative: pulled to the "
        "training mean); spread: sd of what is left:",
        "",
    ]
    head = ["arm", "mean of the 4 covered (± sd over seeds)", *COVERED, *EXTRAPOLATED]
    body = []
    recentred = []
    for arm in arms:
        covered = mean_sd(_mean([_ext(r["summaries"][arm], s) for s in COVERED]) for r in runs)
        body.append(
            [
                arm,
                fmt_number(covered.mean)
                + (f" ± {fmt_number(covered.sd)}" if covered.n > 1 else " (one seed)"),
                *[_split_cell(runs, arm, s) for s in (*COVERED, *EXTRAPOLATED)],
            ]
        )
        recentred.append(
            [
                arm,
                *[
                    fmt_number(
                        _mean([_ext(r["summaries"][arm], s, "mae_without_offset") for r in runs])
                    )
                    for s in (*COVERED, *EXTRAPOLATED)
                ],
            ]
        )
    lines += [markdown_table(head, body), ""]
    lines += [
        "The same MAE once each held-out site's offset is removed (what recentring the site "
        "would give; the difference is the offset's share of the error):",
        "",
        markdown_table(["arm", *COVERED, *EXTRAPOLATED], recentred),
        "",
    ]
    # paired against the baseline over the covered sites, every seed's site a pair
    if "baseline" in arms:
        pair_rows = []
        for arm in (a for a in arms if a != "baseline"):
            # every seed's held-out site is one pair
            mine, base = (
                {
                    f"{r['seed']}/{s}": _ext(r["summaries"].get(a, {}), s)
                    for r in runs
                    for s in COVERED
                }
                for a in (arm, "baseline")
            )
            paired = paired_sites(mine, base, lower_is_better=True)
            sd = mean_sd(
                mine[k] - base[k] for k in mine if mine[k] is not None and base[k] is not None
            )
            pair_rows.append(
                [
                    arm,
                    f"{paired['wins']} / {paired['losses']} of {paired['sites']}",
                    f"{fmt_number(sd.mean, 2, signed=True)} ± {fmt_number(sd.sd)}",
                    fmt_number(paired["sign_p"], 3),
                ]
            )
        lines += [
            "Against the baseline on the covered sites (every seed × site a pair; Δ = arm − "
            "baseline MAE; two-sided exact sign test):",
            "",
            markdown_table(["arm", "better / worse", "mean Δ ± sd", "sign test p"], pair_rows),
            "",
        ]
    leak_rows = [
        [
            arm,
            fmt_number(_mean([_in_band(r["summaries"][arm], "linear") for r in runs])),
            fmt_number(_mean([_in_band(r["summaries"][arm], "nonlinear") for r in runs])),
            fmt_number(_mean([(r["summaries"][arm].get("task") or {}).get("mae") for r in runs])),
        ]
        for arm in arms
    ]
    lines += [
        "Within-fold (5 folds, every site in training) figures, mean over seeds: in-band "
        "(18–35) site BAcc of fresh probes on the test rows' embeddings (chance 0.20), and the "
        "pooled out-of-fold MAE:",
        "",
        markdown_table(
            ["arm", "in-band linear", "in-band nonlinear", "within-fold MAE"], leak_rows
        ),
        "",
    ]
    diag_arms = sorted({a for r in runs for a in r.get("diagnosis", {})})
    if diag_arms:
        diag_rows = []
        for arm in diag_arms:
            for key, label in (
                ("domain_probe", "domain probe BAcc (held-out vs age-matched training rows)"),
                ("domain_probe_val", "the same against their validation rows only"),
                ("trained_vs_val_control", "control: their training vs validation rows"),
                ("training_site_probe_in_band", "training sites' site BAcc, 18–35"),
                ("age_r2_training_val", "age R², training sites' validation rows"),
                ("offset_vs_matched_val", "offset against age-matched training rows"),
            ):
                cells = [
                    _mean([(r["diagnosis"].get(arm, {}).get(s) or {}).get(key) for r in runs])
                    for s in (*COVERED, *EXTRAPOLATED)
                ]
                if all(c is None for c in cells):
                    continue  # a figure added after this variant ran
                digits = 1 if key.startswith("offset") else 2
                diag_rows.append(
                    [arm, label, *[fmt_number(c, digits, signed=digits == 1) for c in cells]]
                )
        lines += [
            "Diagnosis, from the embeddings of each model that never saw the held-out site "
            "(mean over seeds; an erased arm is the network it erases, before erasure):",
            "",
            markdown_table(["arm", "figure", *COVERED, *EXTRAPOLATED], diag_rows),
            "",
        ]
    return lines


def render(payload: dict[str, Any]) -> str:
    walls = sum(r["wall_seconds"] for r in payload["runs"] if r["variant"] in DEFAULT_VARIANTS)
    lines = [
        "# Unseen scanners: leave-one-site-out on the shipped table",
        "",
        f"Wall time on {payload.get('cores', os.cpu_count())} cores: the default run "
        f"(recommended configuration, {len(_runs(payload, 'recommended'))} seeds) "
        f"{walls / 60:.1f} min.",
        "",
        "## Acceptance",
        "",
        markdown_table(["figure", "measured", "target", "verdict"], acceptance(payload)),
        "",
        "The sites outside the covered ages, reported apart: "
        + "; ".join(f"{s}: {why}" for s, why in EXTRAPOLATED.items())
        + ". The networks' error there is mostly the offset of that extrapolation (a linear "
        "ridge on the raw features extrapolates better to the children), which no harmonisation of "
        "site can remove.",
        "",
    ]
    lines += seed_zero_table(payload)
    for variant in VARIANTS:
        lines += variant_tables(payload, variant)
    return "\n".join(lines)


def seed_zero_table(payload: dict[str, Any]) -> list[str]:
    """Every variant's arms side by side on the folds of seed 0."""
    runs = [r for r in payload["runs"] if r["seed"] == 0]
    if len({r["variant"] for r in runs}) < 2:
        return []
    rows = []
    for r in runs:
        for arm, summary in r["summaries"].items():
            if not any(_ext(summary, s) is not None for s in COVERED) or arm == "raw":
                continue
            rows.append(
                [
                    r["variant"],
                    arm,
                    fmt_number(_mean([_ext(summary, s) for s in COVERED])),
                    *[fmt_number(_ext(summary, s)) for s in COVERED],
                    fmt_number(_in_band(summary, "linear")),
                    fmt_number(_in_band(summary, "nonlinear")),
                    fmt_number((summary.get("task") or {}).get("mae")),
                ]
            )
    head = [
        "variant", "arm", "mean of the 4 covered", *COVERED, "in-band linear",
        "in-band nonlinear", "within-fold MAE",
    ]  # fmt: skip
    return [
        "## Every variant on the folds of seed 0",
        "",
        "Held-out MAE on the covered sites, in-band (18–35) site BAcc of the within-fold test "
        "rows and the within-fold MAE. A baseline differs between variants that set "
        "different options (they change its random draws): compare each arm with the "
        "baseline of its own variant.",
        "",
        markdown_table(head, rows),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--update", action="store_true", help="keep the stored runs of other variants and seeds"
    )
    parser.add_argument("--render", action="store_true", help="re-render the markdown")
    parser.add_argument(
        "--keep", type=Path, help="keep the compare output folders here (default: deleted)"
    )
    args = parser.parse_args()
    stored = args.out / "unseen_sites.json"
    if args.render:
        (args.out / "unseen_sites.md").write_text(render(json.loads(stored.read_text())))
        return
    payload: dict[str, Any] = {"runs": []}
    if args.update and stored.is_file():
        payload = json.loads(stored.read_text())
    work = Path(tempfile.mkdtemp(prefix="nu_unseen_"))
    try:
        data = work / "openneuro_transfer.csv"
        openneuro_transfer().to_csv(data, index=False)
        for name in args.variants:
            for seed in args.seeds:
                print(f"{name}, seed {seed} ...", flush=True)
                out = (args.keep or work) / f"{name}-seed{seed}"
                result = run_compare(name, seed, data, out)
                payload["runs"] = [
                    r for r in payload["runs"] if (r["variant"], r["seed"]) != (name, seed)
                ] + [result]
                print(f"  {result['wall_seconds'] / 60:.1f} min", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    order = list(VARIANTS)
    payload["runs"].sort(key=lambda r: (order.index(r["variant"]), r["seed"]))
    payload["cores"] = os.cpu_count()
    payload["acceptance"] = acceptance(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (args.out / "unseen_sites.md").write_text(render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
