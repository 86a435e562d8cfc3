"""Confounds in general: continuous confounds (correlation and binned), several at once,
target-conditioned unlearning, unlabelled rows and sites, and classification tasks.

Unit tests on tiny tensors first, then the command line end to end on a small simulated table
(bad input: exit 2, one clear line naming file, row and column, nothing written).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from neurounlearn.cli import parse_unlearn_item
from neurounlearn.config import ConfoundConfig, RunConfig
from neurounlearn.data.manifest import infer_task
from neurounlearn.data.simulate_table import simulate_table
from neurounlearn.data.tabular import TableEncoding, quantile_edges
from neurounlearn.errors import InputError
from neurounlearn.losses import confusion_loss, masked_cross_entropy, squared_correlation
from neurounlearn.models.unlearning import MLPEncoder, UnlearningModel
from neurounlearn.training.strategies import GRLStrategy, IterativeStrategy
from test_cli import assert_input_error, assert_ok, invoke, where

QUICK = [
    "--epochs",
    "3",
    "--set",
    "audit.n_permutations=3",
    "--set",
    "audit.n_permutations_nonlinear=0",
    "--set",
    "audit.n_bootstrap=20",
    "--set",
    "train.progress_bar=false",
    "--set",
    "strategy.pretrain_epochs=1",
    "--set",
    "model.adversary_heads=2",
]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated cohort: 3 sites x 30 subjects, 8 regions (subject, site, age, sex,
    tiv, region_00..07)."""
    folder = tmp_path_factory.mktemp("table")
    simulate_table(folder, sites=3, subjects=90, features=8, seed=3)
    return folder / "manifest.csv"


def fit_cli(data: Path, out: Path, *args: str) -> list[str]:
    return ["fit", "--data", str(data), "--features", "^region_", "--out", str(out), *args, *QUICK]


# ----------------------------------------------------------------------------- losses


def test_confusion_loss_with_a_target_distribution_is_smallest_at_that_distribution() -> None:
    q = torch.tensor([[0.7, 0.2, 0.1]])
    at_q = confusion_loss(q.log(), target=q)
    uniform = confusion_loss(torch.zeros(1, 3), target=q)
    assert float(at_q) < float(uniform)
    # the uniform target gives the plain confusion loss
    logits = torch.randn(4, 3)
    plain = confusion_loss(logits)
    assert float(confusion_loss(logits, target=torch.full((4, 3), 1 / 3))) == pytest.approx(
        float(plain)
    )


def test_squared_correlation_is_one_for_a_line_and_small_for_noise() -> None:
    t = torch.linspace(-1, 1, 50)
    assert float(squared_correlation(-3 * t + 2, t)) == pytest.approx(1.0, abs=1e-4)
    noise = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    assert float(squared_correlation(noise, torch.randn(5000))) < 0.01


def test_squared_correlation_ignores_rows_without_a_value() -> None:
    t = torch.tensor([0.0, 1.0, 2.0, float("nan"), 3.0])
    pred = torch.tensor([0.0, 1.0, 2.0, 100.0, 3.0])
    assert float(squared_correlation(pred, t)) == pytest.approx(1.0, abs=1e-4)


def test_masked_cross_entropy_skips_unknown_targets() -> None:
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0]])
    y = torch.tensor([0.0, 1.0, float("nan")])
    small = masked_cross_entropy(logits, y)
    wrong = masked_cross_entropy(logits, torch.tensor([1.0, 0.0, float("nan")]))
    assert float(small) < 0.01 < float(wrong)


# ----------------------------------------------------------------------------- model


def _model(**kw: object) -> UnlearningModel:
    torch.manual_seed(0)
    enc = MLPEncoder(in_features=5, hidden=[8], embedding_dim=4, dropout=0.0)
    return UnlearningModel(enc, nn.Linear(4, 1), **kw)  # type: ignore[arg-type]


def test_continuous_head_regresses_one_value_per_row_in_confound_order() -> None:
    model = _model(confounds={"age": 1, "site": 3}, continuous=["age"], n_heads=2)
    out = model.confound_logits(torch.randn(6, 4))
    assert list(out) == ["age", "site"]
    assert out["age"].shape == (2, 6) and out["site"].shape == (2, 6, 3)


def test_conditioned_head_needs_and_uses_the_target_bin() -> None:
    model = _model(confounds={"site": 3}, conditions={"site": 4})
    f = torch.randn(6, 4)
    with pytest.raises(ValueError, match="target-conditioned"):
        model.confound_logits(f)
    a = model.confound_logits(f, conditions=torch.zeros(6, 1, dtype=torch.long))["site"]
    b = model.confound_logits(f, conditions=torch.full((6, 1), 3, dtype=torch.long))["site"]
    assert not torch.allclose(a, b)


