"""The HTML report: sections, offline images, warnings that fire only when they should, runs."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from neurounlearn.errors import InputError
from neurounlearn.reporting.figures import embedding_plots, leakage_plot, site_colors
from neurounlearn.reporting.report import (
    ReportArm,
    fig_to_data_uri,
    find_warnings,
    format_value,
    render_report,
)
from neurounlearn.reporting.runs import arm_from_run, render_runs

SITES = ["siteA", "siteB", "siteC"]
PER_SITE = 20
SECTIONS = [
    "Summary",
    "Warnings",
    "Comparison",
    "Leakage",
    "Predicted vs true",
    "Per-site error",
    "Embeddings",
    "Training curves",
]


# --- synthetic arms ------------------------------------------------------------------------------


def _cohort(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Site index and age of 60 subjects, 20 per site."""
    rng = np.random.default_rng(seed)
    site = np.repeat(np.arange(len(SITES)), PER_SITE)
    return site, rng.uniform(20, 80, site.size)


def _leakage(bacc: float, low: float, high: float, chance: float = 1 / 3) -> dict[str, Any]:
    probe = {"balanced_accuracy": bacc, "chance": chance, "p_value": 0.01, "ci95": [low, high]}
    return {
        "site": {
            "kind": "categorical",
            "n": 60,
            "n_classes": 3,
            "chance": chance,
            "probe": {"linear": dict(probe), "nonlinear": dict(probe)},
            "conditional": None,
        }
    }


def _history(grl: bool, pretrain: int = 0) -> pd.DataFrame:
    epochs = np.arange(12)
    frame = pd.DataFrame(
        {
            "epoch": epochs,
            "phase": ["pretrain" if e < pretrain else "train" for e in epochs],
            "train_task_loss": 1.0 / (1 + epochs),
            "val_task_loss": 1.2 / (1 + epochs),
            "train_adv_acc_site": np.linspace(0.8, 0.4, 12),
            "val_adv_acc_site": np.linspace(0.7, 0.35, 12),
            "train_conf_loss_site": np.linspace(2.0, 1.1, 12),
            "val_conf_loss_site": np.linspace(2.1, 1.2, 12),
        }
    )
    frame.loc[: pretrain - 1, "train_conf_loss_site"] = np.nan  # empty during pretraining
    if grl:
        frame["train_lambda"] = np.linspace(0, 1, 12)
    return frame


def _task(y: np.ndarray, pred: np.ndarray, site: np.ndarray) -> dict[str, Any]:
    per_site = {
        SITES[k]: {"mae": float(np.mean(np.abs(pred - y)[site == k])), "n": int((site == k).sum())}
        for k in range(len(SITES))
    }
    return {
        "kind": "regression",
        "target": "age",
        "mae": float(np.mean(np.abs(pred - y))),
        "rmse": None,
        "pearson_r": None,
        "r2": None,
        "n": int(y.size),
        "per_site": per_site,
        "bias": {"slope": -0.1, "intercept": 3.0, "n": int(y.size)},
        "bias_corrected_mae": None,
    }


def make_arm(
    name: str,
    strategy: str | None,
    *,
    site_shift: float,
    noise: float = 4.0,
    leakage: dict[str, Any] | None = None,
    kind: str = "model",
    history: bool = True,
    seed: int = 0,
) -> ReportArm:
    """An arm of MAE ``noise`` whose 8-d embeddings carry the age and the site (``site_shift``)."""
    site, age = _cohort()
    rng = np.random.default_rng(seed + 1)
    error = rng.normal(size=age.size)
    pred = age + error * noise / np.mean(np.abs(error))  # MAE exactly `noise`
    emb = rng.normal(size=(age.size, 8)) + site[:, None] * site_shift
    emb[:, 0] += (age - 50) / 10
    sites = np.array(SITES)[site]
    return ReportArm(
        name=name,
        kind=kind,
        strategy=strategy,
        task=_task(age, pred, site),
        leakage=leakage if leakage is not None else _leakage(0.35, 0.25, 0.45),
        predictions=pd.DataFrame({"site": sites, "y_true": age, "y_pred": pred}),
        embeddings=emb,
        embedding_meta=pd.DataFrame({"site": sites, "y_true": age}),
        history=_history(strategy == "grl", pretrain=3 if strategy == "iterative" else 0)
        if history and kind == "model"
        else None,
        config_text=f"strategy:\n  name: {strategy}\n" if kind == "model" else None,
        info={"epochs": 12, "fit seconds": 3.25} if kind == "model" else {},
    )


