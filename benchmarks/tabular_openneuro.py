"""Benchmark of the table path, on the bundled OpenNeuroTransfer table.

For 5 seeds (5 different subject-level, site-stratified splits), on the test split:
age MAE, and site balanced accuracy of fresh linear and nonlinear probes on the test embeddings,
overall and within 18–35 years, for raw-feature ridge, raw + ComBat (neuroHarmonize fit on the
training rows), the baseline network, iterative unlearning (sequential and joint; site unlearned
within 18–35) and gradient reversal. Also the fit time of each strategy relative to baseline.

Writes ``benchmarks/results/tabular_openneuro.json`` and ``.md``.

    python benchmarks/tabular_openneuro.py [--seeds 0 1 2 3 4] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from neurounlearn.config import apply_overrides
from neurounlearn.data.bundled import write_openneuro_transfer
from neurounlearn.demo import ARMS, demo_config, reference_results
from neurounlearn.evaluation.evaluate import evaluate
from neurounlearn.formatting import fmt_mean_sd, fmt_number, markdown_table, mean_sd
from neurounlearn.results import LeakageResult
from neurounlearn.training.fit import fit

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
TARGET_BACC = 0.30
TARGET_MAE_RATIO = 1.10
UNLEARNED = ("iterative (sequential)", "iterative (joint)", "grl")
# Point estimates do not depend on the permutation count: keep the benchmark quick and quiet.
BENCH_OVERRIDES = [
    "audit.n_permutations=20",
    "audit.n_permutations_nonlinear=10",
    "audit.n_bootstrap=200",
    "train.progress_bar=false",
]


def bacc(leakage: dict[str, Any], probe: str, conditional: bool) -> float | None:
    audit = LeakageResult.from_dict(leakage["site"])
    block = audit.conditional if conditional else audit
    return None if block is None else block.probe(probe).balanced_accuracy


def row(
    task: dict[str, Any], leakage: dict[str, Any], timing: dict[str, Any] | None
) -> dict[str, Any]:
    timing = timing or {}
    return {
        "mae": task["mae"],
        "site_bacc_linear": bacc(leakage, "linear", False),
        "site_bacc_nonlinear": bacc(leakage, "nonlinear", False),
        "band_bacc_linear": bacc(leakage, "linear", True),
        "band_bacc_nonlinear": bacc(leakage, "nonlinear", True),
        "fit_seconds": timing.get("fit_seconds"),
        "epochs_run": timing.get("epochs_run"),
        "samples_per_second": timing.get("samples_per_second"),
    }


def run_seed(data: Path, seed: int, epochs: int | None, work: Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    base_cfg = apply_overrides(demo_config(data, strategy="baseline", seed=seed), BENCH_OVERRIDES)
    for name, r in reference_results(base_cfg).items():
        out[name] = row(r["task"], r["leakage"], None)
    for label, strategy, mode in ARMS:
        cfg = apply_overrides(
            demo_config(data, strategy=strategy, mode=mode, seed=seed, epochs=epochs),
            BENCH_OVERRIDES,
        )
        run_dir = work / f"seed{seed}_{strategy}_{mode}"
        shutil.rmtree(run_dir, ignore_errors=True)
        fit(cfg, run_dir)
        m = evaluate(run_dir)
        out[label] = row(m["task"], m["leakage"], m["timing"])
        print(
            f"  seed {seed} {label:24s} MAE {m['task']['mae']:.2f}  in-band BAcc "
            f"{out[label]['band_bacc_linear']:.2f}/{out[label]['band_bacc_nonlinear']:.2f}  "
            f"fit {m['timing']['fit_seconds']:.1f}s",
            flush=True,
        )
    return out


def summarise(per_seed: dict[int, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    arms = list(next(iter(per_seed.values())))
    summary: dict[str, dict[str, Any]] = {}
    for arm in arms:
        summary[arm] = {}
        for key in next(iter(per_seed.values()))[arm]:
            stat = mean_sd([per_seed[s][arm][key] for s in per_seed])
            summary[arm][key] = stat.as_dict(with_n=False)
    base = summary["baseline"]
    for arm in arms:
        fs = summary[arm]["fit_seconds"]["mean"]
        summary[arm]["fit_time_vs_baseline"] = (
            fs / base["fit_seconds"]["mean"] if fs and base["fit_seconds"]["mean"] else None
        )
        summary[arm]["mae_vs_baseline"] = summary[arm]["mae"]["mean"] / base["mae"]["mean"]
        sps = summary[arm]["samples_per_second"]["mean"]
        summary[arm]["throughput_vs_baseline"] = (
            sps / base["samples_per_second"]["mean"] if sps else None
        )
    return summary


def verdicts(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for arm in UNLEARNED:
        s = summary[arm]
        lin, nl = s["band_bacc_linear"]["mean"], s["band_bacc_nonlinear"]["mean"]
        ratio = s["mae_vs_baseline"]
        out[arm] = {
            "band_linear_ok": lin <= TARGET_BACC,
            "band_linear_excess": lin - TARGET_BACC,
            "band_nonlinear_ok": nl <= TARGET_BACC,
            "band_nonlinear_excess": nl - TARGET_BACC,
            "mae_ok": ratio <= TARGET_MAE_RATIO,
            "mae_ratio": ratio,
        }
    return out


def markdown(
    summary: dict[str, dict[str, Any]],
    checks: dict[str, dict[str, Any]],
    seeds: list[int],
    wall: float,
) -> str:
    head = [
        "arm",
        "age MAE",
        "MAE / baseline",
        "site BAcc linear",
        "site BAcc nonlinear",
        "18–35 BAcc linear",
        "18–35 BAcc nonlinear",
        "fit s",
        "fit time / baseline",
        "epochs",
        "samples/s / baseline",
    ]
    lines = [
        f"## OpenNeuroTransfer: age, site unlearned within 18–35 ({len(seeds)} seeds: "
        f"{', '.join(map(str, seeds))})",
        "",
        "Mean ± sd over seeds (one subject-level, site-stratified split per seed) on the test "
        "split. Chance: 0.17 overall (6 sites), 0.20 in 18–35 (5 sites). Fit time includes "
        "early stopping (runs stop at different epochs); samples/s compares the cost per epoch.",
        "",
    ]
    rows = [
        [
            arm,
            fmt_mean_sd(s["mae"]),
            f"{s['mae_vs_baseline']:.2f}",
            fmt_mean_sd(s["site_bacc_linear"]),
            fmt_mean_sd(s["site_bacc_nonlinear"]),
            fmt_mean_sd(s["band_bacc_linear"]),
            fmt_mean_sd(s["band_bacc_nonlinear"]),
            fmt_mean_sd(s["fit_seconds"], 1),
            fmt_number(s["fit_time_vs_baseline"]),
            fmt_mean_sd(s["epochs_run"], 0),
            fmt_number(s["throughput_vs_baseline"]),
        ]
        for arm, s in summary.items()
    ]
    lines += [
        markdown_table(head, rows),
        "",
        f"Targets: in-band BAcc ≤ {TARGET_BACC} for both probes, MAE ≤ "
        f"{TARGET_MAE_RATIO} × baseline.",
        "",
    ]
    for arm, c in checks.items():
        parts = [
            "linear met"
            if c["band_linear_ok"]
            else f"linear missed by {c['band_linear_excess']:.3f}",
            "nonlinear met"
            if c["band_nonlinear_ok"]
            else f"nonlinear missed by {c['band_nonlinear_excess']:.3f}",
            f"MAE ratio {c['mae_ratio']:.3f} ({'met' if c['mae_ok'] else 'missed'})",
        ]
        lines.append(f"- {arm}: " + "; ".join(parts))
    lines += ["", f"Total wall time {wall / 60:.1f} min on this machine."]
    return "\n".join(lines) + "\n"


def render(payload: dict[str, Any]) -> str:
    return markdown(
        payload["summary"], payload["targets"], payload["seeds"], payload["wall_seconds"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the markdown from the saved JSON"
    )
    args = parser.parse_args()
    if args.render:
        payload = json.loads((args.out / "tabular_openneuro.json").read_text())
        (args.out / "tabular_openneuro.md").write_text(render(payload))
        print(render(payload))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_openneuro_transfer(work / "openneuro_transfer.csv")
        per_seed = {seed: run_seed(data, seed, args.epochs, work) for seed in args.seeds}
    wall = time.perf_counter() - start
    summary = summarise(per_seed)
    checks = verdicts(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "seeds": args.seeds,
        "per_seed": {str(k): v for k, v in per_seed.items()},
        "summary": summary,
        "targets": checks,
        "wall_seconds": wall,
    }
    (args.out / "tabular_openneuro.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = render(payload)
    (args.out / "tabular_openneuro.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
