"""``compare``: identical folds for every arm, ComBat arms, leave-one-site-out, bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from neurounlearn.cli import app
from neurounlearn.config import validate_config
from neurounlearn.data.splits import kfold_splits, leave_one_site_out_splits
from neurounlearn.errors import InputError
from neurounlearn.evaluation.compare import (
    UNSEEN_SITE,
    CombatSettings,
    aggregate_leakage,
    combat_covariates,
    compare,
    parse_arms,
)
from neurounlearn.reporting.compare import load_comparison, render_comparison

runner = CliRunner()
FAST = [
    "--set",
    "audit.n_permutations=5",
    "--set",
    "audit.n_permutations_nonlinear=2",
    "--set",
    "audit.n_bootstrap=50",
    "--set",
    "strategy.pretrain_epochs=1",
    "--set",
    "strategy.adversary_steps=2",
]


def _config(path: Path, **data: object) -> object:
    return validate_config(
        {
            "data": {"path": str(path), "features": r"^f\d$", "target": "age", **data},
            "confounds": [{"name": "site"}],
            "train": {"epochs": 2, "batch_size": 8, "progress_bar": False},
            "strategy": {"pretrain_epochs": 1, "adversary_steps": 2},
            "audit": {"n_permutations": 5, "n_permutations_nonlinear": 2, "n_bootstrap": 50},
        }
    )


# -- folds ---------------------------------------------------------------------------------------


def test_kfold_puts_every_subject_in_exactly_one_test_fold(manifest_factory: Callable) -> None:
    frame = manifest_factory(sites=3, per_site=7)
    splits = kfold_splits(
        frame, id_column="subject", site_column="site", folds=3, seed=1, val_fraction=0.2
    )
    tested = np.sum([(s == "test").to_numpy() for s in splits], axis=0)
    assert (tested == 1).all()
    for s in splits:  # every site in every test fold, and train/val from the rest
        assert frame.loc[s == "test", "site"].nunique() == 3
        assert (s == "val").any() and (s == "train").any()


def test_kfold_keeps_repeat_scans_of_a_subject_together(manifest_factory: Callable) -> None:
    frame = manifest_factory(sites=2, per_site=6)
    frame = pd.concat([frame, frame.iloc[[0, 7]]], ignore_index=True)  # two repeat scans
    for s in kfold_splits(
        frame, id_column="subject", site_column="site", folds=3, seed=0, val_fraction=0.2
    ):
        assert (s.groupby(frame["subject"]).nunique() == 1).all()


def test_kfold_refuses_more_folds_than_the_smallest_site(manifest_factory: Callable) -> None:
    frame = manifest_factory(sites=2, per_site=4)
    with pytest.raises(InputError, match="site0"):
        kfold_splits(
            frame, id_column="subject", site_column="site", folds=5, seed=0, val_fraction=0.2
        )


def test_leave_one_site_out_tests_each_site_once(manifest_factory: Callable) -> None:
    frame = manifest_factory(sites=3, per_site=6)
    splits = leave_one_site_out_splits(
        frame, id_column="subject", site_column="site", seed=0, val_fraction=0.2
    )
    assert sorted(splits) == ["site0", "site1", "site2"]
    for held, s in splits.items():
        assert set(frame.loc[s == "test", "site"]) == {held}
        assert (frame.loc[s != "test", "site"] != held).all()


# -- pieces --------------------------------------------------------------------------------------


def test_parse_arms_adds_the_baseline_that_baseline_combat_needs() -> None:
    assert parse_arms("raw,baseline+combat") == ["raw", "baseline", "baseline+combat"]


def test_parse_arms_names_an_unknown_arm() -> None:
    with pytest.raises(InputError, match="'combatt'") as err:
        parse_arms("raw,combatt")
    assert "baseline+combat" in str(err.value)


def test_categorical_covariates_are_one_hot_coded(manifest_frame: pd.DataFrame) -> None:
    cov = combat_covariates(manifest_frame, CombatSettings(covariates=("age", "sex")))
    assert list(cov.columns) == ["age", "sex=M"]
    assert set(cov["sex=M"]) == {0.0, 1.0}


def _site_audits(*values: float) -> list[dict]:
    """Per-fold leakage blocks whose linear site probe scored ``values`` (chance 0.5)."""
    linear = [{"balanced_accuracy": v, "chance": 0.5} for v in values]
    site = {"kind": "categorical", "chance": 0.5, "n": 10, "conditional": None}
    return [{"site": {**site, "probe": {"linear": p}}} for p in linear]


def test_aggregate_leakage_gives_the_mean_and_a_t_interval() -> None:
    folds = _site_audits(0.6, 0.7, 0.8)
    block = aggregate_leakage(folds)["site"]["probe"]["linear"]
    assert block["balanced_accuracy"] == pytest.approx(0.7)
    low, high = block["ci95"]
    # t(0.975, 2) = 4.303, sd 0.1, n 3: half-width 0.2484
    assert low == pytest.approx(0.7 - 0.2484, abs=1e-3) and high == pytest.approx(0.9484, abs=1e-3)


# -- the whole comparison ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small comparison with every kind of arm, 2 folds and leave-one-site-out."""
    from tests.conftest import make_manifest

    root = tmp_path_factory.mktemp("cmp")
    data = root / "m.csv"
    make_manifest(sites=3, per_site=10, seed=3).to_csv(data, index=False)
    compare(
        _config(data),
        root / "out",
        arms=["raw", "combat", "combat-inference", "baseline", "baseline+combat", "iterative"],
        folds=2,
        external="leave-one-site-out",
        jobs=1,
        echo=lambda _: None,
    )
    render_comparison(root / "out")
    return root / "out"


