"""Library-level training: determinism, resume, subset coding, run-directory contents."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neurounlearn.config import ConfoundConfig, validate_config
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.errors import InputError
from neurounlearn.training.fit import fit
from neurounlearn.training.predict import load_run


def config(path: Path, **train):
    return validate_config(
        {
            "data": {"path": str(path), "features": r"^f\d$", "target": "age"},
            "confounds": [{"name": "site"}],
            "strategy": {"name": "iterative", "pretrain_epochs": 1},
            "model": {"hidden": [8], "embedding_dim": 4, "adversary_heads": 2},
            "train": {"epochs": 3, "batch_size": 8, "progress_bar": False, **train},
        }
    )


@pytest.fixture
def manifest(tmp_path, manifest_factory):
    path = tmp_path / "m.csv"
    manifest_factory(sites=3, per_site=10).to_csv(path, index=False)
    return path


def test_same_seed_and_data_give_identical_predictions(manifest, tmp_path):
    fit(config(manifest), tmp_path / "a")
    fit(config(manifest), tmp_path / "b")
    a = pd.read_csv(tmp_path / "a" / "predictions.csv")
    b = pd.read_csv(tmp_path / "b" / "predictions.csv")
    assert np.array_equal(a["prediction"].to_numpy(), b["prediction"].to_numpy())


def test_another_seed_gives_another_split(manifest, tmp_path):
    fit(config(manifest, seed=0), tmp_path / "a")
    fit(config(manifest, seed=1), tmp_path / "b")
    a = pd.read_csv(tmp_path / "a" / "splits.csv")["split"]
    b = pd.read_csv(tmp_path / "b" / "splits.csv")["split"]
    assert not a.equals(b)


def test_resume_continues_an_interrupted_run_to_the_end(manifest, tmp_path):
    out = tmp_path / "run"
    fit(config(manifest, epochs=2), out)  # stands in for a run stopped after 2 epochs
    assert len(pd.read_csv(out / "history.csv")) == 2
    fit(config(manifest, epochs=4), out, resume=True)
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert load_run(out).info["epochs_run"] == 4


def test_history_has_task_loss_adversary_accuracy_and_confusion_per_epoch(manifest, tmp_path):
    fit(config(manifest), tmp_path / "r")
    h = pd.read_csv(tmp_path / "r" / "history.csv")
    assert len(h) == 3
    for col in ("train_task_loss", "val_task_loss", "train_adv_acc_site", "train_conf_loss_site"):
        assert col in h.columns
    assert h.loc[h["phase"] == "unlearn", "train_conf_loss_site"].notna().all()


def test_early_stopping_is_off_when_no_validation_row_has_a_target(tmp_path, manifest_factory):
    frame = manifest_factory(sites=3, per_site=10)
    split = np.array(["train", "val", "test"] * 10, dtype=object)
    frame.loc[split == "val", "age"] = np.nan  # a constant zero validation loss would stop it
    path = tmp_path / "m.csv"
    frame.to_csv(path, index=False)
    echoed: list[str] = []
    fit(config(path, epochs=4, patience=1), tmp_path / "run", echo=echoed.append, split=split)
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 4
    assert any("early stopping is off" in line for line in echoed)
    assert any("early stopping is off" in w for w in load_run(tmp_path / "run").info["warnings"])


def test_refuses_to_overwrite_a_run(manifest, tmp_path):
    fit(config(manifest), tmp_path / "r")
    with pytest.raises(InputError, match="already exists"):
        fit(config(manifest), tmp_path / "r")


def test_subset_keeps_rows_outside_it_out_of_the_unlearning(manifest_factory):
    frame = manifest_factory(sites=3, per_site=10)
    train = np.ones(len(frame), dtype=bool)
    c = ConfoundConfig(name="site", subset="age < 50")
    enc = TableEncoding.fit(frame, train, ["f0"], "age", [c])
    codes = enc.codes(frame)[:, 0]
    assert (codes[frame["age"].to_numpy() >= 50] == -1).all()
    assert (codes[frame["age"].to_numpy() < 50] >= 0).all()


def test_confound_classes_come_from_training_rows_only(manifest_factory):
    frame = manifest_factory(sites=3, per_site=10)
    train = (frame["site"] != "site2").to_numpy()
    enc = TableEncoding.fit(frame, train, ["f0"], "age", [ConfoundConfig(name="site")])
    assert enc.confound_levels["site"] == ["site0", "site1"]
    assert (enc.codes(frame)[~train, 0] == -1).all()  # an unseen site is ignored, not guessed


def test_scaling_is_fit_on_training_rows_only(manifest_factory):
    frame = manifest_factory(sites=3, per_site=10)
    train = np.zeros(len(frame), dtype=bool)
    train[:10] = True
    enc = TableEncoding.fit(frame, train, ["f0"], "age", [])
    assert enc.feature_mean[0] == pytest.approx(frame.loc[train, "f0"].mean())
    assert enc.target_mean == pytest.approx(frame.loc[train, "age"].mean())


def test_several_confounds_are_unlearned_and_audited_together(manifest, tmp_path):
    from neurounlearn.evaluation.evaluate import evaluate

    cfg = config(manifest).model_copy(
        update={"confounds": [ConfoundConfig(name="site"), ConfoundConfig(name="sex", beta=0.5)]}
    )
    cfg = validate_config(
        cfg.model_dump(mode="json") | {"audit": {"n_permutations": 5, "n_bootstrap": 20}}
    )
    out = fit(cfg, tmp_path / "r")
    run = load_run(out)
    assert set(run.model.confound_heads) == {"site", "sex"}
    history = pd.read_csv(out / "history.csv")
    assert {"train_conf_loss_site", "train_conf_loss_sex"} <= set(history.columns)
    metrics = evaluate(out)
    assert set(metrics["leakage"]) == {"site", "sex"}
    assert metrics["leakage"]["sex"]["chance"] == pytest.approx(0.5)


def test_balanced_sampling_draws_every_site_about_equally():
    from neurounlearn.data.datasets import TensorDictDataset
    from neurounlearn.training.datamodule import SplitDataModule

    groups = np.array(["big"] * 90 + ["small"] * 10)
    codes = np.where(groups == "big", 0, 1)[:, None]
    data = TensorDictDataset(np.zeros((100, 2)), np.zeros(100), codes)
    dm = SplitDataModule(data, data, batch_size=50, seed=0, balance_groups=groups)
    drawn = np.concatenate(
        [b["codes"][:, 0].numpy() for _ in range(20) for b in dm.train_dataloader()]
    )
    assert 0.4 < (drawn == 1).mean() < 0.6  # 10% of rows, about half of the draws


def test_predict_accepts_new_data_whose_target_matches_a_greedy_feature_regex(manifest, tmp_path):
    from neurounlearn.training.predict import predict_file

    cfg = config(manifest)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"features": "^(f\\d|age)$"})})
    out = fit(cfg, tmp_path / "r")
    assert "age" not in load_run(out).encoding.feature_columns  # the target is never a feature
    preds, _ = predict_file(load_run(out), manifest)  # 'age' present again: not an extra feature
    assert len(preds) == len(pd.read_csv(manifest))


def test_evaluate_on_external_data_uses_every_row_as_test(manifest, tmp_path, manifest_factory):
    from neurounlearn.evaluation.evaluate import evaluate

    cfg = config(manifest)
    cfg = validate_config(
        cfg.model_dump(mode="json") | {"audit": {"n_permutations": 5, "n_bootstrap": 20}}
    )
    out = fit(cfg, tmp_path / "r")
    external = tmp_path / "external.csv"
    manifest_factory(sites=3, per_site=8, seed=7).to_csv(external, index=False)
    metrics = evaluate(out, data=external)
    assert metrics["n_test"] == 24
    assert metrics["task"]["n"] == 24
    assert metrics["evaluated_on"] == str(external)
    assert set(metrics["task"]["per_site"]) == {"site0", "site1", "site2"}


def _best_unlearning_epoch(run: Path) -> int:
    history = pd.read_csv(run / "history.csv")
    unlearning = history[history["phase"] == "unlearn"]
    return int(unlearning.loc[unlearning["val_task_loss"].idxmin(), "epoch"])


def test_restore_best_keeps_the_unlearning_epoch_with_the_lowest_validation_loss(
    manifest, tmp_path
):
    fit(config(manifest, epochs=6, restore="best"), tmp_path / "run")
    assert load_run(tmp_path / "run").info["restored_epoch"] == _best_unlearning_epoch(
        tmp_path / "run"
    )


def test_tables_keep_the_last_epoch_by_default(manifest, tmp_path):
    fit(config(manifest), tmp_path / "run")
    assert load_run(tmp_path / "run").info["restored_epoch"] is None


def test_a_resumed_run_remembers_the_best_epoch_before_the_stop(manifest, tmp_path):
    out = tmp_path / "run"
    fit(config(manifest, epochs=3, restore="best"), out)
    fit(config(manifest, epochs=6, restore="best"), out, resume=True)
    assert load_run(out).info["restored_epoch"] == _best_unlearning_epoch(out)


def test_a_table_run_records_the_table_defaults_in_its_config(manifest, tmp_path):
    fit(config(manifest), tmp_path / "run")
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "augment: none" in saved and "restore: last" in saved
    assert "weight_decay: 0.0001" in saved


def test_a_negative_weight_decay_is_refused(manifest):
    with pytest.raises(InputError, match="weight_decay"):
        config(manifest, weight_decay=-0.1)


@pytest.mark.parametrize(
    ("input_kind", "task", "expected"),
    [
        ("image", "regression", ("best", "spatial", 0.05)),
        ("image", "classification", ("best", "spatial", 0.05)),
        ("image", "segmentation", ("last", "none", 1e-4)),
        ("features", "regression", ("last", "none", 1e-4)),
    ],
)
def test_auto_settings_resolve_by_input_and_task(tmp_path, input_kind, task, expected):
    from neurounlearn.training.fit import resolve_auto
    from neurounlearn.training.tasks import task_of

    cfg = validate_config(
        {"data": {"path": str(tmp_path / "m.csv"), "input": input_kind, "target": "age"}}
    )
    resolved = resolve_auto(cfg, task_of(task))
    t = resolved.train
    assert (t.restore, resolved.data.augment, t.weight_decay) == expected


def test_settings_given_explicitly_are_kept(tmp_path):
    from neurounlearn.training.fit import resolve_auto
    from neurounlearn.training.tasks import task_of

    cfg = validate_config(
        {
            "data": {"path": str(tmp_path / "m.csv"), "input": "image", "augment": "none"},
            "train": {"restore": "last", "weight_decay": 0.3},
        }
    )
    resolved = resolve_auto(cfg, task_of("regression"))
    assert (resolved.train.restore, resolved.data.augment, resolved.train.weight_decay) == (
        "last",
        "none",
        0.3,
    )


def test_a_loaded_run_predicts_and_transforms_a_dataframe_as_predict_writes_them(
    manifest, tmp_path
):
    out = fit(config(manifest), tmp_path / "r")
    run = load_run(out)
    frame = pd.read_csv(manifest).sample(frac=1.0, random_state=0)  # any order, own index
    preds, embeddings = run.predict(frame), run.transform(frame)
    written = pd.read_csv(out / "predictions.csv").set_index("subject")
    assert preds["subject"].tolist() == frame["subject"].tolist()
    np.testing.assert_allclose(
        preds["prediction"], written.loc[preds["subject"], "prediction"], rtol=1e-5
    )
    stored = pd.read_csv(out / "embeddings.csv").set_index("subject")
    columns = [f"e{i}" for i in range(4)]
    np.testing.assert_allclose(
        embeddings[columns], stored.loc[embeddings["subject"], columns], rtol=1e-4, atol=1e-6
    )
    from_file, _ = run._apply(manifest)
    np.testing.assert_allclose(
        from_file.set_index("subject").loc[preds["subject"], "prediction"],
        preds["prediction"],
        rtol=1e-5,
    )


def test_a_loaded_run_names_the_dataframe_in_its_errors(manifest, tmp_path):
    run = load_run(fit(config(manifest), tmp_path / "r"))
    frame = pd.read_csv(manifest).drop(columns=["f2"])
    with pytest.raises(InputError, match="f2") as err:
        run.predict(frame)
    assert err.value.problems[0].file == "(DataFrame)"


def test_the_progress_bar_counts_epochs_from_one():
    from types import SimpleNamespace

    from neurounlearn.training.system import EpochBar

    bar = EpochBar()
    bar._trainer = SimpleNamespace(max_epochs=40)  # what the bar reads of its trainer
    assert bar._get_train_description(0).strip() == "Epoch 1/40"
    assert bar._get_train_description(39).strip() == "Epoch 40/40"
