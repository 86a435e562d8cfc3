"""Training over several processes: which process writes, what Lightning is handed, what is
refused before anything starts, and a real two-process run on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from neurounlearn.cli import app
from neurounlearn.config import RunConfig
from neurounlearn.errors import InputError
from neurounlearn.training import distributed
from neurounlearn.training.distributed import (
    is_follower,
    lightning_strategy,
    process_count,
)
from neurounlearn.training.fit import make_trainer, sync_batchnorm

LAUNCH_VARIABLES = (
    *distributed.RANK_VARIABLES,
    *distributed.PLACE_VARIABLES,
    *distributed.CLUSTER_VARIABLES,
)


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process no launcher started (whatever the test runner's own environment says)."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_process_run_alone_leads(alone: pytest.MonkeyPatch) -> None:
    assert not is_follower()


@pytest.mark.parametrize(
    ("variables", "follower"),
    [
        ({"RANK": "1", "LOCAL_RANK": "1"}, True),  # torchrun, second process
        ({"RANK": "0", "LOCAL_RANK": "0"}, False),  # torchrun, first process
        ({"LOCAL_RANK": "1"}, True),  # Lightning's launcher, its second process
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, True),  # first process of the second node
        ({"SLURM_PROCID": "3"}, True),
        ({"SLURM_PROCID": "0"}, False),
        ({"RANK": "0", "LOCAL_RANK": "2"}, False),  # the global rank wins over the place
    ],
)
def test_the_launchers_environment_says_which_process_follows(
    alone: pytest.MonkeyPatch, variables: dict[str, str], follower: bool
) -> None:
    for name, value in variables.items():
        alone.setenv(name, value)
    assert is_follower() is follower


@pytest.mark.parametrize(
    ("devices", "accelerator", "count"),
    [(1, "cpu", 1), (2, "cpu", 2), ("3", "cpu", 3), ("0,1", "gpu", 2), ("auto", "cpu", 1)],
)
def test_process_count_counts_as_lightning_does(
    devices: int | str, accelerator: str, count: int
) -> None:
    assert process_count(devices, accelerator) == count


def test_minus_one_on_the_cpu_is_one_process_per_core() -> None:
    assert process_count(-1, "cpu") == (os.cpu_count() or 1)


def test_auto_strategy_is_ddp_that_finds_unused_parameters_only_past_one_process() -> None:
    assert lightning_strategy("auto", 1, 1) == "auto"
    assert lightning_strategy("auto", 2, 1) == "ddp_find_unused_parameters_true"
    assert lightning_strategy("auto", 1, 2) == "ddp_find_unused_parameters_true"
    assert lightning_strategy("ddp", 2, 1) == "ddp"


def test_sync_batchnorm_auto_is_for_image_runs_on_several_gpus() -> None:
    def cfg(**train: object) -> RunConfig:
        return RunConfig.model_validate({"data": {"input": "image"}, "train": train})

    assert sync_batchnorm(cfg(accelerator="gpu", devices=2), 2)
    assert not sync_batchnorm(cfg(accelerator="gpu", devices=1), 1)
    assert not sync_batchnorm(cfg(accelerator="cpu", devices=2), 2)
    assert sync_batchnorm(cfg(accelerator="cpu", devices=2, sync_batchnorm=True), 2)
    table = RunConfig.model_validate({"train": {"accelerator": "gpu", "devices": 2}})
    assert not sync_batchnorm(table, 2)


@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_more_cpu_processes_than_cores_is_refused(
    accelerator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto means the CPU here
    cores = os.cpu_count() or 1
    cfg = RunConfig.model_validate({"train": {"accelerator": accelerator, "devices": cores + 1}})
    with pytest.raises(InputError, match=f"machine has {cores} CPU cores"):
        make_trainer(cfg)


def test_several_machines_without_a_launcher_are_refused(alone: pytest.MonkeyPatch) -> None:
    cfg = RunConfig.model_validate({"train": {"accelerator": "cpu", "num_nodes": 2}})
    with pytest.raises(InputError, match="num_nodes=2 needs a launcher"):
        make_trainer(cfg)


def test_more_gpus_than_the_machine_has_is_an_input_error() -> None:
    cfg = RunConfig.model_validate({"train": {"accelerator": "gpu", "devices": 64}})
    with pytest.raises(InputError, match=r"Lightning refuses train\.accelerator='gpu'"):
        make_trainer(cfg)


def test_compare_refuses_several_devices_before_any_work(
    write_manifest, tmp_path: Path, alone: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        app,
        [
            "compare", "--data", str(write_manifest()), "--features", r"^f\d$",
            "--target", "age", "--unlearn", "site", "--arms", "baseline",
            "--set", "train.devices=2", "--set", "train.accelerator=cpu", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "compare trains each arm on one device" in result.output
    assert not out.exists()


def _table(path: Path) -> Path:
    """240 rows over 3 sites, age read from four features: a table both runs learn well."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_manifest

    frame = make_manifest(sites=3, per_site=80, seed=0)
    for j in range(1, 4):
        frame[f"f{j}"] = np.round(frame[f"f{j}"] + (frame["age"] - 50) / 15, 4)
    frame.to_csv(path, index=False)
    return path


def _fit(data: Path, out: Path, devices: int, batch: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "neurounlearn", "fit", "--data", str(data),
        "--features", r"^f\d$", "--target", "age", "--unlearn", "site",
        "--strategy", "iterative", "--epochs", "15", "--batch-size", str(batch),
        "--set", f"train.devices={devices}", "--set", "train.accelerator=cpu",
        "--set", "train.progress_bar=false", "--out", str(out),
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two training processes need two cores")
def test_two_cpu_processes_train_one_run_as_well_as_one_process(tmp_path: Path) -> None:
    data = _table(tmp_path / "table.csv")
    one = _fit(data, tmp_path / "one", devices=1, batch=32)
    two = _fit(data, tmp_path / "two", devices=2, batch=16)  # the same global batch
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    # one run directory, written and reported once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "table.csv", "two"]
    assert two.stdout.count("run written to") == 1
    assert (two.stdout + two.stderr).count("task: regression (inferred") == 1
    history = pd.read_csv(tmp_path / "two" / "history.csv")
    assert history["epoch"].tolist() == list(range(len(history)))
    maes = [
        json.loads((tmp_path / run / "metrics.json").read_text())["task"]["mae"]
        for run in ("one", "two")
    ]
    assert abs(maes[1] - maes[0]) <= 0.10 * maes[0], maes
