"""The command line, in-process: bad input gives exit code 2, one clear line, nothing written.

Every bad-input test checks the same four things (see :func:`assert_input_error`):

(a) exit code 2; (b) one ``error:`` line on stderr that starts with the file and, where it
applies, the 1-based data row and the column, in the ``FILE, row N, column 'C': ...`` form of
:class:`neurounlearn.errors.Problem`; (c) no traceback and no unexpected exception; (d) nothing
written: the ``--out`` run directory does not exist afterwards (or an existing one is unchanged),
and ``evaluate``/``predict`` create no file.

One short training run (module-scoped fixture) serves the happy path and the predict/embed tests.
"""

from __future__ import annotations

import json
import math
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from neurounlearn.cli import app, cli_hint
from neurounlearn.config import RunConfig
from neurounlearn.errors import InputError

FEATURE_REGEX = r"^f\d$"
FEATURES = [f"f{i}" for i in range(6)]
COLUMNS = "columns are: subject, site, age, sex, f0, f1, f2, f3, f4, f5"
EPOCHS = 2
QUICK = [
    "--epochs",
    str(EPOCHS),
    "--set",
    "audit.n_permutations=5",
    "--set",
    "audit.n_bootstrap=50",
    "--set",
    "train.progress_bar=false",
]

runner = CliRunner()


# ----------------------------------------------------------------------------- helpers


def invoke(args: Sequence[object]) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def fit_args(
    data: Path | None,
    out: Path,
    *extra: object,
    unlearn: Sequence[str] = ("site",),
    features: str = FEATURE_REGEX,
    strategy: str = "baseline",
) -> list[object]:
    """``neurounlearn fit`` arguments for a quick run on a synthetic manifest."""
    args: list[object] = ["fit", "--out", out]
    if data is not None:
        args += ["--data", data]
    args += ["--features", features, "--strategy", strategy]
    for name in unlearn:
        args += ["--unlearn", name]
    return [*args, *QUICK, *extra]


def where(file: object, row: int | None = None, column: str | None = None) -> str:
    """The start of an error line: ``error: FILE, row N, column 'C': ``."""
    parts = [str(file)]
    if row is not None:
        parts.append(f"row {row}")
    if column is not None:
        parts.append(f"column '{column}'")
    return "error: " + ", ".join(parts) + ": "


def describe(result: Any) -> str:
    text = f"exit code {result.exit_code}\n--- output ---\n{result.output}"
    if result.exc_info is not None and result.exc_info[0] is not SystemExit:
        text += "--- exception ---\n" + "".join(traceback.format_exception(*result.exc_info))
    return text


def assert_no_crash(result: Any) -> None:
    """No traceback printed and no exception other than the exit itself."""
    assert "Traceback" not in result.output, describe(result)
    assert result.exception is None or isinstance(result.exception, SystemExit), describe(result)


def assert_input_error(result: Any, start: str, *fragments: str) -> str:
    """Exit 2 and exactly one line of output: ``error: ...`` on stderr, starting with ``start``
    and holding every fragment. Returns that line."""
    assert_no_crash(result)
    assert result.exit_code == 2, describe(result)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line\n{describe(result)}"
    line = lines[0]
    assert line.startswith(start), f"expected the line to start with {start!r}\n{describe(result)}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} missing\n{describe(result)}"
    assert line in result.stderr, "the error line belongs on stderr"
    return line


def assert_ok(result: Any) -> None:
    assert_no_crash(result)
    assert result.exit_code == 0, describe(result)


def dig(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for key in dotted.split("."):
        assert isinstance(node, dict) and key in node, f"metrics.json lacks {dotted!r}"
        node = node[key]
    return node


# ----------------------------------------------------------------------------- fit: bad input


def test_fit_missing_data_file(tmp_path: Path) -> None:
    data, out = tmp_path / "nope.csv", tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data), "file not found")
    assert not out.exists()


