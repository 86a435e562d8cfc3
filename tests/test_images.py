"""Images end to end through the command line: fit, evaluate, predict and embed on a tiny
simulated cohort, and every bad volume input stopping ``fit`` with exit 2 and nothing written."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from neurounlearn.cli import app
from neurounlearn.config import validate_config
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.training.run import build_model

runner = CliRunner()
QUICK = [
    "--epochs",
    "2",
    "--batch-size",
    "6",
    "--set",
    "model.channels=[4,8]",
    "--set",
    "model.strides=[2,2]",
    "--set",
    "model.embedding_dim=8",
    "--set",
    "model.adversary_heads=2",
    "--set",
    "strategy.pretrain_epochs=1",
    "--set",
    "audit.n_permutations=5",
    "--set",
    "audit.n_permutations_nonlinear=2",
    "--set",
    "audit.n_bootstrap=20",
    "--set",
    "train.progress_bar=false",
]


@pytest.fixture(scope="session")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 sites x 10 subjects at 16^3 (simulated once per test session)."""
    out = tmp_path_factory.mktemp("cohort")
    return simulate_cohort(out / "sim", sites=3, subjects=30, shape=16, seed=0, progress=False)


@pytest.fixture
def own_cohort(cohort: Path, tmp_path: Path) -> Callable[[], tuple[Path, pd.DataFrame]]:
    """A private copy of the cohort (files may be damaged) -> (manifest path, its frame)."""

    def copy() -> tuple[Path, pd.DataFrame]:
        dest = tmp_path / "data"
        shutil.copytree(cohort.parent, dest)
        return dest / "manifest.csv", pd.read_csv(dest / "manifest.csv")

    return copy


def invoke(args: list[Any]) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def fit_image(data: Path, out: Path, *extra: Any, strategy: str = "iterative") -> Any:
    return invoke(
        ["fit", "--data", data, "--input", "image", "--target", "age", "--unlearn", "site",
         "--strategy", strategy, "--out", out, *QUICK, *extra]
    )  # fmt: skip


def assert_exit_2(result: Any, *fragments: str) -> str:
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, result.output
    text = result.stderr
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} missing from:\n{text}"
    return text


# ----------------------------------------------------------------------------- working runs