def test_compare_writes_its_files(comparison: Path) -> None:
    for name in (
        "comparison.csv",
        "comparison.md",
        "comparison.json",
        "oof_predictions.csv",
        "folds.csv",
        "config.yaml",
        "report.html",
    ):
        assert (comparison / name).is_file(), name


def test_the_report_finds_fold_one_inside_the_moved_folder(
    comparison: Path, tmp_path: Path
) -> None:
    result = json.loads((comparison / "comparison.json").read_text())
    assert not any("first_fold" in k for e in result["summaries"].values() for k in e)
    network = result["first_fold"]["iterative"]
    assert not Path(network["run"]).is_absolute()
    assert (comparison / network["run"] / "history.csv").is_file()
    assert result["first_fold"]["raw"]["run"] is None  # a reference arm trains no network
    moved = tmp_path / "moved"
    shutil.copytree(comparison, moved)
    render_comparison(moved, html=False)
    arm = next(a for a in load_comparison(moved).arms if a.arm == "iterative")
    assert (moved / str(arm.first_fold_run) / "history.csv").is_file()


def test_every_arm_predicts_every_subject_out_of_fold(comparison: Path) -> None:
    oof = pd.read_csv(comparison / "oof_predictions.csv")
    for arm in ("raw", "combat", "combat-inference", "baseline", "baseline+combat", "iterative"):
        assert oof[arm].notna().all(), arm
    assert sorted(oof["fold"].unique()) == [1, 2]


def test_every_model_arm_trained_on_the_same_folds(comparison: Path) -> None:
    for fold in ("fold1", "fold2"):
        a = pd.read_csv(comparison / "runs" / fold / "baseline" / "splits.csv")
        b = pd.read_csv(comparison / "runs" / fold / "iterative" / "splits.csv")
        assert a["split"].tolist() == b["split"].tolist()


def test_combat_says_it_cannot_apply_to_an_unseen_site(comparison: Path) -> None:
    table = pd.read_csv(comparison / "comparison.csv").set_index("arm")
    assert table.loc["combat", "external_site0"] == UNSEEN_SITE
    assert table.loc["baseline+combat", "external_site1"] == UNSEEN_SITE
    assert pd.isna(table.loc["combat", "external_mae"])  # no number, never NaN as a number
    assert float(table.loc["raw", "external_site0"]) > 0
    assert np.isfinite(table.loc["baseline", "openbhb_score"])
    assert UNSEEN_SITE in (comparison / "comparison.md").read_text()


def test_every_subject_is_predicted_by_the_model_that_never_saw_its_site(
    comparison: Path,
) -> None:
    external = pd.read_csv(comparison / "external_predictions.csv")
    result = json.loads((comparison / "comparison.json").read_text())
    for arm in ("raw", "baseline", "iterative"):
        assert external[arm].notna().all(), arm
        for site, rows in external.groupby("site"):
            mae = float(np.mean(np.abs(rows[arm] - rows["age"])))
            assert mae == pytest.approx(result["summaries"][arm]["external"][site]["mae"])
    assert "combat" not in external  # no prediction for a site ComBat never saw


