"""Scanner-like intensity and spatial augmentation of training volumes (``data.augment``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from neurounlearn.cli import app
from neurounlearn.data.augment import IntensityAugment, SpatialAugment, VolumeAugment


def phantom() -> tuple[np.ndarray, np.ndarray]:
    """A 24^3 volume: zero background, a cube of three 'tissues' (z-scored) with a little noise."""
    rng = np.random.default_rng(0)
    tissue = np.zeros((24, 24, 24), dtype=np.int64)
    tissue[4:20, 4:20, 4:20] = 1
    tissue[7:17, 7:17, 7:17] = 2
    tissue[10:14, 10:14, 10:14] = 3
    x = np.choose(tissue, [0.0, 0.2, 0.55, 0.85]).astype(np.float32)
    inside = tissue > 0
    x[inside] += rng.normal(0, 0.01, inside.sum()).astype(np.float32)
    x[inside] = (x[inside] - x[inside].mean()) / x[inside].std()
    return x, tissue


def test_the_background_stays_0_and_the_foreground_keeps_its_mean_and_sd() -> None:
    x, tissue = phantom()
    augment = IntensityAugment(seed=0)
    for _ in range(10):
        y = augment(x)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert (y[tissue == 0] == 0).all()
        assert abs(float(y[tissue > 0].mean()) - float(x[tissue > 0].mean())) < 1e-4
        assert abs(float(y[tissue > 0].std()) - float(x[tissue > 0].std())) < 1e-3


def test_each_draw_changes_the_tissue_contrast_differently() -> None:
    x, tissue = phantom()
    augment = IntensityAugment(seed=0)

    def contrast(v: np.ndarray) -> float:
        # how far grey sits between CSF and white matter: 0.54 in the phantom
        csf, gm, wm = (float(v[tissue == k].mean()) for k in (1, 2, 3))
        return (gm - csf) / (wm - csf)

    ratios = [contrast(augment(x)) for _ in range(30)]
    assert abs(contrast(x) - 0.543) < 0.01
    assert max(ratios) - min(ratios) > 0.15  # gammas of 0.5-2 move grey towards CSF or WM
    assert sum(abs(r - contrast(x)) > 0.02 for r in ratios) >= 10


def test_the_same_seed_draws_the_same_changes() -> None:
    x, _ = phantom()
    a, b, c = IntensityAugment(seed=3), IntensityAugment(seed=3), IntensityAugment(seed=4)
    first = [a(x) for _ in range(4)]
    np.testing.assert_array_equal(np.stack(first), np.stack([b(x) for _ in range(4)]))
    assert not np.array_equal(np.stack(first), np.stack([c(x) for _ in range(4)]))


def test_an_empty_or_flat_volume_is_returned_unchanged() -> None:
    augment = IntensityAugment(seed=0)
    empty = np.zeros((8, 8, 8), np.float32)
    flat = np.full((8, 8, 8), 2.0, np.float32)
    np.testing.assert_array_equal(augment(empty), empty)
    np.testing.assert_array_equal(augment(flat), flat)


def test_augmenting_a_feature_table_is_refused(
    write_manifest: Callable[..., Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        ["fit", "--data", str(write_manifest()), "--features", r"^f\d$", "--target", "age",
         "--unlearn", "site", "--set", "data.augment=intensity", "--out", str(out)],
    )  # fmt: skip
    assert "Traceback" not in result.output
    assert result.exit_code == 2, result.output
    assert "data.augment=intensity changes images" in result.stderr
    assert "--input image" in result.stderr
    assert not out.exists()


def test_spatial_moves_the_label_map_with_the_image() -> None:
    x, tissue = phantom()
    augment = SpatialAugment(seed=0, with_labels=True)
    for _ in range(5):
        y, moved = augment(x, tissue)
        assert moved is not None and moved.dtype == tissue.dtype
        assert set(np.unique(moved)) <= {0, 1, 2, 3}
        assert not np.array_equal(moved, tissue)  # a shift, rotation or scale happened
        # the image's brightest tissue lies where the moved labels say it does
        assert float(y[moved == 3].mean()) > float(y[moved == 1].mean()) + 1.0


def test_spatial_flips_left_right_about_half_the_time() -> None:
    x = np.zeros((24, 24, 24), dtype=np.float32)
    x[2:8, 8:16, 8:16] = 1.0  # a block on the left (axis 0 runs left to right)
    augment = SpatialAugment(seed=0)
    moved = [augment(x)[0] for _ in range(40)]
    flipped = sum(float(y[12:].sum()) > float(y[:12].sum()) for y in moved)
    assert 10 <= flipped <= 30


def test_a_restored_augmenter_draws_what_the_original_draws_next() -> None:
    x, tissue = phantom()
    first = VolumeAugment("intensity+spatial", seed=3, with_labels=True)
    first(x, tissue)  # moves its streams on
    second = VolumeAugment("intensity+spatial", seed=99, with_labels=True)
    second.load_state_dict(first.state_dict())
    a, la = first(x, tissue)
    b, lb = second(x, tissue)
    assert np.array_equal(a, b) and la is not None and lb is not None and np.array_equal(la, lb)


def test_intensity_alone_draws_what_the_intensity_augmenter_draws() -> None:
    x, _ = phantom()
    assert np.array_equal(VolumeAugment("intensity", seed=5)(x)[0], IntensityAugment(seed=5)(x))
