"""What an image CNN's site heads see in training, against what the audit reads.

A diagnostic of why adversarial unlearning leaves the scanner in image embeddings. On a
selection cohort (seed 100: 3 sites x 300 subjects at 48^3, ages independent of site; a seed no
benchmark reports) a baseline CNN is trained with the image defaults (40 epochs), then the
embeddings of its training and test rows are taken four ways: the encoder in eval mode (batch
norm on its running statistics, as the audit and ``predict`` run it) or in train mode (batch
statistics over batches of 16, as a training step sees them), each on clean or augmented
volumes. For each view:

* a logistic probe's 5-fold cross-validated site balanced accuracy on the training rows;
* the same probe fit on the training rows and scored on the test rows' eval-mode, clean
  embeddings (what the audit reads).

Then a site head of the run's own kind (batch-standardised MLP, Adam at the adversary's
learning rate, batches of 16, 40 epochs) is trained on fixed training-row features of two views
and scored the same way. Chance is 0.33.

Writes ``benchmarks/results/adversary_view.{json,md}``; about 2.5 minutes on 2 cores.

    python benchmarks/adversary_view.py [--seed 100] [--epochs 40]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from neurounlearn.config import apply_overrides
from neurounlearn.data.inputs import load_inputs, row_data
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.demo import image_config
from neurounlearn.formatting import fmt_number, markdown_table
from neurounlearn.models.unlearning import ConfoundHead
from neurounlearn.training.fit import fit
from neurounlearn.training.predict import load_run

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
OVERRIDES = ["audit.n_permutations=20", "audit.n_permutations_nonlinear=10"]
OVERRIDES += ["audit.n_bootstrap=200", "train.progress_bar=false"]
#: (label, encoder mode, augmented)
VIEWS = [
    ("eval mode, clean (what the audit reads)", "eval", False),
    ("eval mode, augmented", "eval", True),
    ("train mode, clean", "train", False),
    ("train mode, augmented (what the heads see)", "train", True),
]
HEAD_EPOCHS = 40


def _probe() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = simulate_cohort(
            work / "cohort",
            sites=3,
            subjects=300,
            shape=48,
            seed=args.seed,
            ages="independent",
            progress=False,
        )
        cfg = image_config(
            manifest, strategy="baseline", seed=args.seed, epochs=args.epochs, cache_dir=work / "c"
        )
        run_dir = fit(apply_overrides(cfg, OVERRIDES), work / "run", echo=lambda _: None)
        payload = diagnose(run_dir)
    payload["meta"] = {
        "seed": args.seed,
        "epochs": args.epochs,
        "wall_minutes": (time.perf_counter() - start) / 60,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "adversary_view.json").write_text(json.dumps(payload, indent=2))
    text = render(payload)
    (RESULTS / "adversary_view.md").write_text(text)
    print(text)


def diagnose(run_dir: Path) -> dict[str, Any]:
    run = load_run(run_dir)
    cfg = run.config
    inputs = load_inputs(cfg, cfg.data.path)
    rows = row_data(cfg, inputs, run.encoding, progress=False, echo=lambda _: None)
    split = pd.read_csv(run_dir / "splits.csv")["split"].to_numpy()
    site = inputs.frame[cfg.data.site_column].astype(str).to_numpy()
    codes = {s: i for i, s in enumerate(sorted(set(site)))}
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    batch = cfg.train.batch_size

    @torch.no_grad()
    def embed(idx: np.ndarray, mode: str, augmented: bool) -> np.ndarray:
        model = copy.deepcopy(run.model)  # a train-mode pass moves the running statistics
        model.train() if mode == "train" else model.eval()
        data = rows.subset(idx, augment=cfg.data.augment if augmented else "none")
        size = batch if mode == "train" else 64
        return np.concatenate(
            [model.encode(b["x"]).float().numpy() for b in DataLoader(data, batch_size=size)]
        )

    audit_view = embed(test, "eval", False)
    order = np.random.default_rng(1).permutation(train)  # batches of mixed sites, as in training
    views: list[dict[str, Any]] = []
    features: dict[str, np.ndarray] = {}
    for label, mode, augmented in VIEWS:
        f = embed(order, mode, augmented)
        features[label] = f
        cv = cross_val_score(_probe(), f, site[order], cv=5, scoring="balanced_accuracy")
        fitted = _probe().fit(f, site[order])
        views.append(
            {
                "view": label,
                "train_rows_cv": float(cv.mean()),
                "audit_view_test": float(
                    balanced_accuracy_score(site[test], fitted.predict(audit_view))
                ),
            }
        )
        print(json.dumps(views[-1]), flush=True)
    heads = []
    for label in (VIEWS[0][0], VIEWS[3][0]):
        x = torch.tensor(features[label], dtype=torch.float32)
        y = torch.tensor([codes[s] for s in site[order]])
        head = ConfoundHead(x.shape[1], len(codes), hidden=cfg.model.head_hidden)
        opt = torch.optim.Adam(head.parameters(), lr=cfg.strategy.adversary_lr)
        last = 0.0
        for _ in range(HEAD_EPOCHS):
            head.train()
            perm, correct = torch.randperm(len(x)), 0
            for i in range(0, len(x) - 1, batch):
                j = perm[i : i + batch]
                logits = head(x[j])
                correct += int((logits.argmax(1) == y[j]).sum())
                loss = torch.nn.functional.cross_entropy(logits, y[j])
                opt.zero_grad()
                loss.backward()
                opt.step()
            last = correct / len(x)
        head.eval()
        with torch.no_grad():
            pred = head(torch.tensor(audit_view, dtype=torch.float32)).argmax(1).numpy()
        truth = np.array([codes[s] for s in site[test]])
        heads.append(
            {
                "trained_on": label,
                "training_batches_last_epoch": last,
                "audit_view_test": float(balanced_accuracy_score(truth, pred)),
            }
        )
        print(json.dumps(heads[-1]), flush=True)
    return {"views": views, "heads": heads, "train_rows": len(train), "test_rows": len(test)}


def render(payload: dict[str, Any]) -> str:
    meta = payload["meta"]
    lines = [
        "# What the site heads see, against what the audit reads",
        "",
        f"A baseline compact CNN, {meta['epochs']} epochs with the image defaults, on the "
        f"cohort of seed {meta['seed']} (3 sites × 300 subjects at 48³, ages independent of "
        f"site; {payload['train_rows']} training rows, {payload['test_rows']} test rows). Site "
        "balanced accuracy (chance 0.33) of a logistic probe on the training rows' embeddings, "
        "taken four ways.",
        "",
        markdown_table(
            [
                "embeddings of the training rows",
                "5-fold CV on them",
                "fit on them, scored on the test rows as the audit reads them",
            ],
            [
                [v["view"], fmt_number(v["train_rows_cv"]), fmt_number(v["audit_view_test"])]
                for v in payload["views"]
            ],
        ),
        "",
        "A site head of the run's own kind (batch-standardised MLP, Adam at "
        f"`strategy.adversary_lr`, batches of 16, {HEAD_EPOCHS} epochs) trained on fixed "
        "training-row features:",
        "",
        markdown_table(
            [
                "trained on",
                "accuracy on its training batches, last epoch",
                "scored on the test rows as the audit reads them",
            ],
            [
                [
                    h["trained_on"],
                    fmt_number(h["training_batches_last_epoch"]),
                    fmt_number(h["audit_view_test"]),
                ]
                for h in payload["heads"]
            ],
        ),
        "",
        f"Wall time {meta['wall_minutes']:.1f} min on this machine.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