def baseline_and_iterative() -> list[ReportArm]:
    """A leaky baseline (site decodable) and an iterative arm that removed the site."""
    return [
        make_arm("baseline", "baseline", site_shift=1.5, leakage=_leakage(0.9, 0.82, 0.97)),
        make_arm(
            "iterative", "iterative", site_shift=0.0, leakage=_leakage(0.34, 0.22, 0.46), seed=1
        ),
    ]


def without_figures(arms: list[ReportArm]) -> list[ReportArm]:
    """The arms with only their metrics: fast to render, for tests of the page's text."""
    for arm in arms:
        arm.predictions = arm.embeddings = arm.embedding_meta = arm.history = None
    return arms


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


# --- render_report -------------------------------------------------------------------------------


def test_report_is_one_complete_offline_html_file(tmp_path: Path) -> None:
    out = render_report(baseline_and_iterative(), tmp_path / "r.html", title="T", tsne=False)
    assert out == tmp_path / "r.html"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temp file, no figure files
    html = out.read_text()
    for heading in SECTIONS:
        assert f">{heading}</h2>" in html
    images = _images(html)
    assert len(images) >= 5  # leakage, predictions, per-site, PCA, training curves
    assert all(img.startswith(b"\x89PNG") for img in images)
    assert "http://" not in html and "https://" not in html
    assert html.lstrip().startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")


def test_tsne_maps_are_added_on_request(tmp_path: Path) -> None:
    arms = baseline_and_iterative()
    html = render_report(arms, tmp_path / "r.html", title="T", tsne=True).read_text()
    assert 'alt="t-SNE of the embeddings"' in html


def test_user_comparison_table_formats_numbers_and_keeps_text(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"arm": ["raw + ComBat"], "MAE": [4.4871], "unseen site MAE": ["cannot apply"]}
    )
    table["leak"] = [np.nan]
    html = render_report(
        without_figures(baseline_and_iterative()),
        tmp_path / "r.html",
        title="T",
        comparison=table,
        comparison_note="from 5 folds",
        tsne=False,
    ).read_text()
    assert '<td class="num">4.49</td>' in html
    assert "<td>cannot apply</td>" in html
    assert "<td>—</td>" in html
    assert "from 5 folds" in html


def test_text_is_escaped(tmp_path: Path) -> None:
    html = render_report(
        without_figures(baseline_and_iterative()),
        tmp_path / "r.html",
        title="<b>T</b>",
        notes=["<script>x</script>"],
        tsne=False,
    ).read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html


def test_caller_and_own_warnings_both_shown(tmp_path: Path) -> None:
    arms = without_figures(baseline_and_iterative())
    arms[1].leakage = _leakage(0.6, 0.5, 0.7)  # still decodable
    html = render_report(
        arms, tmp_path / "r.html", title="T", warnings=["caller says hi"], tsne=False
    ).read_text()
    assert "caller says hi" in html
    assert "iterative: site is still decodable after unlearning" in html
    assert "No warnings." not in html


def test_clean_report_says_no_warnings(tmp_path: Path) -> None:
    arms = without_figures(baseline_and_iterative())
    html = render_report(arms, tmp_path / "r.html", title="T", tsne=False)
    assert "No warnings." in html.read_text()


