"""Concept erasure (LEACE, conditional on age) on top of unlearning, on the shipped table.

Three ``neurounlearn compare`` runs, 5 folds, on the OpenNeuroTransfer table (546 subjects, 6
sites), then one pair of fits for the cost:

1. ``18-35``: site unlearned within 18–35 (``--unlearn-where``), audited with ``--band 18 35``,
   every arm with and without ``--erase site`` (conditional), beside ComBat;
2. ``all-ages``: ``--erase site`` conditional with site unlearned over every age;
3. ``sex``: a sex classifier (baseline) with age erased (``--erase age:continuous``): the
   held-out age ridge R² of the embeddings and sex balanced accuracy;
4. ``cost``: the same iterative fit with and without ``--erase site``; erasure's own seconds.

Defaults are not tuned here: every run uses the package defaults (the eraser's conditional
basis is 5-knot cubic splines of age). Writes ``benchmarks/results/erasure.{json,md}``.

    python benchmarks/erasure.py [--variants 18-35 all-ages sex cost]
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

from neurounlearn.data.datasets import OPENNEURO_FEATURES, openneuro_transfer

RESULTS = Path(__file__).parent / "results"
CLI = str(Path(sys.executable).with_name("neurounlearn"))
QUIET = ["--set", "train.progress_bar=false"]
AGE_ARMS = (
    "raw,raw+erase,combat,baseline,baseline+erase,baseline+combat,"
    "iterative,iterative+erase,grl,grl+erase"
)
VARIANTS: dict[str, list[str]] = {
    "18-35": [
        "--target", "age", "--unlearn", "site", "--unlearn-where", "18 <= age <= 35",
        "--band", "18", "35", "--erase", "site", "--arms", AGE_ARMS,
    ],
    "all-ages": [
        "--target", "age", "--unlearn", "site", "--band", "18", "35", "--erase", "site",
        "--arms", "baseline,iterative,iterative+erase,grl,grl+erase",
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
    out = work / name
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
    for label, extra in (("without", []), ("with", ["--erase", "site"])):
        run_dir = work / f"cost-{label}"
        run([*base, *extra, "--out", str(run_dir)])
        info = json.loads((run_dir / "run.json").read_text())
        out[label] = {
            "fit_seconds": info["fit_seconds"],
            "erasure_seconds": (info.get("erasure") or {}).get("seconds"),
            "epochs_run": info["epochs_run"],
        }
    erase_s = out["with"]["erasure_seconds"] or 0.0
    out["erasure_share_of_fit"] = erase_s / out["with"]["fit_seconds"]
    return out


def _get(summary: dict[str, Any], *path: str) -> Any:
    node: Any = summary
    for key in path:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", nargs="+", default=[*VARIANTS, "cost"], choices=[*VARIANTS, "cost"]
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="nu_erasure_"))
    payload: dict[str, Any] = {"variants": {}}
    try:
        data = work / "openneuro_transfer.csv"
        openneuro_transfer().to_csv(data, index=False)
        for name in args.variants:
            print(f"{name} ...", flush=True)
            if name == "cost":
                payload["cost"] = cost(data, work)
                print(json.dumps(payload["cost"], indent=2), flush=True)
            else:
                result = compare_variant(name, data, work)
                payload["variants"][name] = result
                print(result["comparison_md"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload["wall_seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "erasure.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [
        "# Concept erasure on the shipped table",
        "",
        f"Wall time {payload['wall_seconds'] / 60:.1f} min on {os.cpu_count()} cores.",
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
            f"iterative fit without erasure {c['without']['fit_seconds']:.1f} s, with "
            f"{c['with']['fit_seconds']:.1f} s; the erasure itself (eraser fit and head refit) "
            f"{c['with']['erasure_seconds']:.2f} s = {100 * c['erasure_share_of_fit']:.1f} % "
            "of the fit.",
            "",
        ]
    (args.out / "erasure.md").write_text("\n".join(lines))
    print(f"wall time {payload['wall_seconds']:.0f} s; results in {args.out}/erasure.{{json,md}}")


if __name__ == "__main__":
    main()
