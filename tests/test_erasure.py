"""Concept erasure: the transformer, ``fit --erase``, inference without the site, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression

from neurounlearn import ConceptEraser
from neurounlearn.errors import InputError
from test_cli import describe, fit_args, invoke, where


def entangled(n_per_site: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three sites whose age ranges differ; features carry age and a site offset."""
    rng = np.random.default_rng(seed)
    site = np.repeat(["a", "b", "c"], n_per_site)
    age = np.concatenate(
        [
            rng.uniform(5, 15, n_per_site),
            rng.uniform(10, 40, n_per_site),
            rng.uniform(20, 60, n_per_site),
        ]
    )
    x = rng.normal(size=(len(site), 12))
    x[:, 0] += age / 10
    x[:, 1] += (site == "b") * 2.0
    x[:, 2] += (site == "c") * 1.5
    return x, site, age


def linear_mae(x: np.ndarray, age: np.ndarray) -> float:
    return float(np.abs(LinearRegression().fit(x, age).predict(x) - age).mean())


# ----------------------------------------------------------------------------- the transformer


def test_plain_erasure_leaves_no_class_mean_difference() -> None:
    x, site, _ = entangled()
    erased = ConceptEraser(conditional=False).fit(x, site).transform(x)
    means = np.stack([erased[site == s].mean(0) for s in "abc"])
    assert np.abs(means - means[0]).max() < 1e-8
    raw_means = np.stack([x[site == s].mean(0) for s in "abc"])
    assert np.abs(raw_means - raw_means[0]).max() > 1.0  # there was something to erase


def test_plain_erasure_takes_an_entangled_target_with_it_conditional_keeps_it() -> None:
    x, site, age = entangled()
    raw = linear_mae(x, age)
    plain = linear_mae(ConceptEraser(conditional=False).fit(x, site).transform(x), age)
    conditional = linear_mae(ConceptEraser().fit(x, site, age).transform(x), age)
    assert plain > 1.5 * raw
    assert conditional < 1.1 * raw


def test_a_continuous_confound_is_linearly_unreadable_on_the_fit_rows() -> None:
    rng = np.random.default_rng(1)
    tiv = rng.normal(1500, 100, 300)
    x = rng.normal(size=(300, 8))
    x[:, :3] += (tiv[:, None] - 1500) / 50
    erased = ConceptEraser(conditional=False, kind="continuous").fit(x, tiv).transform(x)
    r2 = LinearRegression().fit(erased, tiv).score(erased, tiv)
    assert r2 < 1e-6
    assert LinearRegression().fit(x, tiv).score(x, tiv) > 0.5


def test_the_eraser_is_a_scikit_learn_estimator() -> None:
    eraser = ConceptEraser(conditional=False, n_knots=4)
    copy = clone(eraser)
    assert copy.get_params()["n_knots"] == 4 and copy is not eraser
    with pytest.raises(NotFittedError):
        eraser.transform(np.zeros((2, 3)))
    x, site, _ = entangled(20)
    fitted = eraser.fit(x, site)
    assert fitted.rank_ == 2 and fitted.n_features_in_ == 12
    assert fitted.levels_ == {"confound": ["a", "b", "c"]}


def test_the_torch_layer_applies_the_same_map() -> None:
    x, site, age = entangled(30)
    eraser = ConceptEraser().fit(x, site, age)
    layer = eraser.module()
    out = layer(torch.as_tensor(x, dtype=torch.float32)).numpy()
    assert np.allclose(out, eraser.transform(x), atol=1e-4)
    assert set(layer.state_dict()) == {"proj_left", "proj_right", "bias"}


def test_conditional_erasure_without_a_target_is_an_input_error() -> None:
    x, site, _ = entangled(10)
    with pytest.raises(InputError, match="needs the target"):
        ConceptEraser().fit(x, site)


