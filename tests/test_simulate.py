"""The cohort simulator: files, labels, determinism, ages, scanner and age effects, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from neurounlearn.data.simulate import AGE_PRESETS, simulate_cohort
from neurounlearn.errors import InputError


def _simulate(out: Path, **kwargs: object) -> Path:
    """A small, quiet cohort (shape 16, 3 sites x 3 subjects) unless told otherwise."""
    args: dict[str, object] = {"sites": 3, "subjects": 9, "shape": 16, "progress": False}
    args.update(kwargs)
    return simulate_cohort(out, **args)  # type: ignore[arg-type]


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 sites x 4 subjects at 20^3, ages independent of site; returns the manifest path."""
    out = tmp_path_factory.mktemp("cohort") / "sim"
    return simulate_cohort(
        out, sites=3, subjects=12, shape=20, seed=0, ages="independent", progress=False
    )


def test_writes_images_labels_manifest_generation_and_figure(cohort: Path) -> None:
    folder = cohort.parent
    frame = pd.read_csv(cohort)
    assert list(frame.columns) == ["subject", "image", "label", "site", "age", "sex"]
    assert len(frame) == 12
    assert frame.subject.is_unique
    assert frame.site.value_counts().to_dict() == {"A": 4, "B": 4, "C": 4}
    assert set(frame.sex) <= {"F", "M"}
    assert (frame.age.round(1) == frame.age).all()
    for image, label in zip(frame.image, frame.label, strict=True):
        assert not Path(image).is_absolute()  # relative to the manifest's folder
        assert (folder / image).is_file() and image.endswith(".nii.gz")
        assert (folder / label).is_file() and label.startswith("labels/")
    assert (folder / "generation.json").is_file()
    assert (folder / "sites.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(folder.rglob("*.tmp"))  # every atomic write completed


def test_labels_are_tissue_classes_on_the_image_grid(cohort: Path) -> None:
    frame = pd.read_csv(cohort)
    row = frame.iloc[0]
    image_nii = nib.load(cohort.parent / row.image)
    label_nii = nib.load(cohort.parent / row.label)
    image, label = np.asarray(image_nii.dataobj), np.asarray(label_nii.dataobj)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert image.shape == label.shape == (20, 20, 20)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    np.testing.assert_allclose(image_nii.affine, label_nii.affine)
    assert nib.aff2axcodes(image_nii.affine) == ("R", "A", "S")
    assert (image[label > 0] > 0).all()  # brain is bright, background is zero
    assert (image == 0).mean() > 0.2
    # Tissue classes have the T1 order in the image: CSF darker than GM darker than WM.
    means = [image[label == k].mean() for k in (1, 2, 3)]
    assert means[0] < means[1] < means[2]


def test_subjects_spread_evenly_with_remainder_to_first_sites(tmp_path: Path) -> None:
    frame = pd.read_csv(_simulate(tmp_path / "sim", sites=3, subjects=11))
    assert frame.site.value_counts().sort_index().tolist() == [4, 4, 3]


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    first = _simulate(tmp_path / "one", seed=3)
    second = _simulate(tmp_path / "two", seed=3)
    other = _simulate(tmp_path / "three", seed=4)
    assert first.read_text() == second.read_text()
    gen = (first.parent / "generation.json").read_text()
    assert gen == (second.parent / "generation.json").read_text()
    assert gen != (other.parent / "generation.json").read_text()
    for rel in pd.read_csv(first).image:
        np.testing.assert_array_equal(_load(first.parent / rel), _load(second.parent / rel))
    rel = "images/sub-0000.nii.gz"
    assert not np.array_equal(_load(first.parent / rel), _load(other.parent / rel))


@pytest.mark.parametrize("preset", sorted(AGE_PRESETS))
def test_ages_lie_in_their_sites_range(tmp_path: Path, preset: str) -> None:
    frame = pd.read_csv(_simulate(tmp_path / "sim", sites=4, subjects=12, ages=preset))
    ranges = AGE_PRESETS[preset]
    for k, site in enumerate("ABCD"):
        low, high = ranges[k % len(ranges)]
        ages = frame.age[frame.site == site]
        assert len(ages) == 3
        assert ((ages >= low) & (ages <= high)).all(), (site, ages.tolist(), (low, high))


def test_custom_age_ranges_are_used_per_site(tmp_path: Path) -> None:
    ranges = [(30.0, 31.0), (70.0, 72.5)]
    frame = pd.read_csv(_simulate(tmp_path / "sim", sites=2, subjects=6, ages=ranges))
    assert frame.age[frame.site == "A"].between(30.0, 31.0).all()
    assert frame.age[frame.site == "B"].between(70.0, 72.5).all()


def test_paper_preset_confounds_age_with_site(tmp_path: Path) -> None:
    frame = pd.read_csv(_simulate(tmp_path / "sim", sites=3, subjects=30, ages="paper"))
    means = frame.groupby("site").age.mean()
    assert means["B"] < means["A"] < means["C"]  # OASIS-like young, Whitehall-like old


def test_scanner_strength_zero_makes_every_site_the_same_neutral_scanner(tmp_path: Path) -> None:
    out = _simulate(tmp_path / "sim", scanner_strength=0.0).parent
    params = json.loads((out / "generation.json").read_text())["site_parameters"]
    assert sorted(params) == ["A", "B", "C"]
    for p in params.values():
        assert p["gain"] == 1.0 and p["offset"] == 0.0 and p["gamma"] == 1.0
        assert p["bias_amplitude"] == 0.0 and not any(p["bias_coefficients"])
        assert p["blur_sigma_voxels"] == [0.0, 0.0, 0.0]
        assert p["acquisition_factor"] == 1.0 and p["mask_margin_voxels"] == 1.0
        assert p["residue"] == 0.0 and p["rotation_deg"] == 0.0
        assert p["jitter_rotation_sd_deg"] == 0.0 and p["jitter_shift_sd_mm"] == 0.0
    assert len({p["noise_sd"] for p in params.values()}) == 1
    assert len({json.dumps(p["tissue_intensity"]) for p in params.values()}) == 1


def test_scanner_strength_one_makes_sites_differ(cohort: Path) -> None:
    params = json.loads((cohort.parent / "generation.json").read_text())["site_parameters"]
    for key in (
        "gain", "offset", "gamma", "bias_amplitude", "noise_sd", "acquisition_factor",
        "mask_margin_voxels", "residue", "rotation_deg", "jitter_shift_sd_mm",
    ):  # fmt: skip
        assert len({p[key] for p in params.values()}) == 3, key
    ratios = {p["tissue_intensity"]["wm"] / p["tissue_intensity"]["gm"] for p in params.values()}
    assert len(ratios) == 3 and min(ratios) >= 1.25 - 1e-6 and max(ratios) <= 1.70 + 1e-6
    assert {p["slice_axis"] for p in params.values()} == {"x", "y", "z"}


def test_older_subjects_have_more_csf_and_less_grey_matter(cohort: Path) -> None:
    frame = pd.read_csv(cohort)
    counts = np.array(
        [np.bincount(_load(cohort.parent / p).ravel(), minlength=4) for p in frame.label]
    )
    brain = counts[:, 1:].sum(axis=1)  # fractions of the brain: head size is controlled
    assert np.corrcoef(counts[:, 1] / brain, frame.age)[0, 1] > 0.6
    assert np.corrcoef(counts[:, 2] / brain, frame.age)[0, 1] < -0.6


def test_age_effect_zero_leaves_anatomy_unchanged_by_age(tmp_path: Path) -> None:
    out = _simulate(tmp_path / "sim", age_effect=0.0).parent
    subjects = json.loads((out / "generation.json").read_text())["subject_parameters"]
    assert {s["ventricle_scale"] for s in subjects} == {1.0}
    assert {s["gm_thinning"] for s in subjects} == {0.0}


def test_generation_json_records_every_site_and_subject(cohort: Path) -> None:
    gen = json.loads((cohort.parent / "generation.json").read_text())
    frame = pd.read_csv(cohort)
    assert gen["seed"] == 0 and gen["shape"] == [20, 20, 20]
    assert gen["template"]["nilearn_version"]
    assert "ventricle" in gen["age_effect_model"]["description"]
    assert gen["ages"]["ranges"] == {s: [20.0, 85.0] for s in "ABC"}
    for site in gen["site_parameters"].values():
        assert {"gain", "offset", "gamma", "bias_coefficients", "blur_sigma_voxels"} <= set(site)
    subjects = gen["subject_parameters"]
    assert [s["subject"] for s in subjects] == frame.subject.tolist()
    assert [s["age"] for s in subjects] == frame.age.tolist()
    assert [s["sex"] for s in subjects] == frame.sex.tolist()
    assert all(s["head_scale"] > 0 and "brain_age_gap_years" in s for s in subjects)


def test_rerun_replaces_an_earlier_simulation(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    _simulate(out, subjects=12)
    manifest = _simulate(out, subjects=9, seed=1)
    assert len(pd.read_csv(manifest)) == 9
    assert len(list((out / "images").glob("*.nii.gz"))) == 9  # the earlier extras are gone
    assert len(list((out / "labels").glob("*.nii.gz"))) == 9


def test_refuses_a_folder_that_holds_something_else(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty") as info:
        _simulate(out)
    assert info.value.problem.file == out
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": 1}, "sites must be an integer of at least 2"),
        ({"sites": 3, "subjects": 8}, "at least 3 per site"),
        ({"shape": 8}, "between 16 and 256"),
        ({"shape": 300}, "between 16 and 256"),
        ({"shape": (16, 16)}, "three integers"),
        ({"ages": [(50, 40), (20, 30), (30, 40)]}, "low must be below high"),
        ({"ages": [(20, 30), (30, 40)]}, "2 age range(s) given for 3 sites"),
        ({"ages": "biobank"}, "'biobank'; allowed presets: independent, paper"),
        ({"scanner_strength": -0.5}, "scanner_strength must be a finite number of at least 0"),
        ({"age_effect": float("nan")}, "age_effect must be a finite number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    out = tmp_path / "sim"
    with pytest.raises(InputError) as info:
        _simulate(out, **kwargs)
    assert message in str(info.value)
    assert not out.exists()


def test_progress_false_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _simulate(tmp_path / "sim")
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_a_wider_skull_strip_margin_keeps_more_voxels_around_the_brain(cohort: Path) -> None:
    folder = cohort.parent
    frame = pd.read_csv(cohort)
    margins = {
        site: p["mask_margin_voxels"]
        for site, p in json.loads((folder / "generation.json").read_text())[
            "site_parameters"
        ].items()
    }
    kept = {
        site: np.mean(
            [
                (_load(folder / r.image) != 0).sum() / (_load(folder / r.label) > 0).sum()
                for r in rows.itertuples()
            ]
        )
        for site, rows in frame.groupby("site")
    }
    widest, narrowest = max(margins, key=margins.get), min(margins, key=margins.get)
    assert kept[widest] > kept[narrowest] * 1.1


def test_the_segmentation_preset_keeps_neutral_geometry_and_contrast(tmp_path: Path) -> None:
    out = _simulate(tmp_path / "sim", sites=None, subjects=6, preset="segmentation").parent
    gen = json.loads((out / "generation.json").read_text())
    for p in gen["site_parameters"].values():
        assert p["acquisition_factor"] == 1.0 and p["mask_margin_voxels"] == 1.0
        assert p["residue"] == 0.0 and p["rotation_deg"] == 0.0
    assert all(s["registration"] is None for s in gen["subject_parameters"])


def test_registration_jitter_moves_image_and_labels_together(tmp_path: Path) -> None:
    still = _simulate(tmp_path / "still", scanner_strength=0.0).parent
    moved = _simulate(tmp_path / "moved").parent
    gen = json.loads((moved / "generation.json").read_text())
    assert all(s["registration"] is not None for s in gen["subject_parameters"])
    changed = 0
    for r in pd.read_csv(moved / "manifest.csv").itertuples():
        image, label = _load(moved / r.image), _load(moved / r.label)
        assert (image[label > 0] != 0).all()  # every labelled voxel lies in the image's mask
        changed += int((label != _load(still / r.label)).sum())
    assert changed > 0  # and the labels are not those of the unmoved anatomy


def test_without_nilearn_says_which_extra_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from neurounlearn.data import simulate

    simulate._mni_maps.cache_clear()  # the templates would otherwise come from the cache
    monkeypatch.setitem(sys.modules, "nilearn", None)
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
    try:
        with pytest.raises(InputError, match="nilearn package") as err:
            simulate_cohort(tmp_path / "sim", sites=2, subjects=6, shape=16, progress=False)
    finally:
        simulate._mni_maps.cache_clear()
    assert "neurounlearn[sim]" in (err.value.problems[0].hint or "")
    assert not (tmp_path / "sim" / "manifest.csv").exists()
