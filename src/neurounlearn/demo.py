"""``neurounlearn demo``: the main job on the bundled real data, in a few minutes on a laptop CPU.

On the OpenNeuroTransfer table (546 scans, 6 OpenNeuro sites, FreeSurfer features) it predicts
age while unlearning site within the 18–35 age band that five of the six sites share (site and age
are confounded: one site holds only 5–8 year olds), and prints, on one split: age MAE and site
leakage (balanced accuracy of fresh linear and nonlinear probes on held-out embeddings) for
raw-feature ridge, raw + ComBat, the baseline network, iterative unlearning (sequential and
joint) and gradient reversal.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neurounlearn.atomic import write_text
from neurounlearn.config import RunConfig, validate_config
from neurounlearn.errors import require
from neurounlearn.formatting import fmt_number, markdown_table
from neurounlearn.results import LeakageResult

BAND = (18.0, 35.0)
SUBSET = "18 <= age <= 35"

#: (label, strategy, mode) of the models the demo and the benchmark train.
ARMS: list[tuple[str, str, str]] = [
    ("baseline", "baseline", "sequential"),
    ("iterative (sequential)", "iterative", "sequential"),
    ("iterative (joint)", "iterative", "joint"),
    ("grl", "grl", "sequential"),
]


def demo_config(
    data: Path,
    *,
    strategy: str,
    mode: str = "sequential",
    seed: int = 0,
    epochs: int | None = None,
    n_permutations: int = 100,
    progress_bar: bool = True,
) -> RunConfig:
    """The configuration the demo and ``benchmarks/tabular_openneuro.py`` use for one arm."""
    from neurounlearn.data.bundled import OPENNEURO_FEATURES

    raw: dict[str, Any] = {
        "data": {
            "path": str(data),
            "features": OPENNEURO_FEATURES,
            "target": "age",
            "task": "regression",
            "id_column": "sub_id",
            "site_column": "site",
        },
        "confounds": [{"name": "site", "subset": SUBSET}],
        "strategy": {"name": strategy, "mode": mode},
        "train": {"seed": seed, "progress_bar": progress_bar},
        "audit": {"band": list(BAND), "n_permutations": n_permutations},
    }
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    return validate_config(raw, "demo")


def leakage_cells(leakage: dict[str, Any], confound: str = "site") -> list[str]:
    """Balanced accuracy of the linear and nonlinear probes, then of the same within the band."""
    audit = LeakageResult.from_dict(leakage.get(confound))
    band = audit.conditional or LeakageResult.from_dict(None)
    return [
        fmt_number(block.probe(p).balanced_accuracy)
        for block in (audit, band)
        for p in ("linear", "nonlinear")
    ]


TABLE_HEAD = [
    "arm",
    "age MAE",
    "site BAcc linear",
    "site BAcc nonlinear",
    "18–35 linear",
    "18–35 nonlinear",
    "fit s",
]
IMAGE_TABLE_HEAD = [
    "arm",
    "age MAE",
    "site BAcc linear",
    "site BAcc nonlinear",
    "fit s",
    "train samples/s",
]


def reference_results(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Raw-feature ridge and raw + ComBat on exactly the split ``fit`` makes for ``cfg``."""
    from neurounlearn.data.inputs import table_spec
    from neurounlearn.data.manifest import load_table, resolve_id_column
    from neurounlearn.evaluation.reference import reference_arms
    from neurounlearn.training.fit import config_split

    assert cfg.data.path is not None
    frame, features, _ = load_table(cfg.data.path, table_spec(cfg))
    split = config_split(cfg, frame, resolve_id_column(frame, cfg.data.id_column, cfg.data.path))
    return reference_arms(
        frame,
        features,
        split,
        target=cfg.data.target,
        site_column=cfg.data.site_column,
        confounds=[c.name for c in cfg.confounds],
        audit=cfg.audit,
        seed=cfg.train.seed,
    )


