"""The benchmarks whose full runs need a GPU or hours, run at a tiny size so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str, *flags: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *flags],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_the_gpu_benchmark_runs_in_its_tiny_cpu_mode(tmp_path: Path) -> None:
    done = _run(
        "gpu.py", "--tiny", "--strategies", "baseline", "grl", "--settings", "fp32",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_tiny.json").read_text())
    assert sorted(result["runs"]) == [
        "paper|baseline|fp32",
        "paper|grl|fp32",
        "sfcn|baseline|fp32",
        "sfcn|grl|fp32",
    ]
    assert all(r.get("samples_per_s", 0) > 0 for r in result["runs"].values()), result["runs"]
    text = (tmp_path / "gpu_tiny.md").read_text()
    assert "CPU tiny mode" in text and "| grl |" in text


def test_the_scale_benchmark_measures_a_cache_reuse_below_its_build(tmp_path: Path) -> None:
    done = _run(
        "scale.py", "--rows", "--subjects", "20", "40", "--voxels", "--workers", "0",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "scale.json").read_text())
    assert [c["subjects"] for c in result["subjects"]] == [20, 40]
    for c in result["subjects"]:
        assert 0 < c["reuse_ms_per_subject"] < c["build_ms_per_subject"]
        assert c["loader_samples_per_s"] > 0
    assert "## Images by subjects" in (tmp_path / "scale.md").read_text()