def test_fit_evaluate_predict_embed_on_images(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = fit_image(cohort, out)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["input"] == "image" and info["input_shape"] == [16, 16, 16]
    preds = pd.read_csv(out / "predictions.csv")
    assert len(preds) == 30 and np.isfinite(preds["prediction"]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["leakage"]["site"]["probe"]["linear"]["chance"] == pytest.approx(1 / 3)

    pred_out, emb_out = tmp_path / "p.csv", tmp_path / "e.csv"
    assert invoke(["predict", out, "--data", cohort, "--out", pred_out]).exit_code == 0
    assert invoke(["embed", out, "--data", cohort, "--out", emb_out]).exit_code == 0
    new = pd.read_csv(pred_out)
    # the same volumes through the same weights: predict repeats what fit wrote
    np.testing.assert_allclose(new["prediction"], preds["prediction"], rtol=1e-4, atol=1e-4)
    emb = pd.read_csv(emb_out)
    assert [c for c in emb.columns if c.startswith("e") and c[1:].isdigit()] == [
        f"e{i}" for i in range(8)
    ]
    # and from Python, a manifest DataFrame in place of the file
    from neurounlearn.training.predict import load_run

    frame = pd.read_csv(cohort)
    frame["image"] = [str(cohort.parent / p) for p in frame["image"]]
    run = load_run(out)
    np.testing.assert_allclose(
        run.predict(frame)["prediction"], preds["prediction"], rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        run.transform(frame)[[f"e{i}" for i in range(8)]], emb[[f"e{i}" for i in range(8)]],
        rtol=1e-4, atol=1e-4,
    )  # fmt: skip


def test_sex_classification_on_images_with_age_and_site_unlearned(
    cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = invoke(
        ["fit", "--data", cohort, "--input", "image", "--target", "sex", "--unlearn", "site",
         "--unlearn", "age:continuous", "--strategy", "grl", "--out", out, *QUICK]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["kind"] == "classification"
    assert metrics["leakage"]["age"]["kind"] == "continuous"
    preds = pd.read_csv(out / "predictions.csv")
    assert {"prob_F", "prob_M"} <= set(preds.columns) and set(preds["prediction"]) <= {"F", "M"}


def test_second_fit_reuses_the_cache(cohort: Path, tmp_path: Path) -> None:
    assert fit_image(cohort, tmp_path / "a", strategy="baseline").exit_code == 0
    second = fit_image(cohort, tmp_path / "b", strategy="baseline")
    assert second.exit_code == 0, second.output
    first_info = json.loads((tmp_path / "a" / "run.json").read_text())["cache"]
    info = json.loads((tmp_path / "b" / "run.json").read_text())["cache"]
    assert not first_info["reused"] and info["reused"]
    assert info["path"] == first_info["path"]


def test_predict_works_without_site_and_age_columns(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert fit_image(cohort, out, strategy="grl").exit_code == 0
    frame = pd.read_csv(cohort)
    frame["image"] = [str(cohort.parent / p) for p in frame["image"]]
    new = tmp_path / "new.csv"
    frame[["subject", "image"]].to_csv(new, index=False)
    result = invoke(["predict", out, "--data", new, "--out", tmp_path / "p.csv"])
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == ["subject", "image", "prediction"]


def test_bf16_runs_on_cpu_when_asked(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    extra = ["--set", "model.channels_last=false", "--set", "train.precision=bf16-mixed"]
    result = fit_image(cohort, out, *extra, strategy="baseline")
    assert result.exit_code == 0, result.output
    info = json.loads((out / "run.json").read_text())
    assert info["channels_last"] is False and info["precision"] == "bf16-mixed"
    assert np.isfinite(pd.read_csv(out / "predictions.csv")["prediction"]).all()


def test_default_image_run_on_cpu_is_float32_channels_last(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert fit_image(cohort, out, strategy="baseline").exit_code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["precision"] == "32-true" and info["channels_last"] is True


def test_an_image_regression_run_takes_the_image_defaults(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert fit_image(cohort, out, strategy="baseline").exit_code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["augment"] == "spatial"
    assert saved["train"]["restore"] == "best" and saved["train"]["weight_decay"] == 0.05
    history = pd.read_csv(out / "history.csv")
    kept = json.loads((out / "run.json").read_text())["restored_epoch"]
    assert kept == int(history.loc[history["val_task_loss"].idxmin(), "epoch"])


def test_auto_precision_is_float32_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from neurounlearn.training import fit as fit_module

    monkeypatch.setattr(fit_module, "uses_gpu", lambda accelerator: False)
    assert fit_module.resolve_precision("auto", "auto", "image") == "32-true"
    assert fit_module.resolve_precision("bf16-mixed", "auto", "image") == "bf16-mixed"


def test_auto_precision_is_bf16_on_a_bf16_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from neurounlearn.training import fit as fit_module

    monkeypatch.setattr(fit_module, "uses_gpu", lambda accelerator: True)
    monkeypatch.setattr(fit_module.torch.cuda, "is_bf16_supported", lambda: True)
    assert fit_module.resolve_precision("auto", "auto", "image") == "bf16-mixed"
    assert fit_module.resolve_precision("auto", "auto", "features") == "32-true"


def test_auto_channels_last_only_for_float32_images_on_cpu() -> None:
    from neurounlearn.training.fit import resolve_channels_last

    assert resolve_channels_last("auto", "cpu", "image", "32-true") is True
    assert resolve_channels_last("auto", "cpu", "image", "bf16-mixed") is False
    assert resolve_channels_last("auto", "cpu", "features", "32-true") is False
    assert resolve_channels_last(True, "cpu", "image", "bf16-mixed") is True


@pytest.mark.parametrize("encoder", ["compact", "paper", "sfcn"])
def test_config_builds_each_image_encoder(encoder: str) -> None:
    cfg = validate_config(
        {
            "data": {"input": "image"},
            "confounds": [{"name": "site"}],
            "model": {"encoder": encoder, "channels": [4, 8], "embedding_dim": 8},
        }
    )
    enc = TableEncoding([], [], [], "age", confound_levels={"site": ["A", "B", "C"]})
    model = build_model(cfg, enc, input_shape=(16, 16, 16))
    out = model(torch_zeros((2, 1, 16, 16, 16)))
    assert out.features.shape == (2, 8) and out.confounds["site"].shape[-1] == 3


def torch_zeros(shape: tuple[int, ...]) -> Any:
    import torch

    return torch.zeros(shape)


def test_mlp_encoder_with_images_is_an_input_error(cohort: Path, tmp_path: Path) -> None:
    result = fit_image(cohort, tmp_path / "run", "--set", "model.encoder=mlp")
    assert_exit_2(result, "model.encoder 'mlp' needs a feature table")


# ----------------------------------------------------------------------------- bad input


def _write_manifest(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False)


def _fit_fails(manifest: Path, tmp_path: Path, *extra: Any) -> str:
    out = tmp_path / "run"
    result = fit_image(manifest, out, *extra)
    text = assert_exit_2(result, str(manifest))
    assert not out.exists(), "a failed fit must write nothing"
    assert not (tmp_path / "volume-cache").exists() or not any(
        (tmp_path / "volume-cache").iterdir()
    ), "a failed fit must not start a cache"
    return text


def test_missing_image_file(own_cohort: Callable[..., Any], tmp_path: Path) -> None:
    manifest, frame = own_cohort()
    (manifest.parent / frame.loc[3, "image"]).unlink()
    text = _fit_fails(manifest, tmp_path)
    assert "row 4" in text and "column 'image'" in text and frame.loc[3, "image"] in text


def test_file_that_is_not_nifti(own_cohort: Callable[..., Any], tmp_path: Path) -> None:
    manifest, frame = own_cohort()
    (manifest.parent / frame.loc[0, "image"]).write_bytes(gzip.compress(b"subject,age\n1,2\n"))
    text = _fit_fails(manifest, tmp_path)
    assert "row 1" in text and "column 'image'" in text


def test_truncated_nifti(own_cohort: Callable[..., Any], tmp_path: Path) -> None:
    manifest, frame = own_cohort()
    path = manifest.parent / frame.loc[5, "image"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    text = _fit_fails(manifest, tmp_path)
    assert "row 6" in text and frame.loc[5, "image"] in text


def _replace_image(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), str(path))


def test_4d_image(own_cohort: Callable[..., Any], tmp_path: Path) -> None:
    manifest, frame = own_cohort()
    _replace_image(manifest.parent / frame.loc[2, "image"], np.ones((16, 16, 16, 3)))
    text = _fit_fails(manifest, tmp_path)
    assert "row 3" in text and "4D" in text


def test_nan_voxels(own_cohort: Callable[..., Any], tmp_path: Path) -> None:
    manifest, frame = own_cohort()
    path = manifest.parent / frame.loc[7, "image"]
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    data[8, 8, 8] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    text = _fit_fails(manifest, tmp_path)
    assert "row 8" in text and "NaN" in text


def test_label_map_of_another_shape(own_cohort: Callable[..., Any], tmp_path: Path) -> None:
    manifest, frame = own_cohort()
    path = manifest.parent / frame.loc[1, "label"]
    nib.save(nib.Nifti1Image(np.zeros((12, 12, 12), np.uint8), np.eye(4)), str(path))
    text = _fit_fails(manifest, tmp_path, "--set", "data.label_column=label")
    assert "row 2" in text and "column 'label'" in text


def test_empty_mask(own_cohort: Callable[..., Any], tmp_path: Path) -> None:
    manifest, frame = own_cohort()
    mask = manifest.parent / "mask.nii.gz"
    affine = nib.load(str(manifest.parent / frame.loc[0, "image"])).affine
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.uint8), affine), str(mask))
    frame["mask"] = ""
    frame["mask"] = frame["mask"].astype(object)
    frame.loc[:, "mask"] = [str(mask.name) if i == 4 else "" for i in range(len(frame))]
    full = manifest.parent / frame.loc[0, "label"]  # any non-empty mask for the other rows
    frame.loc[frame.index != 4, "mask"] = str(full.relative_to(manifest.parent))
    _write_manifest(frame, manifest)
    text = _fit_fails(manifest, tmp_path, "--set", "data.mask_column=mask")
    assert "row 5" in text and "column 'mask'" in text and "empty" in text


def test_images_of_different_shapes_without_shape(
    own_cohort: Callable[..., Any], tmp_path: Path
) -> None:
    manifest, frame = own_cohort()
    _replace_image(manifest.parent / frame.loc[9, "image"], np.ones((16, 16, 20)))
    text = _fit_fails(manifest, tmp_path)
    assert "row 10" in text and "data.shape" in text


def test_images_of_different_shapes_with_shape_train(
    own_cohort: Callable[..., Any], tmp_path: Path
) -> None:
    manifest, frame = own_cohort()
    path = manifest.parent / frame.loc[9, "image"]
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    nib.save(nib.Nifti1Image(np.pad(data, ((0, 0), (0, 0), (0, 4))), img.affine), str(path))
    result = fit_image(manifest, tmp_path / "run", "--set", "data.shape=16", strategy="baseline")
    assert result.exit_code == 0, result.output


def test_an_uncreatable_cache_folder_is_one_clear_line(cohort: Path, tmp_path: Path) -> None:
    cache, out = Path("/sys/neurounlearn-test-cache"), tmp_path / "run"  # not even for root
    result = fit_image(cohort, out, "--set", f"data.cache_dir={cache}")
    text = assert_exit_2(result, str(cache))
    assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1, text
    assert not out.exists() and not cache.exists()


def test_corrupt_cache_is_rebuilt_with_a_message(cohort: Path, tmp_path: Path) -> None:
    assert fit_image(cohort, tmp_path / "a", strategy="baseline").exit_code == 0
    cache = Path(json.loads((tmp_path / "a" / "run.json").read_text())["cache"]["path"])
    raw = bytearray(cache.read_bytes())
    raw[-100:] = b"\xff" * 100  # damage the last volume's voxels, header intact
    cache.write_bytes(bytes(raw))
    result = fit_image(cohort, tmp_path / "b", strategy="baseline")
    assert result.exit_code == 0, result.output
    assert "corrupt" in result.output and "rebuilding" in result.output
    assert json.loads((tmp_path / "b" / "run.json").read_text())["cache"]["reused"] is False


def test_check_command_reports_image_problems(
    own_cohort: Callable[..., Any], tmp_path: Path
) -> None:
    manifest, frame = own_cohort()
    (manifest.parent / frame.loc[3, "image"]).unlink()
    result = invoke(["check", "--data", manifest, "--input", "image", "--unlearn", "site"])
    assert_exit_2(result, "row 4", "column 'image'")


# ----------------------------------------------------------------------------- simulate command


def test_simulate_command_writes_a_cohort(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    result = invoke(
        ["simulate", out, "--subjects", "9", "--shape", "16", "--ages", "30-40,50-60,70-80"]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "manifest.csv")
    assert list(frame.columns) == ["subject", "image", "label", "site", "age", "sex"]
    by_site = frame.groupby("site")["age"]
    assert by_site.min().tolist() >= [30, 50, 70] and by_site.max().tolist() <= [40, 60, 80]
    assert (out / "sites.png").is_file() and (out / "generation.json").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--sites", "1"], "sites"),
        (["--ages", "30-x"], "--ages"),
        (["--ages", "biobank"], "biobank"),
    ],
    ids=["one-site", "unreadable-range", "unknown-preset"],
)
def test_simulate_command_bad_arguments(tmp_path: Path, args: list[str], fragment: str) -> None:
    out = tmp_path / "sim"
    result = invoke(["simulate", out, "--subjects", "9", "--shape", "16", *args])
    assert_exit_2(result, fragment)
    assert not (out / "manifest.csv").exists()
