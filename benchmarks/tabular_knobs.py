"""Knob readings on the bundled OpenNeuroTransfer table: joint ``beta`` and grl ``lambda_max``.

Same 5 splits, data and audit as ``tabular_openneuro.py``, one setting changed at a time. These
read the knobs on the data the acceptance figures come from, so they are optimistic; they were
not used to choose the defaults. Writes ``benchmarks/results/tabular_knobs.{json,md}``.

    python benchmarks/tabular_knobs.py [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

from neurounlearn.config import apply_overrides
from neurounlearn.data.bundled import write_openneuro_transfer
from neurounlearn.demo import demo_config
from neurounlearn.evaluation.evaluate import evaluate
from neurounlearn.formatting import markdown_table
from neurounlearn.training.fit import fit
from tabular_openneuro import BENCH_OVERRIDES, RESULTS, bacc

warnings.filterwarnings("ignore")

#: (arm label, strategy, mode, override)
SETTINGS = [
    ("iterative (joint)", "iterative", "joint", "confounds.0.beta=2"),
    ("grl", "grl", "sequential", "strategy.lambda_max=0.5"),
]


def render(results: dict[str, Any]) -> str:
    """The markdown table of the stored results, one row per arm and setting."""
    head = ["arm", "setting", "age MAE", "18–35 BAcc linear", "18–35 BAcc nonlinear"]
    rows = []
    for key, r in results.items():
        arm, setting = key.split(" | ")
        rows.append(
            [
                arm,
                f"`{setting}`",
                f"{r['mae']:.2f}",
                f"{r['band_bacc_linear']:.2f}",
                f"{r['band_bacc_nonlinear']:.2f}",
            ]
        )
    return markdown_table(head, rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_openneuro_transfer(Path(tmp) / "openneuro_transfer.csv")
        for label, strategy, mode, override in SETTINGS:
            rows = []
            for seed in args.seeds:
                cfg = demo_config(data, strategy=strategy, mode=mode, seed=seed)
                cfg = apply_overrides(cfg, [override, *BENCH_OVERRIDES])
                run_dir = Path(tmp) / "run"
                shutil.rmtree(run_dir, ignore_errors=True)
                fit(cfg, run_dir)
                m = evaluate(run_dir)
                rows.append(
                    {
                        "seed": seed,
                        "mae": m["task"]["mae"],
                        "band_bacc_linear": bacc(m["leakage"], "linear", True),
                        "band_bacc_nonlinear": bacc(m["leakage"], "nonlinear", True),
                    }
                )
                print(f"  {label} {override} seed {seed}: {rows[-1]}", flush=True)
            results[f"{label} | {override}"] = {
                "per_seed": rows,
                **{
                    k: statistics.fmean(r[k] for r in rows)
                    for k in ("mae", "band_bacc_linear", "band_bacc_nonlinear")
                },
            }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tabular_knobs.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render(results)
    (args.out / "tabular_knobs.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
