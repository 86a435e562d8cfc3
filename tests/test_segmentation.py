"""Segmentation with unlearning: the U-Net's attach points, the masked Dice + CE loss, the
strategies on label maps, Dice metrics, the simulator preset, and the command line end to end
(fit, evaluate, predict, embed) with every bad input stopping ``fit`` with exit 2."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from neurounlearn.cli import app
from neurounlearn.config import ConfoundConfig, ModelConfig
from neurounlearn.data.simulate import simulate_cohort
from neurounlearn.data.volumes import (
    PreprocessSettings,
    preprocess,
    preprocessed_affine,
    to_input_grid,
)
from neurounlearn.errors import InputError
from neurounlearn.evaluation.metrics import dice_per_class, segmentation_metrics
from neurounlearn.losses import masked_segmentation_loss
from neurounlearn.models.segmentation import SegmentationModel, UNet3D, pooled
from neurounlearn.training.strategies import BaselineStrategy, GRLStrategy, IterativeStrategy
from neurounlearn.training.tasks import task_of

runner = CliRunner()
TINY = (4, 4, 8, 8, 8, 4)
QUICK = [
    "--epochs", "2", "--batch-size", "4",
    "--set", "model.channels=[4,4,8,8,8,4]",
    "--set", "model.adversary_heads=2",
    "--set", "strategy.pretrain_epochs=1",
    "--set", "audit.n_permutations=5",
    "--set", "audit.n_permutations_nonlinear=2",
    "--set", "audit.n_bootstrap=20",
    "--set", "train.progress_bar=false",
]  # fmt: skip


def tiny_model(attach: tuple[str, ...] = ("bottleneck", "final"), heads: int = 2) -> Any:
    torch.manual_seed(0)
    unet = UNet3D(out_channels=4, features=TINY)
    return SegmentationModel(unet, {"site": 2}, attach=attach, n_heads=heads)


def seg_batch(labelled: list[bool] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    labelled = labelled if labelled is not None else [True, True, False, False]
    n = len(labelled)
    return {
        "x": torch.randn(n, 1, 16, 16, 16, generator=g),
        "y": torch.tensor([1.0 if k else float("nan") for k in labelled]),
        "label": torch.randint(0, 4, (n, 16, 16, 16), generator=g),
        "codes": torch.tensor([[i % 2] for i in range(n)]),
    }


class Host:
    """A plain stand-in for the Lightning module."""

    def __init__(self, model: Any, strategy: Any, *, epoch: int = 1) -> None:
        self.model = model
        self.current_epoch = epoch
        self.progress = 0.5
        self._opts = strategy.configure_optimizers(
            model, lr=1e-2, weight_decay=0.0, adversary_lr=1e-2
        )

    def optimizers(self) -> Any:
        return self._opts

    def manual_backward(self, loss: torch.Tensor) -> None:
        loss.backward()


# ----------------------------------------------------------------------------- the model


def test_heads_at_both_points_form_one_ensemble() -> None:
    model = tiny_model(heads=3)
    f = model.encode(torch.zeros(2, 1, 16, 16, 16))
    assert model.predict_task(f).shape == (2, 4, 16, 16, 16)
    # 3 heads at each of 2 points
    assert model.confound_logits(f)["site"].shape == (6, 2, 2)
    one = tiny_model(attach=("final",), heads=1)
    assert one.confound_logits(one.encode(torch.zeros(2, 1, 16, 16, 16)))["site"].shape == (2, 2)


def test_a_head_at_an_encoder_level_reaches_only_the_layers_before_it() -> None:
    model = tiny_model(attach=("encoder0", "encoder1"), heads=1)
    model.reversal["site"].set_weight(1.0)
    f = model.encode(torch.randn(2, 1, 16, 16, 16))
    assert f.points["encoder0"].shape == (2, TINY[0], 16, 16, 16)  # full resolution
    assert f.points["encoder1"].shape == (2, TINY[1], 8, 8, 8)
    logits = model.confound_logits(f, reverse=True)["site"]
    assert logits.shape == (2, 2, 2)  # one head at each of the two levels
    logits.sum().backward()
    net = model.encoder.net
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.conv_0.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.down_1.parameters())
    # nothing past encoder1 feeds these heads
    assert all(p.grad is None for p in net.down_2.parameters())
    assert all(p.grad is None for p in net.upcat_1.parameters())


def test_pooled_features_are_channel_means_then_sds() -> None:
    fmap = torch.stack([torch.zeros(2, 2, 2), torch.arange(8.0).reshape(2, 2, 2)]).unsqueeze(0)
    out = pooled(fmap)
    assert out.shape == (1, 4)
    assert out[0].tolist() == pytest.approx([0.0, 3.5, 0.0, float(np.arange(8.0).std())])


def test_attach_points_parse_from_a_comma_list_in_order_without_repeats() -> None:
    cfg = ModelConfig(attach="encoder1, bottleneck,encoder1")  # type: ignore[arg-type]
    assert cfg.attach == ["encoder1", "bottleneck"]
    with pytest.raises(ValueError, match="encoder0, encoder1, encoder2, encoder3, bottleneck"):
        ModelConfig(attach="encoder4")  # type: ignore[arg-type]


def test_unknown_attach_point_is_refused_by_the_model() -> None:
    with pytest.raises(ValueError, match="unknown attach point"):
        SegmentationModel(UNet3D(out_channels=2, features=TINY), {"site": 2}, attach=["middle"])


# ----------------------------------------------------------------------------- the loss


def test_rows_without_a_label_map_give_no_task_gradient() -> None:
    logits = torch.randn(3, 4, 8, 8, 8, requires_grad=True)
    labels = torch.randint(0, 4, (3, 8, 8, 8))
    loss = masked_segmentation_loss(logits, labels, torch.tensor([1.0, float("nan"), 1.0]))
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[1].abs().sum() == 0
    assert logits.grad[0].abs().sum() > 0


def test_a_batch_without_label_maps_has_a_zero_loss_in_the_graph() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    loss = masked_segmentation_loss(logits, torch.zeros(2, 4, 4, 4, dtype=torch.long),
                                    torch.tensor([float("nan")] * 2))  # fmt: skip
    assert float(loss) == 0.0
    loss.backward()  # no error


def test_perfect_logits_give_a_lower_loss_than_wrong_ones() -> None:
    labels = torch.randint(0, 3, (2, 6, 6, 6))
    right = 10.0 * torch.nn.functional.one_hot(labels, 3).permute(0, 4, 1, 2, 3).float()
    wrong = right.roll(1, dims=1)
    y = torch.ones(2)
    assert masked_segmentation_loss(right, labels, y) < masked_segmentation_loss(wrong, labels, y)


# ----------------------------------------------------------------------------- strategies


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (BaselineStrategy, {}),
        (IterativeStrategy, {"mode": "sequential", "pretrain_epochs": 0}),
        (IterativeStrategy, {"mode": "joint", "pretrain_epochs": 0}),
        (GRLStrategy, {}),
    ],
)
def test_every_strategy_steps_on_label_maps(cls: Any, kw: dict[str, Any]) -> None:
    model = tiny_model()
    strategy = cls(confounds=[ConfoundConfig(name="site")], task_kind="segmentation", **kw)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    heads = [p.detach().clone() for p in model.confound_heads.parameters()]
    logs = strategy.training_step(Host(model, strategy), seg_batch())
    assert math.isfinite(float(logs["task_loss"]))
    assert any(
        not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True)
    )
    assert any(
        not torch.equal(a, b) for a, b in zip(heads, model.confound_heads.parameters(), strict=True)
    )
    if cls is not BaselineStrategy:
        assert math.isfinite(float(logs["conf_loss/site"]))


def test_unlabelled_batches_still_unlearn() -> None:
    """With no label map in the batch the encoder moves on the confusion loss alone."""
    model = tiny_model()
    strategy = IterativeStrategy(
        confounds=[ConfoundConfig(name="site")], task_kind="segmentation", pretrain_epochs=0
    )
    before = [p.detach().clone() for p in model.encoder.parameters()]
    logs = strategy.training_step(Host(model, strategy), seg_batch([False] * 4))
    assert float(logs["task_loss"]) == 0.0
    assert any(
        not torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True)
    )


def test_memory_keeps_only_the_attach_points_maps() -> None:
    model = tiny_model(attach=("bottleneck",))
    strategy = GRLStrategy(
        confounds=[ConfoundConfig(name="site")],
        task_kind="segmentation",
        memory=6,
        memory_points=model.attach,
    )
    host = Host(model, strategy)
    for _ in range(2):
        strategy.training_step(host, seg_batch())
    assert set(strategy.memory.features.points) == {"bottleneck"}  # no full-size final maps
    assert len(strategy.memory) == 6
    f = model.encode(seg_batch()["x"])
    assert strategy.heads_on(model, f, seg_batch())["site"].shape == (2, 4, 2)  # 2 heads


def test_auto_memory_is_for_segmentation_only() -> None:
    assert task_of("segmentation").memory("auto") == (8, 512 * 2**20)
    assert task_of("regression").memory("auto") == (0, None)
    assert task_of("segmentation").memory(8) == (8, None)  # a given size is kept as given


# ----------------------------------------------------------------------------- metrics


def test_dice_per_class_excludes_background_and_leaves_absent_classes_out() -> None:
    true = np.zeros((2, 4, 4, 4), dtype=int)
    true[:, :2] = 1
    true[0, 2:] = 2  # class 2 only in the first volume
    pred = true.copy()
    pred[1, 0] = 0  # half of volume 1's class 1 missed
    dice = dice_per_class(pred, true, 3)
    assert dice.shape == (2, 2)
    assert dice[0].tolist() == [1.0, 1.0]
    assert dice[1, 0] == pytest.approx(2 * 16 / (16 + 32))
    assert math.isnan(dice[1, 1])
    block = segmentation_metrics(dice, ["bg", "a", "b"], ["X", "Y"])
    assert block["dice"]["b"] == 1.0  # the absent class does not count as 0
    assert block["per_site"]["Y"]["dice"]["b"] is None
    assert block["per_site"]["Y"]["mean_dice"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(("shape", "least"), [(None, 1.0), (32, 0.85)])
def test_label_maps_go_back_to_the_input_grid(
    seg_cohort: Path, shape: int | None, least: float
) -> None:
    """The true label map, preprocessed (cropped and resized with ``shape``) and put back on
    the input's grid, matches the original: exactly without resizing, closely with it."""
    frame = pd.read_csv(seg_cohort)
    image = seg_cohort.parent / frame["image"][0]
    label = seg_cohort.parent / frame["label"][0]
    settings = PreprocessSettings(shape=shape)
    _, lab = preprocess(image, settings=settings, label_path=label)
    assert lab is not None
    probabilities = np.eye(4)[lab].transpose(3, 0, 1, 2)
    affine = preprocessed_affine(image, settings=settings)
    back, out_affine = to_input_grid(probabilities, affine, image)
    original = nib.load(str(label))
    truth = np.asanyarray(original.dataobj)
    assert back.shape == truth.shape
    np.testing.assert_allclose(out_affine, original.affine)
    assert dice_per_class(back[None], truth[None], 4).min() >= least