# ----------------------------------------------------------------------------- encoding


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame(
        {
            "site": np.repeat(["A", "B"], n // 2),
            "age": np.r_[rng.uniform(20, 50, n // 2), rng.uniform(40, 80, n // 2)],
            "tiv": rng.normal(1500, 100, n),
            "sex": np.tile(["F", "M"], n // 2),
            "x": rng.normal(size=n),
        }
    )


def test_binned_confound_bins_come_from_the_training_rows_only() -> None:
    frame = _frame()
    train = np.arange(len(frame)) < 30
    c = ConfoundConfig(name="tiv", kind="continuous", method="binned", bins=4)
    enc = TableEncoding.fit(frame, train, ["x"], "age", [c])
    assert enc.confound_edges["tiv"] == quantile_edges(frame["tiv"].to_numpy()[train], 4)
    codes = enc.codes(frame)[:, 0]
    assert len(enc.confound_levels["tiv"]) == 4
    assert set(codes[train]) == {0, 1, 2, 3}
    # each training bin holds about a quarter of the training rows
    assert np.bincount(codes[train]).min() >= 6


def test_correlation_confound_values_are_standardised_on_training_rows() -> None:
    frame = _frame()
    train = np.arange(len(frame)) < 30
    c = ConfoundConfig(name="tiv", kind="continuous")
    enc = TableEncoding.fit(frame, train, ["x"], "age", [c])
    values = enc.values(frame)[:, 0]
    assert values[train].mean() == pytest.approx(0.0, abs=1e-5)
    assert values[train].std() == pytest.approx(1.0, abs=1e-4)
    assert (enc.codes(frame)[:, 0] == -1).all()
    assert enc.class_weights(enc.codes(frame)) == {}


def test_condition_priors_are_site_given_target_bin_reweighted_by_site() -> None:
    frame = _frame()
    train = np.ones(len(frame), dtype=bool)
    c = ConfoundConfig(name="site", conditional=True, target_bins=2)
    enc = TableEncoding.fit(frame, train, ["x"], "age", [c])
    codes, cond = enc.codes(frame), enc.conditions(frame)
    weights = enc.class_weights(codes)
    prior = enc.condition_priors(codes, cond, weights)["site"]
    assert prior.shape == (2, 2)
    assert np.allclose(prior.sum(axis=1), 1.0)
    # the young bin is mostly site A, the old bin mostly site B
    assert prior[0, 0] > 0.6 and prior[1, 1] > 0.6
    young = cond[:, 0] == 0
    share_a = (codes[young, 0] == 0).mean()
    assert prior[0, 0] == pytest.approx(share_a)  # equal site sizes: weights change nothing


def test_classification_targets_are_class_indices_with_unseen_classes_unknown() -> None:
    frame = pd.DataFrame({"dx": ["HC", "AD", None, "MCI"], "x": [0.0, 1.0, 2.0, 3.0]})
    train = np.array([True, True, True, False])
    enc = TableEncoding.fit(frame, train, ["x"], "dx", [], task="classification")
    assert enc.target_classes == ["AD", "HC"] and enc.n_outputs == 2
    y = enc.targets(frame)
    assert y[:2].tolist() == [1.0, 0.0] and math.isnan(y[2]) and math.isnan(y[3])


def test_task_inference() -> None:
    assert infer_task(pd.Series(["F", "M", None]))[0] == "classification"
    assert infer_task(pd.Series([0, 1, 1, 0]))[0] == "classification"
    assert infer_task(pd.Series([22.5, 31.0, 47.2, 60.1]))[0] == "regression"
    # a numeric column with one typo stays regression (the typo is reported, not obeyed)
    assert infer_task(pd.Series([22.5, 31.0, "3l", 47.2, 60.1]))[0] == "regression"


# ----------------------------------------------------------------------------- strategies


class Host:
    def __init__(self, model: UnlearningModel, strategy: object, epoch: int = 5) -> None:
        self.model = model
        self.current_epoch = epoch
        self.progress = 0.5
        self._opts = strategy.configure_optimizers(  # type: ignore[attr-defined]
            model, lr=1e-2, weight_decay=0.0, adversary_lr=1e-2
        )

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self._opts

    def manual_backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    values = torch.randn(16, 2, generator=g)
    values[:, 1] = float("nan")
    return {
        "x": torch.randn(16, 5, generator=g),
        "y": torch.randn(16, generator=g),
        "codes": torch.stack([torch.full((16,), -1), torch.arange(16) % 3], dim=1),
        "values": values,
        "conditions": torch.stack([torch.full((16,), -1), torch.arange(16) % 2], dim=1),
    }


def _mixed() -> tuple[UnlearningModel, list[ConfoundConfig], dict[str, torch.Tensor]]:
    confounds = [
        ConfoundConfig(name="age", kind="continuous"),
        ConfoundConfig(name="site", conditional=True, target_bins=2),
    ]
    model = _model(
        confounds={"age": 1, "site": 3}, continuous=["age"], conditions={"site": 2}, n_heads=2
    )
    priors = {"site": torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])}
    return model, confounds, priors


@pytest.mark.parametrize("cls", [IterativeStrategy, GRLStrategy])
def test_a_correlation_and_a_conditioned_confound_train_together(cls: type) -> None:
    model, confounds, priors = _mixed()
    extra = {"pretrain_epochs": 0} if cls is IterativeStrategy else {}
    strategy = cls(confounds=confounds, priors=priors, adversary_steps=2, **extra)
    host = Host(model, strategy)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    logs = strategy.training_step(host, _batch())
    assert {"adv_r2/age", "adv_acc/site", "conf_loss/age", "conf_loss/site"} <= set(logs)
    assert all(math.isfinite(float(v)) for v in logs.values())
    moved = any(
        not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True)
    )
    assert moved


def test_grl_never_reverses_a_correlation_confound() -> None:
    model, confounds, priors = _mixed()
    strategy = GRLStrategy(confounds=confounds, priors=priors, lambda_max=1.0)
    strategy.training_step(Host(model, strategy), _batch())
    assert float(model.reversal["age"].weight) == 0.0
    assert float(model.reversal["site"].weight) > 0.0


def test_conditioned_confusion_is_smallest_when_the_head_outputs_the_prior() -> None:
    _, confounds, priors = _mixed()
    strategy = IterativeStrategy(confounds=confounds, priors=priors)
    batch = _batch()
    rows = priors["site"][batch["conditions"][:, 1]]
    at_prior = strategy.confusion_losses({"age": torch.zeros(16), "site": rows.log()}, batch)[
        "site"
    ]
    uniform = strategy.confusion_losses(
        {"age": torch.zeros(16), "site": torch.zeros(16, 3)}, batch
    )["site"]
    assert float(at_prior) < float(uniform)


def test_a_conditioned_confound_needs_its_priors() -> None:
    with pytest.raises(ValueError, match="priors"):
        IterativeStrategy(confounds=[ConfoundConfig(name="site", conditional=True)])


# ----------------------------------------------------------------------------- config and CLI


def test_unlearn_option_syntax() -> None:
    assert parse_unlearn_item("age:continuous") == {"name": "age", "kind": "continuous"}
    assert parse_unlearn_item("age:binned:bins=4") == {
        "name": "age",
        "kind": "continuous",
        "method": "binned",
        "bins": "4",
    }
    with pytest.raises(InputError, match="unknown option 'continous'"):
        parse_unlearn_item("age:continous")
    with pytest.raises(InputError, match="unknown setting 'bin'"):
        parse_unlearn_item("age:binned:bin=4")


def test_conditional_correlation_confound_is_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="binned"):
        RunConfig.model_validate(
            {"confounds": [{"name": "age", "kind": "continuous", "conditional": True}]}
        )


