"""What tells the scanners apart at a U-Net's final decoder features? A diagnostic beside the
segmentation benchmark (``benchmarks/segmentation.py``, its main setting).

The audit reads site from the pooled final decoder features of every arm (0.99-1.00 with the
heads at the bottleneck), and heads at ``final`` cost Dice without clearing them. Those features
are one 1x1x1 convolution from the class logits, so whatever tells the sites apart there also
shows in the output. This script asks which part of the output it is: how much of each tissue
the U-Net predicts, how sure it is, or how well it segments. Per seed it builds the same cohort,
split and label mask as the segmentation benchmark (labels on all of site A and 5 training
volumes of site B), fits the arms asked for (default: baseline, grl at the bottleneck, grl at
``final``) with the same configuration, and on the 100 test volumes fits the audit's linear
probe (:class:`~neurounlearn.evaluation.leakage.LeakageAudit`, 5 folds) for site on:

- the final decoder features, pooled as the audit pools them (per-channel mean and sd);
- the output probabilities, pooled the same way (per class: mean and sd over the volume);
- the confidence: per predicted class, the mean probability of the winning class over its voxels;
- the predicted tissue shares (CSF, GM, WM as fractions of the predicted brain);
- each volume's Dice per class (how well it was segmented; evaluate's ``predictions.csv``);
- the true tissue shares, from the label maps (anatomy only: the sites' ages are independent in
  the preset, but 50 test subjects per site differ by chance).

Writes ``benchmarks/results/segmentation_readout.json`` and ``.md``. Not part of ``make bench``
(about 90 min on 2 cores for the three default arms and seeds).

    python benchmarks/segmentation_readout.py [--seeds 0 1 2] [--arms baseline grl "grl final"]
    python benchmarks/segmentation_readout.py --render   # re-render the markdown from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

import segmentation as seg  # the benchmark beside this one (its folder is on sys.path)
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.evaluation.evaluate import evaluate
from neurounlearn.evaluation.leakage import LeakageAudit
from neurounlearn.formatting import fmt_mean_sd, markdown_table, mean_sd
from neurounlearn.results import LeakageResult
from neurounlearn.rundir import PREDICTIONS
from neurounlearn.training.fit import fit

warnings.filterwarnings("ignore")

RESULTS = seg.RESULTS
NAME = "segmentation_readout"
#: the feature sets probed, in table order, with their descriptions
READOUTS = {
    "final_features": "final decoder features (mean, sd per channel; what the audit probes)",
    "probabilities": "output probabilities (mean, sd per class)",
    "confidence": "confidence (mean winning probability per predicted class)",
    "predicted_shares": "predicted tissue shares (CSF, GM, WM)",
    "dice": "Dice per volume (CSF, GM, WM)",
    "true_shares": "true tissue shares (label maps)",
}


def shares(labels: np.ndarray) -> list[float]:
    """CSF, GM and WM as fractions of the labelled brain (``labels``: 0 background ... 3)."""
    counts = np.array([(labels == k).sum() for k in range(1, len(seg.CLASSES))], dtype=float)
    return (counts / max(counts.sum(), 1.0)).tolist()


def readout(run_dir: Path, test: pd.DataFrame, test_csv: Path) -> dict[str, np.ndarray]:
    """The feature sets of :data:`READOUTS` for each test volume (``test``'s rows, in order; the
    same rows as ``test_csv``) of a finished and evaluated run."""
    import torch

    from neurounlearn.training.predict import _new_rows, load_run
    from neurounlearn.training.run import segment

    run = load_run(run_dir)
    _, rows = _new_rows(run, test_csv, lambda _: None)
    out: dict[str, list[np.ndarray]] = {
        "final_features": [],
        "probabilities": [],
        "confidence": [],
        "predicted_shares": [],
    }
    for pooled, logits, _ in segment(run.model, rows.all(), batch_size=4):
        out["final_features"].append(pooled["final"])
        prob = torch.softmax(logits, dim=1).flatten(2)
        out["probabilities"].append(torch.cat([prob.mean(2), prob.std(2)], dim=1).numpy())
        top, hard = prob.max(dim=1)
        counts = torch.stack([(hard == k).sum(1) for k in range(prob.shape[1])], dim=1)
        conf = torch.stack(
            [(top * (hard == k)).sum(1) for k in range(prob.shape[1])], dim=1
        ) / counts.clamp(min=1)
        out["confidence"].append(conf.numpy())
        tissue = counts[:, 1:].double()  # the brain: every class but the background
        out["predicted_shares"].append((tissue / tissue.sum(1, keepdim=True).clamp(min=1)).numpy())
    feats = {k: np.concatenate(v) for k, v in out.items()}
    # each volume's Dice per class, as evaluate wrote it
    preds = pd.read_csv(run_dir / PREDICTIONS)
    dice_columns = [f"dice_{name}" for name in seg.CLASSES[1:]]
    feats["dice"] = test[["subject"]].merge(preds, on="subject")[dice_columns].to_numpy()
    return feats


def probe(features: np.ndarray, site: np.ndarray, seed: int) -> float:
    audit = LeakageAudit(
        folds=5, n_permutations=0, n_bootstrap=0, probes=("linear",), random_state=seed
    )
    value = LeakageResult.from_dict(audit.audit(features, site)).probe("linear").balanced_accuracy
    if value is None:
        raise RuntimeError("the linear site probe did not run")
    return value


def by_site(values: np.ndarray, site: np.ndarray) -> dict[str, list[float]]:
    return {s: [round(float(v), 4) for v in values[site == s].mean(0)] for s in ("A", "B")}


def run_seed(seed: int, *, arms: list[str], epochs: int, per_site: int, lr: float, work: Path):
    cohort = work / f"cohort{seed}"
    shutil.rmtree(cohort, ignore_errors=True)
    manifest = simulate_cohort(
        cohort, preset="segmentation", subjects=2 * per_site, shape=48, seed=seed, progress=False
    )
    semi, split = seg.semi_supervised(manifest, seed, seg.LABELLED_B)
    frame = pd.read_csv(manifest)
    test = frame[split == "test"].reset_index(drop=True)
    test_csv = manifest.with_name("test_only.csv")  # beside the images: relative paths hold
    test.to_csv(test_csv, index=False)
    site = test["site"].to_numpy()
    true_shares = np.array(
        [shares(np.asarray(nib.load(cohort / p).dataobj)) for p in test["label"]]
    )
    row: dict[str, Any] = {
        "true_shares": {
            "bacc": probe(true_shares, site, seed),
            "by_site": by_site(true_shares, site),
        },
        "age_by_site": {s: round(float(test["age"][site == s].mean()), 1) for s in ("A", "B")},
    }
    for arm in arms:
        cfg = seg.arm_config(arm, semi, seed=seed, epochs=epochs, lr=lr, work=work)
        run_dir = work / f"seed{seed}_{arm.replace(' ', '_')}"
        shutil.rmtree(run_dir, ignore_errors=True)
        fit(cfg, run_dir, echo=lambda _: None, split=split)
        m = evaluate(run_dir)
        feats = readout(run_dir, test, test_csv)
        row[arm] = {
            "dice_B": m["task"]["per_site"]["B"]["mean_dice"],
            "dice_A": m["task"]["per_site"]["A"]["mean_dice"],
            "audit_final_linear": LeakageResult.from_dict(m["leakage"]["site@final"])
            .probe("linear")
            .balanced_accuracy,
            "bacc": {k: probe(v, site, seed) for k, v in feats.items()},
            "by_site": {
                "confidence": by_site(feats["confidence"], site),
                "predicted_shares": by_site(feats["predicted_shares"], site),
                "dice": by_site(feats["dice"], site),
            },
        }
        print(f"  seed {seed} {arm}: {json.dumps(row[arm])}", flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def cell(values: list[float]) -> str:
    """Mean ± sd over seeds, 2 decimals."""
    return fmt_mean_sd(mean_sd(values))


def render(payload: dict[str, Any]) -> str:
    meta, per_seed = payload["meta"], payload["per_seed"]
    seeds, arms = list(per_seed), meta["arms"]
    lines = [
        "# What tells the scanners apart at the U-Net's final features",
        "",
        f"The segmentation benchmark's setting (two-site `segmentation` preset at 48³, "
        f"{meta['per_site']} subjects per site, 50 test volumes per site; labels on all of A and "
        f"{seg.LABELLED_B} training volumes of B; {meta['epochs']} epochs, lr {meta['lr']}), "
        f"seeds {meta['seeds']}; {meta['minutes']:.0f} min on {meta['machine']}. Site balanced "
        "accuracy (chance 0.50) of the audit's linear probe (5 folds) on the 100 test volumes, "
        "mean ± sd over seeds, for each summary of a run's output.",
        "",
    ]
    rows = []
    for key, text in READOUTS.items():
        if key == "true_shares":
            cells = [cell([per_seed[s]["true_shares"]["bacc"] for s in seeds])] * len(arms)
        else:
            cells = [cell([per_seed[s][a]["bacc"][key] for s in seeds]) for a in arms]
        rows.append([text, *cells])
    for label, key in (("Dice B", "dice_B"), ("Dice A", "dice_A")):
        vals = [cell([per_seed[s][a][key] for s in seeds]) for a in arms]
        rows.append([f"*{label} (test, mean over tissues)*", *vals])
    lines += [
        markdown_table(["read from", *arms], rows),
        "",
        "Per seed, site means (A / B): confidence in background, CSF, GM, WM (0.00: no voxel "
        "predicted as that class); predicted and true CSF share of the brain; Dice in CSF.",
        "",
    ]
    head = [
        "seed",
        "arm",
        "age A / B",
        "confidence A",
        "confidence B",
        "CSF share pred A / B",
        "CSF share true A / B",
        "CSF Dice A / B",
    ]
    rows = []
    for s in seeds:
        r = per_seed[s]
        age = r["age_by_site"]
        true = r["true_shares"]["by_site"]
        for a in arms:
            b = r[a]["by_site"]
            conf = [", ".join(f"{v:.2f}" for v in b["confidence"][x]) for x in ("A", "B")]
            pred = b["predicted_shares"]
            dice = b["dice"]
            rows.append(
                [
                    str(s),
                    a,
                    f"{age['A']:.0f} / {age['B']:.0f}",
                    conf[0],
                    conf[1],
                    f"{pred['A'][0]:.3f} / {pred['B'][0]:.3f}",
                    f"{true['A'][0]:.3f} / {true['B'][0]:.3f}",
                    f"{dice['A'][0]:.2f} / {dice['B'][0]:.2f}",
                ]
            )
    lines.append(markdown_table(head, rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(seg.ARMS), default=None)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--per-site", type=int, default=80)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--render", action="store_true", help="re-render the markdown only")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if args.render:
        payload = json.loads((RESULTS / f"{NAME}.json").read_text())
        (RESULTS / f"{NAME}.md").write_text(render(payload))
        return
    arms = args.arms or ["baseline", "grl", "grl final"]
    start = time.perf_counter()
    per_seed: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="nu-readout-") as tmp:
        for seed in args.seeds:
            per_seed[str(seed)] = run_seed(
                seed,
                arms=arms,
                epochs=args.epochs,
                per_site=args.per_site,
                lr=args.lr,
                work=Path(tmp),
            )
            payload = {
                "meta": {
                    "seeds": [int(s) for s in per_seed],
                    "arms": arms,
                    "epochs": args.epochs,
                    "per_site": args.per_site,
                    "lr": args.lr,
                    "minutes": (time.perf_counter() - start) / 60,
                    "machine": f"{os.cpu_count()} CPU cores",
                },
                "per_seed": per_seed,
            }
            # written after every seed, so a long run that is stopped keeps what it finished
            seg.save(NAME, payload, render(payload))
    print(render(payload))


if __name__ == "__main__":
    main()
