"""Quality benchmark of the image path, on the default simulated cohort.

Per seed: simulate 3 sites x 300 subjects at 48^3 with age independent of site (``--ages
independent``), then train the compact 3D CNN to predict age as baseline, iterative (sequential
and joint) and grl with site unlearned. On the test split: age MAE and site balanced accuracy of
fresh linear and nonlinear probes on the held-out embeddings.

Targets: baseline linear-probe site BAcc >= 0.90 (the simulated scanner effect is
real); each unlearned arm: site BAcc <= 0.43 (chance 0.33 + 0.10) for both probes and age MAE
<= 1.15 x baseline.

Writes ``benchmarks/results/image_sim.json`` and ``.md``.

    python benchmarks/image_sim.py [--seeds 0 1 2] [--epochs N] [--subjects 300] [--shape 48]
    python benchmarks/image_sim.py --render   # re-render the markdown from the JSON
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
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.demo import ARMS, image_config
from neurounlearn.evaluation.evaluate import evaluate
from neurounlearn.formatting import fmt_mean_sd, markdown_table, mean_sd
from neurounlearn.results import LeakageResult
from neurounlearn.training.fit import fit

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
UNLEARNED = [a[0] for a in ARMS[1:]]
RAW = "raw voxels (8³ block means; ridge / probes)"
TARGET_BASELINE_BACC = 0.90
TARGET_BACC = 1 / 3 + 0.10
TARGET_MAE_RATIO = 1.15
BENCH_OVERRIDES = [
    "audit.n_permutations=20",
    "audit.n_permutations_nonlinear=10",
    "audit.n_bootstrap=200",
    "train.progress_bar=false",
]


def probe(m: dict[str, Any], kind: str) -> float | None:
    return LeakageResult.from_dict(m["leakage"]["site"]).probe(kind).balanced_accuracy


def run_seed(
    seed: int, *, epochs: int, subjects: int, shape: int, work: Path
) -> dict[str, dict[str, Any]]:
    cohort = work / f"cohort{seed}"
    shutil.rmtree(cohort, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = simulate_cohort(
        cohort,
        sites=3,
        subjects=subjects,
        shape=shape,
        seed=seed,
        ages="independent",
        progress=False,
    )
    print(f"seed {seed}: cohort simulated in {time.perf_counter() - t0:.0f} s", flush=True)
    out: dict[str, dict[str, Any]] = {}
    run_dirs: list[Path] = []
    for label, strategy, mode in ARMS:
        cfg = image_config(
            manifest,
            strategy=strategy,
            mode=mode,
            seed=seed,
            epochs=epochs,
            cache_dir=work / "cache",
        )
        cfg = apply_overrides(cfg, BENCH_OVERRIDES)
        run_dir = work / f"seed{seed}_{strategy}_{mode}"
        shutil.rmtree(run_dir, ignore_errors=True)
        fit(cfg, run_dir, echo=lambda _: None)
        run_dirs.append(run_dir)
        m = evaluate(run_dir)
        out[label] = {
            "mae": m["task"]["mae"],
            "site_bacc_linear": probe(m, "linear"),
            "site_bacc_nonlinear": probe(m, "nonlinear"),
            "fit_seconds": m["timing"]["fit_seconds"],
            "epochs_run": m["timing"]["epochs_run"],
        }
        print(f"  {label}: {json.dumps(out[label])}", flush=True)
    out[RAW] = raw_voxel_reference(run_dirs[0], seed)
    print(f"  {RAW}: {json.dumps(out[RAW])}", flush=True)
    return out


def raw_voxel_reference(run_dir: Path, seed: int) -> dict[str, Any]:
    """What the input itself holds: the same probes on the preprocessed volumes, block-averaged
    to 8^3 voxels, and a ridge age model on them (trained on the train split), same split."""
    import numpy as np
    import pandas as pd

    from neurounlearn.evaluation.audit import audit_features
    from neurounlearn.evaluation.reference import linear_readout
    from neurounlearn.rundir import PREDICTIONS
    from neurounlearn.training.run import load_run

    run = load_run(run_dir)
    volumes = np.load(run.info["cache"]["path"], mmap_mode="r")
    n, d = volumes.shape[0], volumes.shape[1]
    k = d // 8
    pooled = np.stack(
        [
            np.asarray(v[: 8 * k, : 8 * k, : 8 * k], dtype=np.float32)
            .reshape(8, k, 8, k, 8, k)
            .mean(axis=(1, 3, 5))
            .ravel()
            for v in volumes
        ]
    )
    preds = pd.read_csv(run_dir / PREDICTIONS)
    assert len(preds) == n
    train = (preds["split"] == "train").to_numpy()
    test = (preds["split"] == "test").to_numpy()
    age = preds["age"].to_numpy(dtype=float)
    predicted = linear_readout(pooled, age, train)  # ridge, the readout's penalties
    mae = float(np.mean(np.abs(predicted[test] - age[test])))
    leak = audit_features(
        pooled[test],
        preds.loc[test].reset_index(drop=True),
        ["site"],
        target=age[test],
        audit=run.config.audit.model_copy(
            update={"n_permutations": 10, "n_permutations_nonlinear": 5, "n_bootstrap": 100}
        ),
        seed=seed,
    )
    audit = LeakageResult.from_dict(leak["site"])
    return {
        "mae": mae,
        "site_bacc_linear": audit.probe("linear").balanced_accuracy,
        "site_bacc_nonlinear": audit.probe("nonlinear").balanced_accuracy,
        "fit_seconds": None,
        "epochs_run": None,
    }


def summarise(per_seed: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    keys = ["mae", "site_bacc_linear", "site_bacc_nonlinear", "fit_seconds", "epochs_run"]
    summary: dict[str, dict[str, Any]] = {}
    for label in [RAW, *(a[0] for a in ARMS)]:
        summary[label] = {}
        for k in keys:
            stat = mean_sd([per_seed[s][label].get(k) for s in per_seed])
            summary[label][k] = stat.as_dict(with_n=False)
    return summary


def verdicts(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    base = summary["baseline"]
    out: dict[str, Any] = {
        "baseline": {
            "site_bacc_linear": base["site_bacc_linear"]["mean"],
            "met": (base["site_bacc_linear"]["mean"] or 0) >= TARGET_BASELINE_BACC,
        }
    }
    for label in UNLEARNED:
        s = summary[label]
        lin, non = s["site_bacc_linear"]["mean"], s["site_bacc_nonlinear"]["mean"]
        ratio = s["mae"]["mean"] / base["mae"]["mean"]
        out[label] = {
            "linear_met": lin <= TARGET_BACC,
            "nonlinear_met": non <= TARGET_BACC,
            "mae_ratio": ratio,
            "mae_met": ratio <= TARGET_MAE_RATIO,
        }
    return out


def render(payload: dict[str, Any]) -> str:
    summary, verdict, meta = payload["summary"], payload["verdicts"], payload["meta"]
    base_mae = summary["baseline"]["mae"]["mean"]
    lines = [
        "# Image benchmark: simulated cohort",
        "",
        f"{meta['sites']} sites, {meta['subjects']} subjects, {meta['shape']}³ voxels, age "
        f"independent of site; compact 3D CNN, {meta['epochs']} epochs, batch 16; seeds "
        f"{meta['seeds']} (each seed simulates its own cohort and split). Mean ± sd over seeds "
        "on the test split. Chance site BAcc: 0.33.",
        "",
    ]
    head = ["arm", "age MAE", "MAE / baseline", "site BAcc linear", "site BAcc nonlinear", "fit s"]
    rows = []
    for label in [RAW, *(a[0] for a in ARMS)]:
        s = summary[label]
        rows.append(
            [
                label,
                fmt_mean_sd(s["mae"]),
                f"{s['mae']['mean'] / base_mae:.2f}",
                fmt_mean_sd(s["site_bacc_linear"]),
                fmt_mean_sd(s["site_bacc_nonlinear"]),
                fmt_mean_sd(s["fit_seconds"], 0),
            ]
        )
    b = verdict["baseline"]
    lines += [
        markdown_table(head, rows),
        "",
        f"Targets: baseline linear site BAcc ≥ {TARGET_BASELINE_BACC:.2f}; unlearned arms "
        f"site BAcc ≤ {TARGET_BACC:.2f} for both probes and MAE ≤ {TARGET_MAE_RATIO} × baseline.",
        "",
        f"- baseline: linear site BAcc {b['site_bacc_linear']:.3f} "
        f"({'met' if b['met'] else 'missed'})",
    ]
    for label in UNLEARNED:
        v, s = verdict[label], summary[label]
        parts = []
        for kind in ("linear", "nonlinear"):
            val = s[f"site_bacc_{kind}"]["mean"]
            status = "met" if v[f"{kind}_met"] else f"missed by {val - TARGET_BACC:.3f}"
            parts.append(f"{kind} {val:.3f} ({status})")
        parts.append(f"MAE ratio {v['mae_ratio']:.3f} ({'met' if v['mae_met'] else 'missed'})")
        lines.append(f"- {label}: " + "; ".join(parts))
    lines += ["", f"Total wall time {meta['wall_minutes']:.1f} min on this machine."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--shape", type=int, default=48)
    parser.add_argument("--render", action="store_true", help="re-render the markdown only")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.render:
        payload = json.loads((RESULTS / "image_sim.json").read_text())
        (RESULTS / "image_sim.md").write_text(render(payload))
        print(render(payload))
        return
    start = time.perf_counter()
    per_seed: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            per_seed[str(seed)] = run_seed(
                seed, epochs=args.epochs, subjects=args.subjects, shape=args.shape, work=Path(tmp)
            )
    summary = summarise(per_seed)
    payload = {
        "meta": {
            "sites": 3,
            "subjects": args.subjects,
            "shape": args.shape,
            "epochs": args.epochs,
            "seeds": args.seeds,
            "wall_minutes": (time.perf_counter() - start) / 60,
        },
        "per_seed": per_seed,
        "summary": summary,
        "verdicts": verdicts(summary),
    }
    (RESULTS / "image_sim.json").write_text(json.dumps(payload, indent=2))
    text = render(payload)
    (RESULTS / "image_sim.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
