"""``neurounlearn compare`` on the bundled OpenNeuroTransfer table, timed, as a user runs it.

Variants (each a separate ``compare`` run, one after the other; the command line is recorded):

* ``all-ages`` — ``--unlearn site`` over every age, 5 folds, all six arms;
* ``18-35`` — site unlearned within the age band the adult sites share
  (``--unlearn-where '18 <= age <= 35' --band 18 35``), as in the demo;
* ``external`` — ``all-ages`` plus ``--external leave-one-site-out``.

Writes ``benchmarks/results/compare_openneuro.{json,md}`` (wall time and ``comparison.md`` of
each variant).

    python benchmarks/compare_openneuro.py [--variants all-ages 18-35 external]
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

from neurounlearn.data.bundled import OPENNEURO_FEATURES

RESULTS = Path(__file__).parent / "results"
ARMS = "raw,combat,baseline,baseline+combat,iterative,grl"
VARIANTS: dict[str, list[str]] = {
    "all-ages": [],
    "18-35": ["--unlearn-where", "18 <= age <= 35", "--band", "18", "35"],
    "external": ["--external", "leave-one-site-out"],
}


def run_variant(name: str, data: Path, out: Path) -> dict[str, object]:
    command = [
        str(Path(sys.executable).with_name("neurounlearn")),
        "compare",
        "--data",
        str(data),
        "--features",
        OPENNEURO_FEATURES,
        "--target",
        "age",
        "--unlearn",
        "site",
        "--arms",
        ARMS,
        "--folds",
        "5",
        *VARIANTS[name],
        "--out",
        str(out),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ))
    seconds = time.perf_counter() - start
    shown = [c.replace(f"{data.parent}/", "") for c in command[1:]]  # no temporary paths
    return {
        "variant": name,
        "command": " ".join(f"'{c}'" if any(ch in c for ch in " |()$<=") else c for c in shown),
        "wall_seconds": seconds,
        "comparison_md": (out / "comparison.md").read_text(),
        "comparison": json.loads((out / "comparison.json").read_text())["summaries"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nu_compare_"))
    try:
        data = work / "openneuro_transfer.csv"
        subprocess.run(
            [str(Path(sys.executable).with_name("neurounlearn")), "bundled", str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results = []
        for name in args.variants:
            print(f"compare: {name} ...", flush=True)
            results.append(run_variant(name, data, work / name))
            print(f"  {results[-1]['wall_seconds'] / 60:.1f} min", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare_openneuro.json").write_text(json.dumps(results, indent=1))
    cores = len(os.sched_getaffinity(0))
    parts = [
        "# `neurounlearn compare` on OpenNeuroTransfer (546 scans, 6 sites)\n",
        f"{cores} CPU cores; wall time of the whole command (fits, audits and report).\n",
    ]
    for r in results:
        parts.append(
            f"## {r['variant']}: {float(r['wall_seconds']) / 60:.1f} min\n\n"  # type: ignore[arg-type]
            f"`neurounlearn {r['command']}`\n\n{r['comparison_md']}"
        )
    (args.out / "compare_openneuro.md").write_text("\n".join(parts))
    print(f"written to {args.out / 'compare_openneuro.md'}")


if __name__ == "__main__":
    main()
