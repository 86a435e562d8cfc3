"""The image data path: checking NIfTI files, MONAI preprocessing, the memory-mapped cache."""

from __future__ import annotations

import gzip
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from neurounlearn.data import volumes
from neurounlearn.data.manifest import MAX_ROW_PROBLEMS
from neurounlearn.data.volumes import (
    CachedVolumes,
    PreprocessSettings,
    VolumeColumns,
    build_cache,
    find_volume_problems,
    preprocess,
    resolve_paths,
)
from neurounlearn.errors import InputError, Problem

SIDE = 12


def blob(shape: tuple[int, ...] = (SIDE,) * 3, seed: int = 0) -> np.ndarray:
    """A bright ellipsoid with texture inside a zero background, like a skull-stripped brain."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape[:3], dtype=float)
    centre = [(s - 1) / 2 for s in shape[:3]]
    radius = [s * 0.35 for s in shape[:3]]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius, strict=True)) < 1
    return (inside * (100 + 10 * rng.normal(size=shape[:3]))).astype(np.float32)


def save(path: Path, data: np.ndarray, zooms: tuple[float, float, float] = (1, 1, 1)) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


@pytest.fixture
def cohort(tmp_path: Path) -> Callable[..., tuple[pd.DataFrame, Path]]:
    """``cohort(n=4, labels=False)`` -> (frame, manifest path) with relative image paths."""

    def make(n: int = 4, labels: bool = False) -> tuple[pd.DataFrame, Path]:
        rows = []
        for i in range(n):
            image = blob(seed=i)
            save(tmp_path / f"sub{i}.nii.gz", image)
            row = {"subject": f"sub{i}", "image": f"sub{i}.nii.gz"}
            if labels:
                label = (image > 0).astype(np.uint8) + (image > 100).astype(np.uint8)
                save(tmp_path / f"sub{i}_seg.nii.gz", label)
                row["seg"] = f"sub{i}_seg.nii.gz"
            rows.append(row)
        frame = pd.DataFrame(rows)
        manifest = tmp_path / "manifest.csv"
        frame.to_csv(manifest, index=False)
        return frame, manifest

    return make


def extents(image: np.ndarray) -> list[int]:
    """Size of the nonzero bounding box along each axis."""
    sizes = []
    for axis in range(3):
        hit = np.flatnonzero((image != 0).any(axis=tuple(a for a in range(3) if a != axis)))
        sizes.append(int(hit.max() - hit.min() + 1))
    return sizes


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


CUBE = PreprocessSettings(shape=(16, 16, 16))
SILENT: dict = {"progress": False}


# ----------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    frame = pd.DataFrame({"image": ["a/sub1.nii.gz", "/abs/sub2.nii.gz", None]})
    out = resolve_paths(frame, tmp_path / "m.csv", VolumeColumns())
    assert out["image"].tolist() == [str(tmp_path / "a" / "sub1.nii.gz"), "/abs/sub2.nii.gz", None]


# ----------------------------------------------------------------------------- checks


def test_a_valid_cohort_has_no_problems(cohort) -> None:
    frame, manifest = cohort(labels=True)
    columns = VolumeColumns(label="seg")
    assert find_volume_problems(frame, manifest, columns, PreprocessSettings(), **SILENT) == []


def test_missing_image_column_is_reported(cohort) -> None:
    frame, manifest = cohort()
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(image="t1"), CUBE))
    assert problem.column == "t1" and problem.file == manifest
    assert "data.image_column" in str(problem)


def test_empty_image_cell_names_its_row(cohort) -> None:
    frame, manifest = cohort()
    frame.loc[2, "image"] = None
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), CUBE, **SILENT))
    assert (problem.row, problem.column, problem.file) == (3, "image", manifest)
    assert "empty" in problem.message


def test_missing_file_names_row_file_and_column(cohort) -> None:
    frame, manifest = cohort()
    frame.loc[1, "image"] = "nowhere.nii.gz"
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), CUBE, **SILENT))
    assert (problem.row, problem.column) == (2, "image")
    assert str(manifest.parent / "nowhere.nii.gz") in problem.message
    assert "does not exist" in problem.message


def test_text_file_renamed_nii_gz_is_not_nifti(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    (tmp_path / "sub0.nii.gz").write_text("subject,age\n")
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), CUBE, **SILENT))
    assert (problem.row, problem.column) == (1, "image")
    assert "sub0.nii.gz" in problem.message and "not a readable NIfTI" in problem.message


def test_nii_gz_cut_in_half_is_truncated(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    path = tmp_path / "sub3.nii.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw)[: len(gzip.compress(raw)) // 2])
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), CUBE, **SILENT))
    assert problem.row == 4 and "sub3.nii.gz" in problem.message
    assert "truncated or corrupt" in problem.message


def test_4d_image_is_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    save(tmp_path / "sub1.nii.gz", np.stack([blob(), blob()], axis=-1))
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), CUBE, **SILENT))
    assert problem.row == 2 and "4D" in problem.message and "12x12x12x2" in problem.message


def test_4d_image_with_one_volume_is_accepted_as_3d(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    save(tmp_path / "sub1.nii.gz", blob()[..., None])
    assert find_volume_problems(frame, manifest, VolumeColumns(), PreprocessSettings()) == []
    image, _ = preprocess(tmp_path / "sub1.nii.gz", settings=CUBE)
    assert image.shape == (16, 16, 16)


def test_nan_voxels_are_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    data = blob()
    data[5, 5, 5] = np.nan
    data[6, 6, 6] = np.inf
    save(tmp_path / "sub2.nii.gz", data)
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), CUBE, **SILENT))
    assert problem.row == 3 and "sub2.nii.gz" in problem.message
    assert "2 NaN or infinite" in problem.message


def test_label_map_with_another_shape_is_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort(labels=True)
    save(tmp_path / "sub0_seg.nii.gz", np.ones((SIDE, SIDE, SIDE + 1), np.uint8))
    columns = VolumeColumns(label="seg")
    problem = only(find_volume_problems(frame, manifest, columns, CUBE, **SILENT))
    assert (problem.row, problem.column) == (1, "seg")
    assert "sub0_seg.nii.gz" in problem.message and "12x12x13" in problem.message


def test_missing_label_file_is_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort(labels=True)
    (tmp_path / "sub2_seg.nii.gz").unlink()
    columns = VolumeColumns(label="seg")
    problem = only(find_volume_problems(frame, manifest, columns, CUBE, **SILENT))
    assert (problem.row, problem.column) == (3, "seg") and "does not exist" in problem.message


def test_mask_with_another_shape_is_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    save(tmp_path / "mask.nii.gz", np.ones((SIDE, SIDE, 8), np.uint8))
    frame["mask"] = ["mask.nii.gz"] * len(frame)
    problems = find_volume_problems(frame, manifest, VolumeColumns(mask="mask"), CUBE)
    assert [(p.row, p.column) for p in problems] == [(r, "mask") for r in range(1, 5)]
    assert "mask.nii.gz" in problems[0].message and "12x12x8" in problems[0].message


def test_empty_mask_is_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    save(tmp_path / "mask.nii.gz", np.zeros((SIDE,) * 3, np.uint8))
    frame["mask"] = ["full.nii.gz", "full.nii.gz", "mask.nii.gz", "full.nii.gz"]
    save(tmp_path / "full.nii.gz", np.ones((SIDE,) * 3, np.uint8))
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(mask="mask"), CUBE))
    assert (problem.row, problem.column) == (3, "mask") and "empty" in problem.message


def test_label_map_with_fractional_values_is_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort(labels=True)
    save(tmp_path / "sub1_seg.nii.gz", np.full((SIDE,) * 3, 0.5, np.float32))
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(label="seg"), CUBE))
    assert (problem.row, problem.column) == (2, "seg") and "whole numbers" in problem.message


def test_all_zero_image_is_reported(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    save(tmp_path / "sub0.nii.gz", np.zeros((SIDE,) * 3, np.float32))
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), CUBE))
    assert problem.row == 1 and "every voxel is 0" in problem.message


def test_different_shapes_need_a_resize_rule(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    save(tmp_path / "sub1.nii.gz", blob((SIDE, SIDE, 10)))
    problem = only(find_volume_problems(frame, manifest, VolumeColumns(), PreprocessSettings()))
    assert (problem.row, problem.column) == (2, "image")
    assert "12x12x10" in problem.message and "3 of 4 images have shape 12x12x12" in problem.message
    assert problem.hint is not None and "data.shape=48" in problem.hint
    # With a target shape, different input shapes are fine.
    assert find_volume_problems(frame, manifest, VolumeColumns(), CUBE) == []


def test_every_bad_row_is_reported_at_once_then_capped(tmp_path: Path) -> None:
    n = MAX_ROW_PROBLEMS + 5
    frame = pd.DataFrame({"image": [f"missing{i}.nii.gz" for i in range(n)]})
    problems = find_volume_problems(frame, tmp_path / "m.csv", VolumeColumns(), CUBE, **SILENT)
    assert [p.row for p in problems[:MAX_ROW_PROBLEMS]] == list(range(1, MAX_ROW_PROBLEMS + 1))
    assert len(problems) == MAX_ROW_PROBLEMS + 1
    assert "5 more rows" in problems[-1].message


# ----------------------------------------------------------------------------- preprocess


def test_preprocess_gives_the_shape_and_zscores_brain_voxels(tmp_path: Path) -> None:
    path = save(tmp_path / "a.nii.gz", blob((10, 14, 12)) * 7 + 3 * (blob((10, 14, 12)) > 0))
    image, label = preprocess(path, settings=PreprocessSettings(shape=(16, 20, 18)))
    assert image.shape == (16, 20, 18) and image.dtype == np.float32 and label is None
    brain = image[image != 0]
    assert abs(brain.mean()) < 1e-4 and abs(brain.std() - 1) < 1e-3


def test_elongated_image_is_padded_not_stretched(tmp_path: Path) -> None:
    data = np.zeros((8, 24, 8), np.float32)
    data[1:7, 1:23, 1:7] = 5.0  # 6 x 22 x 6 box: crop + margin gives 8 x 24 x 8
    image, _ = preprocess(save(tmp_path / "a.nii.gz", data), settings=CUBE)
    sizes = extents(image)
    assert sizes[1] == 16  # the long axis fills the cube ...
    assert sizes[0] <= 6 and sizes[2] <= 6  # ... the short ones keep the 1:3 ratio, zero-padded


def test_aspect_ratio_is_kept_in_millimetres(tmp_path: Path) -> None:
    # 8 voxels of 3 mm are as long as 24 voxels of 1 mm: the image must come out a cube.
    data = np.zeros((8, 24, 24), np.float32)
    data[1:7, 3:21, 3:21] = 1.0  # an 18 mm cube: 6 voxels of 3 mm by 18 of 1 mm by 18 of 1 mm
    image, _ = preprocess(save(tmp_path / "a.nii.gz", data, zooms=(3, 1, 1)), settings=CUBE)
    sizes = extents(image)
    assert max(sizes) - min(sizes) <= 1, sizes  # counting voxels instead would give 1:3:3


def test_label_follows_the_image_with_nearest_interpolation(tmp_path: Path) -> None:
    data = blob((10, 12, 14))
    label = (data > 0).astype(np.uint8) * 3 + (data > 100).astype(np.uint8) * 4  # {0, 3, 7}
    image, out = preprocess(
        save(tmp_path / "a.nii.gz", data),
        settings=PreprocessSettings(shape=(15, 15, 15)),
        label_path=save(tmp_path / "l.nii.gz", label),
    )
    assert out is not None and out.dtype == np.uint8 and out.shape == image.shape
    assert set(np.unique(out)) == {0, 3, 7}
    # Same geometry: labelled voxels lie where the image has brain.
    assert (image[out > 0] != 0).mean() > 0.95


def test_mask_zeroes_voxels_outside_it(tmp_path: Path) -> None:
    data = np.full((SIDE,) * 3, 50.0, np.float32) + blob()
    mask = np.zeros((SIDE,) * 3, np.uint8)
    mask[2:10, 2:10, 2:6] = 1
    image, _ = preprocess(
        save(tmp_path / "a.nii.gz", data),
        settings=PreprocessSettings(normalize="none"),
        mask_path=save(tmp_path / "m.nii.gz", mask),
    )
    assert image.shape == (SIDE,) * 3  # shape None: no crop, no resize
    assert (image[mask == 0] == 0).all() and (image[mask == 1] > 0).all()


def test_settings_accept_an_int_shape_and_reject_nonsense() -> None:
    assert PreprocessSettings(shape=48).shape == (48, 48, 48)  # type: ignore[arg-type]
    assert PreprocessSettings(shape=48) == PreprocessSettings(shape=(48, 48, 48))
    with pytest.raises(InputError, match=r"data\.shape"):
        PreprocessSettings(shape=(48, 48))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="orientation"):
        PreprocessSettings(orientation="RAR")
    with pytest.raises(InputError, match="normalize"):
        PreprocessSettings(normalize="robust")


# ----------------------------------------------------------------------------- cache


def cache_of(frame, manifest, tmp_path, settings=CUBE, columns=VolumeColumns(), **kw):
    messages: list[str] = []
    cache = build_cache(
        frame,
        manifest,
        columns,
        settings,
        cache_dir=tmp_path / "cache",
        progress=False,
        echo=messages.append,
        **kw,
    )
    return cache, messages


def test_cache_holds_every_row_preprocessed(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort(labels=True)
    cache, _ = cache_of(frame, manifest, tmp_path, columns=VolumeColumns(label="seg"))
    assert not cache.reused and cache.build_seconds is not None
    assert cache.shape == (4, 16, 16, 16) and cache.open().dtype == np.float16
    expected, label = preprocess(
        tmp_path / "sub2.nii.gz", settings=CUBE, label_path=tmp_path / "sub2_seg.nii.gz"
    )
    np.testing.assert_allclose(cache.open()[2], expected, atol=2e-3, rtol=1e-3)
    np.testing.assert_array_equal(cache.open_labels()[2], label)
    meta = json.loads(cache.sidecar_path.read_text())
    assert meta["complete"] is True and meta["settings"] == CUBE.key()
    assert cache.nbytes == cache.path.stat().st_size + cache.label_path.stat().st_size


def test_second_build_reuses_without_preprocessing(cohort, tmp_path: Path, monkeypatch) -> None:
    frame, manifest = cohort()
    first, _ = cache_of(frame, manifest, tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("preprocess must not run when the cache is reused")

    monkeypatch.setattr(volumes.cache, "preprocess", refuse)
    second, messages = cache_of(frame, manifest, tmp_path)
    assert second.reused and second.build_seconds is None and second.path == first.path
    assert "reusing" in messages[0]


def test_moved_files_with_the_same_content_reuse_the_cache(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    first, _ = cache_of(frame, manifest, tmp_path)
    (tmp_path / "moved").mkdir()
    for i in range(len(frame)):
        (tmp_path / f"sub{i}.nii.gz").rename(tmp_path / "moved" / f"sub{i}.nii.gz")
    frame["image"] = "moved/" + frame["image"]
    second, _ = cache_of(frame, manifest, tmp_path)
    assert second.reused and second.path == first.path


def test_cache_with_other_settings_is_rebuilt_with_a_message(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    cache, _ = cache_of(frame, manifest, tmp_path)
    meta = json.loads(cache.sidecar_path.read_text())
    meta["settings"]["shape"] = [32, 32, 32]
    cache.sidecar_path.write_text(json.dumps(meta))
    again, messages = cache_of(frame, manifest, tmp_path)
    assert not again.reused
    assert f"cache {cache.path} was built with other settings (shape 32 vs 16)" in messages[0]
    assert "rebuilding" in messages[0]
    assert json.loads(cache.sidecar_path.read_text())["settings"]["shape"] == [16, 16, 16]


def test_corrupted_array_is_rebuilt(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    cache, _ = cache_of(frame, manifest, tmp_path)
    good = np.array(cache.open())
    raw = bytearray(cache.path.read_bytes())
    raw[-100:-90] = bytes(b ^ 0xFF for b in raw[-100:-90])
    cache.path.write_bytes(bytes(raw))
    again, messages = cache_of(frame, manifest, tmp_path)
    assert not again.reused and "checksum mismatch" in messages[0]
    np.testing.assert_array_equal(np.array(again.open()), good)


def test_truncated_array_is_rebuilt(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    cache, _ = cache_of(frame, manifest, tmp_path)
    cache.path.write_bytes(cache.path.read_bytes()[:1000])
    again, messages = cache_of(frame, manifest, tmp_path)
    assert not again.reused and "is corrupt" in messages[0] and "rebuilding" in messages[0]
    assert again.open().shape == (4, 16, 16, 16)


def test_changed_file_content_gives_a_new_cache(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    first, _ = cache_of(frame, manifest, tmp_path)
    save(tmp_path / "sub1.nii.gz", blob(seed=99))
    second, _ = cache_of(frame, manifest, tmp_path)
    assert not second.reused and second.path != first.path
    expected, _ = preprocess(tmp_path / "sub1.nii.gz", settings=CUBE)
    np.testing.assert_allclose(second.open()[1], expected, atol=2e-3, rtol=1e-3)


def test_changed_hashes_under_the_same_name_are_rebuilt(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    cache, _ = cache_of(frame, manifest, tmp_path)
    meta = json.loads(cache.sidecar_path.read_text())
    meta["rows"][2]["image"] = "0" * 32
    cache.sidecar_path.write_text(json.dumps(meta))
    again, messages = cache_of(frame, manifest, tmp_path)
    assert not again.reused and "other file contents (rows 3 changed)" in messages[0]


def test_interrupted_build_leaves_no_cache(cohort, tmp_path: Path, monkeypatch) -> None:
    frame, manifest = cohort()
    calls = []
    real = volumes.preprocess

    def fail_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(volumes.cache, "preprocess", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        cache_of(frame, manifest, tmp_path)
    # no part of the cache is left; the input hashes it had read are kept for the next build
    left = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert left == [".build.lock", volumes.cache.HASH_INDEX]


def test_unreadable_image_stops_the_build_with_its_row(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    (tmp_path / "sub2.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError) as err:
        cache_of(frame, manifest, tmp_path)
    assert err.value.problem.row == 3 and "sub2.nii.gz" in str(err.value)


def test_reuse_reads_no_unchanged_input_file_and_no_array(
    cohort, tmp_path: Path, monkeypatch
) -> None:
    frame, manifest = cohort()
    first, _ = cache_of(frame, manifest, tmp_path)

    def no_reading(path: object) -> str:
        raise AssertionError(f"read {path} although nothing changed")

    monkeypatch.setattr(volumes.cache, "_file_hash", no_reading)
    monkeypatch.setattr(volumes.cache, "_checksum", no_reading)
    second, _ = cache_of(frame, manifest, tmp_path)
    assert second.reused and second.path == first.path


def test_a_touched_input_file_is_hashed_again_and_the_cache_still_reused(
    cohort, tmp_path: Path, monkeypatch
) -> None:
    import os

    frame, manifest = cohort()
    first, _ = cache_of(frame, manifest, tmp_path)
    touched = tmp_path / "sub1.nii.gz"
    os.utime(touched, ns=(1_000_000_000, 1_000_000_000))  # same bytes, another stat
    real, read = volumes.cache._file_hash, []

    def counting(path: str | None) -> str | None:
        read.append(path)
        return real(path)

    monkeypatch.setattr(volumes.cache, "_file_hash", counting)
    second, _ = cache_of(frame, manifest, tmp_path)
    assert second.reused and second.path == first.path
    assert read == [str(touched)]


def test_an_array_rewritten_with_the_same_bytes_is_checksummed_once_then_trusted(
    cohort, tmp_path: Path, monkeypatch
) -> None:
    frame, manifest = cohort()
    first, _ = cache_of(frame, manifest, tmp_path)
    first.path.write_bytes(first.path.read_bytes())  # a new modification time
    real, summed = volumes.cache._checksum, []

    def counting(path: Path) -> str:
        summed.append(path)
        return real(path)

    monkeypatch.setattr(volumes.cache, "_checksum", counting)
    assert cache_of(frame, manifest, tmp_path)[0].reused
    assert cache_of(frame, manifest, tmp_path)[0].reused
    assert summed == [first.path]  # the second reuse trusts the stat the first one noted


def test_worker_processes_build_the_same_cache(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    serial, _ = cache_of(frame, manifest, tmp_path)
    expected = np.array(serial.open())
    for path in (tmp_path / "cache").iterdir():
        path.unlink()
    parallel, _ = cache_of(frame, manifest, tmp_path, num_workers=2)
    assert not parallel.reused
    np.testing.assert_array_equal(np.array(parallel.open()), expected)


# ----------------------------------------------------------------------------- dataset


def test_cached_volumes_items_have_the_training_shapes(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort(labels=True)
    cache, _ = cache_of(frame, manifest, tmp_path, columns=VolumeColumns(label="seg"))
    rows = np.array([3, 1])
    codes = np.array([[1, 0], [0, 2]])
    data = CachedVolumes(cache, rows, np.array([30.0, 50.0]), codes, with_labels=True)
    item = data[0]
    assert item["x"].shape == (1, 16, 16, 16) and item["x"].dtype == torch.float32
    assert item["y"].shape == () and float(item["y"]) == 30.0
    assert item["codes"].dtype == torch.long and item["codes"].tolist() == [1, 0]
    assert item["label"].shape == (16, 16, 16) and item["label"].dtype == torch.long
    np.testing.assert_array_equal(item["x"][0].numpy(), cache.open()[3].astype(np.float32))
    # Once opened, the memory map must not be pickled along to worker processes.
    assert pickle.loads(pickle.dumps(data))._images is None


def test_cached_volumes_feed_a_dataloader_with_workers(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    cache, _ = cache_of(frame, manifest, tmp_path)
    data = CachedVolumes(cache.path, np.arange(4), np.arange(4.0), np.zeros(4, dtype=int))
    batches = list(DataLoader(data, batch_size=2, num_workers=2))
    assert [b["x"].shape for b in batches] == [(2, 1, 16, 16, 16)] * 2
    assert torch.cat([b["y"] for b in batches]).tolist() == [0.0, 1.0, 2.0, 3.0]
    assert batches[0]["codes"].shape == (2, 1)


def test_cached_volumes_rejects_rows_outside_the_cache(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    cache, _ = cache_of(frame, manifest, tmp_path)
    with pytest.raises(ValueError, match=r"rows must lie in 0\.\.3"):
        CachedVolumes(cache, np.array([4]), np.zeros(1), np.zeros(1))


def test_augmented_cached_volumes_change_images_on_every_read_but_not_labels(
    cohort, tmp_path: Path
) -> None:
    frame, manifest = cohort(labels=True)
    cache, _ = cache_of(frame, manifest, tmp_path, columns=VolumeColumns(label="seg"))
    rows, y, codes = np.array([0, 1]), np.zeros(2), np.zeros(2, dtype=int)
    plain = CachedVolumes(cache, rows, y, codes, with_labels=True)
    torch.manual_seed(0)
    augmented = CachedVolumes(cache, rows, y, codes, with_labels=True, augment="intensity")
    first, second = augmented[0], augmented[0]
    cached = plain[0]["x"]
    assert not torch.equal(first["x"], cached) and not torch.equal(first["x"], second["x"])
    assert torch.equal(first["x"][cached == 0], cached[cached == 0])  # background stays 0
    assert torch.equal(first["label"], plain[0]["label"])
    # workers draw their own changes: the augmenter is not pickled along
    assert pickle.loads(pickle.dumps(augmented))._augmenter is None
    with pytest.raises(
        ValueError, match="unknown augment 'elastic'; choose one of: none, intensity, spatial"
    ):
        CachedVolumes(cache, rows, y, codes, augment="elastic")


def test_row_reader_reads_the_rows_a_memory_map_holds(tmp_path: Path) -> None:
    from neurounlearn.data.volumes.rows import RowReader

    array = np.arange(5 * 3 * 4 * 2, dtype=np.float16).reshape(5, 3, 4, 2)
    np.save(tmp_path / "a.npy", array)
    reader = RowReader(tmp_path / "a.npy")
    assert reader.shape == (5, 3, 4, 2)
    for i in range(5):
        np.testing.assert_array_equal(reader.row(i), array[i])


def test_row_reader_says_when_the_file_is_cut_short(tmp_path: Path) -> None:
    from neurounlearn.data.volumes.rows import RowReader

    np.save(tmp_path / "a.npy", np.zeros((4, 8, 8), dtype=np.float16))
    raw = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "a.npy").write_bytes(raw[: len(raw) - 64])
    with pytest.raises(OSError, match="row 3 is cut short"):
        RowReader(tmp_path / "a.npy").row(3)


def test_row_writer_writes_the_file_np_save_writes(tmp_path: Path) -> None:
    from neurounlearn.data.volumes.rows import RowWriter

    array = np.random.default_rng(0).normal(size=(4, 3, 5, 2)).astype(np.float16)
    writer = RowWriter(tmp_path / "rows.npy", array.shape, np.float16)
    for i in (2, 0, 3, 1):  # in any order, as worker processes finish
        writer.write(i, array[i].astype(np.float32))
    writer.close()
    np.save(tmp_path / "saved.npy", array)
    assert (tmp_path / "rows.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()


def test_a_cache_from_another_version_is_rebuilt_with_a_message(cohort, tmp_path: Path) -> None:
    frame, manifest = cohort()
    cache, _ = cache_of(frame, manifest, tmp_path)
    meta = json.loads(cache.sidecar_path.read_text())
    meta["format"] = volumes.cache.CACHE_FORMAT + 1
    cache.sidecar_path.write_text(json.dumps(meta))
    again, messages = cache_of(frame, manifest, tmp_path)
    assert not again.reused
    assert "from another version of neurounlearn" in messages[0] and "rebuilding" in messages[0]


def test_input_hashes_are_given_when_the_cache_folder_cannot_keep_them(
    tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "a.nii").write_bytes(b"one")
    (tmp_path / "b.nii").write_bytes(b"two")

    def read_only(obj: object, path: object) -> None:
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(volumes.cache, "write_json", read_only)
    paths = [str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]
    hashes, read = volumes.cache.input_hashes(paths, tmp_path, progress=False)
    assert read == 2 and hashes[paths[0]] != hashes[paths[1]] and None not in hashes.values()
    assert not (tmp_path / volumes.cache.HASH_INDEX).exists()


def test_a_second_process_waits_for_the_build_then_reuses_it(cohort, tmp_path: Path) -> None:
    import fcntl
    import os
    import threading
    import time

    frame, manifest = cohort()
    (tmp_path / "cache").mkdir()
    holder = os.open(tmp_path / "cache" / ".build.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process is building
    results: list[tuple[object, list[str]]] = []
    waiter = threading.Thread(target=lambda: results.append(cache_of(frame, manifest, tmp_path)))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not results  # it waits instead of building beside it
    os.close(holder)  # the other build is done
    waiter.join(timeout=60)
    assert results and "waiting for another process" in results[0][1][0]
    assert not any((tmp_path / "cache").glob(".volumes-*.tmp"))
    assert cache_of(frame, manifest, tmp_path)[0].reused
