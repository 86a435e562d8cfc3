"""Simulate a multi-site brain MRI cohort whose ground truth is known.

Every subject is the MNI152 2009 template's tissue maps (grey matter, white matter, brain mask;
they ship inside nilearn's wheel, so nothing is downloaded) changed by age (cortical grey matter
turned into CSF, ventricles enlarged), by sex (males' heads are larger) and by a smooth random
deformation, then imaged by its site's "scanner": registration error, the sequence's tissue
contrast, gamma, a smooth bias field, the acquisition voxel size (partial volume), anisotropic
blur, Rician noise, intensity gain and offset, and the skull stripping's mask (with non-brain
tissue left in its rim). Each site draws ages from its own range, so site and age can be
confounded (``ages="paper"``) or independent (``ages="independent"``). Everything that
generated the cohort is written to ``generation.json`` next to the manifest, so an audit of what
a model learned can be checked against the truth.

Examples:
    >>> manifest = simulate_cohort("cohort", sites=3, subjects=300)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage

from neurounlearn.atomic import atomic_path, check_out, outputs_or_nothing, write_csv, write_json
from neurounlearn.errors import InputError, require

#: Age ranges (years) that sites draw from, used in turn for sites A, B, C, … (cycled when there
#: are more sites than ranges). "paper" mimics the mix in Dinsdale et al. (2021): a UK
#: Biobank-like site (45–80), a younger OASIS-like site (20–65) and an older Whitehall II-like
#: site (60–85). They overlap only partly (all three share 60–65), so site predicts age.
#: "independent" gives every site the same range, so age and site are independent.
AGE_PRESETS: dict[str, list[tuple[float, float]]] = {
    "paper": [(45.0, 80.0), (20.0, 65.0), (60.0, 85.0)],
    "independent": [(20.0, 85.0)],
}

#: ``generation.json`` names its generator so a later run recognises a folder it may overwrite.
GENERATOR = "neurounlearn.data.simulate"
MANIFEST_COLUMNS = ("subject", "image", "label", "site", "age", "sex")
FORMAT_VERSION = 1

MIN_SHAPE, MAX_SHAPE = 16, 256

# --- anatomy -------------------------------------------------------------------------------
#: Mean T1-weighted intensity of each tissue before the scanner acts (white brightest, CSF dark).
TISSUE_INTENSITY = {"csf": 0.20, "gm": 0.55, "wm": 0.85}
#: Per-subject jitter (standard deviation) of each tissue's intensity.
TISSUE_JITTER_SD = 0.01
#: Males' heads are this much larger (linear scale); every head also varies by HEAD_SCALE_SD.
MALE_HEAD_SCALE = 1.06
HEAD_SCALE_SD = 0.025
#: Smooth random deformation: a GRID³ field of N(0, SD) mm displacements, spline-upsampled.
DEFORMATION_SD_MM = 3.0
DEFORMATION_GRID = 5
#: Smooth multiplicative texture inside the brain (standard deviation, control grid size).
TEXTURE_SD = 0.03
TEXTURE_GRID = 8
#: The field of view is the template brain's bounding box times this, so that large heads and
#: deformed brains still fit.
FOV_MARGIN = 1.18

# --- age -----------------------------------------------------------------------------------
#: Age effects are linear in t = (age + brain_age_gap - AGE_REFERENCE) / AGE_SPAN; the template
#: (built from young adults) is the brain at t = 0.
AGE_REFERENCE = 20.0
AGE_SPAN = 60.0
#: Brain age gap: subjects age at different rates, so age is not perfectly readable from anatomy.
BRAIN_AGE_GAP_SD = 3.0
#: Cortical thinning: a voxel loses min(GM_THINNING * t * exposure, 0.95) of its grey matter to
#: CSF, exposure (0-1) being how much CSF or outside surrounds it. At 48^3 this takes about 25%
#: of all grey matter between ages 20 and 85 (real brains lose roughly 15-25%).
GM_THINNING = 1.15
#: Ventricles (deep CSF) are scaled radially about their centroid by exp(VENTRICLE_GROWTH * t):
#: x1.57 linear, x3.9 volume, at t = 1.
VENTRICLE_GROWTH = 0.45
#: Deep CSF: at least this far (mm) from the brain's edge counts fully as ventricle.
VENTRICLE_DEPTH_MM = (18.0, 28.0)

# --- scanners ------------------------------------------------------------------------------
#: Per-site parameters at scanner_strength 1 are spread evenly over these ranges, each parameter
#: in its own random order (fixed by the seed), so no two sites share a scanner. At strength s a
#: site's deviation from the neutral scanner is multiplied by s.
LOG_GAIN_RANGE = (-0.3, 0.3)  # gain exp(.): 0.74 … 1.35
OFFSET_RANGE = (0.0, 0.15)
LOG_GAMMA_RANGE = (-0.3, 0.3)  # gamma exp(.): 0.74 … 1.35
BIAS_AMPLITUDE_RANGE = (0.15, 0.25)  # peak |bias - 1| over the field of view
SLICE_BLUR_RANGE = (0.3, 1.2)  # Gaussian sigma, voxels, along the site's slice axis
INPLANE_BLUR = 0.15  # Gaussian sigma, voxels, along the other axes
NOISE_SD_BASE = 0.02  # Rician noise sd of the neutral scanner (tissue intensity units)
NOISE_SD_RANGE = (-0.015, 0.03)  # added to the base: 0.005 … 0.05
#: Slice axis of sites A, B, C, … in turn: A is blurred along z (axial slices), B along x, C y.
SLICE_AXES = (2, 0, 1)
#: Tissue contrast of the site's T1-weighted sequence: white/grey and CSF/grey signal ratios. The
#: spoiled gradient-echo signal equation with measured T1 at 1.5 T and 3 T (white matter 646 /
#: 838 ms, grey matter 1197 / 1607 ms; Wright et al. 2008, MAGMA 21:121), CSF T1 about 4 s,
#: proton densities 0.70 / 0.80 / 1.0 and flip angles 15-30 degrees gives white/grey 1.38-1.56
#: and CSF/grey 0.40-0.52; the ranges are widened to cover inversion-prepared (MPRAGE-like)
#: sequences, whose white/grey contrast is higher and CSF darker. The neutral scanner keeps
#: :data:`TISSUE_INTENSITY` (1.55 and 0.36). Sites differ in what the age model reads: where
#: grey matter turns into CSF, and how bright the partial-volume voxels at their border are.
WM_GM_RATIO_RANGE = (1.25, 1.70)
CSF_GM_RATIO_RANGE = (0.22, 0.55)
#: Acquisition voxel size relative to the output grid (isotropic): the image is averaged onto the
#: site's coarser grid (partial volume) and interpolated back, as a site scanning at 1.0, 1.2 or
#: 1.5 mm and resampled to a common 1 mm grid would be. 1: acquired on the output grid.
ACQUISITION_FACTOR_RANGE = (1.0, 1.7)
#: Skull stripping: the mask keeps voxels within this distance (voxels) of the brain (brain
#: fraction >= 0.5); the neutral pipeline keeps one voxel. Where the margin is wider, non-brain
#: tissue the stripping left (dura, fat, marrow: bright on T1) fills the rim, at this clean
#: intensity times the outside fraction; 0: a clean strip.
MASK_MARGIN_RANGE = (0.0, 2.5)
RESIDUE_RANGE = (0.0, 0.6)
#: Registration to the template: a site-wide rotation (degrees, about a random axis; a
#: pipeline's systematic misalignment) and per-subject random rigid jitter (standard deviations
#: of the rotation per axis, degrees, and of the shift per axis, mm).
SITE_ROTATION_RANGE_DEG = (0.0, 4.0)
JITTER_ROTATION_SD_RANGE_DEG = (0.5, 2.0)
JITTER_SHIFT_SD_RANGE_MM = (0.5, 2.0)
#: Monomials of the bias field (exponents of x, y, z in [-1, 1]): every one up to degree 2.
BIAS_MONOMIALS: tuple[tuple[int, int, int], ...] = (
    (1, 0, 0), (0, 1, 0), (0, 0, 1),
    (2, 0, 0), (0, 2, 0), (0, 0, 2),
    (1, 1, 0), (1, 0, 1), (0, 1, 1),
)  # fmt: skip

#: Scanner presets: fixed per-site scanners instead of the spread above. "segmentation" is the
#: setting of the paper's segmentation experiment: two sites whose images differ strongly in
#: contrast (gamma) and coil bias field, ages independent of site. Site A is a near-neutral
#: scanner; at site B grey and white matter are much closer in intensity (gamma 0.45 lifts
#: the darker tissues) and a strong bias field (40% at its peak) makes white matter on one side
#: as dark as grey matter on the other, so a model trained on A's labels fails on B.
SCANNER_PRESETS: dict[str, list[dict[str, Any]]] = {
    "segmentation": [
        {"gain": 1.0, "offset": 0.0, "gamma": 1.0, "bias_amplitude": 0.05, "slice_blur": 0.3,
         "noise_sd": 0.02},
        {"gain": 1.25, "offset": 0.05, "gamma": 0.45, "bias_amplitude": 0.40, "slice_blur": 0.9,
         "noise_sd": 0.035},
    ],
}  # fmt: skip

#: Gzip level of the NIfTI files: 6 is nearly as small as 9 and several times faster.
GZIP_LEVEL = 6

#: The nilearn loaders whose maps are the anatomy (each 2 mm, 99 x 117 x 95, in the wheel).
TEMPLATE_LOADERS = ("load_mni152_gm_template", "load_mni152_wm_template", "load_mni152_brain_mask")

Float = NDArray[np.float32]
Shape = tuple[int, int, int]


# ----------------------------------------------------------------------------- validation


def is_int(value: object) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_shape(shape: object) -> Shape:
    if is_int(shape):
        dims: list[object] = [shape] * 3
    elif isinstance(shape, Sequence) and not isinstance(shape, str):
        dims = list(shape)
    else:
        dims = []
    if len(dims) != 3 or not all(is_int(d) for d in dims):
        raise InputError(
            f"shape must be one integer or three integers, got {shape!r}",
            hint="e.g. shape=48 or shape=(48, 56, 48)",
        )
    x, y, z = (int(cast(int, d)) for d in dims)
    if not all(MIN_SHAPE <= d <= MAX_SHAPE for d in (x, y, z)):
        raise InputError(
            f"shape must be between {MIN_SHAPE} and {MAX_SHAPE} voxels per axis, got {shape!r}",
            hint="48 trains quickly on a CPU; 96–128 keeps more anatomical detail",
        )
    return x, y, z


def check_ages(ages: str | Sequence[tuple[float, float]], sites: int) -> list[tuple[float, float]]:
    """One ``(low, high)`` age range per site, from a preset name or the given ranges."""
    if isinstance(ages, str):
        if ages not in AGE_PRESETS:
            allowed = ", ".join(sorted(AGE_PRESETS))
            raise InputError(
                f"unknown age preset {ages!r}; allowed presets: {allowed}",
                hint="or give one (low, high) range per site",
            )
        preset = AGE_PRESETS[ages]
        return [preset[k % len(preset)] for k in range(sites)]
    ranges = list(ages)
    if len(ranges) != sites:
        raise InputError(
            f"{len(ranges)} age range(s) given for {sites} sites",
            hint="give exactly one (low, high) range per site, or a preset name",
        )
    out: list[tuple[float, float]] = []
    for k, item in enumerate(ranges):
        try:
            low, high = (float(v) for v in item)
        except (TypeError, ValueError):
            raise InputError(
                f"age range of site {site_name(k)} is {item!r}, not a (low, high) pair of numbers",
                hint="e.g. ages=[(45, 80), (20, 65), (60, 85)]",
            ) from None
        if not (math.isfinite(low) and math.isfinite(high)) or low < 0:
            raise InputError(
                f"age range of site {site_name(k)} is ({low}, {high}); ages must be finite "
                "and not negative",
                hint="give ages in years, e.g. (20, 65)",
            )
        if math.ceil(low * 10) > math.floor(high * 10):  # also catches low >= high
            raise InputError(
                f"age range of site {site_name(k)} is ({low}, {high}): low must be below high "
                "(and the range must hold an age with one decimal)",
                hint="give (low, high) with low < high, e.g. (20, 65)",
            )
        out.append((low, high))
    return out


def _is_previous_simulation(folder: Path) -> bool:
    try:
        meta = json.loads((folder / "generation.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == GENERATOR


#: What a simulation writes into its folder (removed again if the simulation fails).
SIMULATION_FILES = ("images", "labels", "generation.json", "sites.png", "manifest.csv")


def _check_out_dir(out_dir: Path) -> bool:
    """Return whether ``out_dir`` holds an earlier simulation (which this one replaces)."""
    check_out(out_dir, folder=True)
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return False
    if _is_previous_simulation(out_dir):
        return True
    raise InputError(
        "the output folder is not empty and holds no earlier simulation (no generation.json "
        "written by neurounlearn simulate), so nothing in it is overwritten",
        file=out_dir,
        hint="give a new or empty folder",
    )


def check_factor(name: str, value: object) -> float:
    """``value`` as a float, checked to be a finite number of at least 0."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)) or float(value) < 0:
        raise InputError(
            f"{name} must be a finite number of at least 0, got {value!r}",
            hint="0 removes the effect, 1 is the default strength",
        )
    return float(value)