def test_classification_arms_render(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    site, _ = _cohort()
    sites = np.array(SITES)[site]
    truth = rng.choice(["CN", "AD", "MCI"], site.size)
    arms = []
    for name, strategy, flip in (("baseline", "baseline", 0.2), ("grl", "grl", 0.4)):
        pred = np.where(rng.random(site.size) < flip, rng.choice(["CN", "AD", "MCI"]), truth)
        arms.append(
            ReportArm(
                name=name,
                strategy=strategy,
                task={
                    "kind": "classification",
                    "target": "dx",
                    "balanced_accuracy": float(np.mean(pred == truth)),
                    "chance": 1 / 3,
                    "classes": ["AD", "CN", "MCI"],
                    "per_site": {s: {"balanced_accuracy": 0.7, "n": PER_SITE} for s in SITES},
                },
                leakage=_leakage(0.5, 0.4, 0.6),
                predictions=pd.DataFrame({"site": sites, "y_true": truth, "y_pred": pred}),
                embeddings=rng.normal(size=(site.size, 4)),
                embedding_meta=pd.DataFrame({"site": sites, "y_true": truth}),
                history=_history(strategy == "grl"),
            )
        )
    html = render_report(arms, tmp_path / "r.html", title="T", target="dx", tsne=False)
    text = html.read_text()
    assert "Confusion matrices" in text
    assert "balanced accuracy" in text
    assert len(_images(text)) >= 5


def test_reference_arm_without_history_or_embeddings_renders(tmp_path: Path) -> None:
    reference = make_arm(
        "raw + ComBat", None, site_shift=0.0, kind="reference", history=False, seed=3
    )
    reference.embeddings = None
    reference.embedding_meta = None
    html = render_report([reference], tmp_path / "r.html", title="T", tsne=False).read_text()
    assert "No arm has a training history" in html
    assert "No arm has embeddings" in html
    assert ">Leakage</h2>" in html


def test_duplicate_arm_names_are_refused(tmp_path: Path) -> None:
    arms = baseline_and_iterative()
    arms[1].name = "baseline"
    with pytest.raises(InputError, match="baseline"):
        render_report(arms, tmp_path / "r.html", title="T", tsne=False)


# --- find_warnings -------------------------------------------------------------------------------


def test_no_warnings_for_a_clean_comparison() -> None:
    assert find_warnings(baseline_and_iterative()) == []


def test_baseline_at_chance_has_nothing_to_remove() -> None:
    arms = baseline_and_iterative()
    arms[0].leakage = _leakage(0.36, 0.28, 0.44)
    found = find_warnings(arms)
    assert len(found) == 1
    assert "holds no detectable site information" in found[0]
    assert "nothing for unlearning to remove" in found[0]
    assert "0.36" in found[0] and "chance 0.33" in found[0]


def test_baseline_with_one_probe_above_chance_is_not_flagged() -> None:
    arms = baseline_and_iterative()
    arms[0].leakage = _leakage(0.36, 0.28, 0.44)
    arms[0].leakage["site"]["probe"]["nonlinear"]["ci95"] = [0.4, 0.6]
    assert find_warnings(arms) == []


def test_unlearned_arm_above_chance_is_still_decodable() -> None:
    arms = baseline_and_iterative()
    arms[1].leakage["site"]["probe"]["nonlinear"] = {
        "balanced_accuracy": 0.46,
        "chance": 1 / 3,
        "ci95": [0.40, 0.52],
    }
    found = find_warnings(arms)
    assert found == [
        "iterative: site is still decodable after unlearning "
        "(nonlinear BAcc 0.46, CI [0.40, 0.52]; chance 0.33)"
    ]


def test_still_decodable_within_the_band() -> None:
    arms = baseline_and_iterative()
    band_probe = {"balanced_accuracy": 0.6, "chance": 0.25, "ci95": [0.5, 0.7]}
    arms[1].leakage["site"]["conditional"] = {
        "band": [18.0, 35.0],
        "chance": 0.25,
        "probe": {"linear": band_probe},
    }
    (warning,) = find_warnings(arms)
    assert "iterative: site is still decodable after unlearning within band 18–35" in warning


def test_combat_reference_is_checked_but_raw_reference_is_not() -> None:
    arms = baseline_and_iterative()
    leaky = _leakage(0.7, 0.6, 0.8)
    arms.append(make_arm("raw", None, site_shift=1.0, kind="reference", leakage=leaky))
    arms.append(make_arm("raw + ComBat", None, site_shift=1.0, kind="reference", leakage=leaky))
    found = find_warnings(arms)
    assert len(found) == 1
    assert found[0].startswith("raw + ComBat: site is still decodable after harmonisation")


def test_mae_cost_of_unlearning() -> None:
    arms = baseline_and_iterative()
    assert arms[1].task is not None and arms[0].task is not None
    arms[1].task["mae"] = 1.5 * arms[0].task["mae"]
    (warning,) = find_warnings(arms)
    assert warning.startswith("iterative: MAE")
    assert "1.50 × the baseline's" in warning and "unlearning cost accuracy" in warning


def test_mae_within_twenty_percent_is_fine() -> None:
    arms = baseline_and_iterative()
    assert arms[1].task is not None and arms[0].task is not None
    arms[1].task["mae"] = 1.15 * arms[0].task["mae"]
    assert find_warnings(arms) == []


def test_tiny_site_is_flagged_once() -> None:
    arms = baseline_and_iterative()
    for arm in arms:
        assert arm.task is not None
        arm.task["per_site"]["siteC"]["n"] = 3
    assert find_warnings(arms) == [
        "site siteC has only 3 held-out subjects: its per-site figures are noise"
    ]


def test_continuous_confound_still_decodable() -> None:
    arms = baseline_and_iterative()
    probe = {"r2": 0.21, "chance": 0.0, "ci95": [0.10, 0.30]}
    arms[1].leakage["tiv"] = {
        "kind": "continuous",
        "chance": 0.0,
        "probe": {"linear": probe, "nonlinear": {"r2": 0.02, "ci95": [-0.05, 0.04]}},
    }
    (warning,) = find_warnings(arms)
    assert warning.startswith("iterative: tiv is still decodable after unlearning (linear R² 0.21")


def test_unknown_baseline_name_is_an_input_error() -> None:
    with pytest.raises(InputError, match="nope"):
        find_warnings(baseline_and_iterative(), baseline="nope")


# --- figures and helpers -------------------------------------------------------------------------


def test_site_colours_do_not_depend_on_order() -> None:
    assert site_colors(["c", "a", "b"]) == site_colors(["a", "b", "c", "a"])
    assert len(set(site_colors([f"s{i}" for i in range(20)]).values())) == 20


def test_fig_to_data_uri_is_a_png() -> None:
    fig = leakage_plot(baseline_and_iterative())
    assert fig is not None
    uri = fig_to_data_uri(fig)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]).startswith(b"\x89PNG")


