"""Benchmark of segmentation: does unlearning the scanner help a U-Net
segment a scanner it has few labels for, and is the scanner gone from its features?

Per seed: simulate the two-site ``segmentation`` preset (site B's contrast and bias field differ
strongly from A's) at 48³, ``--per-site`` subjects per site (80). Split each site into train /
val / test (TEST_PER_SITE test and VAL_PER_SITE validation volumes, the rest train). Labels:
every site-A volume, and only 5 training volumes of site B; the other B training and validation
volumes keep their images but lose their label maps (semi-supervised: they serve the unlearning
only). Test volumes keep their labels for scoring and are never trained on. Then, site unlearned
with the confound heads at the bottleneck unless the arm says otherwise: baseline, iterative
(sequential) and grl with the library's default adversary memory (``strategy.adversary_memory:
auto``, 8 rows for segmentation), grl without it (``--set strategy.adversary_memory=0``, the
library's behaviour before), iterative and grl with 32 rows of it (the first default), and grl
with the site's beta at 2 and 4 (with the default memory), and baseline and grl with
scanner-like intensity augmentation of the training volumes (``--set data.augment=intensity``:
random gamma, bias field, blur and noise), the usual alternative to unlearning, and grl with its
heads at the last decoder features (``final``, the paper's best) or at both points (its
"multi"), and iterative at both, each with the defaults above. More arms
run only when ``--arms`` names them: iterative with its heads at ``final`` alone (the paper's
best setting exactly: its confusion loss, at its best point), and grl at ``final`` with the
site's beta at 0.1 (is the collapse of heads at ``final`` a matter of the adversary's weight?);
grl with its heads at the first or second encoder level (``encoder0``, ``encoder1``), whose maps
reach the decoder through the skip connections, past the bottleneck; and references for what
site B's labels are worth, on the same split: the baseline and grl with every B volume outside
the test set labelled (30: fully supervised; grl judged against that baseline), and grl, the
augmented baseline and grl with augmentation with none of them labelled (site A's labels only,
as in unsupervised domain adaptation), judged against the baseline with none labelled. Every arm
trains with the same learning rate (``--lr``, 3e-3: on seed 0 the baseline U-Net reached Dice
0.805 on site A in 30 epochs with it, 0.764 with the library's 1e-3).

Reported per arm (mean ± sd over seeds): test Dice on site B and on site A (mean over CSF, GM,
WM; background excluded), and the site balanced accuracy of fresh linear and nonlinear probes on
the pooled bottleneck and final feature maps of the test volumes (chance 0.50), and, for runs
made since the encoder levels became attach points, the linear probes at the four encoder
levels. There are 50 test volumes per site because 10 were too few: a probe fit on 20 volumes
reads less than one fit on 100 and scatters widely. For one grl model whose 100 test volumes
gave a linear probe 0.71, random 20-volume subsets (10 per site) gave 0.56 ± 0.13 (0.25 to
0.85), 68% of them within the 0.60 target.

Targets: unlearned Dice on B >= baseline's + 0.03; probe balanced accuracy <= 0.60 at the attach
points used; Dice on A no more than 0.02 below baseline.

Writes ``benchmarks/results/segmentation.json`` and ``.md`` (with ``--results NAME``:
``NAME.json`` and ``NAME.md``).

    python benchmarks/segmentation.py [--seeds 0 1 2] [--epochs 30] [--per-site 80] [--lr 3e-3]
    python benchmarks/segmentation.py --arms "grl no memory"   # rerun arms into the stored results
    python benchmarks/segmentation.py --render   # re-render the markdown from the JSON
    # a check on fresh seeds of settings chosen on seeds 0-2, in its own files
    python benchmarks/segmentation.py --seeds 3 4 5 --arms baseline grl "grl beta 2" \
        --results segmentation_confirm
    # augmentation instead of, and with, unlearning, added to the stored table
    python benchmarks/segmentation.py --arms "baseline augment" "grl augment"
    # heads at the final decoder features, and at both points, added to the stored table
    python benchmarks/segmentation.py --arms "grl final" "grl multi" "iterative multi"
    # the paper's best setting exactly, and heads at final with a tenth of the weight (extra arms)
    python benchmarks/segmentation.py --arms "iterative final" "grl final beta 0.1"
    # longer training (60 epochs), and heads at the encoder levels (seed 0), in their own files
    python benchmarks/segmentation.py --epochs 60 --arms baseline grl \
        --results segmentation_60epochs
    python benchmarks/segmentation.py --epochs 60 --arms "baseline augment" "grl augment" \
        --results segmentation_60epochs
    python benchmarks/segmentation.py --seeds 0 --arms baseline "grl encoder0" "grl encoder1" \
        --results segmentation_encoder_levels
    # what site B's labels are worth: all of them, or none (with and without unlearning and
    # augmentation), in their own files
    python benchmarks/segmentation.py --arms baseline "baseline all B labelled" \
        "baseline no B labels" "grl no B labels" --results segmentation_labels
    python benchmarks/segmentation.py --arms "baseline augment no B labels" \
        "grl augment no B labels" --results segmentation_labels
    python benchmarks/segmentation.py --arms "grl all B labelled" --results segmentation_labels
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
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from neurounlearn.choices import ATTACH_POINTS
from neurounlearn.config import RunConfig, validate_config
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.evaluation.evaluate import evaluate
from neurounlearn.formatting import fmt_mean_sd, fmt_number, markdown_table, mean_sd
from neurounlearn.results import leakage_results
from neurounlearn.training.fit import fit

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
POINTS = ["bottleneck", "final"]
#: the encoder levels evaluate also probes (runs made before they were attach points lack them)
ENCODER_LEVELS = [p for p in ATTACH_POINTS if p.startswith("encoder")]
#: site B's training volumes that keep their labels in the main setting
LABELLED_B = 5


class Arm(NamedTuple):
    """One arm: strategy, attach points, the site confound's beta, strategy.adversary_memory,
    data.augment, how many of site B's training volumes keep their labels (``None``: every B
    training and validation volume) and the arm its targets are judged against. The
    baseline's heads only watch (they never touch the U-Net)."""

    strategy: str
    attach: list[str]
    beta: float = 1.0
    memory: str | int = "auto"
    augment: str = "none"
    labelled_b: int | None = LABELLED_B
    against: str = "baseline"