def test_fit_without_data_option(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(fit_args(None, out))
    assert_input_error(result, "error: no data given", "--data")
    assert not out.exists()


def test_fit_empty_csv(tmp_path: Path) -> None:
    data, out = tmp_path / "empty.csv", tmp_path / "run"
    data.write_bytes(b"")
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data), "empty")
    assert not out.exists()


def test_fit_header_only_csv(tmp_path: Path, manifest_frame: pd.DataFrame) -> None:
    data, out = tmp_path / "header.csv", tmp_path / "run"
    data.write_text(",".join(manifest_frame.columns) + "\n")
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data), "no data rows")
    assert not out.exists()


def test_fit_missing_target_column(tmp_path: Path, write_manifest: Callable[..., Path]) -> None:
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, "--target", "brain_age"))
    assert_input_error(result, where(data, column="brain_age"), "--target", COLUMNS)
    assert not out.exists()


def test_fit_missing_site_column(
    tmp_path: Path, write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    data, out = write_manifest(manifest_frame.drop(columns="site")), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(
        result,
        where(data, column="site"),
        "not in the manifest",
        "columns are: subject, age, sex, f0",
    )
    assert not out.exists()


def test_fit_features_regex_matches_nothing(
    tmp_path: Path, write_manifest: Callable[..., Path]
) -> None:
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, features="^lh_"))
    assert_input_error(result, where(data), "'^lh_'", "matches no feature column", COLUMNS)
    assert not out.exists()


def test_fit_non_numeric_target_names_its_row(
    tmp_path: Path, write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    frame = manifest_frame.astype({"age": object})
    frame.loc[10, "age"] = "forty"  # the 11th data row
    data, out = write_manifest(frame), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data, row=11, column="age"), "'forty'", "not a number")
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "index", "column", "kind"),
    [(np.nan, 7, "f2", "NaN"), (np.inf, 12, "f4", "inf")],
    ids=["nan", "inf"],
)
def test_fit_bad_feature_value_names_row_and_column(
    tmp_path: Path,
    write_manifest: Callable[..., Path],
    manifest_frame: pd.DataFrame,
    value: float,
    index: int,
    column: str,
    kind: str,
) -> None:
    frame = manifest_frame.copy()
    frame.loc[index, column] = value
    data, out = write_manifest(frame), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data, row=index + 1, column=column), f"{column} ({kind})")
    assert not out.exists()


def test_fit_site_with_too_few_subjects(
    tmp_path: Path,
    write_manifest: Callable[..., Path],
    manifest_frame: pd.DataFrame,
    manifest_factory: Callable[..., pd.DataFrame],
) -> None:
    small = manifest_factory(seed=1).iloc[:2].assign(site="site3", subject=["x1", "x2"])
    frame = pd.concat([manifest_frame, small], ignore_index=True)  # rows 19 and 20
    data, out = write_manifest(frame), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(
        result, where(data, row=19, column="site"), "'site3' has 2 subject(s)", "rows 19, 20"
    )
    assert not out.exists()


def test_fit_duplicate_rows(
    tmp_path: Path, write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    frame = pd.concat([manifest_frame, manifest_frame.iloc[[2]]], ignore_index=True)
    data, out = write_manifest(frame), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data, row=19), "repeats row 3")
    assert not out.exists()


def test_fit_all_targets_missing(
    tmp_path: Path, write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    data, out = write_manifest(manifest_frame.assign(age=np.nan)), tmp_path / "run"
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(data, column="age"), "empty in every row")
    assert not out.exists()


def test_fit_unlearn_unknown_column(tmp_path: Path, write_manifest: Callable[..., Path]) -> None:
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, unlearn=("site", "scanner")))
    assert_input_error(result, where(data, column="scanner"), "--unlearn", COLUMNS)
    assert not out.exists()