def site_name(k: int) -> str:
    """A, B, …, Z, AA, AB, … like spreadsheet columns."""
    name = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        name = chr(ord("A") + r) + name
    return name


# ----------------------------------------------------------------------------- template


@functools.lru_cache(maxsize=1)
def _mni_maps() -> tuple[Float, Float, Float, NDArray[np.float64]]:
    """GM, WM and brain-mask probability maps of MNI152 2009 at 2 mm, and their affine.

    Loaded from nilearn's wheel (never downloaded) once per process.
    """
    # slow import: only when a cohort is simulated
    datasets = require("nilearn.datasets", "sim", "simulating a cohort", package="nilearn")

    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    return (
        gm.get_fdata(dtype=np.float32),
        wm.get_fdata(dtype=np.float32),
        mask.get_fdata(dtype=np.float32),
        np.asarray(gm.affine, dtype=np.float64),
    )


@dataclass(frozen=True)
class _Template:
    """The template's maps on the output grid, and what the age effects need."""

    csf: Float
    gm: Float
    wm: Float
    brain: Float
    ventricles: Float  # deep CSF, the part that grows with age
    exposure: Float  # how much CSF or outside surrounds each voxel (where cortex thins)
    ventricle_centre: NDArray[np.float64]  # voxel coordinates
    affine: NDArray[np.float64]
    voxel_mm: float


