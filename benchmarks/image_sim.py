"""Quality benchmark of the image path, on the default simulated cohort.

Per seed: simulate 3 sites x 300 subjects at 48^3 with age independent of site (``--ages
independent``; the scanners differ in tissue contrast, acquisition voxel size, skull stripping
and registration as well as intensities, see ``docs/simulated-cohort.md``), then train the
compact 3D CNN to predict age as the baseline, and iterative and grl with site unlearned, each
with and without ``--erase site``. On the test split: age MAE and the site balanced accuracy of
fresh linear and nonlinear probes on the held-out embeddings. A voxel ridge (ridge on 8^3 block
means of the same preprocessed volumes, fit on the training rows) is the honest floor.

Targets: (1) baseline site BAcc >= 0.85 for both probes (the CNN reads the scanner, as real
multi-site CNNs do); (2) baseline age MAE <= 0.9 x the voxel ridge's; (3) unlearned arms, at least
those that erase: site BAcc <= 0.43 (chance 0.33 + 0.10) for both probes and MAE <= 1.10 x the
baseline's.

Writes ``benchmarks/results/image_sim.json`` and ``.md``.

    python benchmarks/image_sim.py [--seeds 0 1 2] [--epochs N] [--subjects 300] [--shape 48]
    python benchmarks/image_sim.py --paper-size   # the paper's 128x160x128 and VGG-like encoder
    python benchmarks/image_sim.py --render       # re-render the markdown from the JSON
    python benchmarks/image_sim.py --update --arms grl "grl + erase site"   # rerun some arms

On a GPU the same command runs unchanged (``train.precision: auto`` picks bf16 there);
``--paper-size`` is for a GPU (one epoch of the paper encoder at 128x160x128 is minutes on 2
CPU cores).
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

from neurounlearn.config import RunConfig, apply_overrides
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.demo import image_config
from neurounlearn.evaluation.evaluate import evaluate
from neurounlearn.formatting import fmt_mean_sd, markdown_table, mean_sd
from neurounlearn.results import LeakageResult
from neurounlearn.training.fit import fit

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
#: (label, strategy, erase site)
ARMS: list[tuple[str, str, bool]] = [
    ("baseline", "baseline", False),
    ("iterative", "iterative", False),
    ("grl", "grl", False),
    ("iterative + erase site", "iterative", True),
    ("grl + erase site", "grl", True),
]
UNLEARNED = [a[0] for a in ARMS[1:]]
ERASED = [a[0] for a in ARMS if a[2]]
RAW = "voxel ridge (8³ block means; ridge / probes)"
PAPER_SHAPE = (128, 160, 128)
TARGET_BASELINE_BACC = 0.85
TARGET_RIDGE_RATIO = 0.9
TARGET_BACC = 1 / 3 + 0.10
TARGET_MAE_RATIO = 1.10
BENCH_OVERRIDES = [
    "audit.n_permutations=20",
    "audit.n_permutations_nonlinear=10",
    "audit.n_bootstrap=200",
    "train.progress_bar=false",
]


def probe(m: dict[str, Any], kind: str) -> float | None:
    return LeakageResult.from_dict(m["leakage"]["site"]).probe(kind).balanced_accuracy


def arm_config(
    manifest: Path, strategy: str, erase: bool, *, seed: int, epochs: int, paper: bool, work: Path
) -> RunConfig:
    """One arm's configuration: the image demo's, with the site erased when asked."""
    cfg = image_config(
        manifest, strategy=strategy, seed=seed, epochs=epochs, cache_dir=work / "cache", erase=erase
    )
    overrides = list(BENCH_OVERRIDES)
    if paper:
        overrides += ["model.encoder=paper", "model.embedding_dim=96"]
    return apply_overrides(cfg, overrides)


def run_seed(
    seed: int,
    *,
    epochs: int,
    subjects: int,
    shape: tuple[int, int, int],
    paper: bool,
    work: Path,
    arms: list[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every arm (or those labelled in ``arms``; the voxel ridge runs with the first arm run)
    on seed ``seed``'s cohort."""
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
    for label, strategy, erase in ARMS:
        if arms is not None and label not in arms:
            continue
        cfg = arm_config(
            manifest, strategy, erase, seed=seed, epochs=epochs, paper=paper, work=work
        )
        run_dir = work / f"seed{seed}_{strategy}{'_erase' if erase else ''}"
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
            "restored_epoch": json.loads((run_dir / "run.json").read_text()).get("restored_epoch"),
            # what the network's own site heads read on the training batches, last 10 epochs
            "adversary_train_accuracy": adversary_accuracy(run_dir),
        }
        print(f"  {label}: {json.dumps(out[label])}", flush=True)
    if arms is None or RAW in arms:
        out[RAW] = raw_voxel_reference(run_dirs[0], seed)
        print(f"  {RAW}: {json.dumps(out[RAW])}", flush=True)
    return out


