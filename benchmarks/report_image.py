"""The report of a baseline and an iterative run on the default simulated image cohort.

Simulates ``neurounlearn simulate`` at its defaults (300 subjects, 3 sites, 48³), fits a
baseline and an iterative model (site unlearned; 20 epochs each), renders
``neurounlearn report`` and, when Debian's ``chromium`` is installed, a headless screenshot of
it: ``benchmarks/results/report_image.{html,png}`` (the PNG is the page's first 2400 pixels).
About 2 minutes on 2 cores.

    python benchmarks/report_image.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def screenshot(html: Path, png: Path, *, height: int = 2400) -> bool:
    """A headless-Chromium screenshot of ``html`` (1280 px wide); False without Chromium."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return False
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size=1280,{height}",
                f"--screenshot={png}",
                html.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return png.is_file()


def main() -> None:
    cli = str(Path(sys.executable).with_name("neurounlearn"))
    work = Path(tempfile.mkdtemp(prefix="nu_report_"))
    env = {**os.environ, "NEUROUNLEARN_CACHE_DIR": str(work / "cache")}

    def run(*args: str) -> None:
        subprocess.run([cli, *args], check=True, stdout=subprocess.DEVNULL, env=env)

    common = ["--data", str(work / "sim" / "manifest.csv"), "--input", "image"]
    common += ["--target", "age", "--epochs", "20", "--set", "train.batch_size=16"]
    common += ["--set", "train.progress_bar=false"]
    html = RESULTS / "report_image.html"
    start = time.perf_counter()
    try:
        run("simulate", str(work / "sim"))
        run("fit", *common, "--strategy", "baseline", "--out", str(work / "baseline"))
        run(
            "fit", *common, "--unlearn", "site", "--strategy", "iterative",
            "--set", "strategy.pretrain_epochs=5", "--out", str(work / "iterative"),
        )  # fmt: skip
        RESULTS.mkdir(parents=True, exist_ok=True)
        run("report", str(work / "baseline"), str(work / "iterative"), "--out", str(html))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    png = RESULTS / "report_image.png"
    shot = screenshot(html, png)
    print(f"report: {html} ({time.perf_counter() - start:.0f} s)")
    print(f"screenshot: {png}" if shot else "no chromium: no screenshot")


if __name__ == "__main__":
    main()
