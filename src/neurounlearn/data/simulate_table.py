"""Simulate a multi-site table of regional brain volumes (FreeSurfer-like) with known truth.

A fast, controllable stand-in for the image cohort of :mod:`neurounlearn.data.simulate`: each
subject is one row of ``features`` positive "regional volumes" (mm³) that depend on age, sex
and head size, read through a site-specific "scanner" that shifts, scales and bends them. It
takes well under a second for thousands of subjects, so unlearning experiments run on a CPU.

Model, for subject i at site s and feature (region) j = 0 … features - 1:

1. Demographics. ``age_i ~ U(low_s, high_s)`` rounded to 0.1 year; ``male_i ~
   Bernoulli(sex_ratio_s)``; total intracranial volume (ml), independent of age::

       tiv_i = 1400 + 150 * sex_effect * male_i + N(0, 100)      (rounded to 0.1 ml)

2. True anatomy, with ``t_i = (age_i - 50) / 20`` and ``tiv_z_i = (tiv_i - 1475) / 100``::

       a_ij = age_effect * (b_j * t_i + c_j * t_i**2) + sex_effect * d_j * male_i
              + e_j * tiv_z_i + (L z_i)_j + noise * eps_ij

   ``b_j ~ N(-0.6, 0.3)`` (atrophy) except a fifth of the regions, which get ``N(0, 0.05)``
   (nearly age-free); ``c_j ~ N(0, 0.15)``; ``d_j ~ N(0, 0.45)`` on half of the regions and 0
   on the rest; ``e_j ~ N(0.4, 0.15)``; ``L`` (features x 5) ``~ N(0, 0.3)`` and ``z_i ~ N(0,
   I_5)`` (subjects differ along a few shared axes, so regions are correlated); ``eps_ij ~
   N(0, 0.75)``. The region mean ``mu_j`` of the usual notation is 0 here: a region's size
   lives in ``v_j`` below, so ``a`` is roughly centred and the scanner's scale acts on the deviation
   from the mean, as in ComBat.

3. Scanner, at ``S = site_strength``, with per-site vectors ``g_sj ~ N(0, 0.5)`` (location),
   ``s_sj ~ N(0, 0.15)`` (scale), ``h_sj ~ N(0, 0.3)`` (nonlinearity) and a site noise sd
   ``sigma_s ~ U(0.1, 0.4)``::

       x_ij = a_ij * (1 + S * s_sj) + S * (g_sj + h_sj * tanh(a_ij)) + S * sigma_s * N(0, 1)

4. Volume: ``value_ij = v_j * exp(0.1 * x_ij)`` rounded to 0.01 mm³, with the region's
   typical volume ``v_j`` log-uniform between 500 and 15000 mm³; one unit of ``x`` is about
   10% of a region's volume.

Random streams (``numpy.random.default_rng`` seeded with a list): ``[seed, 0]`` draws the
anatomy model (``b, c, d, e, L, v``); ``[seed, 1, k]`` draws site k's scanner and then its
subjects' scanner noise; ``[seed, 2, k]`` draws site k's subjects (age, sex, tiv, ``z``,
``eps``). So the same arguments give the same table, and changing how many subjects one site
has changes neither the anatomy model nor another site's scanner or subjects (only the ids
of later sites' subjects move).

Everything that generated the table is written to ``generation.json`` beside
``manifest.csv`` when ``out_dir`` is given.

What the defaults give (measured: 600 subjects, 3 sites, 60 regions, seed 0, every site 20–85;
z-scored regions, 5-fold shuffled cross-validation with ``random_state=0``, stratified for the
classifiers): a ``RidgeCV`` over
:data:`~neurounlearn.evaluation.leakage.RIDGE_ALPHAS` predicts age with MAE 4.63 years;
``LogisticRegression()`` predicts sex with balanced accuracy 0.942 and site with 0.998. At
``site_strength=0`` site balanced accuracy is 0.357 (chance 0.333) and age MAE 4.34. Over seeds
0–9 the ranges are: age MAE 4.1–5.5, sex 0.88–0.96, site 0.98–1.00 (0.27–0.37 at strength 0).

Examples:
    >>> table = simulate_table(sites=3, subjects=30, features=8, seed=1)
    >>> table.shape
    (30, 13)
    >>> list(table.columns[:6])
    ['subject', 'site', 'age', 'sex', 'tiv', 'region_00']
    >>> table.groupby("site").size().tolist()
    [10, 10, 10]
    >>> simulate_table("table_cohort", subjects=600)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from neurounlearn.atomic import check_out, outputs_or_nothing, write_csv, write_json
from neurounlearn.data.simulate import check_ages, check_factor, is_int, round6, site_name
from neurounlearn.errors import InputError

#: ``generation.json`` names its generator so a later run recognises a folder it may overwrite.
GENERATOR = "neurounlearn.data.simulate_table"
FORMAT_VERSION = 1
#: Columns of the manifest before the region columns.
ID_COLUMNS = ("subject", "site", "age", "sex", "tiv")
#: Select the feature columns of a simulated table with this regular expression.
FEATURES_REGEX = "^region_"

MIN_SITES = 2
MIN_FEATURES = 4
MIN_SUBJECTS_PER_SITE = 3

# --- demographics --------------------------------------------------------------------------
TIV_FEMALE_ML = 1400.0
TIV_MALE_EXTRA_ML = 150.0  # times sex_effect
TIV_SD_ML = 100.0
#: tiv_z = (tiv - TIV_CENTRE_ML) / TIV_SD_ML: fixed constants, so a subject's anatomy does not
#: depend on who else is in the cohort.
TIV_CENTRE_ML = 1475.0

# --- anatomy -------------------------------------------------------------------------------
AGE_CENTRE = 50.0
AGE_SCALE = 20.0
AGE_SLOPE = (-0.6, 0.3)  # mean, sd of b_j
AGE_FREE_FRACTION = 0.2  # regions whose age loading is near zero ...
AGE_FREE_SLOPE_SD = 0.05  # ... drawn N(0, this)
AGE_CURVE_SD = 0.15  # c_j
SEX_FRACTION = 0.5  # regions with a sex difference
SEX_SD = 0.45  # d_j on those regions
TIV_LOADING = (0.4, 0.15)  # mean, sd of e_j
FACTORS = 5  # rank of L
FACTOR_SD = 0.3
EPS_SD = 0.75
#: Regions' typical volumes v_j (mm³), log-uniform over this range.
VOLUME_RANGE_MM3 = (500.0, 15000.0)
#: value = v_j * exp(LOG_VOLUME_SCALE * x): one unit of x is about 10% of the volume.
LOG_VOLUME_SCALE = 0.1
DECIMALS = 2

# --- scanners ------------------------------------------------------------------------------
SITE_LOCATION_SD = 0.5  # g_sj
SITE_SCALE_SD = 0.15  # s_sj
SITE_NONLINEAR_SD = 0.3  # h_sj
SITE_NOISE_RANGE = (0.1, 0.4)  # sigma_s

Array = NDArray[np.float64]


# ----------------------------------------------------------------------------- validation


def _check_counts(subjects: int | Sequence[int], sites: int) -> list[int]:
    """Subjects per site: a total spread evenly (first sites get the remainder) or a list."""
    hint = f"every site needs at least {MIN_SUBJECTS_PER_SITE} subjects (train, validation, test)"
    if is_int(subjects):
        total = int(cast(int, subjects))
        if total < MIN_SUBJECTS_PER_SITE * sites:
            raise InputError(
                f"subjects must be at least {MIN_SUBJECTS_PER_SITE} per site "
                f"({MIN_SUBJECTS_PER_SITE * sites} for {sites} sites), got {total}",
                hint=hint,
            )
        return [total // sites + (1 if k < total % sites else 0) for k in range(sites)]
    if not isinstance(subjects, Sequence) or isinstance(subjects, str):
        raise InputError(
            f"subjects must be an integer or one integer per site, got {subjects!r}",
            hint="e.g. subjects=600 or subjects=[300, 200, 100]",
        )
    counts = list(subjects)
    if len(counts) != sites:
        raise InputError(
            f"{len(counts)} subject count(s) given for {sites} sites",
            hint="give one count per site, or one total",
        )
    for k, count in enumerate(counts):
        if not is_int(count) or count < MIN_SUBJECTS_PER_SITE:
            raise InputError(
                f"site {site_name(k)} has {count!r} subjects; each site needs an integer of at "
                f"least {MIN_SUBJECTS_PER_SITE}",
                hint=hint,
            )
    return [int(c) for c in counts]


def _check_sex_ratio(sex_ratio: float | Sequence[float], sites: int) -> list[float]:
    per_site = isinstance(sex_ratio, Sequence) and not isinstance(sex_ratio, str)
    values: list[object] = (
        list(cast(Sequence[object], sex_ratio)) if per_site else [sex_ratio] * sites
    )
    if len(values) != sites:
        raise InputError(
            f"{len(values)} sex ratio(s) given for {sites} sites",
            hint="give one fraction of males for all sites, or one per site",
        )
    out: list[float] = []
    for k, value in enumerate(values):
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not real or not 0.0 <= float(cast(float, value)) <= 1.0:
            raise InputError(
                f"sex_ratio{f' of site {site_name(k)}' if per_site else ''} is {value!r}; it "
                "must be a fraction of males between 0 and 1",
                hint="e.g. sex_ratio=0.5, or sex_ratio=[0.3, 0.5, 0.7] for three sites",
            )
        out.append(float(cast(float, value)))
    return out


def _is_previous_table(folder: Path) -> bool:
    try:
        meta = json.loads((folder / "generation.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == GENERATOR


def _check_out_dir(out_dir: Path) -> None:
    check_out(out_dir, folder=True)
    if out_dir.exists() and any(out_dir.iterdir()) and not _is_previous_table(out_dir):
        raise InputError(
            "the output folder is not empty and holds no earlier table simulation (no "
            f"generation.json written by {GENERATOR}), so nothing in it is overwritten",
            file=out_dir,
            hint="give a new or empty folder",
        )


# ----------------------------------------------------------------------------- model


def _draw_anatomy(rng: np.random.Generator, features: int) -> dict[str, Array]:
    """Per-region loadings (b, c, d, e, L) and typical volumes v, from the anatomy stream."""
    b = rng.normal(AGE_SLOPE[0], AGE_SLOPE[1], features)
    age_free = rng.permutation(features)[: round(AGE_FREE_FRACTION * features)]
    b[age_free] = rng.normal(0.0, AGE_FREE_SLOPE_SD, len(age_free))
    c = rng.normal(0.0, AGE_CURVE_SD, features)
    d = rng.normal(0.0, SEX_SD, features)
    d[rng.permutation(features)[round(SEX_FRACTION * features) :]] = 0.0
    e = rng.normal(TIV_LOADING[0], TIV_LOADING[1], features)
    loadings = rng.normal(0.0, FACTOR_SD, (features, FACTORS))
    low, high = np.log(VOLUME_RANGE_MM3)
    v = np.round(np.exp(rng.uniform(low, high, features)), 1).astype(np.float64)
    return {"b": b, "c": c, "d": d, "e": e, "L": loadings, "v": v}


def _draw_scanner(rng: np.random.Generator, features: int) -> dict[str, Any]:
    """One site's scanner at strength 1 (g, s, h vectors and a noise sd)."""
    return {
        "g": rng.normal(0.0, SITE_LOCATION_SD, features),
        "s": rng.normal(0.0, SITE_SCALE_SD, features),
        "h": rng.normal(0.0, SITE_NONLINEAR_SD, features),
        "noise_sd": float(rng.uniform(*SITE_NOISE_RANGE)),
    }