def test_a_single_level_confound_is_an_input_error() -> None:
    x, _, _ = entangled(10)
    with pytest.raises(InputError, match="1 level"):
        ConceptEraser(conditional=False).fit(x, np.repeat("a", len(x)))


# ----------------------------------------------------------------------------- fit --erase


@pytest.fixture(scope="module")
def erased_run(tmp_path_factory: pytest.TempPathFactory, manifest_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("erased")
    data = root / "manifest.csv"
    manifest_factory(per_site=20).to_csv(data, index=False)
    result = invoke(fit_args(data, root / "run", "--erase", "site"))
    if not (root / "run" / "model.pt").is_file():
        pytest.fail(f"the erased run did not finish\n{describe(result)}")
    return root / "run", data


def test_fit_erase_records_the_eraser_and_audits_the_training_rows(
    erased_run: tuple[Path, Path],
) -> None:
    run, _ = erased_run
    info = json.loads((run / "run.json").read_text())["erasure"]
    assert info["confounds"] == {"site": {"kind": "categorical", "mode": "conditional"}}
    assert info["rank"] == 2 and info["fit_rows"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    train_block = metrics["erasure_training_rows"]["leakage"]["site"]
    assert "probe" in train_block and "leakage" in metrics


def test_the_eraser_is_stored_as_weights_and_applied_at_inference_without_a_site(
    erased_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = erased_run
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["state_dict"]["eraser.proj_left"].shape[0] == 32  # (embedding, levels)
    frame = pd.read_csv(data)
    new = tmp_path / "new.csv"
    frame.drop(columns=["site", "age"]).to_csv(new, index=False)
    out = tmp_path / "e.csv"
    result = invoke(["embed", run, "--data", new, "--out", out])
    assert result.exit_code == 0, describe(result)
    embedded = pd.read_csv(out)
    stored = pd.read_csv(run / "embeddings.csv")
    columns = [c for c in stored.columns if c.startswith("e") and c[1:].isdigit()]
    assert np.allclose(embedded[columns].to_numpy(), stored[columns].to_numpy(), atol=1e-5)


def test_a_site_never_seen_in_training_is_predicted(
    erased_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, data = erased_run
    frame = pd.read_csv(data).head(6).assign(site="a-new-scanner")
    new = tmp_path / "new.csv"
    frame.to_csv(new, index=False)
    out = tmp_path / "p.csv"
    result = invoke(["predict", run, "--data", new, "--out", out])
    assert result.exit_code == 0, describe(result)
    assert np.isfinite(pd.read_csv(out)["prediction"]).all()


@pytest.mark.parametrize(
    ("erase", "extra", "fragment", "column"),
    [
        ("nosuch", [], "no such column", "nosuch"),
        ("const", [], "nothing to erase", "const"),
        ("site", ["--set", "model.embedding_dim=2"], "embedding has only 2", None),
        ("age", [], "that is the target", "age"),
        ("site:sideways", [], "unknown option 'sideways'", None),
    ],
    ids=["missing", "constant", "too-narrow", "target", "bad-option"],
)
def test_bad_erase_is_refused_before_anything_is_written(
    tmp_path: Path,
    write_manifest: Callable[..., Path],
    manifest_frame: pd.DataFrame,
    erase: str,
    extra: list[str],
    fragment: str,
    column: str | None,
) -> None:
    data, out = write_manifest(manifest_frame.assign(const=1.0)), tmp_path / "run"
    result = invoke(fit_args(data, out, "--erase", erase, *extra))
    start = where(data, column=column) if column else "error: "
    assert result.exit_code == 2, describe(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(start), describe(result)
    assert fragment in errors[0] and "Traceback" not in result.output, describe(result)
    assert not out.exists()


def compare_args(data: Path, out: Path, arms: str, *extra: object) -> list[object]:
    """A quick two-fold ``compare`` of the given arms, site unlearned, no permutations."""
    return [
        "compare", "--data", data, "--features", r"^f\d$", "--target", "age", "--unlearn",
        "site", "--arms", arms, "--folds", "2", "--epochs", "2", "--jobs", "1",
        "--set", "train.progress_bar=false", "--set", "audit.n_permutations=0",
        "--set", "audit.n_bootstrap=0", *extra, "--out", out,
    ]  # fmt: skip


def test_compare_runs_the_erased_arms_on_the_same_folds(tmp_path: Path, manifest_factory) -> None:
    data = tmp_path / "manifest.csv"
    manifest_factory(per_site=16).to_csv(data, index=False)
    out = tmp_path / "cmp"
    result = invoke(compare_args(data, out, "raw+erase,baseline+erase"))
    assert result.exit_code == 0, describe(result)
    arms = list(json.loads((out / "comparison.json").read_text())["summaries"])
    assert arms == ["raw+erase", "baseline", "baseline+erase"]


# ------------------------------------------------------------------- principal directions kept


def test_variance_drops_low_variance_directions_and_still_erases() -> None:
    x, site, _ = entangled()
    x[:, 3:] *= 0.01  # nine nearly empty directions
    eraser = ConceptEraser(conditional=False, variance=0.95).fit(x, site)
    assert eraser.n_components_ < x.shape[1]
    erased = eraser.transform(x)
    centred = erased - erased.mean(0)
    assert np.linalg.matrix_rank(centred, tol=1e-6) <= eraser.n_components_
    means = np.stack([erased[site == s].mean(0) for s in "abc"])
    assert np.abs(means - means[0]).max() < 1e-8


def test_variance_one_keeps_every_direction() -> None:
    x, site, _ = entangled()
    eraser = ConceptEraser(conditional=False, variance=1.0).fit(x, site)
    assert eraser.n_components_ == x.shape[1]
    assert eraser.proj_left_.shape[1] == eraser.rank_ == 2


def test_at_least_one_direction_survives_the_erasure() -> None:
    rng = np.random.default_rng(0)
    site = np.repeat(["a", "b", "c", "d"], 40)
    x = rng.normal(size=(160, 6)) * 0.01
    x[:, 0] += rng.normal(size=160) * 10  # one direction holds all the variance
    eraser = ConceptEraser(conditional=False, variance=0.5).fit(x, site)
    assert eraser.n_components_ == 4  # three site directions + one left over
    erased = eraser.transform(x)
    assert np.linalg.matrix_rank(erased - erased.mean(0), tol=1e-6) >= 1


@pytest.mark.parametrize("variance", [0.0, 1.5])
def test_a_variance_outside_zero_one_is_an_input_error(variance: float) -> None:
    x, site, _ = entangled()
    with pytest.raises(InputError, match="variance must be in"):
        ConceptEraser(conditional=False, variance=variance).fit(x, site)


# ----------------------------------------------------------------------- erasure during training


def test_the_refresh_refits_the_layer_from_the_encoder_and_restores_train_mode() -> None:
    from types import SimpleNamespace

    from neurounlearn.config import validate_config
    from neurounlearn.data.datasets import TensorDictDataset
    from neurounlearn.erasure import EraserLayer
    from neurounlearn.training.erasing import EraserRefresh

    x, site, age = entangled(n_per_site=30)
    cfg = validate_config({"erase": [{"name": "site"}], "data": {"target": "age"}})
    encoder = torch.nn.Sequential(torch.nn.Linear(12, 6), torch.nn.Dropout(0.5))
    model = SimpleNamespace(encoder=encoder, eraser=EraserLayer(6, 6))
    model.training = True
    model.eval = lambda: encoder.eval()
    model.train = lambda mode=True: encoder.train(mode)
    encoder.train()
    data = TensorDictDataset(x, age, np.zeros((len(x), 1)))
    refresh = EraserRefresh(
        cfg,
        data,
        pd.DataFrame({"site": site}),
        age,
        kinds={"site": "categorical"},
        task="regression",
        batch_size=16,
    )
    refresh.on_train_epoch_start(None, SimpleNamespace(model=model, device=torch.device("cpu")))  # type: ignore[arg-type]
    assert refresh.refits == 1 and encoder.training
    assert model.eraser.proj_left.shape == (6, 6)  # padded to the embedding: one shape always
    with torch.no_grad():
        feats = encoder.eval()(torch.as_tensor(x, dtype=torch.float32))
        erased = model.eraser(feats).numpy()
    fitted = ConceptEraser().fit(feats.numpy().astype(float), site, age)
    assert np.allclose(erased, fitted.transform(feats.numpy()), atol=1e-4)


def test_fit_erases_during_training_and_resumes_with_the_layer(
    tmp_path: Path, manifest_factory
) -> None:
    from neurounlearn.config import validate_config
    from neurounlearn.training.fit import fit
    from neurounlearn.training.predict import load_run

    data = tmp_path / "m.csv"
    manifest_factory(sites=3, per_site=10).to_csv(data, index=False)

    def config(epochs: int):
        return validate_config(
            {
                "data": {"path": str(data), "features": r"^f\d$", "target": "age"},
                "confounds": [{"name": "site"}],
                "erase": [{"name": "site"}],
                "erasure": {"when": "during"},
                "strategy": {"name": "iterative", "pretrain_epochs": 1},
                "model": {"hidden": [8], "embedding_dim": 4},
                "train": {"epochs": epochs, "batch_size": 8, "progress_bar": False},
            }
        )

    out = tmp_path / "run"
    fit(config(2), out)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["state_dict"]["model.eraser.proj_left"].shape == (4, 4)
    fit(config(4), out, resume=True)
    run = load_run(out)
    assert run.info["epochs_run"] == 4 and run.info["erasure"]["when"] == "during"
    assert run.info["erasure"]["during_training"]["refits"] == 2  # epochs 2 and 3, resumed
    assert run.model.eraser is not None


def test_compare_erasing_during_training_fits_the_erased_arm_alone(
    tmp_path: Path, manifest_factory
) -> None:
    data = tmp_path / "manifest.csv"
    manifest_factory(per_site=16).to_csv(data, index=False)
    out = tmp_path / "cmp"
    result = invoke(compare_args(data, out, "grl+erase", "--set", "erasure.when=during"))
    assert result.exit_code == 0, describe(result)
    assert list(json.loads((out / "comparison.json").read_text())["summaries"]) == ["grl+erase"]
    info = json.loads((out / "runs" / "fold1" / "grl+erase" / "run.json").read_text())
    assert info["erasure"]["when"] == "during"


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [("erasure.when=sometimes", "erasure.when"), ("erasure.variance=0", "erasure.variance")],
    ids=["when", "variance"],
)
def test_a_bad_erasure_setting_is_refused_before_anything_is_written(
    tmp_path: Path,
    write_manifest: Callable[..., Path],
    manifest_frame: pd.DataFrame,
    setting: str,
    fragment: str,
) -> None:
    data, out = write_manifest(manifest_frame), tmp_path / "run"
    result = invoke(fit_args(data, out, "--erase", "site", "--set", setting))
    assert result.exit_code == 2, describe(result)
    assert fragment in result.stderr and "Traceback" not in result.output, describe(result)
    assert not out.exists()


# ----------------------------------------------------------------------------------- the report


def test_the_report_shows_the_fit_rows_beside_the_held_out_subjects(
    erased_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = erased_run
    out = tmp_path / "report.html"
    result = invoke(["report", run, "--out", out])
    assert result.exit_code == 0, describe(result)
    html = out.read_text()
    section = html[html.index('id="erasure"') : html.index('id="predictions"')]
    assert "training rows (the eraser&#39;s fit rows)" in section
    assert "held-out subjects" in section