@functools.lru_cache(maxsize=4)
def _template(shape: Shape) -> _Template:
    gm2, wm2, mask2, affine2 = _mni_maps()
    # Tissue fractions at 2 mm: brain = mask, widened to hold all GM/WM; CSF fills the rest, so
    # it holds the ventricles and the sulcal and extra-cerebral CSF.
    brain2 = np.clip(np.maximum(mask2, gm2 + wm2), 0.0, 1.0)
    csf2 = np.clip(brain2 - gm2 - wm2, 0.0, 1.0)
    # Deep CSF (ventricles): far from the brain's edge. The padding makes the edge of the field
    # of view (the brain stem is cut there) count as edge too.
    inside = np.pad(brain2 > 0.5, 1)
    depth = ndimage.distance_transform_edt(inside)[1:-1, 1:-1, 1:-1] * 2.0
    lo, hi = VENTRICLE_DEPTH_MM
    ventricles2 = csf2 * np.clip((depth - lo) / (hi - lo), 0.0, 1.0)
    # Cortex exposed to CSF or the outside thins first with age (sigma: 1 voxel = 2 mm).
    exposure2 = ndimage.gaussian_filter(csf2 + (1.0 - brain2), sigma=1.0)

    # Output grid: isotropic voxels, the brain's bounding box (with margin) centred in it.
    idx = np.argwhere(mask2 > 0.5)
    lo_v, hi_v = idx.min(0), idx.max(0)
    step2 = float(affine2[0, 0])
    centre_world = affine2[:3, :3] @ ((lo_v + hi_v) / 2.0) + affine2[:3, 3]
    extent = (hi_v - lo_v + 1) * step2 * FOV_MARGIN
    voxel = float(np.max(extent / np.asarray(shape)))
    origin = centre_world - (np.asarray(shape) - 1) / 2.0 * voxel
    affine = np.eye(4)
    affine[:3, :3] *= voxel
    affine[:3, 3] = origin

    # Anti-alias before sampling the 2 mm maps at the coarser grid (sigma as in skimage).
    factor = voxel / step2
    sigma = max(0.0, (factor - 1.0) / 2.0)
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = origin[:, None] + grid * voxel
    coords = np.linalg.solve(affine2[:3, :3], world - affine2[:3, 3:4])

    def resample(volume: NDArray[Any]) -> Float:
        smooth = ndimage.gaussian_filter(volume.astype(np.float64), sigma) if sigma else volume
        out = ndimage.map_coordinates(smooth, coords, order=1, cval=0.0).reshape(shape)
        out = np.clip(out, 0.0, 1.0).astype(np.float32)
        out.setflags(write=False)  # cached and shared: never modified in place
        return out

    gm, wm, brain = resample(gm2), resample(wm2), resample(brain2)
    # CSF from the resampled maps so that csf + gm + wm == brain exactly.
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    gm = np.minimum(gm, brain)
    wm = np.clip(brain - csf - gm, 0.0, 1.0)
    for array in (csf, wm):
        array.setflags(write=False)
    ventricles = resample(ventricles2)
    exposure = resample(exposure2) * (gm > 0.01)
    exposure.setflags(write=False)
    weights = ventricles.astype(np.float64)
    centre = (np.indices(shape).reshape(3, -1) @ weights.ravel()) / max(weights.sum(), 1e-9)
    return _Template(csf, gm, wm, brain, ventricles, exposure, centre, affine, voxel)


@functools.lru_cache(maxsize=16)
def _upsampler(n_out: int, n_in: int) -> NDArray[np.float64]:
    """Matrix (n_out x n_in) of cubic-spline upsampling along one axis.

    Applying it along each axis equals ``ndimage.zoom(order=3)`` of a small control grid (the
    spline is a tensor product) but is far faster than zooming every field.
    """
    eye = np.eye(n_in)
    return np.stack(
        [ndimage.zoom(eye[j], n_out / n_in, order=3, mode="nearest") for j in range(n_in)],
        axis=1,
    )


def _smooth_field(control: NDArray[np.float64], shape: Shape) -> NDArray[np.float64]:
    mx, my, mz = (_upsampler(n, m) for n, m in zip(shape, control.shape, strict=True))
    return np.einsum("ia,jb,kc,abc->ijk", mx, my, mz, control, optimize=True)


# ----------------------------------------------------------------------------- parameters


@dataclass
class _Site:
    name: str
    age_range: tuple[float, float]
    gain: float
    offset: float
    gamma: float
    bias_amplitude: float
    bias_coefficients: list[float]  # of BIAS_MONOMIALS, peak |bias - 1| == bias_amplitude
    blur_sigma: tuple[float, float, float]  # voxels, per axis
    slice_axis: str
    noise_sd: float
    # what the neutral scanner does unless the site says otherwise (the presets do not)
    tissue_intensity: dict[str, float] = field(default_factory=lambda: dict(TISSUE_INTENSITY))
    acquisition_factor: float = 1.0
    mask_margin: float = 1.0
    residue: float = 0.0
    rotation_deg: float = 0.0
    rotation_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)
    jitter_rotation_sd_deg: float = 0.0
    jitter_shift_sd_mm: float = 0.0

    @property
    def moves(self) -> bool:
        """Whether registration moves this site's subjects off the template."""
        return bool(self.rotation_deg or self.jitter_rotation_sd_deg or self.jitter_shift_sd_mm)

    def as_json(self) -> dict[str, Any]:
        return {
            "age_range": list(self.age_range),
            "gain": round6(self.gain),
            "offset": round6(self.offset),
            "gamma": round6(self.gamma),
            "bias_amplitude": round6(self.bias_amplitude),
            "bias_coefficients": [round6(c) for c in self.bias_coefficients],
            "blur_sigma_voxels": [round6(s) for s in self.blur_sigma],
            "slice_axis": self.slice_axis,
            "noise_sd": round6(self.noise_sd),
            "tissue_intensity": {k: round6(v) for k, v in self.tissue_intensity.items()},
            "acquisition_factor": round6(self.acquisition_factor),
            "mask_margin_voxels": round6(self.mask_margin),
            "residue": round6(self.residue),
            "rotation_deg": round6(self.rotation_deg),
            "rotation_axis": [round6(a) for a in self.rotation_axis],
            "jitter_rotation_sd_deg": round6(self.jitter_rotation_sd_deg),
            "jitter_shift_sd_mm": round6(self.jitter_shift_sd_mm),
        }