@pytest.mark.parametrize(
    ("query", "message"),
    [("age >>> 3", "not a valid condition"), ("age > 1000", "selects no rows")],
    ids=["invalid", "selects-nothing"],
)
def test_fit_bad_unlearn_where(
    tmp_path: Path, write_manifest: Callable[..., Path], query: str, message: str
) -> None:
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, "--unlearn-where", query))
    # a malformed query is refused naming the flag, before the data is read
    location = "error: --unlearn-where: "
    location = location if message.startswith("not") else where(data, column="site")
    assert_input_error(result, location, repr(query), message)
    assert not out.exists()


def test_fit_invalid_setting(tmp_path: Path, write_manifest: Callable[..., Path]) -> None:
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, "--set", "train.epochs=-1"))
    assert_input_error(result, "error: --set: ", "'train.epochs'", "-1")
    assert not out.exists()


@pytest.mark.parametrize(
    ("setting", "suggested"),
    [
        ("train.epoch=3", "train.epochs"),
        ("strategy.adversary_step=3", "strategy.adversary_steps"),
        ("confounds.0.nmae=sex", "confounds.0.name"),
    ],
)
def test_fit_unknown_setting_suggests_the_closest_name(
    tmp_path: Path, write_manifest: Callable[..., Path], setting: str, suggested: str
) -> None:
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, "--set", setting))
    assert_input_error(result, "error: --set: ", f"did you mean '{suggested}'?")
    assert not out.exists()


def test_fit_unknown_setting_far_from_any_name_suggests_none(
    tmp_path: Path, write_manifest: Callable[..., Path]
) -> None:
    result = invoke(fit_args(write_manifest(), tmp_path / "run", "--set", "train.zzz=1"))
    assert_input_error(result, "error: --set: ", "'train.zzz'")
    assert "did you mean" not in result.output


def test_fit_invalid_adversary_memory(tmp_path: Path, write_manifest: Callable[..., Path]) -> None:
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, "--set", "strategy.adversary_memory=-3"))
    assert_input_error(result, "error: --set: ", "'strategy.adversary_memory'", "-3")
    assert not out.exists()


def test_fit_into_existing_nonempty_out(
    tmp_path: Path, write_manifest: Callable[..., Path]
) -> None:
    data, out = write_manifest(), tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = invoke(fit_args(data, out))
    assert_input_error(result, where(out), "not empty")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"


