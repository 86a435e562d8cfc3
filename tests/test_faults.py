"""Hostile input and faults: nothing runs that the user did not write, nothing is lost.

Query payloads and pickled checkpoints never run their code; damaged run files, labels and
targets give exit 2 with one clear line; a full disk or an unwritable folder is an error naming
the file, with nothing half-written; a run killed with SIGKILL and resumed gives the bytes of an
uninterrupted one. The shared helpers (``invoke``, ``assert_input_error``, ...) come from
``test_cli``.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from neurounlearn import atomic
from test_cli import FEATURE_REGEX, QUICK, assert_input_error, describe, fit_args, invoke, where

# ----------------------------------------------------------------------------- helpers


class Payload:
    """Unpickling this object creates ``marker``: the proof that a load ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def plant_payload(path: Path, marker: Path) -> None:
    torch.save({"epoch": 1, "state_dict": {}, "payload": Payload(marker)}, path)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def copy_run(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


CLI = [sys.executable, "-c", "from neurounlearn.cli import app; app()"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1"}


def run_cli(
    args: list[object], *, fsize: int | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process; ``fsize`` caps the bytes any file may reach (a full disk)."""

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [*CLI, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        preexec_fn=limit,
        timeout=300,
    )


def assert_clean_exit_2(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    shown = f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, shown
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} missing\n{shown}"
    return errors[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, manifest_factory) -> tuple[Path, Path]:
    """A finished baseline table run (3 sites x 10 subjects, 2 epochs) and its manifest."""
    root = tmp_path_factory.mktemp("finished")
    data = root / "manifest.csv"
    manifest_factory(per_site=10).to_csv(data, index=False)
    result = invoke(fit_args(data, root / "run"))
    if not (root / "run" / "model.pt").is_file():
        pytest.fail(f"the shared run did not finish\n{describe(result)}")
    return root / "run", data


# ----------------------------------------------------------------------------- security


@pytest.mark.parametrize("how", ["unlearn-where", "set-subset", "yaml-config"])
def test_a_query_payload_is_refused_before_it_runs(
    tmp_path: Path, write_manifest: Callable[..., Path], how: str
) -> None:
    marker = tmp_path / "pwned"
    query = f"index == index + @pd.io.common.os.system('touch {marker}')"
    data, out = write_manifest(), tmp_path / "run"
    if how == "unlearn-where":
        args = fit_args(data, out, "--unlearn-where", query)
    elif how == "set-subset":
        args = fit_args(data, out, "--set", f"confounds.0.subset={query}")
    else:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({"confounds": [{"name": "site", "subset": query}]}))
        args = fit_args(data, out, "--config", cfg, unlearn=())
    result = invoke(args)
    named = "--unlearn-where" if how == "unlearn-where" else "confounds.0.subset"
    assert_input_error(result, "error: ", named, "'@pd.io.common.os.system'", "not allowed")
    assert not marker.exists()
    assert not out.exists()


def test_resume_refuses_a_stored_config_with_a_payload_and_rewrites_nothing(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    run = copy_run(finished[0], tmp_path)
    marker = tmp_path / "pwned"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["confounds"][0]["subset"] = f"__import__('os').system('touch {marker}')"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = snapshot(run)
    result = invoke(fit_args(finished[1], run, "--resume"))
    assert_input_error(result, where(run / "config.yaml"), "__import__")
    assert not marker.exists()
    assert snapshot(run) == before


def test_resume_never_unpickles_a_crafted_checkpoint(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    run = copy_run(finished[0], tmp_path)
    marker = tmp_path / "pwned"
    (run / "checkpoints").mkdir(exist_ok=True)
    plant_payload(run / "checkpoints" / "last.ckpt", marker)
    before = snapshot(run)
    result = invoke(fit_args(finished[1], run, "--resume"))
    assert_input_error(result, where(run / "checkpoints" / "last.ckpt"), "never unpickled")
    assert not marker.exists()
    assert snapshot(run) == before  # config.yaml and splits.csv as they were


@pytest.mark.parametrize("command", ["evaluate", "predict", "embed"])
def test_a_crafted_model_file_is_never_unpickled(
    finished: tuple[Path, Path], tmp_path: Path, command: str
) -> None:
    run = copy_run(finished[0], tmp_path)
    marker = tmp_path / "pwned"
    plant_payload(run / "model.pt", marker)
    out = tmp_path / "out.csv"
    args: list[object] = [command, run]
    if command != "evaluate":
        args += ["--data", finished[1], "--out", out]
    before = snapshot(run)
    result = invoke(args)
    assert_input_error(result, where(run / "model.pt"), "never unpickled")
    assert not marker.exists()
    assert not out.exists()
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- damaged runs


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("empty", "empty (0 bytes)"),
        ("truncated", "truncated or not a PyTorch file"),
        ("foreign", "model.pt"),
        ("text", "truncated or not a PyTorch file"),
    ],
)
def test_a_damaged_model_file_is_one_clear_line(
    finished: tuple[Path, Path], tmp_path: Path, damage: str, fragment: str
) -> None:
    run = copy_run(finished[0], tmp_path)
    model = run / "model.pt"
    if damage == "empty":
        model.write_bytes(b"")
    elif damage == "truncated":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    elif damage == "foreign":
        torch.save({"weights": torch.zeros(3)}, model)
    else:
        model.write_text("not a model\n")
    result = invoke(["evaluate", run])
    assert_input_error(result, where(model), fragment)


def test_a_damaged_run_info_is_one_clear_line(finished: tuple[Path, Path], tmp_path: Path) -> None:
    run = copy_run(finished[0], tmp_path)
    (run / "run.json").write_text('{"epochs_run": ')
    result = invoke(["evaluate", run])
    assert_input_error(result, where(run / "run.json"))


@pytest.mark.parametrize("name", ["predictions.csv", "embeddings.csv"])
def test_evaluate_names_a_missing_output_file(
    finished: tuple[Path, Path], tmp_path: Path, name: str
) -> None:
    run = copy_run(finished[0], tmp_path)
    (run / name).unlink()
    result = invoke(["evaluate", run])
    assert_input_error(result, where(run / name), name)
    assert not (run / name).exists()


# ----------------------------------------------------------------------------- --labels


def test_labels_that_do_not_exist_are_named(finished: tuple[Path, Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    result = invoke(["evaluate", finished[0], "--labels", labels])
    assert_input_error(result, where(labels), "not found")


def test_labels_for_a_run_without_unlabelled_sites_are_refused(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("subject,age\nsub000,40\n")
    before = snapshot(finished[0])
    result = invoke(["evaluate", finished[0], "--labels", labels])
    assert_input_error(result, where(labels), "has none", "--unlabelled-site")
    assert snapshot(finished[0]) == before


def test_labels_with_data_are_refused(finished: tuple[Path, Path], tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("subject,age\nsub000,40\n")
    result = invoke(["evaluate", finished[0], "--labels", labels, "--data", finished[1]])
    assert_input_error(result, where(labels), "not to external test data")


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory, manifest_factory) -> Path:
    """A finished run whose site2 targets were hidden from training."""
    root = tmp_path_factory.mktemp("unlabelled")
    data = root / "manifest.csv"
    manifest_factory(per_site=10).to_csv(data, index=False)
    result = invoke(fit_args(data, root / "run", "--unlabelled-site", "site2"))
    if not (root / "run" / "model.pt").is_file():
        pytest.fail(f"the unlabelled-site run did not finish\n{describe(result)}")
    return root / "run"


@pytest.mark.parametrize(
    ("content", "fragment", "row"),
    [
        ("subject,age\nsub020,40\nsub021,forty\n", "not a number", 2),
        ("foo,bar\n1,2\n", "lacks column(s)", None),
        ("subject,age\nnobody,40\n", "no target for any subject", None),
    ],
    ids=["non-numeric", "wrong-columns", "no-match"],
)
def test_bad_labels_name_the_file_and_row(
    unlabelled: Path, tmp_path: Path, content: str, fragment: str, row: int | None
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(content)
    before = snapshot(unlabelled)
    result = invoke(["evaluate", unlabelled, "--labels", labels])
    line = assert_input_error(result, f"error: {labels}", fragment)
    if row is not None:
        assert line.startswith(where(labels, row=row, column="age")), line
    assert snapshot(unlabelled) == before


# ----------------------------------------------------------------------------- resume


def test_resume_on_another_manifest_is_refused_and_rewrites_nothing(
    finished: tuple[Path, Path], tmp_path: Path, manifest_factory
) -> None:
    run = copy_run(finished[0], tmp_path)
    other = tmp_path / "other.csv"
    manifest_factory(per_site=12).to_csv(other, index=False)
    before = snapshot(run)
    result = invoke(fit_args(other, run, "--resume"))
    assert_input_error(result, "error: ", "splits.csv")
    assert snapshot(run) == before


def test_resume_from_a_truncated_checkpoint_is_refused(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    run = copy_run(finished[0], tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes((run / "model.ckpt").read_bytes()[:1000])
    before = snapshot(run)
    result = invoke(fit_args(finished[1], run, "--resume"))
    assert_input_error(result, where(ckpt), "truncated")
    assert snapshot(run) == before


# ----------------------------------------------------------------------------- targets


@pytest.mark.parametrize("age", [-5.0, 1e6, 1e300], ids=["negative", "1e6", "1e300"])
def test_an_implausible_age_names_its_row_and_nothing_is_written(
    tmp_path: Path, write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame, age: float
) -> None:
    manifest_frame.loc[3, "age"] = age  # row 4
    data, out = write_manifest(manifest_frame), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data, row=4, column="age"), "data.target_range")
    assert not out.exists()


def test_target_range_null_accepts_any_finite_age(
    write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    manifest_frame.loc[3, "age"] = 150.0
    data = write_manifest(manifest_frame)
    args = ["check", "--data", data, "--features", FEATURE_REGEX, "--unlearn", "site"]
    assert invoke(args).exit_code == 2
    result = invoke([*args, "--set", "data.target_range=null"])
    assert result.exit_code == 0, describe(result)


def test_a_constant_regression_target_is_refused(
    tmp_path: Path, write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    manifest_frame["age"] = 42.0
    data, out = write_manifest(manifest_frame), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data, column="age"), "constant")
    assert not out.exists()


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("train.precision=banana", "train.precision"),
        ("train.accelerator=tpu9", "train.accelerator"),
        ("train.devices=-3", "train.devices"),
        ("confounds.x.subset=age > 1", "confounds.x"),
        ("strategy.pretrain_epochs.deeper=1", "strategy.pretrain_epochs"),
        ("train..lr=1", "train..lr"),
        ("confounds.x.name=foo", "confounds.x"),
        ("train.epochs.x=1", "train.epochs"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_is_written(
    tmp_path: Path, write_manifest: Callable[..., Path], setting: str, fragment: str
) -> None:
    out = tmp_path / "run"
    result = invoke(fit_args(write_manifest(), out, "--set", setting))
    assert_input_error(result, "error: ", fragment)
    assert not out.exists()


# ----------------------------------------------------------------------------- output paths


def test_predict_into_a_folder_is_refused_before_work(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "a-folder"
    out.mkdir()
    result = invoke(["predict", finished[0], "--data", finished[1], "--out", out])
    assert_input_error(result, where(out), "folder")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", ["fit", "report", "embed"])
def test_an_output_below_a_plain_file_is_refused(
    finished: tuple[Path, Path], tmp_path: Path, command: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    out = blocker / "inside"
    if command == "fit":
        args = fit_args(finished[1], out)
    elif command == "report":
        args = ["report", finished[0], "--out", out]
    else:
        args = ["embed", finished[0], "--data", finished[1], "--out", out]
    result = invoke(args)
    assert_input_error(result, where(out), f"lies under {blocker}, which is a file")
    assert blocker.read_text() == "keep me"


def test_fit_into_a_plain_file_is_refused(finished: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.write_text("keep me")
    result = invoke(fit_args(finished[1], out))
    assert_input_error(result, where(out), "file")
    assert out.read_text() == "keep me"


def test_report_into_an_existing_folder_is_refused(
    finished: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    out.mkdir()
    result = invoke(["report", finished[0], "--out", out])
    assert_input_error(result, where(out), "folder")
    assert list(out.iterdir()) == []


def test_predict_never_evaluates_the_subsets_a_run_stores(tmp_path: Path, manifest_factory) -> None:
    frame = manifest_factory(per_site=10)
    data = tmp_path / "manifest.csv"
    frame.to_csv(data, index=False)
    run = tmp_path / "run"
    result = invoke(fit_args(data, run, "--unlearn-where", "sex == 'F' and age > 25"))
    assert result.exit_code == 0, describe(result)
    new = tmp_path / "new.csv"
    frame.drop(columns=["site", "age", "sex"]).to_csv(new, index=False)  # no column it names
    out = tmp_path / "p.csv"
    result = invoke(["predict", run, "--data", new, "--out", out])
    assert result.exit_code == 0, describe(result)
    assert len(pd.read_csv(out)) == len(frame)


def test_an_unwritable_run_folder_is_one_clear_line(
    tmp_path: Path, write_manifest: Callable[..., Path]
) -> None:
    out = Path("/sys/neurounlearn-test-run")  # cannot be created, even by root
    result = invoke(fit_args(write_manifest(), out))
    assert result.exit_code == 2, describe(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"{where(out)}Operation not permitted — choose a folder you can write to, "
        "or fix its permissions"
    ], describe(result)
    assert "Traceback" not in result.output
    assert not out.exists()


# ----------------------------------------------------------------------------- full disk


def test_fit_on_a_full_disk_names_the_file_and_leaves_no_run(
    tmp_path: Path, manifest_factory
) -> None:
    data = tmp_path / "manifest.csv"
    manifest_factory(per_site=10).to_csv(data, index=False)
    out = tmp_path / "run"
    proc = run_cli(fit_args(data, out), fsize=20_000)
    assert_clean_exit_2(proc, "File too large", str(out))
    assert not out.exists()


def test_simulate_on_a_full_disk_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    proc = run_cli(["simulate", out, "--subjects", 9, "--shape", 32], fsize=30_000)
    assert_clean_exit_2(proc, "File too large")
    assert not out.exists()


# ----------------------------------------------------------------------------- temporary files


def test_orphaned_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    here = atomic._owner().rsplit(".", 1)[0]
    child = subprocess.Popen(["true"])  # a process that has ended: its pid is dead
    child.wait()
    dead_pid = child.pid
    ours = tmp_path / f".volumes-a.npy.{here}.{os.getpid()}.x1.tmp"
    orphan = tmp_path / f".volumes-b.npy.{here}.{dead_pid}.x2.tmp"
    elsewhere_fresh = tmp_path / ".volumes-c.npy.otherhost.1.x3.tmp"
    elsewhere_old = tmp_path / ".volumes-d.npy.otherhost.1.x4.tmp"
    for path in (ours, orphan, elsewhere_fresh, elsewhere_old):
        path.write_bytes(b"half")
    old = time.time() - atomic.ORPHAN_AGE_S - 60
    os.utime(elsewhere_old, (old, old))
    removed = atomic.remove_orphans(tmp_path, ".volumes-*.tmp")
    assert sorted(p.name for p in removed) == sorted([orphan.name, elsewhere_old.name])
    assert ours.exists() and elsewhere_fresh.exists()


def test_a_failed_torch_write_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.pt"
    atomic.write_torch({"w": torch.ones(2)}, target)
    before = target.read_bytes()

    def fail(obj: Any, fh: Any) -> None:
        fh.write(b"half")
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from None

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic.write_torch({"w": torch.zeros(2)}, target)
    assert info.value.filename == str(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


# ----------------------------------------------------------------------------- repeated ids


def test_repeated_ids_with_different_features_are_a_warning(
    write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    manifest_frame.loc[5, "subject"] = manifest_frame.loc[4, "subject"]
    data = write_manifest(manifest_frame)
    result = invoke(["check", "--data", data, "--features", FEATURE_REGEX, "--unlearn", "site"])
    assert result.exit_code == 0, describe(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("repeat sessions" in line for line in warnings), describe(result)


# ----------------------------------------------------------------------------- kill -9, resume


COMPARED = ["predictions.csv", "embeddings.csv", "history.csv", "splits.csv", "config.yaml"]


def checkpoint_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not there yet, or being replaced
        return None


def kill_at_epoch(args: list[object], ckpt: Path, epoch: int, cwd: Path) -> None:
    """Start the CLI, SIGKILL it once ``ckpt`` holds ``epoch`` or later."""
    proc = subprocess.Popen(
        [*CLI, *(str(a) for a in args)],
        env=ENV,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            seen = checkpoint_epoch(ckpt) if ckpt.is_file() else None
            if seen is not None and seen >= epoch:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended (exit {proc.returncode}) unkilled"


def assert_kill_and_resume_identical(make_args: Callable[[Path], list[object]], cwd: Path) -> None:
    ref, killed = cwd / "uninterrupted", cwd / "killed"
    done = run_cli(make_args(ref), cwd=cwd)
    assert done.returncode == 0, done.stderr
    kill_at_epoch(make_args(killed), killed / "checkpoints" / "last.ckpt", 2, cwd)
    assert not (killed / "predictions.csv").exists()
    resumed = run_cli([*make_args(killed), "--resume"], cwd=cwd)
    assert resumed.returncode == 0, resumed.stderr
    for name in COMPARED:
        assert (ref / name).read_bytes() == (killed / name).read_bytes(), f"{name} differs"


def test_a_killed_table_run_resumes_to_the_same_bytes(tmp_path: Path, manifest_factory) -> None:
    data = tmp_path / "manifest.csv"
    manifest_factory(per_site=12).to_csv(data, index=False)

    def make_args(out: Path) -> list[object]:
        args = fit_args(data, out, strategy="iterative")
        args[args.index("--epochs") + 1] = "10"
        return [*args, "--set", "strategy.pretrain_epochs=1"]

    assert_kill_and_resume_identical(make_args, tmp_path)


def test_a_killed_augmented_image_run_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    from neurounlearn.data.simulate import simulate_cohort

    cohort = tmp_path / "cohort"
    simulate_cohort(cohort, sites=3, subjects=24, shape=16, seed=0, progress=False)

    def make_args(out: Path) -> list[object]:
        return [
            "fit",
            "--data",
            cohort / "manifest.csv",
            "--input",
            "image",
            "--target",
            "age",
            "--unlearn",
            "site",
            "--strategy",
            "iterative",
            "--epochs",
            6,
            "--out",
            out,
            *QUICK[2:],
            "--set",
            "strategy.pretrain_epochs=1",
            "--set",
            "data.shape=16",
            "--set",
            "train.batch_size=8",
            "--set",
            "data.augment=intensity+spatial",
            "--set",
            "train.restore=best",
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
        ]

    assert_kill_and_resume_identical(make_args, tmp_path)


def test_non_finite_outputs_are_a_diverged_run_not_a_result(tmp_path: Path) -> None:
    from neurounlearn.config import RunConfig
    from neurounlearn.errors import InputError
    from neurounlearn.training.fit import check_finite

    cfg = RunConfig.model_validate({"data": {"path": str(tmp_path / "m.csv"), "target": "age"}})
    preds = pd.DataFrame({"subject": ["a", "b"], "prediction": [40.0, 41.0]})
    emb = pd.DataFrame({"subject": ["a", "b"], "e0": [0.1, 0.2]})
    check_finite(emb, preds, cfg, epochs=3)  # finite: passes
    emb.loc[1, "e0"] = np.nan
    with pytest.raises(InputError, match="diverged after 3 epochs: 0 predictions and 1"):
        check_finite(emb, preds, cfg, epochs=3)