# ----------------------------------------------------------------------------- simulator


def test_segmentation_preset_has_two_strongly_different_scanners(seg_cohort: Path) -> None:
    generation = json.loads((seg_cohort.parent / "generation.json").read_text())
    assert generation["scanner_preset"] == "segmentation" and generation["sites"] == 2
    a, b = generation["site_parameters"]["A"], generation["site_parameters"]["B"]
    assert abs(math.log(b["gamma"] / a["gamma"])) > 0.5
    assert b["bias_amplitude"] >= 4 * a["bias_amplitude"]


def test_preset_refuses_another_number_of_sites(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="has 2 sites"):
        simulate_cohort(tmp_path / "x", preset="segmentation", sites=3, subjects=6, shape=16)


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="session")
def seg_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The segmentation preset: 2 sites x 8 subjects at 16^3 (simulated once per session)."""
    out = tmp_path_factory.mktemp("segcohort")
    return simulate_cohort(
        out / "sim", preset="segmentation", subjects=16, shape=16, seed=0, progress=False
    )


@pytest.fixture
def own(seg_cohort: Path, tmp_path: Path) -> Callable[[], tuple[Path, pd.DataFrame]]:
    def copy() -> tuple[Path, pd.DataFrame]:
        dest = tmp_path / "data"
        shutil.copytree(seg_cohort.parent, dest)
        return dest / "manifest.csv", pd.read_csv(dest / "manifest.csv")

    return copy


def invoke(args: list[Any]) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def fit_seg(data: Path, out: Path, *extra: Any) -> Any:
    return invoke(
        ["fit", "--data", data, "--input", "image", "--task", "segmentation",
         "--target", "label", "--unlearn", "site", "--strategy", "iterative",
         "--out", out, *QUICK, *extra]
    )  # fmt: skip


def assert_exit_2(result: Any, out: Path, *fragments: str) -> None:
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} missing from:\n{result.stderr}"
    assert not out.exists()


def test_fit_evaluate_predict_embed_segmentation(own: Any, tmp_path: Path) -> None:
    data, frame = own()
    frame.loc[[9, 10, 11], "label"] = ""  # three site-B volumes without label maps
    frame.to_csv(data, index=False)
    out = tmp_path / "run"
    result = fit_seg(data, out, "--attach", "bottleneck,final", "--classes", "bg,CSF,GM,WM")
    assert result.exit_code == 0, result.output
    assert "Dice CSF" in result.output
    info = json.loads((out / "run.json").read_text())
    assert info["adversary_memory"] == 8  # auto
    assert info["precise_bn_batches"] > 0  # auto: batch-norm statistics recomputed

    preds = pd.read_csv(out / "predictions.csv")
    assert preds["labelled"].tolist() == [i not in (9, 10, 11) for i in range(16)]
    assert preds.loc[~preds["labelled"], "dice_GM"].isna().all()
    assert preds.loc[preds["labelled"], "dice_mean"].between(0, 1).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"]["kind"] == "segmentation"
    assert set(metrics["task"]["dice"]) == {"CSF", "GM", "WM"}  # background excluded
    assert set(metrics["task"]["per_site"]) <= {"A", "B"}
    assert {"site@bottleneck", "site@final"} <= set(metrics["leakage"])
    assert metrics["leakage"]["site@final"]["probe"]["linear"]["chance"] == pytest.approx(0.5)

    new = data.parent / "new.csv"
    frame[["subject", "image"]].head(3).to_csv(new, index=False)
    seg_dir = tmp_path / "segs"
    result = invoke(["predict", out, "--data", new, "--out", seg_dir])
    assert result.exit_code == 0, result.output
    written = nib.load(str(seg_dir / "sub-0000_seg.nii.gz"))
    source = nib.load(str(data.parent / frame["image"][0]))
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine)
    assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2, 3}
    listing = pd.read_csv(seg_dir / "segmentations.csv")
    assert len(listing) == 3 and {"volume_ml_CSF", "volume_ml_WM"} <= set(listing.columns)

    emb = tmp_path / "emb.csv"
    assert invoke(["embed", out, "--data", new, "--out", emb]).exit_code == 0
    columns = pd.read_csv(emb).columns
    # pooled maps: 2 x channels at each point (encoder0 4, bottleneck 8, final 4 channels)
    assert sum(c.startswith("encoder0_e") for c in columns) == 8
    assert sum(c.startswith("bottleneck_e") for c in columns) == 16
    assert sum(c.startswith("final_e") for c in columns) == 8

    # external evaluation: every labelled row of another manifest is scored
    result = invoke(["evaluate", out, "--data", data])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated_on"] == str(data) and metrics["task"]["n"] == 13


def test_only_training_reads_are_augmented(
    own: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from neurounlearn.data.augment import IntensityAugment

    calls: list[tuple[int, ...]] = []
    original = IntensityAugment.__call__

    def counted(self: IntensityAugment, x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return original(self, x)

    monkeypatch.setattr(IntensityAugment, "__call__", counted)
    data, _ = own()
    out = tmp_path / "run"
    result = fit_seg(data, out, "--set", "data.augment=intensity")
    assert result.exit_code == 0, result.output
    assert "augment: intensity" in (out / "config.yaml").read_text()
    n_train = int((pd.read_csv(out / "splits.csv")["split"] == "train").sum())
    # 2 epochs of full batches of 4; validation, precise BN, evaluation: the volumes as cached
    assert calls == [(16, 16, 16)] * ((n_train // 4) * 4 * 2)
    assert json.loads((out / "run.json").read_text())["precise_bn_batches"] > 0


def test_label_values_outside_the_declared_classes(own: Any, tmp_path: Path) -> None:
    data, _ = own()
    out = tmp_path / "run"
    assert_exit_2(
        fit_seg(data, out, "--classes", "background,CSF"), out, "row 1", "column 'label'",
        "holds label 3", "declared",
    )  # fmt: skip


def test_a_label_map_missing_on_every_row(own: Any, tmp_path: Path) -> None:
    data, frame = own()
    frame["label"] = ""
    frame.to_csv(data, index=False)
    out = tmp_path / "run"
    assert_exit_2(fit_seg(data, out), out, "no row has a label map", "column 'label'")


def test_unknown_attach_point(seg_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert_exit_2(
        fit_seg(seg_cohort, out, "--attach", "bottleneck,middle"), out,
        "unknown attach point(s) middle", "bottleneck, final",
    )  # fmt: skip


def test_segmentation_needs_image_input(
    write_manifest: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = invoke(
        ["fit", "--data", write_manifest(), "--features", r"^f\d$", "--task", "segmentation",
         "--target", "age", "--unlearn", "site", "--out", out]
    )  # fmt: skip
    assert_exit_2(result, out, "--task segmentation needs images", "--input image")


def test_check_accepts_rows_without_label_maps(own: Any) -> None:
    data, frame = own()
    frame.loc[[3, 12], "label"] = ""
    frame.to_csv(data, index=False)
    result = invoke(["check", "--data", data, "--input", "image", "--task", "segmentation",
                     "--target", "label", "--unlearn", "site"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "ok: 16 rows" in result.output


def test_compare_refuses_segmentation(seg_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    result = invoke(
        ["compare", "--data", seg_cohort, "--input", "image", "--task", "segmentation",
         "--target", "label", "--unlearn", "site", "--out", out]
    )  # fmt: skip
    assert_exit_2(result, out, "compare does not handle segmentation")
