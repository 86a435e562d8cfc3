"""Training speed of the paper-sized encoders on a GPU, per strategy and numeric setting.

The paper's VGG-like CNN (Dinsdale et al. 2021) at its 128×160×128 input and SFCN (Peng et al.
2021) at 160×192×160, batch 8, on synthetic volumes (a noisy ellipsoid "brain", int16 NIfTI,
cached once before the first fit). For each encoder, each strategy (baseline, iterative
sequential, iterative joint, grl, no pretraining epochs) and each setting:

- ``fp32``: 32-bit, channels-first;
- ``bf16``: bf16 autocast (``train.precision=bf16-mixed``);
- ``bf16 + channels-last``: and the channels-last-3d memory format;
- ``bf16 + compile``: and ``torch.compile`` of the encoder;

it reports training samples/s (time inside training steps, the first epoch excluded as warm-up,
so compilation is not counted) and the peak GPU memory of the fit. Augmentation is off (it runs
on the CPU, in the loader's workers): the figures are the GPU's.

``--tiny`` runs the same code on the CPU at 16³ with narrow encoders, a few subjects and no
compile, so the script is exercised by the test suite and cannot rot; its figures say nothing
about a GPU. A fit that fails is reported with its error instead of stopping the others, and
``--budget-s`` (default 540 s) stops starting new fits once spent, so the default run stays
under 10 minutes on one GPU.

Writes ``benchmarks/results/gpu.json`` and ``.md`` (``gpu_tiny.*`` with ``--tiny``).

    python benchmarks/gpu.py [--tiny] [--encoders paper sfcn] [--strategies ...]
        [--settings ...] [--subjects 48] [--epochs 3] [--budget-s 540]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from image_speed import StepTimer  # the benchmarks beside this one (their folder is on sys.path)
from neurounlearn.config import apply_overrides
from neurounlearn.demo import image_config
from neurounlearn.formatting import markdown_table
from neurounlearn.training.fit import fit
from scale import write_volumes

warnings.filterwarnings("ignore")
RESULTS = Path(__file__).parent / "results"

#: encoder -> (input shape, channels); ``None`` channels: the paper's own
ENCODERS: dict[str, tuple[tuple[int, int, int], list[int] | None]] = {
    "paper": ((128, 160, 128), None),
    "sfcn": ((160, 192, 160), None),
}
TINY: dict[str, tuple[tuple[int, int, int], list[int] | None]] = {
    "paper": ((16, 16, 16), [4, 8, 8]),
    "sfcn": ((16, 16, 16), [4, 8, 8]),
}
STRATEGIES = {
    "baseline": ("baseline", "sequential"),
    "iterative (sequential)": ("iterative", "sequential"),
    "iterative (joint)": ("iterative", "joint"),
    "grl": ("grl", "sequential"),
}
#: setting -> (precision, channels-last, compile)
SETTINGS = {
    "fp32": ("32-true", False, False),
    "bf16": ("bf16-mixed", False, False),
    "bf16 + channels-last": ("bf16-mixed", True, False),
    "bf16 + compile": ("bf16-mixed", False, True),
}


class CompileEncoder(L.Callback):
    """``torch.compile`` the encoder before training starts (the first epoch compiles)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = pl_module.model  # type: ignore[attr-defined]
        model.encoder = torch.compile(model.encoder)


def run_config(
    manifest: Path,
    work: Path,
    *,
    encoder: str,
    shape: tuple[int, int, int],
    channels: list[int] | None,
    strategy: str,
    mode: str,
    precision: str,
    channels_last: bool,
    epochs: int,
    batch: int,
    accelerator: str,
) -> Any:
    """The image demo's configuration for one arm, with the encoder, input, numeric setting and
    loader of this benchmark; no pretraining epochs (every epoch unlearns)."""
    cfg = image_config(
        manifest,
        strategy=strategy,
        mode=mode,
        epochs=epochs,
        cache_dir=work / "cache",
        progress_bar=False,
    )
    return apply_overrides(
        cfg,
        [
            f"data.shape={list(shape)}",
            "data.augment=none",
            f"model.encoder={encoder}",
            f"model.channels_last={str(channels_last).lower()}",
            *([f"model.channels={channels}"] if channels else []),
            "strategy.pretrain_epochs=0",
            f"train.batch_size={batch}",
            "train.restore=last",
            f"train.accelerator={accelerator}",
            f"train.precision={precision}",
            f"train.num_workers={min(8, (os.cpu_count() or 2) // 2)}",
        ],
        source="gpu benchmark",
    )


def measure(cfg: Any, run_dir: Path, compile_encoder: bool, gpu: bool) -> dict[str, Any]:
    timer = StepTimer()
    callbacks: list[L.Callback] = [timer, *([CompileEncoder()] if compile_encoder else [])]
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        fit(cfg, run_dir, echo=lambda _: None, callbacks=callbacks)
    except Exception as err:  # one failing setting must not stop the others
        line = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
        traceback.print_exc()
        return {"error": line, "seconds": time.perf_counter() - start}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "samples_per_s": timer.rate,
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
        "seconds": time.perf_counter() - start,
    }