def run_demo(
    out: Path, *, epochs: int | None = None, seed: int = 0, echo: Callable[[str], Any] = print
) -> str:
    """Run the demo into ``out`` and return the markdown table it printed."""
    from neurounlearn.data.bundled import write_openneuro_transfer
    from neurounlearn.evaluation.evaluate import evaluate
    from neurounlearn.training.fit import fit

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = write_openneuro_transfer(out / "openneuro_transfer.csv")
    echo(f"OpenNeuroTransfer: 546 scans, 6 sites -> {data}")
    echo("predicting age, unlearning site within 18-35 years (the band the adult sites share)\n")
    rows: list[list[str]] = []
    for label, strategy, mode in ARMS:
        cfg = demo_config(data, strategy=strategy, mode=mode, seed=seed, epochs=epochs)
        run_dir = out / label.replace(" ", "_").replace("(", "").replace(")", "")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        echo(f"[{len(rows) + 1}/{len(ARMS)}] {label}: training ...")
        t0 = time.perf_counter()
        fit(cfg, run_dir)
        m = evaluate(run_dir)
        echo(
            f"      MAE {m['task']['mae']:.2f}, trained + audited in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        rows.append(
            [
                label,
                fmt_number(m["task"]["mae"]),
                *leakage_cells(m["leakage"]),
                fmt_number(m["timing"]["fit_seconds"], 1),
            ]
        )

    echo("reference arms (same split): ridge on raw features, raw + ComBat ...")
    ref = reference_results(demo_config(data, strategy="baseline", seed=seed))
    ref_rows = [
        [name, fmt_number(r["task"]["mae"]), *leakage_cells(r["leakage"]), "—"]
        for name, r in ref.items()
    ]
    text = markdown_table(TABLE_HEAD, ref_rows + rows)
    echo("\n" + text)
    echo(
        "\nBAcc: balanced accuracy of fresh probes on held-out (test-split) embeddings; chance 1/6 "
        "overall, 1/5 in 18-35. Lower is less site left; MAE in years."
    )
    return text


# -- the image part ------------------------------------------------------------------------------

#: The image demo's arms: (label, strategy, mode, erase site).
IMAGE_ARMS: list[tuple[str, str, str, bool]] = [
    ("baseline", "baseline", "sequential", False),
    ("iterative (sequential)", "iterative", "sequential", False),
    ("grl", "grl", "sequential", False),
    ("iterative + erase site", "iterative", "sequential", True),
]
#: The demo's simulated cohort: small enough for a 2-core CPU.
IMAGE_DEMO_SITES, IMAGE_DEMO_SUBJECTS, IMAGE_DEMO_SHAPE = 3, 240, 32
IMAGE_DEMO_EPOCHS = 40


def image_config(
    manifest: Path,
    *,
    strategy: str,
    mode: str = "sequential",
    seed: int = 0,
    epochs: int = IMAGE_DEMO_EPOCHS,
    shape: int | None = None,
    n_permutations: int = 100,
    progress_bar: bool = True,
    cache_dir: Path | None = None,
    erase: bool = False,
) -> RunConfig:
    """The configuration the image demo and ``benchmarks/image_*.py`` use for one arm:
    age from simulated volumes with site unlearned (and erased, with ``erase``), the compact
    3D CNN."""
    raw: dict[str, Any] = {
        "data": {
            "path": str(manifest),
            "input": "image",
            "target": "age",
            "task": "regression",
            "id_column": "subject",
            "site_column": "site",
            **({"shape": shape} if shape else {}),
            **({"cache_dir": str(cache_dir)} if cache_dir else {}),
        },
        "confounds": [{"name": "site"}],
        "model": {"encoder": "compact", "embedding_dim": 32},
        "strategy": {"name": strategy, "mode": mode, "pretrain_epochs": 5},
        "train": {
            "seed": seed,
            "epochs": epochs,
            "batch_size": 16,
            "patience": epochs,
            "progress_bar": progress_bar,
        },
        "audit": {"n_permutations": n_permutations},
        **({"erase": [{"name": "site"}]} if erase else {}),
    }
    return validate_config(raw, "image demo")