def test_the_held_out_error_is_split_into_offset_slope_and_spread(comparison: Path) -> None:
    external = pd.read_csv(comparison / "external_predictions.csv")
    result = json.loads((comparison / "comparison.json").read_text())
    rows = external[external["site"] == "site0"]
    split = result["summaries"]["baseline"]["external"]["site0"]
    assert split["offset"] == pytest.approx(float((rows["baseline"] - rows["age"]).mean()))
    assert split["slope"] is not None and split["spread"] >= 0
    assert "offset" in (comparison / "comparison.md").read_text()


def test_each_arm_is_paired_with_the_baseline_over_held_out_sites(comparison: Path) -> None:
    result = json.loads((comparison / "comparison.json").read_text())
    summaries = result["summaries"]
    paired = summaries["iterative"]["external_vs_baseline"]
    worse = sum(
        summaries["iterative"]["external"][s]["mae"] > summaries["baseline"]["external"][s]["mae"]
        for s in ("site0", "site1", "site2")
    )
    assert paired["sites"] == 3 and paired["losses"] == worse
    assert summaries["combat"]["external_vs_baseline"]["sites"] == 0  # nothing to pair
    assert summaries["baseline"]["external_vs_baseline"] is None
    assert "better / worse than baseline" in (comparison / "report.html").read_text()


def test_comparison_json_holds_no_nan(comparison: Path) -> None:
    text = (comparison / "comparison.json").read_text()
    assert "NaN" not in text
    result = json.loads(text)
    assert result["summaries"]["baseline"]["task"]["bias_corrected_mae"] is not None
    assert result["summaries"]["baseline"]["task"]["offset_corrected_mae"] is not None


def test_combat_with_the_target_as_covariate_is_flagged(comparison: Path) -> None:
    result = json.loads((comparison / "comparison.json").read_text())
    assert any("covariate" in w and "age" in w for w in result["warnings"])


def test_combat_inference_harmonises_without_the_test_target(comparison: Path) -> None:
    oof = pd.read_csv(comparison / "oof_predictions.csv")
    assert not np.allclose(oof["combat"], oof["combat-inference"])


def test_classification_compare_reports_balanced_accuracy(
    tmp_path: Path, manifest_factory: Callable
) -> None:
    data = tmp_path / "m.csv"
    manifest_factory(sites=2, per_site=10, seed=1).to_csv(data, index=False)
    cfg = _config(data, target="sex", task="classification")
    result = compare(
        cfg,
        tmp_path / "out",
        arms=["raw", "combat", "baseline"],
        folds=2,
        jobs=1,
        echo=lambda _: None,
    )
    task = result["summaries"]["combat"]["task"]
    assert task["kind"] == "classification" and 0 <= task["balanced_accuracy"] <= 1
    oof = pd.read_csv(tmp_path / "out" / "oof_predictions.csv")
    assert set(oof["baseline"]) <= {"F", "M"}


def test_parallel_jobs_give_the_same_folds(tmp_path: Path, manifest_factory: Callable) -> None:
    data = tmp_path / "m.csv"
    manifest_factory(sites=2, per_site=6, seed=2).to_csv(data, index=False)
    result = compare(
        _config(data),
        tmp_path / "out",
        arms=["raw", "baseline"],
        folds=2,
        jobs=2,
        echo=lambda _: None,
    )
    assert result["jobs"] == 2
    oof = pd.read_csv(tmp_path / "out" / "oof_predictions.csv")
    assert oof["baseline"].notna().all()


# -- bad input through the command line: exit 2, one clear line, nothing written -----------------


def _cli(data: Path, out: Path, *extra: str, unlearn: bool = True) -> object:
    """``neurounlearn compare`` on ``data`` with the fast settings and ``extra`` flags."""
    base = ["compare", "--data", str(data), "--features", r"^f\d$", "--out", str(out)]
    return runner.invoke(app, [*base, *(["--unlearn", "site"] if unlearn else []), *extra, *FAST])


def test_cli_unknown_arm(write_manifest: Callable, tmp_path: Path) -> None:
    r = _cli(write_manifest(), tmp_path / "o", "--arms", "raw,combot")
    assert r.exit_code == 2 and "unknown arm(s) 'combot'" in r.output
    assert not (tmp_path / "o").exists()