def render(result: dict[str, Any]) -> str:
    m = result["meta"]
    lines = [
        "# GPU training speed: paper-sized encoders" + (" (CPU tiny mode)" if m["tiny"] else ""),
        "",
    ]
    if m["tiny"]:
        lines += [
            f"**Tiny mode on the CPU** ({m['device']}): 16³ volumes, narrow encoders, "
            f"{m['subjects']} subjects, {m['epochs']} epochs. It checks that the script runs; "
            "its figures say nothing about a GPU. The full run (`python benchmarks/gpu.py`) "
            "needs a CUDA GPU.",
            "",
        ]
    else:
        lines += [f"Device: {m['device']}; {m['subjects']} subjects, {m['epochs']} epochs.", ""]
    lines += [
        f"Batch {m['batch']}; training samples/s inside training steps, the first epoch "
        f"excluded (compilation included there); augmentation off. Wall time "
        f"{m['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    settings = list(m["settings"])
    for encoder, shape in m["encoders"].items():
        rows = []
        for strategy in m["strategies"]:
            cells = [strategy]
            for setting in settings:
                r = result["runs"].get(f"{encoder}|{strategy}|{setting}")
                if r is None:
                    cells.append("not run (time)")
                elif "error" in r:
                    cells.append(f"failed: {r['error']}")
                else:
                    memory = (
                        f" ({r['peak_gpu_gib']:.1f} GiB)" if r["peak_gpu_gib"] is not None else ""
                    )
                    cells.append(f"{r['samples_per_s']:.1f}{memory}")
            rows.append(cells)
        lines += [
            f"## {encoder} at {'×'.join(map(str, shape))}",
            "",
            "Samples/s (peak GPU memory).",
            "",
            markdown_table(["strategy", *settings], rows),
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="16³ on the CPU, to check it runs")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument(
        "--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES)
    )
    parser.add_argument("--settings", nargs="+", default=None, choices=list(SETTINGS))
    parser.add_argument("--subjects", type=int, default=None, help="default 48 (tiny: 12)")
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (tiny: 2)")
    parser.add_argument("--batch", type=int, default=None, help="default 8 (tiny: 4)")
    parser.add_argument("--budget-s", type=float, default=540.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--render", action="store_true", help="re-render the markdown")
    args = parser.parse_args()
    name = "gpu_tiny" if args.tiny else "gpu"
    if args.render:
        result = json.loads((args.out / f"{name}.json").read_text())
        (args.out / f"{name}.md").write_text(render(result))
        return
    gpu = not args.tiny
    if gpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run on a GPU machine, or --tiny to check the script")
    encoders = TINY if args.tiny else ENCODERS
    settings = args.settings or (
        ["fp32", "bf16", "bf16 + channels-last"] if args.tiny else list(SETTINGS)
    )
    subjects = args.subjects or (12 if args.tiny else 48)
    epochs = args.epochs or (2 if args.tiny else 3)
    batch = args.batch or (4 if args.tiny else 8)
    device = torch.cuda.get_device_name(0) if gpu else f"CPU, {os.cpu_count()} cores"
    start = time.perf_counter()
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="neurounlearn-gpu-") as tmp:
        work = Path(tmp)
        for encoder in args.encoders:
            shape, channels = encoders[encoder]
            manifest = write_volumes(subjects, shape[0], work / f"images-{encoder}", shape=shape)
            for strategy in args.strategies:
                for setting in settings:
                    if time.perf_counter() - start > args.budget_s:
                        continue  # reported as not run
                    precision, channels_last, compiled = SETTINGS[setting]
                    name_, mode = STRATEGIES[strategy]
                    cfg = run_config(
                        manifest, work, encoder=encoder, shape=shape, channels=channels,
                        strategy=name_, mode=mode, precision=precision,
                        channels_last=channels_last, epochs=epochs, batch=batch,
                        accelerator="cpu" if args.tiny else "gpu",
                    )  # fmt: skip
                    r = measure(cfg, work / "run", compiled, gpu)
                    runs[f"{encoder}|{strategy}|{setting}"] = r
                    shown = r.get("error") or f"{r['samples_per_s']:.1f} samples/s"
                    print(f"{encoder} {strategy} {setting}: {shown}", flush=True)
    result = {
        "meta": {
            "tiny": args.tiny,
            "device": device,
            "encoders": {e: list(encoders[e][0]) for e in args.encoders},
            "strategies": args.strategies,
            "settings": settings,
            "subjects": subjects,
            "epochs": epochs,
            "batch": batch,
            "torch": torch.__version__,
            "wall_seconds": time.perf_counter() - start,
        },
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(render(result))
    print(f"wrote {args.out / (name + '.md')} in {result['meta']['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