def test_embedding_plots_one_row_per_arm_with_embeddings() -> None:
    arms = baseline_and_iterative()
    arms.append(make_arm("no features", None, site_shift=0.0, kind="reference"))
    arms[-1].embeddings = None
    fig = embedding_plots(arms, "pca")
    assert fig is not None
    site_panels = [ax for ax in fig.axes if ax.get_title().endswith("by site")]
    assert [ax.get_title().split(" · ")[0] for ax in site_panels] == ["baseline", "iterative"]


def test_format_value() -> None:
    assert [format_value(v) for v in (0.6412, 4.4871, np.float32(2.5), 7, None, "x")] == [
        "0.641",
        "4.49",
        "2.50",
        "7",
        "—",
        "x",
    ]


# --- runs ----------------------------------------------------------------------------------------


def write_run(run_dir: Path, *, target: str = "age", strategy: str = "baseline") -> Path:
    """A hand-written finished run directory (nothing is trained): 60 rows, 12 of them test."""
    run_dir.mkdir(parents=True)
    site, age = _cohort()
    n = site.size
    split = np.array(["train"] * 36 + ["val"] * 12 + ["test"] * 12)[
        np.random.default_rng(1).permutation(n)
    ]
    ids = [f"{i:03d}" for i in range(n)]  # leading zeros: must stay text
    sites = np.array(SITES)[site]
    (run_dir / "config.yaml").write_text(
        f"data:\n  target: {target}\n  site_column: scanner\n  id_column: sub\n"
        f"strategy:\n  name: {strategy}\n  mode: sequential\n"
    )
    (run_dir / "run.json").write_text(
        json.dumps({"id_column": "sub", "fit_seconds": 2.5, "epochs_run": 12, "input": "features"})
    )
    arm = make_arm("x", strategy, site_shift=1.0)
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "task": arm.task,
                "leakage": arm.leakage,
                "openbhb": {"ridge_age_probe_mae": 5.0, "score": None},
                "warnings": [f"{run_dir.name} fit warning", "shared warning"],
            }
        )
    )
    preds = pd.DataFrame(
        {"sub": ids, "scanner": sites, "split": split, target: age, "prediction": age + 1.0}
    )
    preds.to_csv(run_dir / "predictions.csv", index=False)
    emb = pd.DataFrame({"sub": ids, "scanner": sites, "split": split})
    for j in range(4):
        emb[f"e{j}"] = np.arange(n) * (j + 1.0)
    emb.to_csv(run_dir / "embeddings.csv", index=False)
    _history(strategy == "grl").to_csv(run_dir / "history.csv", index=False)
    (run_dir / "model.pt").write_bytes(b"")
    return run_dir