def test_fit_resume_without_checkpoint(tmp_path: Path, write_manifest: Callable[..., Path]) -> None:
    data, out = write_manifest(), tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("data:\n  target: age\n")
    result = invoke(fit_args(data, out, "--resume"))
    assert_input_error(result, where(out), "nothing to resume", "last.ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


# ----------------------------------------------------------------------------- hints: keys, flags


def test_a_library_hint_names_the_keys_and_the_cli_names_the_flags(
    tmp_path: Path, write_manifest: Callable[..., Path]
) -> None:
    """A Python caller has no flags: the library's hint names configuration keys. The CLI prints
    the same error with the flags that set those keys."""
    from neurounlearn.training.fit import fit

    data = write_manifest()
    cfg = RunConfig.model_validate(
        {"data": {"path": str(data), "features": FEATURE_REGEX}, "strategy": {"name": "iterative"}}
    )
    with pytest.raises(InputError, match="needs something to unlearn") as err:
        fit(cfg, tmp_path / "py")
    hint = err.value.problem.hint or ""
    assert "confounds.0.name=site" in hint and "strategy.name=baseline" in hint, hint
    assert "--" not in hint, hint
    assert not (tmp_path / "py").exists()

    out = tmp_path / "cli"
    result = invoke(fit_args(data, out, unlearn=(), strategy="iterative"))
    line = assert_input_error(
        result, "error: ", "needs something to unlearn", "--unlearn site", "--strategy baseline"
    )
    assert "confounds.0.name" not in line and "strategy.name" not in line, line
    assert not out.exists()


@pytest.mark.parametrize(
    ("hint", "shown"),
    [
        ("e.g. train.seed=0", "e.g. --seed 0"),
        ("give the manifest CSV as data.path", "give the manifest CSV as --data (data.path)"),
        ("set confounds.1.name to the column", "set --unlearn (confounds.1.name) to the column"),
        ("e.g. erase.0.kind=categorical", "e.g. --set erase.0.kind=categorical"),
        ("e.g. data.classes=[bg,CSF,GM]", "e.g. --classes bg,CSF,GM"),
        ("e.g. data.unlabelled_sites=[A,B]", "e.g. --set data.unlabelled_sites=[A,B]"),
        ("a site in data.unlabelled_sites", "a site in --unlabelled-site (data.unlabelled_sites)"),
        ("e.g. --set train.patience=30", "e.g. --set train.patience=30"),
        ("entries data.classes.0, data.classes.1", "entries data.classes.0, data.classes.1"),
    ],
)
def test_cli_hint_shows_the_flag_of_each_key(hint: str, shown: str) -> None:
    assert cli_hint(hint) == shown


# ----------------------------------------------------------------------------- check


def test_check_reports_every_problem_with_rows(
    write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    frame = manifest_frame.astype({"age": object})
    frame.loc[4, "age"] = "forty"  # row 5
    frame.loc[7, "f2"] = np.nan  # row 8
    data = write_manifest(frame)
    result = invoke(["check", "--data", data, "--features", FEATURE_REGEX, "--unlearn", "site"])
    assert_no_crash(result)
    assert result.exit_code == 2, describe(result)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, describe(result)
    assert errors[0].startswith(where(data, row=5, column="age")), describe(result)
    assert errors[1].startswith(where(data, row=8, column="f2")), describe(result)
    assert "2 error(s)" in result.stderr, describe(result)


def test_check_good_manifest(write_manifest: Callable[..., Path]) -> None:
    data = write_manifest()
    result = invoke(["check", "--data", data, "--features", FEATURE_REGEX, "--unlearn", "site"])
    assert_ok(result)
    assert "error:" not in result.output and "warning:" not in result.output, describe(result)
    assert result.output.strip() == "ok: 18 rows, 18 subjects, 3 sites, no errors", describe(result)


def test_check_counts_subjects_not_rows(
    write_manifest: Callable[..., Path], manifest_frame: pd.DataFrame
) -> None:
    # a second session of two subjects: other rows, the same ids (and no other difference)
    again = manifest_frame.iloc[:2].assign(f0=manifest_frame["f0"].iloc[:2] + 1.0)
    data = write_manifest(pd.concat([manifest_frame, again], ignore_index=True))
    result = invoke(["check", "--data", data, "--features", FEATURE_REGEX, "--unlearn", "site"])
    assert_ok(result)
    assert "ok: 20 rows, 18 subjects, 3 sites" in result.stdout, describe(result)


# ----------------------------------------------------------------------------- no finished run


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("state", ["empty", "missing"])
def test_no_finished_run(
    tmp_path: Path, write_manifest: Callable[..., Path], command: str, state: str
) -> None:
    run_dir = tmp_path / "run"
    if state == "empty":
        run_dir.mkdir()
    target = tmp_path / "predictions.csv"
    args: list[object] = [command, run_dir]
    if command == "predict":
        args += ["--data", write_manifest(), "--out", target]
    result = invoke(args)
    message = "holds no finished run" if state == "empty" else "run directory not found"
    assert_input_error(result, where(run_dir), message)
    if state == "empty":
        assert list(run_dir.iterdir()) == []
    else:
        assert not run_dir.exists()
    assert not target.exists()


# ----------------------------------------------------------------------------- a real short run


@dataclass
class TrainedRun:
    run_dir: Path
    data: Path
    n_rows: int
    result: Any


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, manifest_factory: Callable[..., pd.DataFrame]
) -> TrainedRun:
    """``fit --strategy baseline --unlearn site --epochs 2`` on 3 sites x 10 subjects.

    10 per site leaves 2 test subjects per site, enough for the leakage probes to give numbers.
    The fixture does not assert the exit code: the tests below do, one thing each.
    """
    root = tmp_path_factory.mktemp("trained")
    frame = manifest_factory(per_site=10)
    data = root / "manifest.csv"
    frame.to_csv(data, index=False)
    run_dir = root / "run"
    result = invoke(fit_args(data, run_dir))
    if not (run_dir / "model.pt").is_file():
        pytest.fail(f"the shared training run did not finish\n{describe(result)}")
    return TrainedRun(run_dir, data, len(frame), result)


RUN_FILES = [
    "config.yaml",
    "splits.csv",
    "history.csv",
    "model.pt",
    "model.ckpt",
    "predictions.csv",
    "embeddings.csv",
    "metrics.json",
]


def test_fit_exits_0_with_a_summary(trained: TrainedRun) -> None:
    assert_ok(trained.result)
    assert f"run written to {trained.run_dir}" in trained.result.output
    assert "test MAE" in trained.result.output, describe(trained.result)


def test_fit_writes_the_run_directory(trained: TrainedRun) -> None:
    run_dir = trained.run_dir
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    assert not missing, f"missing from the run directory: {missing}"

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(dig(metrics, "task.mae")) and dig(metrics, "task.mae") >= 0
    for probe in ("linear", "nonlinear"):
        bacc = dig(metrics, f"leakage.site.probe.{probe}.balanced_accuracy")
        assert bacc is not None and 0.0 <= bacc <= 1.0, (probe, bacc)
    assert dig(metrics, "timing.fit_seconds") > 0
    versions = dig(metrics, "versions")
    assert isinstance(versions, dict) and "neurounlearn" in versions and "torch" in versions

    history = pd.read_csv(run_dir / "history.csv")
    assert len(history) == EPOCHS
    assert history["epoch"].tolist() == list(range(EPOCHS))
    loss_columns = [c for c in history.columns if "task_loss" in c]
    assert loss_columns, f"no task-loss column in {list(history.columns)}"
    assert np.isfinite(history[loss_columns[0]].to_numpy(dtype=float)).all()

    for name in ("predictions.csv", "embeddings.csv", "splits.csv"):
        assert len(pd.read_csv(run_dir / name)) == trained.n_rows, name
    splits = pd.read_csv(run_dir / "predictions.csv")["split"]
    assert set(splits) == {"train", "val", "test"}


def test_evaluate_finished_run(trained: TrainedRun) -> None:
    metrics_file = trained.run_dir / "metrics.json"
    os.utime(metrics_file, (0, 0))
    result = invoke(["evaluate", trained.run_dir])
    assert metrics_file.stat().st_mtime > 0, describe(result)  # rewritten
    assert_ok(result)
    assert "metrics written to" in result.output
    assert "test MAE" in result.output


def test_embed_new_data(trained: TrainedRun, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "e.csv"
    result = invoke(["embed", trained.run_dir, "--data", trained.data, "--out", out])
    assert_ok(result)
    embeddings = pd.read_csv(out)
    assert len(embeddings) == trained.n_rows
    ecols = [c for c in embeddings.columns if c.startswith("e") and c[1:].isdigit()]
    assert ecols and np.isfinite(embeddings[ecols].to_numpy()).all()
    assert embeddings["subject"].tolist() == pd.read_csv(trained.data)["subject"].tolist()


def test_predict_missing_feature_column(
    trained: TrainedRun, tmp_path: Path, manifest_frame: pd.DataFrame
) -> None:
    data = tmp_path / "new.csv"
    manifest_frame.drop(columns="f3").to_csv(data, index=False)
    out = tmp_path / "predictions.csv"
    result = invoke(["predict", trained.run_dir, "--data", data, "--out", out])
    assert_input_error(result, where(data, column="f3"), "missing: f3")
    assert not out.exists()


def test_predict_without_site_and_target(
    trained: TrainedRun, tmp_path: Path, manifest_frame: pd.DataFrame
) -> None:
    data = tmp_path / "new.csv"
    manifest_frame.drop(columns=["site", "age"]).to_csv(data, index=False)
    out = tmp_path / "predictions.csv"
    result = invoke(["predict", trained.run_dir, "--data", data, "--out", out])
    assert_ok(result)
    predictions = pd.read_csv(out)
    assert len(predictions) == len(manifest_frame)
    assert predictions["subject"].tolist() == manifest_frame["subject"].tolist()
    assert np.isfinite(predictions["prediction"].to_numpy(dtype=float)).all()
    assert f"{len(manifest_frame)} predictions written" in result.output


def test_predict_writes_the_format_its_suffix_names_and_to_standard_output(
    trained: TrainedRun, tmp_path: Path, manifest_frame: pd.DataFrame
) -> None:
    data = tmp_path / "new.csv"
    manifest_frame.to_csv(data, index=False)
    assert_ok(invoke(["predict", trained.run_dir, "--data", data, "--out", tmp_path / "p.csv"]))
    assert_ok(invoke(["predict", trained.run_dir, "--data", data, "--out", tmp_path / "p.tsv"]))
    as_csv = pd.read_csv(tmp_path / "p.csv")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.tsv", sep="\t"), as_csv)
    piped = invoke(["predict", trained.run_dir, "--data", data, "--out", "-"])
    assert piped.exit_code == 0, piped.output
    from io import StringIO

    pd.testing.assert_frame_equal(pd.read_csv(StringIO(piped.stdout)), as_csv)
    assert "written to standard output" in piped.stderr


def test_predict_to_parquet_without_pyarrow_says_what_to_install(
    trained: TrainedRun,
    tmp_path: Path,
    manifest_frame: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # importing it now fails
    data, out = tmp_path / "new.csv", tmp_path / "p.parquet"
    manifest_frame.to_csv(data, index=False)
    result = invoke(["predict", trained.run_dir, "--data", data, "--out", out])
    assert_input_error(result, f"error: {out}: ", "pyarrow")
    assert not out.exists()


# ----------------------------------------------------------------------------- more new-data checks


@pytest.mark.parametrize(("value", "kind"), [(np.nan, "NaN"), ("abc", "text")], ids=["nan", "text"])
def test_predict_bad_feature_value_names_row_and_column(
    trained: TrainedRun, tmp_path: Path, manifest_frame: pd.DataFrame, value: object, kind: str
) -> None:
    frame = manifest_frame.astype({"f1": object})
    frame.loc[3, "f1"] = value  # row 4
    data = tmp_path / "new.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "predictions.csv"
    result = invoke(["predict", trained.run_dir, "--data", data, "--out", out])
    assert_input_error(result, where(data, row=4, column="f1"))
    assert not out.exists()


def test_fit_baseline_without_unlearn(tmp_path: Path, write_manifest: Callable[..., Path]) -> None:
    """fit allows ``--strategy baseline`` with nothing to unlearn; it must train."""
    data, out = write_manifest(), tmp_path / "run"
    result = invoke(fit_args(data, out, unlearn=()))
    assert_no_crash(result)
    assert result.exit_code == 0, describe(result)
    assert (out / "model.pt").is_file()


def test_version_prints_the_package_version_and_exits_0():
    from neurounlearn.version import __version__

    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"neurounlearn {__version__}"


@pytest.mark.parametrize(("command", "flag"), [("fit", "--resume"), ("demo", "--images")])
def test_help_shows_no_type_beside_an_on_off_flag(command: str, flag: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if flag in line)
    assert "<bool>" not in line, line
