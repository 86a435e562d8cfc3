"""How cost grows with the cohort: tables by rows, images by subjects and by voxels.

Each figure is measured in a fresh process (so its peak memory is its own):

- **tables**: ``fit`` (iterative, site unlearned, no pretraining epochs, 3 epochs) on 1k, 10k
  and 100k rows drawn from the shipped table (rows resampled with replacement, 5 % of each
  feature's spread added as noise, new subject ids): seconds per epoch (the median of the
  epochs after the first, each with its validation pass) and peak resident memory;
- **image cache**: small synthetic NIfTIs (16^3 int16, 8.5 KiB each: a noisy ellipsoid "brain"
  in a zero background) for 1k, 5k and 20k subjects: cache build seconds per subject (worker
  processes as given), reuse seconds per subject (a second ``build_cache`` on the unchanged
  files: stat calls and the sidecar, no data read), loader samples/s (one shuffled pass through
  the memory map, batch 32, no workers) and memory;
- **voxels**: the same cache and loader figures at 96^3 and 128^3 for a few hundred subjects.

Memory is read from ``/proc/self/status``: the peak resident set (``VmHWM``) and, at the end,
the anonymous part (``RssAnon``: the process's own allocations) apart from the file-backed part
(``RssFile``: mapped files, the shared libraries; the cache is read and written a row at a time
with ``pread``/``pwrite``, so its pages stay in the kernel's page cache, out of both).

Writes ``benchmarks/results/scale.json`` and ``.md``.

    python benchmarks/scale.py [--rows 1000 10000 100000] [--subjects 1000 5000 20000]
        [--voxels 96 128] [--voxel-subjects 200] [--workers 2]
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
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
SMALL = 16  # side of the synthetic volumes of the subject sweep
EPOCHS = 3  # table fits: the median epoch after the first is reported


def memory() -> dict[str, float]:
    """Peak and current resident memory of this process, in MiB."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


# -- tables --------------------------------------------------------------------------------------
def synthetic_table(rows: int, path: Path, seed: int = 0) -> None:
    from neurounlearn.data.bundled import openneuro_transfer

    base = openneuro_transfer()
    rng = np.random.default_rng(seed)
    frame = base.iloc[rng.integers(0, len(base), rows)].reset_index(drop=True)
    numeric = [c for c in frame.columns if c not in ("sub_id", "site", "sex", "age")]
    numeric = [c for c in numeric if pd.api.types.is_numeric_dtype(frame[c])]
    spread = base[numeric].std().to_numpy() * 0.05
    frame[numeric] = frame[numeric].to_numpy() + rng.normal(size=(rows, len(numeric))) * spread
    frame["sub_id"] = [f"s{i:06d}" for i in range(rows)]
    frame.to_csv(path, index=False)