def adversary_accuracy(run_dir: Path) -> float | None:
    """Mean accuracy of the site heads on the training batches over the last 10 epochs."""
    import pandas as pd

    history = pd.read_csv(run_dir / "history.csv")
    column = "train_adv_acc_site"
    return float(history[column].tail(10).mean()) if column in history else None


def raw_voxel_reference(run_dir: Path, seed: int) -> dict[str, Any]:
    """What the input itself holds: the same probes on the preprocessed volumes, block-averaged
    to 8^3 voxels, and a ridge age model on them (trained on the train split), same split."""
    import numpy as np
    import pandas as pd

    from neurounlearn.evaluation.audit import audit_features
    from neurounlearn.evaluation.reference import linear_readout
    from neurounlearn.rundir import PREDICTIONS
    from neurounlearn.training.predict import load_run

    run = load_run(run_dir)
    volumes = np.load(run.info["cache"]["path"], mmap_mode="r")
    n = volumes.shape[0]
    kx, ky, kz = (d // 8 for d in volumes.shape[1:])  # an 8^3 grid of blocks on any shape
    pooled = np.stack(
        [
            np.asarray(v[: 8 * kx, : 8 * ky, : 8 * kz], dtype=np.float32)
            .reshape(8, kx, 8, ky, 8, kz)
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
    base_mae = base["mae"]["mean"]
    ridge_ratio = base_mae / summary[RAW]["mae"]["mean"]
    out: dict[str, Any] = {
        "baseline": {
            "site_bacc_linear": base["site_bacc_linear"]["mean"],
            "site_bacc_nonlinear": base["site_bacc_nonlinear"]["mean"],
            "reads_site_met": min(
                base["site_bacc_linear"]["mean"], base["site_bacc_nonlinear"]["mean"]
            )
            >= TARGET_BASELINE_BACC,
            "mae_over_ridge": ridge_ratio,
            "beats_ridge_met": ridge_ratio <= TARGET_RIDGE_RATIO,
        }
    }
    for label in UNLEARNED:
        s = summary[label]
        lin, non = s["site_bacc_linear"]["mean"], s["site_bacc_nonlinear"]["mean"]
        ratio = s["mae"]["mean"] / base_mae
        out[label] = {
            "linear_met": lin <= TARGET_BACC,
            "nonlinear_met": non <= TARGET_BACC,
            "mae_ratio": ratio,
            "mae_met": ratio <= TARGET_MAE_RATIO,
        }
    return out


def _status(met: bool, value: float, target: float) -> str:
    if met:
        return "met"
    return f"missed by {abs(value - target):.2f}"


def render(payload: dict[str, Any]) -> str:
    summary, verdict, meta = payload["summary"], payload["verdicts"], payload["meta"]
    base_mae = summary["baseline"]["mae"]["mean"]
    shape = "×".join(str(n) for n in meta["shape"])
    lines = [
        "# Image benchmark: simulated cohort",
        "",
        f"{meta['sites']} sites, {meta['subjects']} subjects, {shape} voxels, age independent "
        f"of site; {meta['encoder']} 3D CNN, {meta['epochs']} epochs, batch 16, the weights of "
        f"the best validation epoch; seeds {meta['seeds']} (each seed simulates its own cohort "
        "and split). Mean ± sd over seeds on the test split. Chance site BAcc: 0.33.",
        "",
    ]
    head = [
        "arm",
        "age MAE",
        "MAE / baseline",
        "site BAcc linear",
        "site BAcc nonlinear",
        "site heads' accuracy (training batches)",
        "epoch kept",
        "fit s",
    ]
    rows = []
    for label in [RAW, *(a[0] for a in ARMS)]:
        s = summary[label]
        per_arm = [payload["per_seed"][seed][label] for seed in payload["per_seed"]]
        rows.append(
            [
                label,
                fmt_mean_sd(s["mae"]),
                f"{s['mae']['mean'] / base_mae:.2f}",
                fmt_mean_sd(s["site_bacc_linear"]),
                fmt_mean_sd(s["site_bacc_nonlinear"]),
                fmt_mean_sd(mean_sd([r.get("adversary_train_accuracy") for r in per_arm])),
                " / ".join(
                    "—" if r.get("restored_epoch") is None else str(r["restored_epoch"])
                    for r in per_arm
                ),
                fmt_mean_sd(s["fit_seconds"], 0),
            ]
        )
    b = verdict["baseline"]
    lines += [
        markdown_table(head, rows),
        "",
        f"Targets: (1) baseline site BAcc ≥ {TARGET_BASELINE_BACC:.2f} for both probes; (2) "
        f"baseline MAE ≤ {TARGET_RIDGE_RATIO} × the voxel ridge's; (3) unlearned arms, at least "
        f"those that erase: site BAcc ≤ {TARGET_BACC:.2f} for both probes and MAE ≤ "
        f"{TARGET_MAE_RATIO} × baseline.",
        "",
    ]
    low = min(b["site_bacc_linear"], b["site_bacc_nonlinear"])
    lines.append(
        f"- (1) baseline reads the site: linear {b['site_bacc_linear']:.2f}, nonlinear "
        f"{b['site_bacc_nonlinear']:.2f} "
        f"({_status(b['reads_site_met'], low, TARGET_BASELINE_BACC)})"
    )
    lines.append(
        f"- (2) baseline MAE / voxel ridge MAE: {b['mae_over_ridge']:.2f} "
        f"({_status(b['beats_ridge_met'], b['mae_over_ridge'], TARGET_RIDGE_RATIO)})"
    )
    for label in UNLEARNED:
        v, s = verdict[label], summary[label]
        parts = []
        for kind in ("linear", "nonlinear"):
            val = s[f"site_bacc_{kind}"]["mean"]
            parts.append(f"{kind} {val:.2f} ({_status(v[f'{kind}_met'], val, TARGET_BACC)})")
        ratio = v["mae_ratio"]
        parts.append(f"MAE ratio {ratio:.2f} ({_status(v['mae_met'], ratio, TARGET_MAE_RATIO)})")
        lines.append(f"- (3) {label}: " + "; ".join(parts))
    lines += ["", f"Total wall time {meta['wall_minutes']:.1f} min on this machine."]
    for update in meta.get("updates", []):
        lines.append(
            f"Rerun later with `--update --arms`: {', '.join(update['arms'])} "
            f"({update['wall_minutes']:.1f} min)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--subjects", type=int, default=300)
    parser.add_argument("--shape", type=int, default=48)
    parser.add_argument(
        "--paper-size",
        action="store_true",
        help="the paper's input size (128x160x128) and VGG-like encoder: for a GPU",
    )
    parser.add_argument("--render", action="store_true", help="re-render the markdown only")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=[a[0] for a in ARMS] + [RAW],
        help="run only these arms (with --update: merged into the stored results)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the stored results of the arms not run (same seeds and settings)",
    )
    args = parser.parse_args()
    if args.arms and not args.update:
        parser.error("--arms reruns some arms into the stored results: give --update too")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "image_sim_paper_size" if args.paper_size else "image_sim"
    if args.render:
        payload = json.loads((RESULTS / f"{name}.json").read_text())
        (RESULTS / f"{name}.md").write_text(render(payload))
        print(render(payload))
        return
    shape = PAPER_SHAPE if args.paper_size else (args.shape,) * 3
    start = time.perf_counter()
    per_seed: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            per_seed[str(seed)] = run_seed(
                seed,
                epochs=args.epochs,
                subjects=args.subjects,
                shape=shape,
                paper=args.paper_size,
                work=Path(tmp),
                arms=args.arms,
            )
    wall = (time.perf_counter() - start) / 60
    runs: dict[str, Any] = {"wall_minutes": wall, "arms": args.arms or "all"}
    if args.update:
        stored = json.loads((RESULTS / f"{name}.json").read_text())
        if stored["meta"]["seeds"] != args.seeds:
            parser.error(f"--update needs the stored seeds {stored['meta']['seeds']}")
        for seed, arms_run in per_seed.items():
            stored["per_seed"][seed] |= arms_run
        per_seed = stored["per_seed"]
        runs = {"wall_minutes": stored["meta"]["wall_minutes"], "updates": [
            *stored["meta"].get("updates", []), runs
        ]}  # fmt: skip
    summary = summarise(per_seed)
    payload = {
        "meta": {
            "sites": 3,
            "subjects": args.subjects,
            "shape": list(shape),
            "encoder": "paper (VGG-like)" if args.paper_size else "compact",
            "epochs": args.epochs,
            "seeds": args.seeds,
            **runs,
        },
        "per_seed": per_seed,
        "summary": summary,
        "verdicts": verdicts(summary),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    text = render(payload)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
