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


def test_compare_runs_the_erased_arms_on_the_same_folds(tmp_path: Path, manifest_factory) -> None:
    data = tmp_path / "manifest.csv"
    manifest_factory(per_site=16).to_csv(data, index=False)
    out = tmp_path / "cmp"
    result = invoke(
        ["compare", "--data", data, "--features", r"^f\d$", "--target", "age", "--unlearn",
         "site", "--arms", "raw+erase,baseline+erase", "--folds", "2", "--epochs", "2",
         "--jobs", "1", "--set", "train.progress_bar=false", "--set", "audit.n_permutations=0",
         "--set", "audit.n_bootstrap=0", "--out", out]
    )  # fmt: skip
    assert result.exit_code == 0, describe(result)
    arms = list(json.loads((out / "comparison.json").read_text())["summaries"])
    assert arms == ["raw+erase", "baseline", "baseline+erase"]