ARMS: dict[str, Arm] = {
    "baseline": Arm("baseline", ["bottleneck"]),
    "iterative": Arm("iterative", ["bottleneck"]),
    "grl": Arm("grl", ["bottleneck"]),
    "grl no memory": Arm("grl", ["bottleneck"], memory=0),
    "iterative memory 32": Arm("iterative", ["bottleneck"], memory=32),
    "grl memory 32": Arm("grl", ["bottleneck"], memory=32),
    "grl beta 2": Arm("grl", ["bottleneck"], beta=2.0),
    "grl beta 4": Arm("grl", ["bottleneck"], beta=4.0),
    "baseline augment": Arm("baseline", ["bottleneck"], augment="intensity"),
    "grl augment": Arm("grl", ["bottleneck"], augment="intensity"),
    # heads at the last decoder features (the paper's best) or at both points (its "multi"),
    # with the defaults the bottleneck arms have (memory, precise batch-norm statistics)
    "grl final": Arm("grl", ["final"]),
    "grl multi": Arm("grl", ["bottleneck", "final"]),
    "iterative multi": Arm("iterative", ["bottleneck", "final"]),
    # the paper's best setting exactly (confusion loss, heads at final only), and grl at final
    # with a tenth of the adversary's weight: is the collapse of "grl final" a matter of weight?
    "iterative final": Arm("iterative", ["final"]),
    "grl final beta 0.1": Arm("grl", ["final"], beta=0.1),
    "grl encoder0": Arm("grl", ["encoder0"]),
    "grl encoder1": Arm("grl", ["encoder1"]),
    # references for how much site B's labels are worth: every B volume outside the test set
    # labelled (the fully supervised reference) with and without unlearning, or none (only site
    # A's labels, as in unsupervised domain adaptation) with and without unlearning and
    # augmentation
    "baseline all B labelled": Arm("baseline", ["bottleneck"], labelled_b=None),
    "grl all B labelled": Arm(
        "grl", ["bottleneck"], labelled_b=None, against="baseline all B labelled"
    ),
    "baseline no B labels": Arm("baseline", ["bottleneck"], labelled_b=0),
    "grl no B labels": Arm("grl", ["bottleneck"], labelled_b=0, against="baseline no B labels"),
    "baseline augment no B labels": Arm(
        "baseline",
        ["bottleneck"],
        augment="intensity",
        labelled_b=0,
        against="baseline no B labels",
    ),
    "grl augment no B labels": Arm(
        "grl", ["bottleneck"], augment="intensity", labelled_b=0, against="baseline no B labels"
    ),
}
#: arms that run only when ``--arms`` names them (not part of ``make bench``)
EXTRA_ARMS = (
    "iterative final",
    "grl final beta 0.1",
    "grl encoder0",
    "grl encoder1",
    "baseline all B labelled",
    "grl all B labelled",
    "baseline no B labels",
    "grl no B labels",
    "baseline augment no B labels",
    "grl augment no B labels",
)
CLASSES = ["background", "CSF", "GM", "WM"]
TEST_PER_SITE, VAL_PER_SITE = 50, 5
TARGET_DICE_GAIN = 0.03
TARGET_BACC = 0.60
TARGET_DICE_A_DROP = 0.02