class EpochTimer(L.Callback):
    """Wall time of each training epoch (its validation pass included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def measure_table(rows: int, work: Path) -> dict[str, Any]:
    from neurounlearn.config import apply_overrides
    from neurounlearn.demo import demo_config
    from neurounlearn.training.fit import fit

    data = work / f"table-{rows}.csv"
    synthetic_table(rows, data)
    cfg = demo_config(data, strategy="iterative", epochs=EPOCHS, progress_bar=False)
    cfg = apply_overrides(
        cfg, ["strategy.pretrain_epochs=0", "confounds.0.subset=null", f"train.patience={EPOCHS}"]
    )
    timer = EpochTimer()
    start = time.perf_counter()
    run = fit(cfg, work / f"run-{rows}", echo=lambda _: None, callbacks=[timer])
    total = time.perf_counter() - start
    info = json.loads((run / "run.json").read_text())
    later = timer.seconds[1:] or timer.seconds  # the first epoch warms up
    return {
        "rows": rows,
        "train_rows": info["train_rows"],
        "epochs": info["epochs_run"],
        "epoch_seconds": timer.seconds,
        "seconds_per_epoch": float(np.median(later)),
        "fit_seconds": info["fit_seconds"],
        "fit_command_seconds": total,
        **memory(),
    }


# -- images --------------------------------------------------------------------------------------
def write_volumes(
    n: int, side: int, folder: Path, seed: int = 0, shape: tuple[int, int, int] | None = None
) -> Path:
    """``n`` NIfTIs of ``side``^3 (or ``shape``) int16 and their manifest; returns the
    manifest."""
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    dims = shape or (side,) * 3
    grid = np.indices(dims).astype(np.float32) / (np.array(dims)[:, None, None, None] - 1) - 0.5
    inside = (grid[0] / 0.42) ** 2 + (grid[1] / 0.38) ** 2 + (grid[2] / 0.40) ** 2 <= 1
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    names = []
    for i in range(n):
        volume = np.where(inside, 500 + rng.normal(0, 60, inside.shape), 0).astype(np.int16)
        name = f"sub{i:06d}.nii"
        nib.save(nib.Nifti1Image(volume, affine), folder / name)
        names.append(name)
    manifest = folder / "manifest.csv"
    pd.DataFrame(
        {
            "subject": [f"sub{i:06d}" for i in range(n)],
            "site": [f"site{i % 3}" for i in range(n)],
            "age": np.round(rng.uniform(20, 80, n), 1),
            "image": names,
        }
    ).to_csv(manifest, index=False)
    return manifest


def measure_cache(manifest: Path, side: int, cache_dir: Path, workers: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from neurounlearn.data.volumes import (
        CachedVolumes,
        PreprocessSettings,
        VolumeColumns,
        build_cache,
    )

    torch.set_num_threads(1)
    frame = pd.read_csv(manifest)
    n = len(frame)
    settings = PreprocessSettings(shape=(side, side, side))
    quiet = {"progress": False, "echo": lambda _: None}
    start = time.perf_counter()
    cache = build_cache(
        frame, manifest, VolumeColumns(), settings, cache_dir=cache_dir, num_workers=workers,
        **quiet,
    )  # fmt: skip
    build = time.perf_counter() - start
    after_build = memory()
    start = time.perf_counter()
    again = build_cache(frame, manifest, VolumeColumns(), settings, cache_dir=cache_dir, **quiet)
    reuse = time.perf_counter() - start
    assert again.reused and not cache.reused
    data = CachedVolumes(cache, np.arange(n), frame["age"].to_numpy(), np.zeros(n, np.int64))
    loader = DataLoader(data, batch_size=32, shuffle=True, num_workers=0)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["y"])
    load = time.perf_counter() - start
    return {
        "subjects": n,
        "side": side,
        "cache_mib": cache.nbytes / 2**20,
        "build_ms_per_subject": build / n * 1000,
        "reuse_ms_per_subject": reuse / n * 1000,
        "loader_samples_per_s": seen / load,
        "after_build": after_build,
        **memory(),
    }


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    if args.kind == "table":
        result = measure_table(args.size, work)
    else:
        result = measure_cache(Path(args.manifest), args.side, work / "cache", args.workers)
    print("RESULT " + json.dumps(result))


def in_child(*flags: str) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *flags], capture_output=True, text=True, env=env
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{' '.join(flags)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(line.removeprefix("RESULT ")))


# -- the report ----------------------------------------------------------------------------------
def growth(sizes: list[float], values: list[float]) -> str:
    """The log-log slope between the smallest and largest size: 1 linear, 0 constant."""
    if len(sizes) < 2 or min(values) <= 0:
        return "n/a"
    slope = np.log(values[-1] / values[0]) / np.log(sizes[-1] / sizes[0])
    return f"{slope:.2f}"


def render(result: dict[str, Any]) -> str:
    from neurounlearn.formatting import markdown_table

    tables, subjects, voxels = result["tables"], result["subjects"], result["voxels"]
    lines = [
        "# Cost curves: rows, subjects and voxels",
        "",
        f"Wall time {result['wall_seconds'] / 60:.1f} min on {result['cores']} CPU cores; no "
        "GPU was available on the test machine. Each row is a fresh process. Growth is the "
        "log-log slope from the smallest to the largest size (1: linear, 0: constant). Memory: "
        "peak resident set (VmHWM) and, at the end, the anonymous part (RssAnon, the process's "
        "own allocations) and the mapped files (RssFile, the shared libraries: the cache is read "
        "and written a row at a time, so its pages stay in the kernel's page cache).",
        "",
        *[f"- {note}" for note in result.get("notes", [])],
        *([""] if result.get("notes") else []),
        "## Tables",
        "",
        f"`fit`, iterative strategy, site unlearned, no pretraining epochs, {EPOCHS} epochs, rows "
        "drawn from the shipped table with noise; an epoch's time is the median over the epochs "
        "after the first (training steps and the validation pass; the whole `fit`, with its "
        "start-up, checks and outputs, is in the JSON).",
        "",
        markdown_table(
            ["rows", "training rows", "s / epoch", "µs / training row / epoch", "peak RSS MiB"],
            [
                [
                    f"{t['rows']:,}",
                    f"{t['train_rows']:,}",
                    f"{t['seconds_per_epoch']:.2f}",
                    f"{t['seconds_per_epoch'] / t['train_rows'] * 1e6:.0f}",
                    f"{t['VmHWM']:.0f}",
                ]
                for t in tables
            ],
        ),
        "",
        f"Growth: time per epoch {growth([t['rows'] for t in tables], [t['seconds_per_epoch'] for t in tables])}, "  # noqa: E501
        f"peak RSS {growth([t['rows'] for t in tables], [t['VmHWM'] for t in tables])}.",
        "",
        f"## Images by subjects ({SMALL}³ int16 NIfTIs, 8.5 KiB each)",
        "",
        f"Cache built with {result['workers']} worker process(es); reuse is a second "
        "`build_cache` on the unchanged files; the loader makes one shuffled pass, batch 32, "
        "no workers.",
        "",
    ]
    head = [
        "subjects",
        "cache MiB",
        "build ms / subject",
        "reuse ms / subject",
        "loader samples/s",
        "peak RSS MiB",
        "RssAnon MiB",
        "RssFile MiB",
    ]

    def row(c: dict[str, Any]) -> list[str]:
        return [
            f"{c['subjects']:,}" + ("" if c["side"] == SMALL else f" at {c['side']}³"),
            f"{c['cache_mib']:.0f}",
            f"{c['build_ms_per_subject']:.2f}",
            f"{c['reuse_ms_per_subject']:.3f}",
            f"{c['loader_samples_per_s']:.0f}",
            f"{c['VmHWM']:.0f}",
            f"{c['RssAnon']:.0f}",
            f"{c['RssFile']:.0f}",
        ]

    sizes = [c["subjects"] for c in subjects]
    lines += [
        markdown_table(head, [row(c) for c in subjects]),
        "",
        f"Growth over subjects: build time per subject {growth(sizes, [c['build_ms_per_subject'] for c in subjects])} "  # noqa: E501
        f"(0: build time linear in subjects), reuse time per subject "
        f"{growth(sizes, [c['reuse_ms_per_subject'] for c in subjects])}, anonymous memory "
        f"{growth(sizes, [c['RssAnon'] for c in subjects])}, peak RSS "
        f"{growth(sizes, [c['VmHWM'] for c in subjects])}.",
        "",
    ]
    if voxels:
        lines += [
            f"## Images by voxels ({voxels[0]['subjects']} subjects)",
            "",
            markdown_table(head, [row(c) for c in voxels]),
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", type=int, default=[1000, 10000, 100000])
    parser.add_argument("--subjects", nargs="*", type=int, default=[1000, 5000, 20000])
    parser.add_argument("--voxels", nargs="*", type=int, default=[96, 128])
    parser.add_argument("--voxel-subjects", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="cache build worker processes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="re-render the markdown")
    # one measurement in this process (the parent starts these)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--side", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.render:
        result = json.loads((args.out / "scale.json").read_text())
        (args.out / "scale.md").write_text(render(result))
        return
    start = time.perf_counter()
    result: dict[str, Any] = {
        "cores": os.cpu_count(),
        "workers": args.workers,
        "tables": [],
        "subjects": [],
        "voxels": [],
    }
    with tempfile.TemporaryDirectory(prefix="neurounlearn-scale-") as tmp:
        work = Path(tmp)
        for rows in args.rows:
            folder = work / f"t{rows}"
            folder.mkdir()
            result["tables"].append(
                in_child("--kind", "table", "--size", str(rows), "--work", str(folder))
            )
            print(f"table {rows:,} rows: {result['tables'][-1]['seconds_per_epoch']:.2f} s/epoch")
            shutil.rmtree(folder)
        sweeps = [("subjects", n, SMALL) for n in args.subjects]
        sweeps += [("voxels", args.voxel_subjects, side) for side in args.voxels]
        for key, n, side in sweeps:
            folder = work / f"{key}-{n}-{side}"
            manifest = write_volumes(n, side, folder / "images")
            flags = ["--kind", "cache", "--side", str(side), "--manifest", str(manifest)]
            measured = in_child(*flags, "--work", str(folder), "--workers", str(args.workers))
            result[key].append(measured)
            print(
                f"images {n:,} at {side}³: build {measured['build_ms_per_subject']:.2f} ms, "
                f"reuse {measured['reuse_ms_per_subject']:.3f} ms per subject"
            )
            shutil.rmtree(folder)
    result["wall_seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "scale.md").write_text(render(result))
    print(f"wrote {args.out / 'scale.md'} in {result['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