def round6(x: float) -> float:
    """Six significant digits: readable JSON, and exact enough to regenerate by hand."""
    return float(f"{float(x):.6g}")


def _spread(rng: np.random.Generator, k: int, bounds: tuple[float, float]) -> NDArray[np.float64]:
    """``k`` evenly spaced values over ``bounds`` in a random order (fixed by the seed)."""
    return rng.permutation(np.linspace(bounds[0], bounds[1], k))


def _bias_basis(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """Monomials of :data:`BIAS_MONOMIALS` at ``points`` (3 x n, each coordinate in [-1, 1])."""
    powers = [[np.ones_like(axis), axis, axis * axis] for axis in points]
    return np.stack([powers[0][a] * powers[1][b] * powers[2][c] for a, b, c in BIAS_MONOMIALS])


@functools.lru_cache(maxsize=64)
def _bias_field(coefficients: tuple[float, ...], shape: Shape) -> Float:
    """A site's multiplicative bias over the field of view (computed once per site and shape)."""
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    points = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    field: Float = (
        (1.0 + np.asarray(coefficients) @ _bias_basis(points)).reshape(shape).astype(np.float32)
    )
    field.setflags(write=False)
    return field


def _bias_lattice() -> NDArray[np.float64]:
    """The bias monomials on a fixed grid of the unit cube: a field's peak is measured there,
    so the coefficients alone define it whatever the image shape."""
    lattice = np.linspace(-1.0, 1.0, 17)
    return _bias_basis(np.stack(np.meshgrid(lattice, lattice, lattice)).reshape(3, -1))


def _preset_sites(
    seed: int, preset: str, ranges: list[tuple[float, float]], strength: float
) -> list[_Site]:
    """The fixed scanners of :data:`SCANNER_PRESETS`; only the bias fields' shapes are random."""
    rng = np.random.default_rng([seed, 0])
    basis = _bias_lattice()
    sites = []
    for j, spec in enumerate(SCANNER_PRESETS[preset]):
        raw = rng.normal(size=len(BIAS_MONOMIALS))
        amplitude = spec["bias_amplitude"] * strength
        sigma = [INPLANE_BLUR * strength] * 3
        axis = SLICE_AXES[j % 3]
        sigma[axis] = spec["slice_blur"] * strength
        sites.append(
            _Site(
                name=site_name(j),
                age_range=ranges[j],
                gain=math.exp(math.log(spec["gain"]) * strength),
                offset=spec["offset"] * strength,
                gamma=math.exp(math.log(spec["gamma"]) * strength),
                bias_amplitude=amplitude,
                bias_coefficients=[
                    float(c) for c in raw / float(np.abs(raw @ basis).max()) * amplitude
                ],
                blur_sigma=(sigma[0], sigma[1], sigma[2]),
                slice_axis="xyz"[axis],
                noise_sd=max(0.0, NOISE_SD_BASE + (spec["noise_sd"] - NOISE_SD_BASE) * strength),
            )
        )
    return sites


def _make_sites(seed: int, ranges: list[tuple[float, float]], strength: float) -> list[_Site]:
    k = len(ranges)
    rng = np.random.default_rng([seed, 0])  # stream 0: sites; stream 1: subjects
    log_gain = _spread(rng, k, LOG_GAIN_RANGE)
    offset = _spread(rng, k, OFFSET_RANGE)
    log_gamma = _spread(rng, k, LOG_GAMMA_RANGE)
    amplitude = _spread(rng, k, BIAS_AMPLITUDE_RANGE)
    slice_blur = _spread(rng, k, SLICE_BLUR_RANGE)
    noise = _spread(rng, k, NOISE_SD_RANGE)
    basis = _bias_lattice()
    sites = []
    for j in range(k):
        raw = rng.normal(size=len(BIAS_MONOMIALS))
        peak = float(np.abs(raw @ basis).max())
        coefficients = raw / peak * amplitude[j] * strength
        sigma = [INPLANE_BLUR * strength] * 3
        axis = SLICE_AXES[j % 3]
        sigma[axis] = slice_blur[j] * strength
        sites.append(
            _Site(
                name=site_name(j),
                age_range=ranges[j],
                gain=math.exp(log_gain[j] * strength),
                offset=float(offset[j]) * strength,
                gamma=math.exp(log_gamma[j] * strength),
                bias_amplitude=float(amplitude[j]) * strength,
                bias_coefficients=[float(c) for c in coefficients],
                blur_sigma=(sigma[0], sigma[1], sigma[2]),
                slice_axis="xyz"[axis],
                noise_sd=max(0.0, NOISE_SD_BASE + float(noise[j]) * strength),
            )
        )
    # Drawn after the draws above, which therefore do not depend on them. At strength s each
    # deviates from the neutral scanner by s times its deviation at strength 1.
    wm_gm = _spread(rng, k, WM_GM_RATIO_RANGE)
    csf_gm = _spread(rng, k, CSF_GM_RATIO_RANGE)
    acquisition = _spread(rng, k, ACQUISITION_FACTOR_RANGE)
    margin = _spread(rng, k, MASK_MARGIN_RANGE)
    residue = _spread(rng, k, RESIDUE_RANGE)
    rotation = _spread(rng, k, SITE_ROTATION_RANGE_DEG)
    jitter_rotation = _spread(rng, k, JITTER_ROTATION_SD_RANGE_DEG)
    jitter_shift = _spread(rng, k, JITTER_SHIFT_SD_RANGE_MM)
    neutral = TISSUE_INTENSITY
    for j, site in enumerate(sites):
        direction = rng.normal(size=3)
        wm = neutral["wm"]
        gm = wm / math.exp(
            math.log(wm / neutral["gm"]) * (1 - strength) + math.log(wm_gm[j]) * strength
        )
        csf = gm * math.exp(
            math.log(neutral["csf"] / neutral["gm"]) * (1 - strength)
            + math.log(csf_gm[j]) * strength
        )
        site.tissue_intensity = {"csf": csf, "gm": gm, "wm": wm}
        site.acquisition_factor = 1.0 + (float(acquisition[j]) - 1.0) * strength
        site.mask_margin = 1.0 + (float(margin[j]) - 1.0) * strength
        site.residue = float(residue[j]) * strength
        site.rotation_deg = float(rotation[j]) * strength
        unit = direction / np.linalg.norm(direction)
        site.rotation_axis = (float(unit[0]), float(unit[1]), float(unit[2]))
        site.jitter_rotation_sd_deg = float(jitter_rotation[j]) * strength
        site.jitter_shift_sd_mm = float(jitter_shift[j]) * strength
    return sites


@dataclass
class _Subject:
    index: int
    subject: str
    site: _Site
    age: float
    sex: str
    brain_age_gap: float
    head_scale: float
    tissue_intensity: dict[str, float]
    deformation: NDArray[np.float64]  # 3 x G x G x G control displacements, mm
    texture: NDArray[np.float64]  # T x T x T control values
    rng: np.random.Generator  # goes on to draw this subject's scanner noise
    # registration error: the site's rotation composed with this subject's jitter (a rotation
    # vector, degrees) and its shift (mm); None where the site's registration is exact
    rotation_deg: NDArray[np.float64] | None = None
    shift_mm: NDArray[np.float64] | None = None

    @property
    def t(self) -> float:
        return (self.age + self.brain_age_gap - AGE_REFERENCE) / AGE_SPAN

    def age_changes(self, age_effect: float) -> tuple[float, float]:
        """(ventricle linear scale, fraction of exposed cortex turned to CSF)."""
        t = self.t * age_effect
        # Cortex only thins: before AGE_REFERENCE it stays at the template's thickness.
        return math.exp(VENTRICLE_GROWTH * t), max(GM_THINNING * t, 0.0)

    def as_json(self, age_effect: float) -> dict[str, Any]:
        ventricle_scale, thinning = self.age_changes(age_effect)
        rms = float(np.sqrt((self.deformation**2).sum(0).mean()))
        return {
            "subject": self.subject,
            "site": self.site.name,
            "age": self.age,
            "sex": self.sex,
            "brain_age_gap_years": round6(self.brain_age_gap),
            "effective_age": round6(self.age + self.brain_age_gap),
            "head_scale": round6(self.head_scale),
            "ventricle_scale": round6(ventricle_scale),
            "gm_thinning": round6(thinning),
            "deformation_rms_mm": round6(rms),
            "tissue_intensity": {k: round6(v) for k, v in self.tissue_intensity.items()},
            "registration": None
            if self.rotation_deg is None or self.shift_mm is None
            else {
                "rotation_vector_deg": [round6(v) for v in self.rotation_deg],
                "shift_mm": [round6(v) for v in self.shift_mm],
            },
            "rng": f"numpy.random.default_rng([seed, 1, {self.index}])",
        }


def _make_subject(seed: int, index: int, name: str, site: _Site) -> _Subject:
    # One stream per subject: a subject's draws depend on the seed and its index only.
    rng = np.random.default_rng([seed, 1, index])
    low, high = site.age_range
    # Ages carry one decimal everywhere (manifest and generation), kept inside the range.
    age = low + rng.uniform() * (high - low)
    age = min(max(round(age, 1), math.ceil(low * 10) / 10), math.floor(high * 10) / 10)
    sex = "M" if rng.uniform() < 0.5 else "F"
    gap = float(rng.normal(0.0, BRAIN_AGE_GAP_SD))
    head = (MALE_HEAD_SCALE if sex == "M" else 1.0) * math.exp(rng.normal(0.0, HEAD_SCALE_SD))
    jitter = rng.normal(0.0, TISSUE_JITTER_SD, size=3)
    intensity = {
        k: site.tissue_intensity[k] + float(j)
        for k, j in zip(TISSUE_INTENSITY, jitter, strict=True)
    }
    deformation = rng.normal(0.0, DEFORMATION_SD_MM, size=(3,) + (DEFORMATION_GRID,) * 3)
    texture = rng.normal(0.0, 1.0, size=(TEXTURE_GRID,) * 3)
    person = _Subject(index, name, site, age, sex, gap, head, intensity, deformation, texture, rng)
    if site.moves:  # a stream of its own: the draws above stay what they were without it
        pose = np.random.default_rng([seed, 2, index]).normal(size=6)
        person.rotation_deg = (
            np.asarray(site.rotation_axis) * site.rotation_deg
            + pose[:3] * site.jitter_rotation_sd_deg
        )
        person.shift_mm = pose[3:] * site.jitter_shift_sd_mm
    return person


def _rotation(vector_deg: NDArray[np.float64]) -> NDArray[np.float64]:
    """The rotation matrix of a rotation vector in degrees (Rodrigues' formula)."""
    theta = math.radians(float(np.linalg.norm(vector_deg)))
    if theta == 0.0:
        return np.eye(3)
    k = np.asarray(vector_deg, dtype=np.float64) / np.linalg.norm(vector_deg)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(theta) * cross + (1.0 - math.cos(theta)) * cross @ cross


# ----------------------------------------------------------------------------- images


def _anatomy(subject: _Subject, tpl: _Template, age_effect: float) -> tuple[Float, Float, Float]:
    """CSF, GM and WM fractions of one subject on the output grid."""
    shape = cast(Shape, tpl.gm.shape)
    grid = np.indices(shape, dtype=np.float64).reshape(3, -1)
    ventricle_scale, thinning = subject.age_changes(age_effect)

    # Ventricles grow by radial scaling about their centroid; the tissue they push into keeps
    # its GM:WM ratio and shrinks so that the fractions still add up to the brain.
    c0 = tpl.ventricle_centre[:, None]
    grown = ndimage.map_coordinates(tpl.ventricles, c0 + (grid - c0) / ventricle_scale, order=1)
    csf = np.maximum(tpl.csf, np.minimum(grown.reshape(shape), tpl.brain))
    tissue = tpl.gm + tpl.wm
    keep = np.where(tissue > 1e-6, (tpl.brain - csf) / np.maximum(tissue, 1e-6), 0.0)
    gm, wm = tpl.gm * keep, tpl.wm * keep
    # Cortical thinning: exposed grey matter turns into CSF (the skull does not shrink).
    lost = gm * np.minimum(thinning * tpl.exposure, 0.95)
    gm, csf = gm - lost, csf + lost

    # Head size about the grid centre, plus a smooth random deformation (mm -> voxels).
    centre = (np.asarray(shape, dtype=np.float64)[:, None] - 1) / 2.0
    displacement = np.stack([_smooth_field(d, shape) for d in subject.deformation])
    relative = grid - centre
    if subject.rotation_deg is not None and subject.shift_mm is not None:
        # Registration error: the subject lands rotated and shifted on the grid, so each output
        # voxel samples the anatomy where the inverse motion (R^T, then minus the shift) takes it.
        relative = _rotation(subject.rotation_deg).T @ (
            relative - subject.shift_mm[:, None] / tpl.voxel_mm
        )
    coords = centre + relative / subject.head_scale
    coords += displacement.reshape(3, -1) / tpl.voxel_mm
    warped = [
        ndimage.map_coordinates(m, coords, order=1, cval=0.0).reshape(shape).astype(np.float32)
        for m in (csf, gm, wm)
    ]
    return warped[0], warped[1], warped[2]


def _labels(csf: Float, gm: Float, wm: Float) -> NDArray[np.uint8]:
    """0 background (brain fraction < 0.5), else the most likely tissue: 1 CSF, 2 GM, 3 WM."""
    label = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    label[csf + gm + wm < 0.5] = 0
    return label


def _scan(subject: _Subject, csf: Float, gm: Float, wm: Float, shape: Shape) -> Float:
    """The T1-like image of one subject as its site's scanner records it."""
    site = subject.site
    ti = subject.tissue_intensity
    brain = csf + gm + wm
    mask = _mask(brain, site.mask_margin)
    clean = ti["csf"] * csf + ti["gm"] * gm + ti["wm"] * wm
    texture = _smooth_field(subject.texture, shape)
    clean = np.clip(clean * (1.0 + TEXTURE_SD * texture), 0.0, None)
    if site.residue > 0:  # non-brain tissue the skull stripping left inside the mask
        clean = clean + np.where(mask, site.residue * np.clip(1.0 - brain, 0.0, 1.0), 0.0)
    # Scanner, in the order physics applies it: contrast of the sequence, coil sensitivity
    # (bias field), the acquisition grid (partial volume), point-spread function / slice
    # thickness (blur), thermal noise in the real and imaginary channels (Rician magnitude),
    # then the reconstruction's gain and offset.
    image = clean**site.gamma
    image = image * _bias_field(tuple(site.bias_coefficients), shape)
    if site.acquisition_factor > 1.0:
        image = _acquire(image, site.acquisition_factor)
    if any(s > 0 for s in site.blur_sigma):
        image = ndimage.gaussian_filter(image, site.blur_sigma)
    if site.noise_sd > 0:
        n1, n2 = subject.rng.normal(0.0, site.noise_sd, size=(2, *shape))
        image = np.sqrt((image + n1) ** 2 + n2**2)
    image = image * site.gain + site.offset
    # Skull-stripped, as most pipelines deliver T1s: zero outside the site's mask.
    return np.where(mask, image, 0.0).astype(np.float32)


def _mask(brain: Float, margin: float) -> NDArray[np.bool_]:
    """The skull-stripping mask: brain fraction >= 0.5 and every voxel within ``margin`` voxels
    of it (1: one voxel, the neutral pipeline's dilation by the 6-neighbourhood)."""
    inside = brain >= 0.5
    if margin == 1.0:
        return ndimage.binary_dilation(inside, iterations=1)
    if margin <= 0.0:
        return inside
    return ndimage.distance_transform_edt(~inside) <= margin


def _acquire(image: NDArray[Any], factor: float) -> NDArray[Any]:
    """The image as a scanner with ``factor`` times larger voxels records it, interpolated back
    onto the output grid: each coarse voxel averages what it covers (partial volume)."""
    shape = image.shape
    coarse = tuple(max(2, round(n / factor)) for n in shape)
    smooth = ndimage.gaussian_filter(image, (factor - 1.0) / 2.0)  # anti-aliased, as in skimage
    small = ndimage.zoom(
        smooth,
        [c / n for c, n in zip(coarse, shape, strict=True)],
        order=1,
        grid_mode=True,
        mode="nearest",
    )
    return ndimage.zoom(
        small,
        [n / c for c, n in zip(coarse, shape, strict=True)],
        order=1,
        grid_mode=True,
        mode="nearest",
    )


def _save_nifti(array: NDArray[Any], affine: NDArray[np.float64], path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # Bytes gzipped here (mtime 0: same seed, same bytes) and written atomically; nibabel's own
    # writer picks the format from the file name, which a temporary name would break.
    data = gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _plot_sites(examples: list[tuple[_Subject, Float]], path: Path, *, voxel_mm: float) -> None:
    """One subject per site, side by side: axial (top) and coronal (bottom) mid-slices."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vmax = max(float(np.percentile(img[img > 0], 99.5)) for _, img in examples if img.any())
    fig = Figure(figsize=(2.4 * len(examples), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(examples), squeeze=False)
    for col, (subject, img) in enumerate(examples):
        _, ny, nz = img.shape
        # RAS arrays: transpose so that x runs left-right and y (axial) or z (coronal) up.
        for row, view in enumerate((img[:, :, nz // 2].T, img[:, ny // 2, :].T)):
            ax = axes[row][col]
            ax.imshow(view, cmap="gray", origin="lower", vmin=0.0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0][col].set_title(
            f"site {subject.site.name}\n{subject.subject}, age {subject.age:.1f} {subject.sex}",
            fontsize=9,
        )
    axes[0][0].set_ylabel("axial")
    axes[1][0].set_ylabel("coronal")
    fig.suptitle(f"One subject per site (same grey scale; {voxel_mm:.2f} mm voxels)", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _generation_record(
    *,
    seed: int,
    grid: Shape,
    tpl: _Template,
    ages: str | Sequence[tuple[float, float]],
    strength: float,
    effect: float,
    site_list: list[_Site],
    people: list[_Subject],
) -> dict[str, Any]:
    """Everything that generated the cohort, for ``generation.json`` (no clock: reproducible)."""
    from neurounlearn.version import __version__

    nilearn = require("nilearn", "sim", "simulating a cohort")

    noise_range = [NOISE_SD_BASE + NOISE_SD_RANGE[0], NOISE_SD_BASE + NOISE_SD_RANGE[1]]
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "neurounlearn_version": __version__,
        "seed": seed,
        "sites": len(site_list),
        "subjects": len(people),
        "shape": list(grid),
        "voxel_size_mm": round6(tpl.voxel_mm),
        "affine": [[round6(v) for v in row] for row in tpl.affine.tolist()],
        "orientation": "RAS (x left to right, y posterior to anterior, z inferior to superior)",
        "files": {
            "manifest": "manifest.csv (" + ",".join(MANIFEST_COLUMNS) + ")",
            "images": "images/<subject>.nii.gz, float32 T1-like, zero outside the brain",
            "labels": "labels/<subject>.nii.gz, uint8: 0 background, 1 CSF, 2 GM, 3 WM",
            "figure": "sites.png, one subject per site",
        },
        "ages": {
            "preset": ages if isinstance(ages, str) else None,
            "ranges": {s.name: list(s.age_range) for s in site_list},
            "sampling": "uniform within the site's range, rounded to 0.1 year",
        },
        "scanner_strength": strength,
        "age_effect": effect,
        "template": {
            "name": "MNI152 2009 (ICBM 2009 nonlinear asymmetric) tissue maps, 2 mm",
            "source": "nilearn.datasets, bundled in the nilearn wheel (no download)",
            "loaders": [f"nilearn.datasets.{n}(resolution=2)" for n in TEMPLATE_LOADERS],
            "nilearn_version": nilearn.__version__,
            "csf": "brain mask (widened to hold GM + WM) minus GM minus WM",
            "field_of_view": f"the brain mask's bounding box times {FOV_MARGIN}, centred",
        },
        "anatomy_model": {
            "tissue_intensity": TISSUE_INTENSITY,
            "tissue_intensity_jitter_sd": TISSUE_JITTER_SD,
            "sex": "F or M with probability 0.5 each",
            "head_scale": (
                f"linear scale about the grid centre: {MALE_HEAD_SCALE} for males, 1 for "
                f"females, times exp(N(0, {HEAD_SCALE_SD}))"
            ),
            "deformation": (
                f"smooth random displacement: a {DEFORMATION_GRID}^3 control grid of "
                f"N(0, {DEFORMATION_SD_MM} mm) per axis, cubic-spline upsampled"
            ),
            "texture": (
                f"clean intensity times 1 + {TEXTURE_SD} * field, field a {TEXTURE_GRID}^3 "
                "control grid of N(0, 1), cubic-spline upsampled"
            ),
            "labels": "0 where CSF + GM + WM < 0.5, else argmax of (CSF, GM, WM) + 1",
            "image_mask": (
                "zero outside the site's skull-stripping mask: brain fraction >= 0.5 and every "
                "voxel within mask_margin_voxels of it (the neutral pipeline: one voxel)"
            ),
        },
        "age_effect_model": {
            "description": (
                "Older brains have thinner cortex and larger ventricles; intracranial volume "
                "does not change. With t = (age + brain_age_gap - "
                f"{AGE_REFERENCE:g}) / {AGE_SPAN:g} * age_effect: the ventricles (template "
                f"CSF deeper than {VENTRICLE_DEPTH_MM[1]:g} mm inside the brain, fading in "
                f"from {VENTRICLE_DEPTH_MM[0]:g} mm) are scaled radially about their centroid "
                f"by ventricle_scale = exp({VENTRICLE_GROWTH} * t) and push grey and white "
                "matter aside; then in every voxel a fraction min(gm_thinning * exposure, "
                f"0.95) of grey matter becomes CSF, where gm_thinning = max({GM_THINNING} * t, "
                "0) and exposure (0-1) is how much CSF or outside surrounds the voxel in the "
                "template (Gaussian, sigma 2 mm). brain_age_gap ~ "
                f"N(0, {BRAIN_AGE_GAP_SD:g} years) per subject. At 48^3 and age_effect 1, "
                "grey matter falls by about 25% and CSF rises about 2.4-fold from 20 to 85 "
                "years."
            ),
            "reference_age": AGE_REFERENCE,
            "age_span": AGE_SPAN,
            "ventricle_growth": VENTRICLE_GROWTH,
            "gm_thinning": GM_THINNING,
            "ventricle_depth_mm": list(VENTRICLE_DEPTH_MM),
            "brain_age_gap_sd_years": BRAIN_AGE_GAP_SD,
            "age_effect": effect,
        },
        "site_effect_model": {
            "description": (
                "Geometry first: each subject is rotated (the site's rotation_deg about its "
                "rotation_axis plus N(0, jitter_rotation_sd_deg) per axis) and shifted "
                "(N(0, jitter_shift_sd_mm) per axis) off the template, image and labels "
                "alike (registration error). The clean image mixes the tissue fractions at "
                "the site's tissue_intensity (its T1 contrast; each subject adds its jitter), "
                "plus residue * (1 - brain fraction) inside the mask (non-brain tissue left by "
                "the skull stripping). Then in this order: I = clean ** gamma; I *= 1 + "
                "sum(bias_coefficients * monomials(x)), x in [-1, 1]^3 over the field of "
                "view; I averaged onto a grid acquisition_factor times coarser and "
                "interpolated back (partial volume); I = gaussian_filter(I, "
                "blur_sigma_voxels); I = sqrt((I + n1)^2 + n2^2) with n1, n2 ~ N(0, noise_sd) "
                "(Rician); I = gain * I + offset; zero outside the site's mask. At "
                "scanner_strength s every site's log gain, offset, log gamma, bias amplitude, "
                "blur, log white/grey and CSF/grey ratios, acquisition factor - 1, mask margin "
                "- 1, residue and registration error are s times their deviation from the "
                f"neutral scanner at strength 1, and noise_sd = {NOISE_SD_BASE} + s * (its "
                "deviation at strength 1), so s = 0 gives identical scanners. Values at "
                "strength 1 are spread evenly over the ranges below, each parameter in its own "
                "seeded random order."
            ),
            "bias_monomials_xyz_exponents": [list(e) for e in BIAS_MONOMIALS],
            "ranges_at_strength_1": {
                "log_gain": list(LOG_GAIN_RANGE),
                "offset": list(OFFSET_RANGE),
                "log_gamma": list(LOG_GAMMA_RANGE),
                "bias_amplitude": list(BIAS_AMPLITUDE_RANGE),
                "slice_blur_sigma_voxels": list(SLICE_BLUR_RANGE),
                "inplane_blur_sigma_voxels": INPLANE_BLUR,
                "noise_sd": [round6(v) for v in noise_range],
                "wm_gm_ratio": list(WM_GM_RATIO_RANGE),
                "csf_gm_ratio": list(CSF_GM_RATIO_RANGE),
                "acquisition_factor": list(ACQUISITION_FACTOR_RANGE),
                "mask_margin_voxels": list(MASK_MARGIN_RANGE),
                "residue": list(RESIDUE_RANGE),
                "rotation_deg": list(SITE_ROTATION_RANGE_DEG),
                "jitter_rotation_sd_deg": list(JITTER_ROTATION_SD_RANGE_DEG),
                "jitter_shift_sd_mm": list(JITTER_SHIFT_SD_RANGE_MM),
            },
            "tissue_contrast_source": (
                "white/grey and CSF/grey ratios span what the spoiled gradient-echo signal "
                "equation gives with measured T1 at 1.5 T and 3 T (white matter 646 / 838 ms, "
                "grey matter 1197 / 1607 ms; Wright et al. 2008, MAGMA 21:121), CSF T1 about 4 "
                "s, proton densities 0.70 / 0.80 / 1.0 and flip angles 15-30 degrees (white/"
                "grey 1.38-1.56, CSF/grey 0.40-0.52), widened to cover inversion-prepared "
                "(MPRAGE-like) sequences"
            ),
            "slice_axes": "site A along z, B along x, C along y, then again",
            "scanner_strength": strength,
        },
        "site_parameters": {s.name: s.as_json() for s in site_list},
        "subject_parameters": [p.as_json(effect) for p in people],
        "rng": (
            "numpy.random.default_rng([seed, 0]) draws the sites; default_rng([seed, 1, index]) "
            "draws each subject's age, sex, brain age gap, head scale, tissue jitter, "
            "deformation and texture, then its noise; default_rng([seed, 2, index]) its "
            "registration jitter"
        ),
    }


# ----------------------------------------------------------------------------- public API


def simulate_cohort(
    out_dir: str | Path,
    *,
    sites: int | None = None,
    subjects: int = 300,
    shape: int | tuple[int, int, int] = 48,
    seed: int = 0,
    ages: str | list[tuple[float, float]] | None = None,
    scanner_strength: float = 1.0,
    age_effect: float = 1.0,
    progress: bool = True,
    preset: str | None = None,
) -> Path:
    """Write a synthetic multi-site T1 cohort with tissue labels, a manifest and its ground truth.

    Writes into ``out_dir``: ``images/sub-XXXX.nii.gz`` (float32 T1-like, skull-stripped),
    ``labels/sub-XXXX.nii.gz`` (uint8: 0 background, 1 CSF, 2 grey matter, 3 white matter),
    ``manifest.csv`` (``subject,image,label,site,age,sex``; paths relative to it),
    ``generation.json`` (every site and subject parameter, the age and scanner models, seed,
    shape, template and nilearn version) and ``sites.png`` (one subject per site). Subjects are
    spread evenly over sites, the remainder going to the first sites. The same arguments give
    the same files, byte for byte.

    Args:
        out_dir: folder to write to; created if missing. It must be empty or hold an earlier
            simulation, which is replaced.
        sites: number of sites (scanners), named A, B, C, …; at least 2. Default: 3, or the
            preset's number.
        subjects: number of subjects; at least 3 per site.
        shape: image shape in voxels, one size for a cube or three; 16 to 256 per axis. Voxels
            are isotropic and the whole brain fits (at 48, about 4.4 mm).
        seed: fixes every random draw: site scanners, and each subject's age, sex, anatomy
            and noise (a subject's draws depend only on the seed and its index).
        ages: an :data:`AGE_PRESETS` name (``"paper"``, the default: site and age confounded;
            ``"independent"``: every site 20–85) or one ``(low, high)`` range per site. Ages
            are uniform within the site's range, with one decimal.
        scanner_strength: multiplies every site's deviation from a neutral scanner; 0 makes
            all sites the same scanner, 1 makes them clearly distinct.
        age_effect: multiplies the anatomical effect of age (cortical thinning, ventricle
            growth); 0 removes it.
        progress: show a progress bar on stderr.
        preset: a :data:`SCANNER_PRESETS` name: fixed scanners instead of the evenly spread
            ones. ``"segmentation"``: two sites whose contrast and bias field differ strongly
            (the paper's segmentation setting); ``ages`` then defaults to ``"independent"``.

    Returns:
        The path of ``manifest.csv``.

    Raises:
        InputError: a bad argument, or ``out_dir`` is not empty and holds no earlier simulation.

    Examples:
        >>> simulate_cohort("cohort", sites=3, subjects=300, ages="independent")  # doctest: +SKIP
        PosixPath('cohort/manifest.csv')
    """
    out = Path(out_dir)
    if preset is not None:
        if preset not in SCANNER_PRESETS:
            raise InputError(
                f"unknown scanner preset {preset!r}; allowed presets: "
                f"{', '.join(sorted(SCANNER_PRESETS))}",
            )
        n_preset = len(SCANNER_PRESETS[preset])
        if sites is not None and sites != n_preset:
            raise InputError(
                f"the '{preset}' preset has {n_preset} sites, but sites={sites} was asked for",
                hint="leave out the number of sites with a preset",
            )
        sites = n_preset
    elif sites is None:
        sites = 3
    if not is_int(sites) or sites < 2:
        raise InputError(
            f"sites must be an integer of at least 2, got {sites!r}",
            hint="unlearning a site needs two or more sites",
        )
    if not is_int(subjects) or subjects < 3 * sites:
        raise InputError(
            f"subjects must be an integer of at least 3 per site ({3 * sites} for {sites} "
            f"sites), got {subjects!r}",
            hint="every site needs subjects for training, validation and test",
        )
    if not is_int(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    grid = _check_shape(shape)
    if ages is None:
        ages = "paper" if preset is None else "independent"
    ranges = check_ages(ages, sites)
    strength = check_factor("scanner_strength", scanner_strength)
    effect = check_factor("age_effect", age_effect)
    previous = _check_out_dir(out)

    from tqdm import tqdm  # comes with lightning; imported here to keep the module light

    site_list = (
        _make_sites(seed, ranges, strength)
        if preset is None
        else _preset_sites(seed, preset, ranges, strength)
    )
    counts = [subjects // sites + (1 if k < subjects % sites else 0) for k in range(sites)]
    width = max(4, len(str(subjects - 1)))
    people: list[_Subject] = []
    for k, count in enumerate(counts):
        for _ in range(count):
            i = len(people)
            people.append(_make_subject(seed, i, f"sub-{i:0{width}d}", site_list[k]))

    # A failure part-way (a full disk, Ctrl-C) leaves no half-written cohort: its files go.
    with outputs_or_nothing(out, SIMULATION_FILES):
        tpl = _template(grid)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(exist_ok=True)
        if previous:
            # A manifest from the earlier simulation would point at a mix of old and new images
            # while this one runs; it is written again, last, once every image is in place.
            (out / "manifest.csv").unlink(missing_ok=True)
        # Written first: it marks the folder as a simulation, so it can be simulated into again.
        write_json(
            _generation_record(
                seed=seed,
                grid=grid,
                tpl=tpl,
                ages=ages,
                strength=strength,
                effect=effect,
                site_list=site_list,
                people=people,
            )
            | {"scanner_preset": preset},
            out / "generation.json",
        )

        examples: dict[str, tuple[_Subject, Float]] = {}
        rows = []
        for person in tqdm(people, desc="simulate", unit="subject", disable=not progress):
            csf, gm, wm = _anatomy(person, tpl, effect)
            image = _scan(person, csf, gm, wm, grid)
            image_rel = f"images/{person.subject}.nii.gz"
            label_rel = f"labels/{person.subject}.nii.gz"
            _save_nifti(image, tpl.affine, out / image_rel)
            _save_nifti(_labels(csf, gm, wm), tpl.affine, out / label_rel)
            examples.setdefault(person.site.name, (person, image))
            rows.append(
                [person.subject, image_rel, label_rel, person.site.name, person.age, person.sex]
            )

        if previous:
            # Images of subjects that the earlier, larger simulation had and this one has not.
            wanted = {f"{p.subject}.nii.gz" for p in people}
            for folder in (out / "images", out / "labels"):
                for stale in folder.glob("sub-*.nii.gz"):
                    if stale.name not in wanted:
                        stale.unlink()

        _plot_sites(list(examples.values()), out / "sites.png", voxel_mm=tpl.voxel_mm)
        manifest = out / "manifest.csv"
        write_csv(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)), manifest)
    return manifest
