"""Concept erasure (LEACE, conditional on age) on top of unlearning, on the shipped table.

Four ``neurounlearn compare`` runs, 5 folds, on the OpenNeuroTransfer table (546 subjects, 6
sites), then fits for the cost:

1. ``18-35``: site unlearned within 18–35 (``--unlearn-where``), audited with ``--band 18 35``,
   every arm with and without ``--erase site`` (conditional, erased after training), beside
   ComBat;
2. ``18-35 during``: the same folds and setting, the network arms erasing inside training
   (``--set erasure.when=during``: the eraser refit between encoder and heads every epoch);
3. ``all-ages``: ``--erase site`` conditional with site unlearned over every age (no
   ``--unlearn-where``); ``baseline+erase`` erases without unlearning;
4. ``sex``: a sex classifier with age erased (``--erase age:continuous:plain``): the held-out
   age ridge R² of the embeddings and sex balanced accuracy;
5. ``cost``: the same iterative fit without erasure, erasing after and erasing during training.

Defaults are not tuned here: every run uses the package defaults (the eraser's conditional
basis is 5-knot cubic splines of age; it erases over every direction of the embedding).
Writes ``benchmarks/results/erasure.{json,md}``; the acceptance
table at the top says which targets are met.

    python benchmarks/erasure.py                   # 18-35, all-ages, sex, cost (~27 min)
    python benchmarks/erasure.py --update --variants "18-35 during"   # adds erasing during
    python benchmarks/erasure.py --render          # re-render erasure.md from erasure.json
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

from neurounlearn.data.bundled import OPENNEURO_FEATURES, openneuro_transfer
from neurounlearn.formatting import fmt_number, markdown_table
from neurounlearn.results import LeakageResult
from neurounlearn.rundir import read_info

RESULTS = Path(__file__).parent / "results"
CLI = str(Path(sys.executable).with_name("neurounlearn"))
QUIET = ["--set", "train.progress_bar=false"]
AGE_ARMS = (
    "raw,raw+erase,combat,baseline,baseline+erase,baseline+combat,"
    "iterative,iterative+erase,grl,grl+erase"
)
BAND_18_35 = [
    "--target", "age", "--unlearn", "site", "--unlearn-where", "18 <= age <= 35",
    "--band", "18", "35", "--erase", "site",
]  # fmt: skip
VARIANTS: dict[str, list[str]] = {
    "18-35": [*BAND_18_35, "--arms", AGE_ARMS],
    "18-35 during": [
        *BAND_18_35, "--arms", "baseline+erase,iterative+erase,grl+erase",
        "--set", "erasure.when=during",
    ],
    "all-ages": [
        "--target", "age", "--unlearn", "site", "--band", "18", "35", "--erase", "site",
        "--arms", "baseline,baseline+erase,grl,grl+erase",
    ],
    "sex": [
        "--target", "sex", "--erase", "age:continuous:plain",
        "--arms", "raw,raw+erase,baseline,baseline+erase",
    ],
}  # fmt: skip


def run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
    return time.perf_counter() - start


def compare_variant(name: str, data: Path, work: Path) -> dict[str, Any]:
    out = work / name.replace(" ", "-")
    command = [
        CLI, "compare", "--data", str(data), "--features", OPENNEURO_FEATURES,
        *VARIANTS[name], "--folds", "5", *QUIET, "--out", str(out),
    ]  # fmt: skip
    seconds = run(command)
    summaries = json.loads((out / "comparison.json").read_text())["summaries"]
    return {
        "variant": name,
        "command": " ".join(c if c != str(data) else "openneuro_transfer.csv" for c in command[1:]),
        "wall_seconds": seconds,
        "comparison_md": (out / "comparison.md").read_text(),
        "summaries": summaries,
    }


def cost(data: Path, work: Path) -> dict[str, Any]:
    base = [
        CLI, "fit", "--data", str(data), "--features", OPENNEURO_FEATURES, "--target", "age",
        "--unlearn", "site", "--strategy", "iterative", *QUIET,
    ]  # fmt: skip
    out: dict[str, Any] = {}
    arms = (
        ("without", []),
        ("after", ["--erase", "site"]),
        ("during", ["--erase", "site", "--set", "erasure.when=during"]),
    )
    for label, extra in arms:
        run_dir = work / f"cost-{label}"
        seconds = run([*base, *extra, "--out", str(run_dir)])
        info = read_info(run_dir)
        out[label] = {
            "fit_seconds": info["fit_seconds"],
            "command_seconds": seconds,
            "erasure_seconds": (info.get("erasure") or {}).get("seconds"),
            "epochs_run": info["epochs_run"],
            "seconds_per_epoch": info["fit_seconds"] / max(info["epochs_run"], 1),
        }
    out["after_share_of_fit"] = (out["after"]["erasure_seconds"] or 0.0) / out["after"][
        "fit_seconds"
    ]
    # during: the refits at every epoch's start (a feature pass and an eraser fit each) plus
    # the final erasure, as a share of that fit (the training itself differs, and so does
    # when it stops: the fits' wall times are not comparable epoch for epoch)
    info = read_info(work / "cost-during")["erasure"]
    out["during"]["refits"] = info["during_training"]["refits"]
    out["during"]["refit_seconds"] = info["during_training"]["seconds"]
    out["during_share_of_fit"] = (
        out["during"]["refit_seconds"] + (out["during"]["erasure_seconds"] or 0.0)
    ) / out["during"]["fit_seconds"]
    return out


def _get(summary: dict[str, Any], *path: str) -> Any:
    node: Any = summary
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def _audit(summary: dict[str, Any], confound: str) -> LeakageResult:
    return LeakageResult.from_dict(_get(summary, "leakage", confound))


def _site_in_band(summaries: dict[str, Any], arm: str, probe: str) -> float | None:
    band = _audit(summaries.get(arm) or {}, "site").conditional
    return None if band is None else band.probe(probe).balanced_accuracy


def acceptance(payload: dict[str, Any]) -> list[list[str]]:
    """One row per acceptance figure: what, measured, target, met or missed."""
    rows: list[list[str]] = []

    def check(what: str, value: float | None, target: str, ok: bool | None) -> None:
        shown = fmt_number(value)
        rows.append([what, shown, target, "—" if ok is None else ("met" if ok else "missed")])

    variants = payload["variants"]
    band = (variants.get("18-35") or {}).get("summaries") or {}
    base_mae = _get(band.get("baseline") or {}, "task", "mae")
    combats = [_site_in_band(band, a, "linear") for a in ("combat", "baseline+combat")]
    for label, name in (("after", "18-35"), ("during", "18-35 during")):
        summaries = (variants.get(name) or {}).get("summaries") or {}
        for arm in ("iterative+erase", "grl+erase"):
            if arm not in summaries:
                continue
            tag = f"1. {arm} ({label}), 18–35"
            linear = _site_in_band(summaries, arm, "linear")
            nonlinear = _site_in_band(summaries, arm, "nonlinear")
            mae = _get(summaries[arm], "task", "mae")
            ratio = mae / base_mae if mae is not None and base_mae else None
            check(f"{tag}: in-band linear site BAcc", linear, "≤ 0.25", _le(linear, 0.25))
            check(f"{tag}: in-band nonlinear", nonlinear, "≤ 0.28", _le(nonlinear, 0.28))
            check(f"{tag}: MAE / baseline's", ratio, "≤ 1.05", _le(ratio, 1.05))
            known = [c for c in combats if c is not None]
            check(
                f"{tag}: in-band linear below raw+ComBat's and baseline+ComBat's "
                f"({' / '.join(f'{c:.2f}' for c in known)})",
                linear,
                "< both",
                None if linear is None or len(known) < 2 else linear < min(known),
            )
    ages = (variants.get("all-ages") or {}).get("summaries") or {}
    age_base = _get(ages.get("baseline") or {}, "task", "mae")
    for arm in ("baseline+erase", "grl+erase"):
        if arm not in ages:
            continue
        mae = _get(ages[arm], "task", "mae")
        ratio = mae / age_base if mae is not None and age_base else None
        linear = _site_in_band(ages, arm, "linear")
        check(f"2. {arm}, every age: MAE / baseline's", ratio, "≤ 1.10", _le(ratio, 1.10))
        check(f"2. {arm}, every age: in-band linear site BAcc", linear, "≤ 0.25", _le(linear, 0.25))
    sex = (variants.get("sex") or {}).get("summaries") or {}
    if "baseline+erase" in sex:
        r2 = _audit(sex["baseline+erase"], "age").probe("linear").r2
        bacc = _get(sex["baseline+erase"], "task", "balanced_accuracy")
        base = _get(sex.get("baseline") or {}, "task", "balanced_accuracy")
        ratio = bacc / base if bacc is not None and base else None
        check("3. sex classifier, age erased: held-out age ridge R²", r2, "≤ 0.02", _le(r2, 0.02))
        check("3. sex BAcc / baseline's", ratio, "≥ 0.95", None if ratio is None else ratio >= 0.95)
    if "cost" in payload:
        c = payload["cost"]
        for when in ("after", "during"):
            share = c[f"{when}_share_of_fit"]
            check(
                f"4. cost of erasing {when} training, share of the fit",
                share,
                "≤ 0.05",
                share <= 0.05,
            )
    return rows


def _le(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


#: What a plain run measures (about 27 min on 2 cores); ``18-35 during`` (about 7 min more)
#: is asked for by name.
DEFAULT_VARIANTS = ["18-35", "all-ages", "sex", "cost"]


def render(payload: dict[str, Any]) -> str:
    """``erasure.md`` from the stored ``erasure.json``."""
    walls = {n: v["wall_seconds"] for n, v in payload["variants"].items()}
    if "cost" in payload:
        walls["cost"] = payload["cost"].get("wall_seconds", 0.0)
    default = sum(w for n, w in walls.items() if n in DEFAULT_VARIANTS)
    lines = [
        "# Concept erasure on the shipped table",
        "",
        f"Wall time on {os.cpu_count()} cores: "
        + ", ".join(f"{n} {w / 60:.1f} min" for n, w in walls.items())
        + f"; the default variants together {default / 60:.1f} min.",
        "",
        "## Acceptance",
        "",
        markdown_table(["figure", "measured", "target", "verdict"], payload["acceptance"]),
        "",
    ]
    for name, result in payload["variants"].items():
        lines += [f"## {name}", "", f"`neurounlearn {result['command']}`", ""]
        lines += [result["comparison_md"], ""]
    if "cost" in payload:
        c = payload["cost"]
        lines += [
            "## cost",
            "",
            f"The same iterative fit: without erasure {c['without']['fit_seconds']:.1f} s "
            f"({c['without']['epochs_run']} epochs); erasing after training "
            f"{c['after']['fit_seconds']:.1f} s, of which the erasure itself (eraser fit and "
            f"head refit) {c['after']['erasure_seconds']:.2f} s = "
            f"{100 * c['after_share_of_fit']:.1f} % of the fit; erasing during training "
            f"{c['during']['fit_seconds']:.1f} s ({c['during']['epochs_run']} epochs), of which "
            f"{c['during']['refits']} refits took {c['during']['refit_seconds']:.2f} s and the "
            f"final erasure {c['during']['erasure_seconds']:.2f} s = "
            f"{100 * c['during_share_of_fit']:.1f} % of the fit. The fits' wall times also "
            "differ by the machine's own noise (the runs without and after erasure train "
            "identically).",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", default=DEFAULT_VARIANTS, choices=[*VARIANTS, "cost"]
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other variants of the stored erasure.json, replace those run now",
    )
    parser.add_argument("--render", action="store_true", help="re-render erasure.md from the JSON")
    args = parser.parse_args()
    stored = args.out / "erasure.json"
    if args.render:
        (args.out / "erasure.md").write_text(render(json.loads(stored.read_text())))
        return
    payload: dict[str, Any] = {"variants": {}}
    if args.update and stored.is_file():
        payload = json.loads(stored.read_text())
    work = Path(tempfile.mkdtemp(prefix="nu_erasure_"))
    try:
        data = work / "openneuro_transfer.csv"
        openneuro_transfer().to_csv(data, index=False)
        for name in args.variants:
            print(f"{name} ...", flush=True)
            start = time.perf_counter()
            if name == "cost":
                payload["cost"] = cost(data, work)
                payload["cost"]["wall_seconds"] = time.perf_counter() - start
                print(json.dumps(payload["cost"], indent=2), flush=True)
            else:
                result = compare_variant(name, data, work)
                payload["variants"][name] = result
                print(result["comparison_md"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    order = [*VARIANTS]
    payload["variants"] = {n: payload["variants"][n] for n in order if n in payload["variants"]}
    payload.pop("wall_seconds", None)
    payload["acceptance"] = acceptance(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    stored.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (args.out / "erasure.md").write_text(render(payload))
    print(f"results in {args.out}/erasure.{{json,md}}")


if __name__ == "__main__":
    main()