# ----------------------------------------------------------------------------- bad input (CLI)


def test_non_numeric_continuous_confound_names_row_and_column(table: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(table)
    frame["tiv"] = frame["tiv"].astype(object)
    frame.loc[4, "tiv"] = "big"
    data = tmp_path / "m.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "run"
    result = invoke(fit_cli(data, out, "--unlearn", "tiv:continuous"))
    assert_input_error(result, where(data, 5, "tiv"), "not a number", "'big'", "categorical")
    assert not out.exists()


def test_categorical_confound_with_one_level(table: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(table)
    frame["scanner"] = "Prisma"
    data = tmp_path / "m.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "run"
    result = invoke(fit_cli(data, out, "--unlearn", "scanner"))
    assert_input_error(result, where(data, None, "scanner"), "only one value", "'Prisma'")
    assert not out.exists()


def test_confound_equal_to_the_target(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(fit_cli(table, out, "--target", "sex", "--unlearn", "sex"))
    assert_input_error(result, where(table, None, "sex"), "target", "cannot predict")
    frame = pd.read_csv(table)
    frame["gender"] = frame["sex"]
    data = tmp_path / "m.csv"
    frame.to_csv(data, index=False)
    result = invoke(fit_cli(data, out, "--target", "sex", "--unlearn", "gender"))
    assert_input_error(result, where(data, None, "gender"), "same value as the target")
    assert not out.exists()


def test_conditional_on_a_continuous_target_without_bins(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(fit_cli(table, out, "--unlearn", "site:conditional"))
    assert_input_error(result, where(table, None, "site"), "target-conditioned", "target_bins=5")
    assert not out.exists()


def test_unlabelled_site_that_does_not_exist(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(fit_cli(table, out, "--unlearn", "site", "--unlabelled-site", "D"))
    assert_input_error(result, where(table, None, "site"), "'D'", "A, B, C")
    assert not out.exists()


def test_every_row_missing_its_target(table: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(table)
    frame["age"] = np.nan
    data = tmp_path / "m.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "run"
    result = invoke(fit_cli(data, out, "--unlearn", "site"))
    assert_input_error(result, where(data, None, "age"), "empty in every row")
    # hiding every labelled site leaves nothing to train on either
    labelled = ["--unlabelled-site", "A", "--unlabelled-site", "B", "--unlabelled-site", "C"]
    result = invoke(fit_cli(table, out, "--unlearn", "site", *labelled))
    assert_input_error(result, where(table, None, "age"), "unlabelled site")
    assert not out.exists()


# ----------------------------------------------------------------------------- end to end


def test_sex_classification_with_age_unlearned_end_to_end(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        fit_cli(table, out, "--target", "sex", "--unlearn", "age:continuous", "--unlearn", "site")
    )
    assert_ok(result)
    assert "task: classification (inferred" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    task = metrics["task"]
    assert task["kind"] == "classification" and task["classes"] == ["F", "M"]
    assert 0.0 <= task["balanced_accuracy"] <= 1.0 and 0.0 <= task["auc"] <= 1.0
    assert metrics["leakage"]["age"]["kind"] == "continuous"
    assert "r2" in metrics["leakage"]["age"]["probe"]["linear"]
    assert metrics["leakage"]["site"]["kind"] == "categorical"
    preds = pd.read_csv(out / "predictions.csv")
    assert set(preds["prediction"]) <= {"F", "M"}
    assert np.allclose(preds["prob_F"] + preds["prob_M"], 1.0, atol=1e-5)
    history = pd.read_csv(out / "history.csv")
    assert {"train_adv_r2_age", "train_adv_acc_site"} <= set(history.columns)
    new = tmp_path / "new.csv"
    pd.read_csv(table).drop(columns=["site", "sex", "age"]).head(5).to_csv(new, index=False)
    assert_ok(invoke(["predict", str(out), "--data", str(new), "--out", str(tmp_path / "p.csv")]))
    assert set(pd.read_csv(tmp_path / "p.csv")["prediction"]) <= {"F", "M"}


def test_binned_conditional_site_run_records_its_settings(table: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--unlearn", "site:conditional:target_bins=3", "--unlearn", "tiv:binned:bins=3"]
    result = invoke(fit_cli(table, out, *args, "--strategy", "grl"))
    assert_ok(result)
    cfg = (out / "config.yaml").read_text()
    assert "conditional: true" in cfg and "target_bins: 3" in cfg and "method: binned" in cfg
    assert "task: regression" in cfg
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["leakage"]) == {"site", "tiv"}


def test_unlabelled_site_serves_unlearning_and_is_evaluated_from_labels(
    table: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = invoke(fit_cli(table, out, "--unlearn", "site", "--unlabelled-site", "C"))
    assert_ok(result)
    preds = pd.read_csv(out / "predictions.csv")
    at_c = preds["site"] == "C"
    assert preds.loc[at_c, "age"].isna().all() and preds.loc[~at_c, "age"].notna().all()
    info = json.loads((out / "run.json").read_text())
    assert info["hidden_targets"] == int(at_c.sum())
    assert info["train_rows_labelled"] < info["train_rows"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["per_site"]["C"]["n"] == 0
    assert metrics["unlabelled_sites"]["test"] is None
    result = invoke(["evaluate", str(out), "--labels", str(table)])
    assert_ok(result)
    assert "unlabelled site(s) C: test MAE" in result.output
    block = json.loads((out / "metrics.json").read_text())["unlabelled_sites"]
    n_test_c = int((at_c & (preds["split"] == "test")).sum())
    assert block["test"]["n"] == n_test_c and block["all_rows"]["n"] == int(at_c.sum())
    assert block["test"]["mae"] > 0