def seg_config(
    manifest: Path,
    *,
    strategy: str,
    attach: list[str],
    beta: float = 1.0,
    memory: str | int = "auto",
    augment: str = "none",
    seed: int,
    epochs: int,
    lr: float,
    work: Path,
) -> RunConfig:
    raw: dict[str, Any] = {
        "data": {
            "path": str(manifest),
            "input": "image",
            "task": "segmentation",
            "target": "label",
            "classes": CLASSES,
            "id_column": "subject",
            "cache_dir": str(work / "cache"),
            "augment": augment,
        },
        "confounds": [{"name": "site", "beta": beta}],
        "model": {"attach": attach},
        "strategy": {
            "name": strategy,
            "pretrain_epochs": max(1, epochs // 3),
            "adversary_memory": memory,
        },
        "train": {
            "seed": seed,
            "epochs": epochs,
            "batch_size": 4,
            "lr": lr,
            "patience": epochs,
            "progress_bar": False,
        },
        "audit": {"n_permutations": 20, "n_permutations_nonlinear": 10, "n_bootstrap": 200},
    }
    return validate_config(raw, "segmentation benchmark")


def arm_config(
    arm: str, manifest: Path, *, seed: int, epochs: int, lr: float, work: Path
) -> RunConfig:
    """The run configuration of one arm of :data:`ARMS` on a (semi-supervised) manifest."""
    a = ARMS[arm]
    return seg_config(
        manifest,
        strategy=a.strategy,
        attach=a.attach,
        beta=a.beta,
        memory=a.memory,
        augment=a.augment,
        seed=seed,
        epochs=epochs,
        lr=lr,
        work=work,
    )


def semi_supervised(
    manifest: Path, seed: int, labelled_b: int | None = LABELLED_B
) -> tuple[Path, np.ndarray]:
    """A manifest with site B's label maps kept on ``labelled_b`` training rows and the test
    rows only (B's validation rows have none; ``None``: kept on every B row), and the split
    (per site: TEST_PER_SITE test, VAL_PER_SITE val, the rest train). The split, and the
    LABELLED_B rows kept by default, are the same whatever ``labelled_b`` is."""
    frame = pd.read_csv(manifest)
    rng = np.random.default_rng([seed, 7])
    split = np.full(len(frame), "train", dtype=object)
    for site in sorted(frame["site"].unique()):
        rows = rng.permutation(np.flatnonzero((frame["site"] == site).to_numpy()))
        split[rows[:TEST_PER_SITE]] = "test"
        split[rows[TEST_PER_SITE : TEST_PER_SITE + VAL_PER_SITE]] = "val"
    b_fit = np.flatnonzero((frame["site"] == "B").to_numpy() & (split != "test"))
    b_train = np.flatnonzero((frame["site"] == "B").to_numpy() & (split == "train"))
    if labelled_b is None:
        keep = set(b_fit.tolist())
    else:
        keep = set(rng.choice(b_train, size=labelled_b, replace=False).tolist())
    drop = [i for i in b_fit if i not in keep]
    frame["label"] = frame["label"].astype(object)
    frame.loc[drop, "label"] = ""
    name = "all" if labelled_b is None else labelled_b
    out = manifest.with_name(f"manifest_semi_{name}.csv")
    frame.to_csv(out, index=False)
    return out, split


def run_seed(
    seed: int, *, epochs: int, per_site: int, lr: float, work: Path, arms: list[str]
) -> dict[str, Any]:
    cohort = work / f"cohort{seed}"
    shutil.rmtree(cohort, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = simulate_cohort(
        cohort, preset="segmentation", subjects=2 * per_site, shape=48, seed=seed, progress=False
    )
    print(f"seed {seed}: cohort simulated in {time.perf_counter() - t0:.0f} s", flush=True)
    # one manifest per label count the arms ask for; the split is the same in each
    semis = {n: semi_supervised(manifest, seed, n) for n in {ARMS[arm].labelled_b for arm in arms}}
    out: dict[str, Any] = {}
    for arm in arms:
        semi, split = semis[ARMS[arm].labelled_b]
        cfg = arm_config(arm, semi, seed=seed, epochs=epochs, lr=lr, work=work)
        run_dir = work / f"seed{seed}_{arm.replace(' ', '_')}"
        shutil.rmtree(run_dir, ignore_errors=True)
        fit(cfg, run_dir, echo=lambda _: None, split=split)
        m = evaluate(run_dir)
        by_site = m["task"]["per_site"]
        row: dict[str, Any] = {
            "dice_B": by_site["B"]["mean_dice"],
            "dice_A": by_site["A"]["mean_dice"],
            "dice_B_per_class": by_site["B"]["dice"],
            "dice_A_per_class": by_site["A"]["dice"],
            "labelled_training_volumes": m["labelled_training_volumes"],
            "fit_seconds": m["timing"]["fit_seconds"],
            "epochs_run": m["timing"]["epochs_run"],
        }
        for key, audit in leakage_results(m["leakage"]).items():  # every point the run reports
            point = key.split("@", 1)[1]
            for kind in ("linear", "nonlinear"):
                row[f"bacc_{point}_{kind}"] = audit.probe(kind).balanced_accuracy
        out[arm] = row
        print(f"  {arm}: {json.dumps(row)}", flush=True)
    return out


def metric_keys() -> list[str]:
    keys = ["dice_B", "dice_A", "fit_seconds"]
    return keys + [f"bacc_{p}_{k}" for p in ATTACH_POINTS for k in ("linear", "nonlinear")]


def present(per_seed: dict[str, dict[str, Any]]) -> list[str]:
    """The arms every seed has, in ARMS order."""
    return [arm for arm in ARMS if all(arm in rows for rows in per_seed.values())]


def summarise(per_seed: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        arm: {
            k: mean_sd([per_seed[s][arm].get(k) for s in per_seed]).as_dict(with_n=False)
            for k in metric_keys()
        }
        for arm in present(per_seed)
    }


def verdicts(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm, s in summary.items():
        if arm == "baseline" or ARMS[arm].against not in summary:
            continue
        base = summary[ARMS[arm].against]
        gain = s["dice_B"]["mean"] - base["dice_B"]["mean"]
        drop = base["dice_A"]["mean"] - s["dice_A"]["mean"]
        used = ARMS[arm].attach  # the target counts at the attach points the arm unlearned at
        worst = max(s[f"bacc_{p}_{k}"]["mean"] for p in used for k in ("linear", "nonlinear"))
        out[arm] = {
            "dice_B_gain": gain,
            "dice_B_met": gain >= TARGET_DICE_GAIN,
            "dice_A_drop": drop,
            "dice_A_met": drop <= TARGET_DICE_A_DROP,
            "worst_probe_bacc": worst,
            "attach": used,
            "probe_met": worst <= TARGET_BACC,
            "against": ARMS[arm].against,
        }
    return out


def encoder_means(s: dict[str, Any]) -> list[float | None]:
    """An arm's mean linear-probe BAcc at each encoder level, shallowest first (None: not run)."""
    return [s.get(f"bacc_{p}_linear", {}).get("mean") for p in ENCODER_LEVELS]


def encoder_cell(s: dict[str, Any]) -> str:
    return ", ".join(fmt_number(v) for v in encoder_means(s))


def render(payload: dict[str, Any]) -> str:
    summary, verdict, meta = payload["summary"], payload["verdicts"], payload["meta"]
    levels = any(v is not None for s in summary.values() for v in encoder_means(s))
    other_labels = any(ARMS[arm].labelled_b != LABELLED_B for arm in summary)
    lines = [
        "# Segmentation with unlearning"
        + (f": {meta['results']}" if meta.get("results", "segmentation") != "segmentation" else ""),
        "",
        f"Two-site `segmentation` preset at 48³, {meta['per_site']} subjects per site; per site "
        f"{TEST_PER_SITE} test and {VAL_PER_SITE} validation volumes, the rest train. Labels"
        + (" (unless the arm says otherwise)" if other_labels else "")
        + ": "
        f"all of site A, {LABELLED_B} training volumes of site B (none of B's validation "
        f"volumes), test volumes scored "
        f"only. U-Net (MONAI BasicUNet, features {meta['features']}), site unlearned; "
        f"{meta['epochs']} epochs, batch 4, lr {meta['lr']:g}; seeds {meta['seeds']}. Mean ± sd "
        f"over seeds; {meta['minutes']:.0f} min on {meta['machine']}. Adversary memory: the "
        "library's default (`strategy.adversary_memory: auto`, 8 rows for segmentation) unless "
        f"the arm names another. Probes on the {2 * TEST_PER_SITE} test volumes score every "
        "point, whether a head sat there or not.",
        "",
    ]
    head = [
        "arm",
        "heads at",
        "Dice B (test)",
        "Dice A (test)",
        "site BAcc bottleneck lin / nonlin",
        "site BAcc final lin / nonlin",
        "fit s",
        *(["site BAcc encoder0–3 lin"] if levels else []),
    ]
    rows = []
    for arm, s in summary.items():
        a = ARMS[arm]
        where = " + ".join(a.attach) + (" (watching)" if a.strategy == "baseline" else "")
        where += f", β {a.beta:g}" if a.beta != 1.0 else ""
        where += ", no memory" if a.memory == 0 else ""
        where += f", memory {a.memory}" if a.memory not in (0, "auto") else ""
        where += ", augmented" if a.augment != "none" else ""
        if a.labelled_b != LABELLED_B:
            where += {None: ", every B volume labelled", 0: ", no B labels"}.get(
                a.labelled_b, f", {a.labelled_b} B volumes labelled"
            )
        rows.append(
            [
                arm,
                where,
                fmt_mean_sd(s["dice_B"], 3),
                fmt_mean_sd(s["dice_A"], 3),
                f"{fmt_mean_sd(s['bacc_bottleneck_linear'])} / "
                f"{fmt_mean_sd(s['bacc_bottleneck_nonlinear'])}",
                f"{fmt_mean_sd(s['bacc_final_linear'])} / {fmt_mean_sd(s['bacc_final_nonlinear'])}",
                fmt_mean_sd(s["fit_seconds"], 0),
                *([encoder_cell(s)] if levels else []),
            ]
        )
    lines += [markdown_table(head, rows), "", "Targets (chance BAcc 0.50):", ""]
    for arm, v in verdict.items():
        against = v.get("against", "baseline")  # results stored before arms named theirs
        judged = "" if against == "baseline" else f" (against {against})"
        lines.append(
            f"- {arm}{judged}: Dice B gain {v['dice_B_gain']:+.3f} (target ≥ +{TARGET_DICE_GAIN}: "
            f"{'met' if v['dice_B_met'] else 'NOT met'}); Dice A drop {v['dice_A_drop']:+.3f} "
            f"(target ≤ {TARGET_DICE_A_DROP}: {'met' if v['dice_A_met'] else 'NOT met'}); "
            f"worst probe BAcc at {' + '.join(v['attach'])} {v['worst_probe_bacc']:.2f} "
            f"(target ≤ {TARGET_BACC}: "
            f"{'met' if v['probe_met'] else 'NOT met'})"
        )
    lines += ["", "Per seed:", ""]
    head = [
        "seed",
        "arm",
        "Dice B",
        "Dice A",
        "Dice B per class",
        "BAcc (b lin, b non, f lin, f non)",
    ]
    rows = []
    for seed, arms in payload["per_seed"].items():
        for arm in summary:
            r = arms[arm]
            per_class = ", ".join(f"{k} {v:.2f}" for k, v in r["dice_B_per_class"].items())
            baccs = ", ".join(
                f"{r[f'bacc_{p}_{k}']:.2f}" for p in POINTS for k in ("linear", "nonlinear")
            )
            rows.append(
                [str(seed), arm, f"{r['dice_B']:.3f}", f"{r['dice_A']:.3f}", per_class, baccs]
            )
    lines.append(markdown_table(head, rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--per-site", type=int, default=80)
    parser.add_argument("--lr", type=float, default=3e-3, help="learning rate of every arm")
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=list(ARMS),
        help="run only these arms: added to the stored results if there are any (same seeds, "
        "epochs, subjects and lr; the stored baseline is reused), else a new table (which then "
        "needs the baseline)",
    )
    parser.add_argument(
        "--results",
        default="segmentation",
        help="name of the results files under benchmarks/results (default: segmentation)",
    )
    parser.add_argument("--render", action="store_true", help="re-render the markdown only")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    stored_json = RESULTS / f"{args.results}.json"
    if args.render:
        payload = json.loads(stored_json.read_text())
        (RESULTS / f"{args.results}.md").write_text(render(payload))
        return
    from neurounlearn.models.segmentation import UNET_FEATURES

    start = time.perf_counter()
    per_seed: dict[str, Any] = {}
    minutes = 0.0
    arms = [arm for arm in ARMS if arm not in EXTRA_ARMS]
    if args.arms and not stored_json.exists():  # a new table of these arms only
        if "baseline" not in args.arms:
            raise SystemExit(f"{stored_json} does not exist yet: a new table needs the baseline")
        arms = [arm for arm in ARMS if arm in args.arms]
    elif args.arms:  # add arms to the stored results: the same setting, or it is refused
        stored = json.loads(stored_json.read_text())
        meta = stored["meta"]
        asked = {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "per_site": args.per_site,
            "lr": args.lr,
        }
        if any(meta[k] != v for k, v in asked.items()):
            raise SystemExit(
                f"the stored results were run with seeds {meta['seeds']}, {meta['epochs']} "
                f"epochs, {meta['per_site']} subjects per site and lr {meta['lr']}: pass the same"
            )
        per_seed, minutes, arms = stored["per_seed"], meta["minutes"], args.arms
    with tempfile.TemporaryDirectory(prefix="nu-seg-") as tmp:
        for seed in args.seeds:
            rows = run_seed(
                seed,
                epochs=args.epochs,
                per_site=args.per_site,
                lr=args.lr,
                work=Path(tmp),
                arms=arms,
            )
            per_seed[str(seed)] = per_seed.get(str(seed), {}) | rows
            # written after every seed, so a long run that is stopped keeps what it finished
            done = [int(s) for s in per_seed]
            minutes_now = minutes + (time.perf_counter() - start) / 60
            payload = write_results(args, per_seed, done, minutes_now, UNET_FEATURES)
    print(render(payload))


def write_results(
    args: argparse.Namespace,
    per_seed: dict[str, Any],
    seeds: list[int],
    minutes: float,
    features: Any,
) -> dict[str, Any]:
    summary = summarise(per_seed)
    payload = {
        "meta": {
            "seeds": seeds,
            "epochs": args.epochs,
            "per_site": args.per_site,
            "lr": args.lr,
            "arms": {arm: ARMS[arm]._asdict() for arm in summary},
            "features": list(features),
            "minutes": minutes,
            "machine": f"{os.cpu_count()} CPU cores",
            "results": args.results,
        },
        "per_seed": per_seed,
        "summary": summary,
        "verdicts": verdicts(summary),
    }
    save(args.results, payload, render(payload))
    return payload


def save(name: str, payload: dict[str, Any], markdown: str) -> None:
    """``RESULTS/NAME.json`` and ``NAME.md``, each written under a temporary name and renamed."""
    for path, text in (
        (RESULTS / f"{name}.json", json.dumps(payload, indent=2)),
        (RESULTS / f"{name}.md", markdown),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)


if __name__ == "__main__":
    main()