def test_cli_combat_on_images_needs_a_baseline(write_manifest: Callable, tmp_path: Path) -> None:
    r = _cli(write_manifest(), tmp_path / "o", "--input", "image", "--arms", "combat,iterative")
    assert r.exit_code == 2
    assert "input is images" in r.output and "baseline+combat" in r.output
    assert "Traceback" not in r.output


def test_cli_fewer_than_two_sites(
    write_manifest: Callable, manifest_frame: pd.DataFrame, tmp_path: Path
) -> None:
    manifest_frame["site"] = "only"
    r = _cli(
        write_manifest(manifest_frame),
        tmp_path / "o",
        "--arms",
        "raw,combat,baseline",
        unlearn=False,
    )
    assert r.exit_code == 2 and "at least two sites" in r.output
    assert not (tmp_path / "o").exists()


def test_cli_folds_larger_than_the_smallest_site(write_manifest: Callable, tmp_path: Path) -> None:
    r = _cli(write_manifest(), tmp_path / "o", "--folds", "7")  # 6 subjects per site
    assert r.exit_code == 2
    assert "7 folds" in r.output and "6 subject(s)" in r.output and "use 6 folds" in r.output
    assert not (tmp_path / "o").exists()


def test_cli_unknown_external_view(write_manifest: Callable, tmp_path: Path) -> None:
    r = _cli(write_manifest(), tmp_path / "o", "--external", "leave-one-out")
    assert r.exit_code == 2 and "leave-one-site-out" in r.output


def test_cli_unknown_combat_covariate(write_manifest: Callable, tmp_path: Path) -> None:
    r = _cli(write_manifest(), tmp_path / "o", "--combat-covariates", "age,bmi")
    assert r.exit_code == 2 and "'bmi'" in r.output
    assert not (tmp_path / "o").exists()


def test_combat_gam_with_a_smooth_age_term_runs(tmp_path: Path, manifest_factory: Callable) -> None:
    data = tmp_path / "m.csv"
    manifest_factory(sites=2, per_site=12, seed=4).to_csv(data, index=False)
    result = compare(
        _config(data),
        tmp_path / "out",
        arms=["raw", "combat"],
        folds=2,
        combat=CombatSettings(covariates=("age", "sex"), smooth_terms=("age",)),
        jobs=1,
        echo=lambda _: None,
    )
    assert result["combat"] == {"covariates": ["age", "sex"], "smooth_terms": ["age"]}
    assert result["summaries"]["combat"]["task"]["mae"] > 0


def test_cli_report_renders_finished_runs(comparison: Path, tmp_path: Path) -> None:
    runs = comparison / "runs" / "fold1"
    out = tmp_path / "sub" / "r.html"
    r = runner.invoke(
        app, ["report", str(runs / "baseline"), str(runs / "iterative"), "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    # compare's fold runs hold no metrics.json: the command evaluates them, the library never does
    assert f"evaluating {runs / 'baseline'} (no metrics.json yet) ..." in r.output
    assert (runs / "iterative" / "metrics.json").is_file()
    html = out.read_text()
    assert "data:image/png;base64," in html and "iterative" in html


def test_cli_report_of_a_missing_run_exits_2(tmp_path: Path) -> None:
    r = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "nope" in r.output
    assert not (tmp_path / "r.html").exists()


def test_balanced_accuracy_interval_stays_within_0_and_1() -> None:
    folds = _site_audits(0.2, 0.95)
    low, high = aggregate_leakage(folds)["site"]["probe"]["linear"]["ci95"]
    assert low == 0.0 and high == 1.0  # t(0.975, 1) = 12.7 would reach far beyond both


def test_cli_warns_that_unlearning_over_every_age_takes_age_along(
    write_manifest: Callable, tmp_path: Path
) -> None:
    from tests.conftest import make_manifest

    frame = make_manifest(sites=3, per_site=20, seed=4)
    children = frame["site"] == "site2"
    frame.loc[children, "age"] = np.linspace(5, 8, int(children.sum()))  # no one else that young
    data = write_manifest(frame)
    r = _cli(data, tmp_path / "o", "--arms", "raw,iterative", "--folds", "2", "--epochs", "2")
    assert r.exit_code == 0, r.output
    assert "site and age are entangled" in r.output and "'site2' 100%" in r.output
    assert "--unlearn-where" in r.output  # the CLI's words, not the configuration key's
    result = json.loads((tmp_path / "o" / "comparison.json").read_text())
    assert any("entangled" in w for w in result["warnings"])
