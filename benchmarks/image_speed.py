"""Speed benchmark of the image path: training throughput per strategy, loader throughput
with and without the preprocessed cache, cache cost, and peak memory of a fit.

One run on a simulated cohort (3 sites, ``--subjects`` subjects, 48^3, batch 16):

- training samples/s (time inside training steps only, first epoch excluded as warm-up) for
  baseline, iterative sequential, iterative joint and grl, as ratios to baseline; targets:
  joint >= 0.75 x baseline, grl >= 0.85 x baseline, sequential reported;
- the same for baseline in bf16 autocast and in channels-last memory format (on this CPU: do
  they help? they decide the ``auto`` defaults);
- loader samples/s reading the memory-mapped cache vs decoding and preprocessing every NIfTI
  each epoch (0 and 2 workers); target: cached >= 10 x the baseline model's consumption;
- cache build time and size per 100 subjects;
- peak resident memory of a whole ``fit`` (baseline, in a fresh process).

Writes ``benchmarks/results/image_speed.json`` and ``.md``.

    python benchmarks/image_speed.py [--subjects 100] [--epochs 4]
"""

from __future__ import annotations

import argparse
import json
import resource
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
import torch
from torch.utils.data import DataLoader, Dataset

from neurounlearn.config import apply_overrides
from neurounlearn.data.inputs import preprocess_settings, volume_columns
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.data.volumes import CachedVolumes, build_cache, preprocess, resolve_paths
from neurounlearn.demo import image_config
from neurounlearn.formatting import markdown_table
from neurounlearn.training.fit import fit

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"
SHAPE = 48
BATCH = 16
# the strategy comparison at one fixed numeric setting, whatever ``auto`` picks on this machine
FP32 = ["train.precision=32-true", "model.channels_last=false"]
ARMS = [
    ("baseline", "baseline", "sequential", FP32),
    ("iterative (sequential)", "iterative", "sequential", FP32),
    ("iterative (joint)", "iterative", "joint", FP32),
    ("grl", "grl", "sequential", FP32),
    (
        "baseline, bf16 autocast",
        "baseline",
        "sequential",
        ["train.precision=bf16-mixed", "model.channels_last=false"],
    ),
    (
        "baseline, channels-last",
        "baseline",
        "sequential",
        ["train.precision=32-true", "model.channels_last=true"],
    ),
    (
        "baseline, bf16 + channels-last",
        "baseline",
        "sequential",
        ["train.precision=bf16-mixed", "model.channels_last=true"],
    ),
    ("baseline again (run-to-run noise)", "baseline", "sequential", FP32),
]
TARGETS = {"iterative (joint)": 0.75, "grl": 0.85}
TARGET_LOADER_RATIO = 10.0