def run_image_demo(
    out: Path, *, epochs: int | None = None, seed: int = 0, echo: Callable[[str], Any] = print
) -> str:
    """Simulate a small multi-site cohort, train baseline, iterative, grl and iterative with the
    site erased on the volumes, and return the markdown table printed."""
    from neurounlearn.data.simulate import simulate_cohort
    from neurounlearn.evaluation.evaluate import evaluate
    from neurounlearn.training.fit import fit

    out = Path(out)
    cohort = out / "simulated_cohort"
    if cohort.exists():
        shutil.rmtree(cohort)
    echo(
        f"simulating {IMAGE_DEMO_SUBJECTS} subjects at {IMAGE_DEMO_SITES} sites "
        f"({IMAGE_DEMO_SHAPE}^3 voxels, age independent of site) ..."
    )
    manifest = simulate_cohort(
        cohort,
        sites=IMAGE_DEMO_SITES,
        subjects=IMAGE_DEMO_SUBJECTS,
        shape=IMAGE_DEMO_SHAPE,
        seed=seed,
        ages="independent",
        progress=False,
    )
    echo(f"cohort -> {cohort} (one mid-slice per site: {cohort / 'sites.png'})")
    echo("predicting age from the volumes with a compact 3D CNN, unlearning site\n")
    rows: list[list[str]] = []
    for label, strategy, mode, erase in IMAGE_ARMS:
        cfg = image_config(
            manifest,
            strategy=strategy,
            mode=mode,
            seed=seed,
            epochs=epochs or IMAGE_DEMO_EPOCHS,
            cache_dir=out / "cache",  # the demo's own: a fresh machine's home stays clean
            erase=erase,
        )
        run_dir = out / ("image_" + "".join(c if c.isalnum() else "_" for c in label).strip("_"))
        if run_dir.exists():
            shutil.rmtree(run_dir)
        echo(f"[{len(rows) + 1}/{len(IMAGE_ARMS)}] {label}: training ...")
        t0 = time.perf_counter()
        fit(cfg, run_dir, echo=echo)
        m = evaluate(run_dir)
        echo(
            f"      MAE {m['task']['mae']:.2f}, trained + audited in "
            f"{time.perf_counter() - t0:.0f} s"
        )
        sps = m["timing"].get("samples_per_second")
        rows.append(
            [
                label,
                fmt_number(m["task"]["mae"]),
                *leakage_cells(m["leakage"])[:2],
                fmt_number(m["timing"]["fit_seconds"], 1),
                fmt_number(sps, 0),
            ]
        )
    text = markdown_table(IMAGE_TABLE_HEAD, rows)
    echo("\n" + text)
    echo(
        "\nBAcc: balanced accuracy of fresh probes on held-out (test-split) embeddings; chance "
        f"1/{IMAGE_DEMO_SITES}. Lower is less site left; MAE in years."
    )
    return text


def run_all(
    out: Path,
    *,
    epochs: int | None = None,
    seed: int = 0,
    images: bool = True,
    echo: Callable[[str], Any] = print,
) -> str:
    """The whole demo: the feature table part, then (unless ``images`` is False) the image part;
    writes ``OUT/demo.md``."""
    # the reference arms and the simulated cohort need the optional extras: say so up front
    require("neuroHarmonize", "combat", "the demo's ComBat arm")
    if images:
        require("nilearn", "sim", "the demo's simulated cohort")
    start = time.perf_counter()
    parts = [
        "## OpenNeuroTransfer (FreeSurfer features)\n\n"
        + run_demo(out, epochs=epochs, seed=seed, echo=echo)
    ]
    if images:
        echo("\n" + "-" * 80 + "\n")
        parts.append(
            "## Simulated MRI volumes\n\n"
            + run_image_demo(out, epochs=epochs, seed=seed, echo=echo)
        )
    minutes = (time.perf_counter() - start) / 60
    echo(f"\ndemo finished in {minutes:.1f} min; tables in {Path(out) / 'demo.md'}")
    text = "\n\n".join(parts) + f"\n\nWall time: {minutes:.1f} min.\n"
    write_text(text, Path(out) / "demo.md")
    return text