def _draw_subjects(
    rng: np.random.Generator,
    count: int,
    *,
    features: int,
    age_range: tuple[float, float],
    sex_ratio: float,
    sex_effect: float,
) -> dict[str, Array]:
    """One site's subjects: age, male (0/1), tiv (ml), shared factors z and region noise eps."""
    low, high = age_range
    age = np.round(low + rng.uniform(size=count) * (high - low), 1)
    # Rounding must not push an age outside the site's range.
    age = np.clip(age, math.ceil(low * 10) / 10, math.floor(high * 10) / 10)
    male = (rng.uniform(size=count) < sex_ratio).astype(np.float64)
    tiv = TIV_FEMALE_ML + TIV_MALE_EXTRA_ML * sex_effect * male + rng.normal(0, TIV_SD_ML, count)
    return {
        "age": age,
        "male": male,
        "tiv": np.round(tiv, 1),
        "z": rng.normal(size=(count, FACTORS)),
        "eps": rng.normal(0.0, EPS_SD, size=(count, features)),
    }


def _anatomy(
    people: dict[str, Array],
    model: dict[str, Array],
    *,
    age_effect: float,
    sex_effect: float,
    noise: float,
) -> Array:
    """True anatomy a (subjects x features), before any scanner."""
    t = ((people["age"] - AGE_CENTRE) / AGE_SCALE)[:, None]
    tiv_z = ((people["tiv"] - TIV_CENTRE_ML) / TIV_SD_ML)[:, None]
    return (
        age_effect * (model["b"] * t + model["c"] * t**2)
        + sex_effect * model["d"] * people["male"][:, None]
        + model["e"] * tiv_z
        + people["z"] @ model["L"].T
        + noise * people["eps"]
    )