def test_arm_from_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_run"
    with pytest.raises(InputError, match="no_such_run"):
        arm_from_run(missing)


def test_arm_from_unfinished_run_says_so(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run")
    (run_dir / "model.pt").unlink()
    with pytest.raises(InputError, match="no finished run"):
        arm_from_run(run_dir)


def test_arm_from_run_keeps_test_predictions_and_all_embeddings(tmp_path: Path) -> None:
    arm = arm_from_run(write_run(tmp_path / "run"))
    assert arm.name == "run"
    assert arm.strategy == "baseline"
    assert arm.predictions is not None and len(arm.predictions) == 12
    assert list(arm.predictions.columns) == ["site", "y_true", "y_pred"]
    assert (arm.predictions["y_pred"] - arm.predictions["y_true"]).eq(1.0).all()
    assert arm.embeddings is not None and arm.embeddings.shape == (60, 4)
    assert arm.embedding_meta is not None and len(arm.embedding_meta) == 60
    # row i of the meta belongs to row i of the embeddings (e0 numbers the rows)
    _, age = _cohort()
    assert np.array_equal(arm.embeddings[:, 0], np.arange(60))
    assert np.allclose(arm.embedding_meta["y_true"], age)
    assert arm.history is not None and "train_task_loss" in arm.history
    assert arm.info["epochs"] == 12
    assert arm.config_text is not None and "site_column: scanner" in arm.config_text


def test_render_runs_writes_one_report(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a" / "run", strategy="baseline")
    b = write_run(tmp_path / "b" / "run", strategy="grl")
    out = render_runs([a, b], tmp_path / "report.html", tsne=False)
    html = out.read_text()
    assert "a/run" in html and "b/run" in html  # equal names made unique by their parent
    assert html.count("shared warning") == 1
    assert "run fit warning" in html
    assert html.rstrip().endswith("</html>")


def test_render_runs_never_evaluates_a_run_itself(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run")
    (run / "metrics.json").unlink()
    with pytest.raises(InputError, match=r"no metrics\.json") as err:
        render_runs([run], tmp_path / "report.html", tsne=False)
    assert str(err.value.problem.file) == str(run / "metrics.json")
    assert f"evaluate {run} first" in str(err.value)
    assert not (tmp_path / "report.html").exists()
    assert not (run / "metrics.json").exists()


def test_render_runs_lets_the_caller_write_missing_metrics(tmp_path: Path) -> None:
    a, b = write_run(tmp_path / "a"), write_run(tmp_path / "b")
    stored = (b / "metrics.json").read_text()
    (b / "metrics.json").unlink()
    asked: list[Path] = []

    def evaluate(run_dir: Path) -> None:
        asked.append(run_dir)
        (run_dir / "metrics.json").write_text(stored)

    out = render_runs([a, b], tmp_path / "report.html", tsne=False, on_missing_metrics=evaluate)
    assert asked == [b]  # only the run without metrics.json
    assert "b fit warning" in out.read_text()


def test_runs_of_different_targets_are_refused(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", target="age")
    b = write_run(tmp_path / "b", target="score")
    with pytest.raises(InputError, match="different targets") as err:
        render_runs([a, b], tmp_path / "report.html", tsne=False)
    assert str(a) in str(err.value) and str(b) in str(err.value)
    assert not (tmp_path / "report.html").exists()