class StepTimer(L.Callback):
    """Sums the wall time spent inside training steps, after the first (warm-up) epoch."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.samples = 0
        self._t = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if trainer.current_epoch >= 1:
            self.seconds += time.perf_counter() - self._t
            self.samples += len(batch["y"])

    @property
    def rate(self) -> float:
        return self.samples / self.seconds if self.seconds else float("nan")


def training_rates(manifest: Path, work: Path, epochs: int) -> dict[str, float]:
    rates = {}
    for label, strategy, mode, extra in ARMS:
        cfg = image_config(
            manifest, strategy=strategy, mode=mode, epochs=epochs, cache_dir=work / "cache"
        )
        # pretraining is baseline-like: time the unlearning phase itself
        cfg = apply_overrides(
            cfg, ["strategy.pretrain_epochs=0", "train.progress_bar=false", *extra]
        )
        timer = StepTimer()
        run_dir = work / f"speed_{len(rates)}"
        shutil.rmtree(run_dir, ignore_errors=True)
        fit(cfg, run_dir, echo=lambda _: None, callbacks=[timer])
        rates[label] = timer.rate
        print(f"  {label}: {timer.rate:.1f} samples/s", flush=True)
    return rates


class Uncached(Dataset):
    """Decodes and preprocesses the NIfTI file on every access (what the cache avoids)."""

    def __init__(self, paths: list[str], settings: Any) -> None:
        self.paths, self.settings = paths, settings

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image, _ = preprocess(self.paths[i], settings=self.settings)
        return torch.from_numpy(np.ascontiguousarray(image))[None]


def loader_rate(dataset: Dataset, workers: int, passes: int = 3) -> float:
    loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    for _ in loader:  # warm-up pass: page cache, worker start
        pass
    start, n = time.perf_counter(), 0
    for _ in range(passes):
        for batch in loader:
            n += len(batch["x"] if isinstance(batch, dict) else batch)
    return n / (time.perf_counter() - start)


def peak_fit_memory(manifest: Path, work: Path) -> float:
    """Peak resident set (MiB) of a baseline fit in a fresh process (cache already built)."""
    code = (
        "import sys; from pathlib import Path; from neurounlearn.demo import image_config; "
        "from neurounlearn.training.fit import fit; "
        f"cfg = image_config(Path({str(manifest)!r}), strategy='baseline', epochs=2, "
        f"cache_dir=Path({str(work / 'cache')!r}), progress_bar=False); "
        f"fit(cfg, Path({str(work / 'memfit')!r}), echo=lambda _: None)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux


def render(p: dict[str, Any]) -> str:
    m, t = p["meta"], p["training_samples_per_second"]
    base = t["baseline"]
    lines = [
        "# Image speed benchmark",
        "",
        f"Simulated cohort: {m['subjects']} subjects, {SHAPE}³, batch {BATCH}, compact 3D CNN; "
        f"{m['epochs']} epochs per arm, the first excluded as warm-up; time inside training "
        f"steps only. Machine: {m['machine']}.",
        "",
    ]
    rows = []
    for label, rate in t.items():
        target = TARGETS.get(label)
        verdict = (
            "—"
            if target is None
            else f"≥ {target:.2f} ({'met' if rate / base >= target else 'missed'})"
        )
        rows.append([label, f"{rate:.1f}", f"{rate / base:.2f}", verdict])
    ld = p["loader_samples_per_second"]
    cached = max(ld["cached, 0 workers"], ld["cached, 2 workers"])
    lines += [
        markdown_table(["arm", "train samples/s", "× baseline", "target"], rows),
        "",
        markdown_table(
            ["loader", "samples/s", "× baseline consumption"],
            [[label, f"{rate:.1f}", f"{rate / base:.1f}"] for label, rate in ld.items()],
        ),
    ]
    c = p["cache"]
    lines += [
        "",
        f"- Cached loader vs the baseline model's consumption: {cached / base:.1f}× "
        f"(target ≥ {TARGET_LOADER_RATIO:.0f}×: "
        f"{'met' if cached / base >= TARGET_LOADER_RATIO else 'missed'}).",
        f"- Cache build: {c['build_seconds_per_100']:.1f} s and "
        f"{c['mib_per_100']:.1f} MiB per 100 subjects ({c['dtype']}); reopening an existing "
        f"cache: {c['reuse_seconds']:.2f} s for {m['subjects']} subjects.",
        f"- Peak resident memory of a baseline fit (fresh process): {p['peak_fit_mib']:.0f} MiB.",
        "",
        f"Total wall time {m['wall_minutes']:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--render", action="store_true", help="re-render the markdown only")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.render:
        payload = json.loads((RESULTS / "image_speed.json").read_text())
        (RESULTS / "image_speed.md").write_text(render(payload))
        print(render(payload))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = simulate_cohort(
            work / "cohort",
            sites=3,
            subjects=args.subjects,
            shape=SHAPE,
            seed=0,
            ages="independent",
            progress=False,
        )
        cfg = image_config(manifest, strategy="baseline", cache_dir=work / "cache")
        import pandas as pd

        frame = pd.read_csv(manifest)
        cols, settings = volume_columns(cfg), preprocess_settings(cfg)

        def open_cache() -> Any:
            return build_cache(
                frame,
                manifest,
                cols,
                settings,
                cache_dir=work / "cache",
                progress=False,
                echo=lambda _: None,
            )

        cache = open_cache()  # built
        t0 = time.perf_counter()
        open_cache()  # reused
        reuse = time.perf_counter() - t0
        n = len(frame)
        y = np.zeros(n, np.float32)
        codes = np.zeros((n, 1), np.int64)
        cached = CachedVolumes(cache, np.arange(n), y, codes)
        paths = resolve_paths(frame, manifest, cols)[cols.image].tolist()
        loaders = {
            "cached, 0 workers": loader_rate(cached, 0),
            "cached, 2 workers": loader_rate(cached, 2),
            "uncached (NIfTI decode every epoch), 0 workers": loader_rate(
                Uncached(paths, settings), 0, passes=1
            ),
            "uncached (NIfTI decode every epoch), 2 workers": loader_rate(
                Uncached(paths, settings), 2, passes=1
            ),
        }
        print(json.dumps(loaders), flush=True)
        rates = training_rates(manifest, work, args.epochs)
        peak = peak_fit_memory(manifest, work)
        payload = {
            "meta": {
                "subjects": n,
                "epochs": args.epochs,
                "machine": f"{torch.get_num_threads()} torch threads, CPU",
                "torch": torch.__version__,
                "wall_minutes": 0.0,
            },
            "training_samples_per_second": rates,
            "loader_samples_per_second": loaders,
            "cache": {
                "build_seconds_per_100": (cache.build_seconds or 0.0) * 100 / n,
                "mib_per_100": cache.nbytes / 2**20 * 100 / n,
                "dtype": settings.dtype,
                "reuse_seconds": reuse,
            },
            "peak_fit_mib": peak,
        }
    payload["meta"]["wall_minutes"] = (time.perf_counter() - start) / 60
    (RESULTS / "image_speed.json").write_text(json.dumps(payload, indent=2))
    text = render(payload)
    (RESULTS / "image_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