def _scan(
    anatomy: Array, scanner: dict[str, Any], strength: float, rng: np.random.Generator
) -> Array:
    """The site's reading x of the anatomy a: location, scale, a bend, and its own noise."""
    # Drawn even at strength 0 so that the stream stays aligned whatever the strength.
    extra = rng.normal(0.0, scanner["noise_sd"], size=anatomy.shape)
    bent = scanner["g"] + scanner["h"] * np.tanh(anatomy)
    return anatomy * (1.0 + strength * scanner["s"]) + strength * (bent + extra)


def _summary(vector: Array) -> dict[str, float]:
    return {
        "mean": round6(float(vector.mean())),
        "sd": round6(float(vector.std())),
        "max_abs": round6(float(np.abs(vector).max())),
    }


def _generation_record(
    *,
    arguments: dict[str, Any],
    names: list[str],
    model: dict[str, Array],
    site_rows: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything that generated the table, for ``generation.json`` (no clock: reproducible)."""
    from neurounlearn.version import __version__

    strength = float(arguments["site_strength"])

    def vec(values: Array) -> list[float]:
        return [round6(float(v)) for v in values]

    sites_json: dict[str, Any] = {}
    for row in site_rows:
        scanner = row["scanner"]
        effects = {
            key: {
                "summary": _summary(strength * scanner[key]),
                "values": vec(strength * scanner[key]),
            }
            for key in ("g", "s", "h")
        }
        sites_json[row["name"]] = {
            "subjects": row["subjects"],
            "age_range": list(row["age_range"]),
            "sex_ratio": row["sex_ratio"],
            "additive_g": effects["g"],
            "multiplicative_s": effects["s"],
            "nonlinear_h": effects["h"],
            "noise_sd": round6(strength * scanner["noise_sd"]),
            "rng": {
                "scanner": f"numpy.random.default_rng([seed, 1, {row['index']}])",
                "subjects": f"numpy.random.default_rng([seed, 2, {row['index']}])",
            },
        }
    return {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "neurounlearn_version": __version__,
        "seed": arguments["seed"],
        "arguments": arguments,
        "description": (
            "Regional volumes v_j * exp(0.1 * x_ij), rounded to 0.01 mm^3, where x_ij = a_ij * "
            "(1 + S * s_sj) + S * (g_sj + h_sj * tanh(a_ij)) + S * sigma_s * N(0, 1) is site s's "
            "reading of the true anatomy a_ij = age_effect * (b_j * t_i + c_j * t_i^2) + "
            "sex_effect * d_j * male_i + e_j * tiv_z_i + (L z_i)_j + noise * eps_ij, with t_i = "
            f"(age_i - {AGE_CENTRE:g}) / {AGE_SCALE:g}, tiv_z_i = (tiv_i - {TIV_CENTRE_ML:g}) / "
            f"{TIV_SD_ML:g}, z_i ~ N(0, I_{FACTORS}), eps_ij ~ N(0, {EPS_SD:g}) and S = "
            f"site_strength. tiv_i = {TIV_FEMALE_ML:g} + {TIV_MALE_EXTRA_ML:g} * sex_effect * "
            f"male_i + N(0, {TIV_SD_ML:g}) ml, independent of age. Ages are uniform in the "
            "site's range (0.1 year); sex is Bernoulli(sex_ratio) for male."
        ),
        "columns": {
            "ids": list(ID_COLUMNS),
            "features": names,
            "features_regex": FEATURES_REGEX,
            "units": {"age": "years", "tiv": "ml", "region_*": "mm^3"},
        },
        "anatomy_model": {
            "age_slope_b": {
                "distribution": (
                    f"N({AGE_SLOPE[0]:g}, {AGE_SLOPE[1]:g}); {AGE_FREE_FRACTION:.0%} of the "
                    f"regions N(0, {AGE_FREE_SLOPE_SD:g})"
                ),
                "values": vec(model["b"]),
            },
            "age_curve_c": {"distribution": f"N(0, {AGE_CURVE_SD:g})", "values": vec(model["c"])},
            "sex_d": {
                "distribution": f"N(0, {SEX_SD:g}) on {SEX_FRACTION:.0%} of the regions, else 0",
                "values": vec(model["d"]),
            },
            "tiv_e": {
                "distribution": f"N({TIV_LOADING[0]:g}, {TIV_LOADING[1]:g})",
                "values": vec(model["e"]),
            },
            "factors_L": {
                "distribution": f"N(0, {FACTOR_SD:g}), features x {FACTORS}",
                "values": [vec(row) for row in model["L"]],
            },
            "eps_sd": EPS_SD,
            "typical_volume_v_mm3": {
                "distribution": (
                    f"log-uniform on [{VOLUME_RANGE_MM3[0]:g}, {VOLUME_RANGE_MM3[1]:g}]"
                ),
                "values": vec(model["v"]),
            },
            "log_volume_scale": LOG_VOLUME_SCALE,
            "tiv_ml": {
                "female_mean": TIV_FEMALE_ML,
                "male_extra": TIV_MALE_EXTRA_ML,
                "sd": TIV_SD_ML,
                "centre": TIV_CENTRE_ML,
            },
            "age_centre": AGE_CENTRE,
            "age_scale": AGE_SCALE,
        },
        "site_effect_model": {
            "distributions_at_strength_1": {
                "additive_g": f"N(0, {SITE_LOCATION_SD:g})",
                "multiplicative_s": f"N(0, {SITE_SCALE_SD:g})",
                "nonlinear_h": f"N(0, {SITE_NONLINEAR_SD:g})",
                "noise_sd": f"U({SITE_NOISE_RANGE[0]:g}, {SITE_NOISE_RANGE[1]:g})",
            },
            "note": "vectors and noise_sd under 'sites' are already multiplied by site_strength",
        },
        "sites": sites_json,
        "rng": (
            "numpy.random.default_rng([seed, 0]) draws b, c, d, e, L, v; default_rng([seed, 1, "
            "k]) draws site k's g, s, h, noise sd, then its subjects' scanner noise; "
            "default_rng([seed, 2, k]) draws site k's ages, sexes, tiv, z and eps"
        ),
    }


# ----------------------------------------------------------------------------- public API


def simulate_table(
    out_dir: str | Path | None = None,
    *,
    sites: int = 3,
    subjects: int | Sequence[int] = 600,
    features: int = 60,
    seed: int = 0,
    ages: str | Sequence[tuple[float, float]] = "independent",
    sex_ratio: float | Sequence[float] = 0.5,
    site_strength: float = 1.0,
    age_effect: float = 1.0,
    sex_effect: float = 1.0,
    noise: float = 1.0,
    progress: bool = False,
) -> pd.DataFrame:
    """Simulate a multi-site table of regional volumes whose generating model is known.

    The model (age, sex and head-size effects on the anatomy, then a per-site location, scale
    and nonlinear "scanner" effect) is described in the module docstring. The same arguments
    give the same table, value for value.

    Args:
        out_dir: if given, write ``manifest.csv`` (the returned table) and ``generation.json``
            (every generating parameter) there; created if missing. It must be empty or hold
            an earlier table simulation, whose two files are replaced.
        sites: number of sites, named A, B, C, …; at least 2.
        subjects: total number of subjects, spread evenly over sites (the first sites get the
            remainder), or one count per site; at least 3 per site.
        features: number of regions (columns ``region_00``, ``region_01``, …; three digits
            from ``region_100`` on); at least 4. Select them with ``^region_``.
        seed: fixes every random draw (see the module docstring for the streams).
        ages: an :data:`~neurounlearn.data.simulate.AGE_PRESETS` name (``"independent"``:
            every site 20–85; ``"paper"``: site and age confounded) or one ``(low, high)``
            range per site. Ages are uniform within the range, with one decimal.
        sex_ratio: fraction of males, one for all sites or one per site, each in [0, 1].
        site_strength: scales every scanner effect; 0 makes all sites the same scanner.
        age_effect: scales the effect of age on the anatomy; 0 removes it.
        sex_effect: scales the effect of sex on the anatomy and on ``tiv``; 0 removes it.
        noise: scales the region-specific subject noise ``eps``; 0 removes it.
        progress: show a progress bar over sites on stderr.

    Returns:
        The manifest: ``subject`` (``sub-0001``, …), ``site``, ``age`` (years), ``sex``
        (``"F"``/``"M"``), ``tiv`` (ml), then the regions (mm³), one row per subject, sites in
        order.

    Raises:
        InputError: a bad argument, or ``out_dir`` is not empty and holds no earlier table
            simulation.

    Examples:
        >>> table = simulate_table(sites=2, subjects=[5, 3], features=4, seed=0)
        >>> table.site.value_counts().sort_index().to_dict()
        {'A': 5, 'B': 3}
        >>> table.filter(regex="^region_").columns.tolist()
        ['region_00', 'region_01', 'region_02', 'region_03']
        >>> simulate_table("table_cohort", subjects=600, site_strength=0.5)  # doctest: +SKIP
    """
    if not is_int(sites) or sites < MIN_SITES:
        raise InputError(
            f"sites must be an integer of at least {MIN_SITES}, got {sites!r}",
            hint="unlearning a site needs two or more sites",
        )
    counts = _check_counts(subjects, sites)
    if not is_int(features) or features < MIN_FEATURES:
        raise InputError(
            f"features must be an integer of at least {MIN_FEATURES}, got {features!r}",
            hint="e.g. features=60 (about the regions of a cortical atlas)",
        )
    if not is_int(seed) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    ranges = check_ages(ages, sites)
    ratios = _check_sex_ratio(sex_ratio, sites)
    strength = check_factor("site_strength", site_strength)
    age_k = check_factor("age_effect", age_effect)
    sex_k = check_factor("sex_effect", sex_effect)
    noise_k = check_factor("noise", noise)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out_dir(out)

    from tqdm import tqdm  # comes with lightning; imported here to keep the module light

    model = _draw_anatomy(np.random.default_rng([seed, 0]), features)
    names = [f"region_{j:0{max(2, len(str(features - 1)))}d}" for j in range(features)]
    width = max(4, len(str(sum(counts))))
    frames: list[pd.DataFrame] = []
    site_rows: list[dict[str, Any]] = []
    first = 1
    for k in tqdm(range(sites), desc="simulate table", unit="site", disable=not progress):
        site_rng = np.random.default_rng([seed, 1, k])
        scanner = _draw_scanner(site_rng, features)
        people = _draw_subjects(
            np.random.default_rng([seed, 2, k]),
            counts[k],
            features=features,
            age_range=ranges[k],
            sex_ratio=ratios[k],
            sex_effect=sex_k,
        )
        anatomy = _anatomy(people, model, age_effect=age_k, sex_effect=sex_k, noise=noise_k)
        x = _scan(anatomy, scanner, strength, site_rng)
        values = np.round(model["v"] * np.exp(LOG_VOLUME_SCALE * x), DECIMALS)
        ids = [f"sub-{i:0{width}d}" for i in range(first, first + counts[k])]
        first += counts[k]
        frame = pd.DataFrame(
            {
                "subject": ids,
                "site": site_name(k),
                "age": people["age"],
                "sex": np.where(people["male"] > 0, "M", "F"),
                "tiv": people["tiv"],
            }
        )
        frames.append(pd.concat([frame, pd.DataFrame(values, columns=names)], axis=1))
        site_rows.append(
            {
                "index": k,
                "name": site_name(k),
                "subjects": counts[k],
                "age_range": ranges[k],
                "sex_ratio": ratios[k],
                "scanner": scanner,
            }
        )
    table = pd.concat(frames, ignore_index=True)

    if out is not None:
        arguments = {
            "sites": sites,
            "subjects": counts,
            "features": features,
            "seed": seed,
            "ages": ages if isinstance(ages, str) else [list(r) for r in ranges],
            "age_ranges": [list(r) for r in ranges],
            "sex_ratio": ratios,
            "site_strength": strength,
            "age_effect": age_k,
            "sex_effect": sex_k,
            "noise": noise_k,
        }
        with outputs_or_nothing(out, ("generation.json", "manifest.csv")):
            out.mkdir(parents=True, exist_ok=True)
            write_json(
                _generation_record(
                    arguments=arguments, names=names, model=model, site_rows=site_rows
                ),
                out / "generation.json",
            )
            write_csv(table, out / "manifest.csv")
    return table
