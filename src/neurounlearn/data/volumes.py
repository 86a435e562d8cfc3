"""Brain images: check them, preprocess them with MONAI once, and serve them from a disk cache.

The image data path has three steps:

1. :func:`find_volume_problems` opens every NIfTI file named in the manifest once and reports
   every problem at once (missing or corrupt files, 4D images, NaN voxels, label maps or masks
   that do not match their image, images of different shapes), each with its manifest row and
   column.
2. :func:`build_cache` preprocesses every image with :func:`preprocess` (MONAI transforms on
   nibabel: orient, mask, crop the foreground, resize/pad to one shape, normalise intensities)
   and stores the result as one memory-mapped ``.npy`` array of shape ``(N, D, H, W)``. The cache
   is named after the preprocessing settings and the content of the input files, and is checked
   (settings, input hashes, array header, checksum) every time it is opened, so a stale or
   corrupt cache is rebuilt, never silently reused.
3. :class:`CachedVolumes` serves rows of that array to a ``DataLoader``: later epochs and later
   runs read only the memory map and never decode NIfTI again.

Examples:
    >>> settings = PreprocessSettings(shape=(48, 48, 48))
    >>> columns = VolumeColumns(image="t1")
    >>> problems = find_volume_problems(frame, "m.csv", columns, settings)  # doctest: +SKIP
    >>> cache = build_cache(frame, "m.csv", columns, settings, cache_dir="c")  # doctest: +SKIP
    >>> data = CachedVolumes(cache, rows, y, codes)  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, Dataset

from neurounlearn.atomic import atomic_path, remove_orphans, reserve, write_json
from neurounlearn.data.augment import AUGMENTATIONS, Augmentation, IntensityAugment
from neurounlearn.data.manifest import _capped, _missing_column, _preview
from neurounlearn.errors import InputError, Problem

__all__ = [
    "PREPROCESS_VERSION",
    "CachedVolumes",
    "PreprocessSettings",
    "VolumeCache",
    "VolumeColumns",
    "build_cache",
    "find_volume_problems",
    "preprocess",
    "resolve_paths",
]

#: Bump whenever :func:`preprocess` changes its output for the same settings: it is part of
#: :meth:`PreprocessSettings.key`, so every cache built by older code is rebuilt.
PREPROCESS_VERSION = 1

#: Layout version of the cache files and sidecar.
CACHE_FORMAT = 1

NORMALIZE_CHOICES = ("zscore", "minmax", "none")
DTYPE_CHOICES = ("float16", "float32")

#: Voxels kept around the cropped foreground, so that edge voxels keep a background neighbour.
CROP_MARGIN = 1

#: Show a progress bar from this many files on; fewer finish before a bar would be readable.
PROGRESS_MIN_FILES = 20

_CHUNK = 1 << 22  # 4 MiB reads when hashing: large enough that hashlib releases the GIL

_NO_CACHE = "missing"  # _why_stale's reason when there is simply no cache yet

# Orientation letters as nibabel writes them (left→Right, posterior→Anterior, inferior→Superior).
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PreprocessSettings:
    """How every image is preprocessed before it is cached.

    Args:
        shape: output ``(D, H, W)`` in voxels; an ``int`` means a cube. ``None`` keeps each
            image's own shape after reorientation (no cropping, no resizing), and then every
            image must have the same shape.
        orientation: target axis codes for ``Orientationd`` (``"RAS"``: voxel axes run to the
            Right, Anterior and Superior).
        crop_foreground: crop to the bounding box of the brain (the mask, or voxels > 0) plus
            one voxel before resizing, so the brain fills the output. Only used with ``shape``.
        normalize: ``"zscore"`` over the nonzero (brain) voxels, ``"minmax"`` to ``[0, 1]``, or
            ``"none"``.
        dtype: storage dtype of the cache, ``"float16"`` (half the disk and page cache; z-scored
            intensities lose nothing that matters) or ``"float32"``.

    Raises:
        InputError: a setting is out of range.

    Examples:
        >>> PreprocessSettings(shape=48).shape
        (48, 48, 48)
        >>> PreprocessSettings(shape=(32, 40, 32)).key()["shape"]
        [32, 40, 32]
    """

    shape: tuple[int, int, int] | None = None
    orientation: str = "RAS"
    crop_foreground: bool = True
    normalize: str = "zscore"
    dtype: str = "float16"

    def __post_init__(self) -> None:
        shape: Any = self.shape
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
            shape = (int(shape),) * 3
        if shape is not None:
            try:
                shape = tuple(int(s) for s in shape)
            except (TypeError, ValueError):
                shape = ()
            if len(shape) != 3 or min(shape) < 1:
                raise InputError(
                    f"data.shape must be three positive voxel counts or one int, "
                    f"got {self.shape!r}",
                    hint="e.g. --set data.shape=48 (a cube) or data.shape=[40,48,40]",
                )
        # Frozen dataclass: normalise in place once, so key() and equality see one spelling.
        object.__setattr__(self, "shape", shape)
        orientation = str(self.orientation).upper()
        axes = [
            next((i for i, pair in enumerate(_AXIS_LABELS) if c in pair), -1) for c in orientation
        ]
        if len(orientation) != 3 or sorted(axes) != [0, 1, 2]:
            raise InputError(
                f"orientation must name each axis once with one of L/R, P/A, I/S, got "
                f"{self.orientation!r}",
                hint="use 'RAS' unless your models were trained on another orientation",
            )
        object.__setattr__(self, "orientation", orientation)
        if self.normalize not in NORMALIZE_CHOICES:
            raise InputError(
                f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {self.normalize!r}",
                hint="--set data.normalize=zscore",
            )
        if self.dtype not in DTYPE_CHOICES:
            raise InputError(
                f"cache dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}"
            )

    def key(self) -> dict[str, Any]:
        """Everything that decides the preprocessed arrays, as JSON-able values.

        Includes :data:`PREPROCESS_VERSION` and the MONAI version, because a change of either
        can change the output for the same settings.

        Examples:
            >>> sorted(PreprocessSettings().key())[:3]
            ['crop_foreground', 'dtype', 'monai']
        """
        import monai

        out = asdict(self)
        out["shape"] = list(self.shape) if self.shape is not None else None
        out["version"] = PREPROCESS_VERSION
        out["monai"] = monai.__version__
        return out


@dataclass(frozen=True)
class VolumeColumns:
    """Manifest columns that hold file paths.

    Args:
        image: the NIfTI image of each row.
        label: the label map of each row (segmentation), same grid as the image; ``None``: none.
        mask: the brain mask of each row (voxels outside become 0); ``None``: no mask.

    Examples:
        >>> VolumeColumns(image="t1", label="aseg").roles()
        [('image', 't1'), ('label', 'aseg')]
    """

    image: str = "image"
    label: str | None = None
    mask: str | None = None

    def roles(self) -> list[tuple[str, str]]:
        """``(role, column)`` for each column in use, image first."""
        pairs = [("image", self.image), ("mask", self.mask), ("label", self.label)]
        return [(role, col) for role, col in pairs if col is not None]


_CHECK_HINT = "neurounlearn check --data MANIFEST --input image lists every bad file at once"

_CONFIG_KEY = {
    "image": "data.image_column",
    "label": "data.label_column",
    "mask": "data.mask_column",
}


# ----------------------------------------------------------------------------- paths


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def resolve_paths(
    frame: pd.DataFrame, manifest: str | Path, columns: VolumeColumns
) -> pd.DataFrame:
    """A copy of ``frame`` whose path columns hold absolute paths.

    Relative paths resolve against the manifest's folder (not the working directory), so a
    manifest can be moved together with its images. ``~`` expands to the home folder. Empty
    cells become ``None``; columns missing from the frame are left alone.

    Args:
        frame: the manifest.
        manifest: the manifest's path.
        columns: which columns hold paths.

    Returns:
        The copy, same index and columns.

    Examples:
        >>> df = pd.DataFrame({"image": ["sub1.nii.gz", "/data/sub2.nii.gz"]})
        >>> resolve_paths(df, "/study/manifest.csv", VolumeColumns())["image"].tolist()
        ['/study/sub1.nii.gz', '/data/sub2.nii.gz']
    """
    base = Path(manifest).expanduser().absolute().parent
    out = frame.copy()
    for _, col in columns.roles():
        if col not in out.columns:
            continue
        out[col] = [
            None if _is_empty(v) else os.path.normpath(base / Path(str(v).strip()).expanduser())
            for v in out[col]
        ]
    return out


def _jobs(
    resolved: pd.DataFrame, columns: VolumeColumns
) -> list[tuple[str, str | None, str | None]]:
    """``(image, mask, label)`` paths per row."""
    n = len(resolved)
    none: list[str | None] = [None] * n
    images = list(resolved[columns.image])
    masks = list(resolved[columns.mask]) if columns.mask else none
    labels = list(resolved[columns.label]) if columns.label else none
    return list(zip(images, masks, labels, strict=True))


# ----------------------------------------------------------------------------- progress


@contextmanager
def _progress(total: int, description: str, *, enabled: bool) -> Iterator[Callable[[], None]]:
    """Yield ``advance()``; draw a bar on stderr only for many files and when enabled."""
    if not enabled or total < PROGRESS_MIN_FILES:
        yield lambda: None
        return
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )
    except ImportError:  # rich comes with typer; without it the work simply runs unannounced
        yield lambda: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _pool_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map`` in order, on threads when ``workers > 0`` (file reading and zlib drop the GIL)."""
    if workers <= 0 or len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


def _default_threads() -> int:
    return min(8, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- checking


@dataclass
class _FileInfo:
    """What one pass over a file found; ``error`` set means nothing else is known."""

    error: str | None = None
    kind: str = ""
    shape: tuple[int, ...] = ()
    oriented: tuple[int, ...] = ()
    nonfinite: int = 0
    nonzero: int = 0
    positive: int = 0
    bad_label: str | None = None
    label_max: int = 0


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The 3D grid of ``shape``, or ``None`` when the image is not 3D."""
    if len(shape) == 3:
        return shape
    if len(shape) == 4 and shape[3] == 1:  # one volume saved as 4D, as some tools do
        return shape[:3]
    return None


def _oriented_shape(
    shape: tuple[int, ...], affine: np.ndarray, orientation: str
) -> tuple[int, ...]:
    """The grid shape after reorienting to ``orientation`` (axes may swap, sizes do not)."""
    import nibabel as nib

    try:
        current = nib.orientations.io_orientation(affine)
        target = nib.orientations.axcodes2ornt(tuple(orientation), labels=_AXIS_LABELS)
        transform = nib.orientations.ornt_transform(current, target)
    except Exception:  # a degenerate affine: MONAI would fail too, keep the stored order here
        return shape
    out = [0, 0, 0]
    for axis, (to, _flip) in enumerate(transform):
        out[int(to)] = shape[axis]
    return tuple(out)


def _inspect(path: str, role: str, orientation: str) -> _FileInfo:
    """Read one file once: header, then every voxel (NaN checks need the data)."""
    import nibabel as nib

    p = Path(path)
    if not p.exists():
        return _FileInfo(error="does not exist", kind="missing")
    if p.is_dir():
        return _FileInfo(error="is a folder, not a NIfTI file", kind="missing")
    try:
        img: Any = nib.load(p)  # typed as FileBasedImage, which lacks shape/dataobj/affine
    except Exception as err:  # nibabel raises ImageFileError, OSError, EOFError, ValueError...
        return _FileInfo(
            error=f"is not a readable NIfTI file ({type(err).__name__}: {err})", kind="corrupt"
        )
    shape = tuple(int(s) for s in img.shape)
    spatial = _spatial(shape)
    if spatial is None:
        what = f"{len(shape)}D" if len(shape) != 3 else "not 3D"
        # Leave the voxels unread: a 4D series can be gigabytes and is rejected anyway.
        return _FileInfo(
            error=f"is a {what} image of shape {'x'.join(map(str, shape))}, not one 3D volume",
            kind="not3d",
            shape=shape,
        )
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # truncated .nii.gz: EOFError; truncated .nii: ValueError/OSError
        return _FileInfo(
            error=f"is truncated or corrupt: its voxels cannot be read ({type(err).__name__}: "
            f"{err})",
            kind="corrupt",
        )
    info = _FileInfo(shape=spatial, oriented=_oriented_shape(spatial, img.affine, orientation))
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        info.nonfinite = int(finite.size - np.count_nonzero(finite))
        if info.nonfinite:
            data = np.where(finite, data, 0)
    if np.iscomplexobj(data):
        return _FileInfo(error="holds complex numbers, not intensities", kind="corrupt")
    info.nonzero = int(np.count_nonzero(data))
    if role == "image":
        info.positive = int(np.count_nonzero(data > 0))
    if role == "label" and info.nonzero:
        low, high = data.min(), data.max()
        if low < 0 or high > 255:
            info.bad_label = f"values from {low:g} to {high:g}; label maps must hold 0..255"
        elif not np.array_equal(data, np.round(data)):
            info.bad_label = "values that are not whole numbers; a label map holds class ids"
        else:
            info.label_max = int(high)
    return info


@dataclass
class _Kind:
    """One kind of row problem: its summary text for :func:`_capped` and its hint."""

    what: str
    hint: str | None
    problems: list[Problem] = field(default_factory=list)


class _Report:
    """Row problems grouped by kind, so that each kind is capped on its own."""

    def __init__(self, manifest: str | Path) -> None:
        self.manifest = manifest
        self.kinds: dict[str, _Kind] = {}

    def add(
        self,
        kind: str,
        what: str,
        message: str,
        row: int,
        column: str,
        hint: str,
        summary_hint: str | None = None,
    ) -> None:
        group = self.kinds.setdefault(kind, _Kind(what, summary_hint or hint))
        group.problems.append(
            Problem(message, file=self.manifest, row=row, column=column, hint=hint)
        )

    def problems(self) -> list[Problem]:
        out: list[Problem] = []
        for kind in self.kinds.values():
            out += _capped(kind.problems, kind.what, self.manifest, kind.hint)
        # Row order reads like the manifest; the capped summaries (no row) come last.
        out.sort(key=lambda p: math.inf if p.row is None else p.row)
        return out


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def find_volume_problems(
    frame: pd.DataFrame,
    manifest: str | Path,
    columns: VolumeColumns,
    settings: PreprocessSettings,
    *,
    progress: bool = True,
    num_threads: int | None = None,
    labels_optional: bool = False,
    classes: Sequence[str] | None = None,
    stats: dict[str, Any] | None = None,
) -> list[Problem]:
    """Every problem with the image, mask and label files of a manifest, in one list.

    Each file is opened once: its header, then all of its voxels (NaN and empty-mask checks
    need the data). Reported, each with the 1-based data row, the column and the file:

    - the image (or given mask/label) column is missing from the manifest; an empty cell;
    - the file does not exist, is not NIfTI, or is truncated/corrupt (its voxels cannot be
      read);
    - the image is not one 3D volume (a 4D image whose 4th dimension is 1 is accepted as 3D);
    - NaN or infinite voxels;
    - an image with no voxel above 0 (nothing to crop to, or nothing to normalise);
    - a label map or mask whose grid differs from its image; an empty mask; a label map with
      values that are not whole numbers in 0..255;
    - with ``settings.shape`` ``None``: images whose shape (after reorientation) differs from
      the most common one.

    More than :data:`~neurounlearn.data.manifest.MAX_ROW_PROBLEMS` rows with the same kind of
    problem are summarised in one line.

    Args:
        frame: the manifest (RangeIndex: position ``i`` is data row ``i + 1``).
        manifest: the manifest's path; relative paths resolve against its folder.
        columns: which columns hold the image, label and mask paths.
        settings: the preprocessing that will follow.
        progress: draw a progress bar on stderr for many files.
        num_threads: threads reading files; ``None``: up to 8, ``0``: read in this thread.
        labels_optional: an empty label cell is no problem (semi-supervised segmentation: the
            row serves the unlearning only).
        classes: the declared classes by label value; a label map holding a larger value is a
            problem.
        stats: if given, receives ``label_max``, the largest value in any label map read.

    Returns:
        Problems; those with ``severity == "error"`` must stop the run.

    Examples:
        >>> problems = find_volume_problems(df, "m.csv", columns, settings)  # doctest: +SKIP
        >>> raise_if_errors(problems)  # doctest: +SKIP
    """
    problems: list[Problem] = []
    roles = []
    for role, col in columns.roles():
        if col in frame.columns:
            roles.append((role, col))
            continue
        problems.append(
            _missing_column(
                frame,
                manifest,
                col,
                _CONFIG_KEY[role],
                f"set {_CONFIG_KEY[role]} to the column holding each {role}'s NIfTI path",
            )
        )
    if columns.image not in frame.columns:
        return problems  # nothing else can be checked without the images

    resolved = resolve_paths(frame, manifest, columns)
    folder = Path(manifest).expanduser().absolute().parent
    report = _Report(manifest)

    # Each file is read once even when several rows name it (e.g. one mask for everyone).
    todo = list(
        dict.fromkeys((path, role) for role, col in roles for path in resolved[col] if path)
    )
    infos: dict[tuple[str, str], _FileInfo] = {}
    threads = _default_threads() if num_threads is None else num_threads
    with _progress(len(todo), "checking images", enabled=progress) as advance:
        found = _pool_map(lambda k: _inspect(k[0], k[1], settings.orientation), todo, threads)
        for key, info in zip(todo, found, strict=True):
            infos[key] = info
            advance()

    shapes: dict[int, tuple[int, ...]] = {}
    for i in range(len(resolved)):
        row = i + 1
        image_info: _FileInfo | None = None
        for role, col in roles:
            path = resolved[col].iloc[i]
            if path is None and role == "label" and labels_optional:
                continue
            if path is None:
                hint = f"give each row's {role} file, or drop the row"
                report.add(
                    f"{role}-empty",
                    f"an empty '{col}'",
                    f"the {role} path is empty",
                    row,
                    col,
                    hint,
                )
                continue
            info = infos[(path, role)]
            name = f"{role} {path}"
            if info.error is not None:
                raw = str(frame[col].iloc[i])
                hint, summary_hint = {
                    "missing": (
                        f"check the path; relative paths start from the manifest's folder "
                        f"{folder}" + (f" (the cell holds {raw!r})" if raw != path else ""),
                        f"check the paths; relative paths start from {folder}",
                    ),
                    "corrupt": (
                        "re-export or re-copy the file (a .nii.gz must be a gzipped NIfTI "
                        "file); open it with nibabel to see the error",
                        None,
                    ),
                    "not3d": (
                        "give one 3D volume per row (split a 4D series with fslsplit or "
                        "nibabel, or pick the volume you mean)",
                        None,
                    ),
                }[info.kind]
                what = {
                    "missing": f"a missing {role} file",
                    "corrupt": f"an unreadable {role} file",
                    "not3d": f"a {role} that is not 3D",
                }[info.kind]
                report.add(
                    f"{role}-{info.kind}",
                    what,
                    f"{name} {info.error}",
                    row,
                    col,
                    hint,
                    summary_hint,
                )
                continue
            if info.nonfinite:
                report.add(
                    f"{role}-nan",
                    f"NaN/inf voxels in the {role}",
                    f"{name} has {info.nonfinite} NaN or infinite voxel(s)",
                    row,
                    col,
                    "replace NaN/inf voxels (e.g. with 0: numpy.nan_to_num) and save again",
                )
            if role == "image":
                image_info = info
                shapes[row] = info.oriented
                # Cropping without a mask keeps voxels > 0: an image without any has no brain.
                needs_positive = settings.shape is not None and settings.crop_foreground
                if info.nonzero == 0 or (needs_positive and not columns.mask and not info.positive):
                    empty = "every voxel is 0" if info.nonzero == 0 else "no voxel is above 0"
                    report.add(
                        "image-blank",
                        "an empty image",
                        f"{name} is empty: {empty}",
                        row,
                        col,
                        "check that the right file is named (cropping and normalising need "
                        "brain voxels above 0)",
                    )
                continue
            if image_info is not None and info.shape != image_info.shape:
                report.add(
                    f"{role}-shape",
                    f"a {role} whose shape differs from its image",
                    f"{name} has shape {_fmt_shape(info.shape)} but its image "
                    f"{resolved[columns.image].iloc[i]} has shape {_fmt_shape(image_info.shape)}",
                    row,
                    col,
                    f"the {role} must be on its image's voxel grid (resample it to the image)",
                )
            if role == "mask" and info.nonzero == 0:
                report.add(
                    "mask-blank",
                    "an empty mask",
                    f"{name} is empty (no nonzero voxel)",
                    row,
                    col,
                    "a brain mask needs nonzero voxels inside the brain; check the file",
                )
            if role == "label" and info.bad_label:
                report.add(
                    "label-values",
                    "a label map with invalid values",
                    f"{name} holds {info.bad_label}",
                    row,
                    col,
                    "give an integer label map (0 = background, 1..255 = classes)",
                )
            elif role == "label" and classes is not None and info.label_max >= len(classes):
                report.add(
                    "label-classes",
                    "a label map with values outside the declared classes",
                    f"{name} holds label {info.label_max}, but only {len(classes)} classes are "
                    f"declared (0..{len(classes) - 1}: {', '.join(classes)})",
                    row,
                    col,
                    "declare every class in data.classes (e.g. --classes "
                    "background,CSF,GM,WM), or fix the label map",
                )

    if stats is not None:
        stats["label_max"] = max(
            (info.label_max for (_, role), info in infos.items() if role == "label"), default=0
        )
    if settings.shape is None and len(set(shapes.values())) > 1:
        common, n_common = Counter(shapes.values()).most_common(1)[0]
        for row, shape in shapes.items():
            if shape != common:
                report.add(
                    "shape",
                    "an image shape that differs from the most common one",
                    f"image {resolved[columns.image].iloc[row - 1]} has shape "
                    f"{_fmt_shape(shape)} (in {settings.orientation} orientation), but "
                    f"{n_common} of {len(shapes)} images have shape {_fmt_shape(common)}; "
                    "without data.shape all images must have one shape",
                    row,
                    columns.image,
                    "resize every image to one shape with --set data.shape=48 (a cube) or "
                    "data.shape=[D,H,W]",
                )
    return problems + report.problems()


# ----------------------------------------------------------------------------- preprocessing


def _fit_size(
    spatial: Sequence[int], pixdim: Sequence[float], target: Sequence[int]
) -> tuple[int, int, int]:
    """Voxel counts that fit ``target`` while keeping the image's aspect ratio in millimetres.

    Using physical extents (voxels x voxel size) rather than voxel counts means that a site that
    scans with 1x1x2 mm voxels is not stretched differently from one with 1 mm voxels, which
    would hand the model a site signal.
    """
    sizes = []
    for s, p in zip(spatial, pixdim, strict=True):
        p = float(p)
        sizes.append(s * (p if math.isfinite(p) and p > 0 else 1.0))
    scale = min(t / e for t, e in zip(target, sizes, strict=True))
    fit = [min(t, max(1, round(e * scale))) for t, e in zip(target, sizes, strict=True)]
    return fit[0], fit[1], fit[2]


def preprocess(
    image_path: str | Path,
    *,
    settings: PreprocessSettings,
    mask_path: str | Path | None = None,
    label_path: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and preprocess one image (and its label map) with MONAI dictionary transforms.

    Steps: ``LoadImaged`` (nibabel) → ``EnsureChannelFirstd`` → ``Orientationd`` → with a
    mask, ``MaskIntensityd`` (voxels outside the mask become 0). With ``settings.shape``:
    ``CropForegroundd`` (the mask, else image > 0, plus a 1-voxel margin) → ``Resized`` to the
    largest size that fits ``shape`` with the aspect ratio kept in millimetres → centred
    ``ResizeWithPadOrCropd`` to exactly ``shape`` (zero padding) → intensity normalisation
    (``NormalizeIntensityd(nonzero=True)`` for zscore, ``ScaleIntensityd`` for minmax). The
    label map follows every spatial step with nearest-neighbour interpolation; the image is
    resized trilinearly, with anti-aliasing when it shrinks. The image stays float32 throughout.

    Args:
        image_path: the NIfTI image.
        settings: what to do.
        mask_path: a brain mask on the image's grid; ``None``: no mask.
        label_path: a label map on the image's grid; ``None``: none.

    Returns:
        ``(image, label)``: ``image`` float32 ``(D, H, W)``; ``label`` uint8 ``(D, H, W)`` or
        ``None``.

    Raises:
        ValueError: the image has no foreground to crop to.

    Examples:
        >>> settings = PreprocessSettings(shape=48)
        >>> image, _ = preprocess("sub1.nii.gz", settings=settings)  # doctest: +SKIP
        >>> image.shape, image.dtype  # doctest: +SKIP
        ((48, 48, 48), dtype('float32'))
    """
    data = _preprocessed(image_path, settings=settings, mask_path=mask_path, label_path=label_path)
    image_out = np.asarray(data["image"].detach().cpu().numpy()[0], dtype=np.float32)
    label_out = None
    if label_path is not None:
        label = data["label"].detach().cpu().numpy()[0]
        label_out = np.clip(np.rint(label), 0, 255).astype(np.uint8)
    return image_out, label_out


def preprocessed_affine(
    image_path: str | Path, *, settings: PreprocessSettings, mask_path: str | Path | None = None
) -> np.ndarray:
    """The voxel-to-world affine of an image after :func:`preprocess` (MONAI tracks it through
    reorientation, cropping, resizing and padding): where each cached voxel lies in the scanner's
    space, so a prediction made on the cached grid can be put back on the input's grid."""
    data = _preprocessed(image_path, settings=settings, mask_path=mask_path)
    return np.asarray(data["image"].affine, dtype=np.float64)


def to_input_grid(
    probabilities: np.ndarray, affine: np.ndarray, image_path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities on the preprocessed grid -> a label map on the input image's grid.

    Each class's probability is resampled trilinearly into the input's voxels (outside the
    preprocessed field of view: background), then the most probable class is taken, so the
    label map has the input's resolution rather than blocky upsampled labels.

    Args:
        probabilities: ``(K, D, H, W)`` class probabilities, background first.
        affine: the preprocessed grid's voxel-to-world affine (:func:`preprocessed_affine`).
        image_path: the input image, whose grid and affine the label map takes.

    Returns:
        ``(labels, affine)``: uint8 labels on the input's grid and the input's affine.
    """
    import nibabel as nib

    img: Any = nib.load(str(image_path))
    shape = tuple(int(s) for s in img.shape[:3])
    target = np.asarray(img.affine, dtype=np.float64)
    # input voxel -> world -> preprocessed voxel
    matrix = np.linalg.inv(affine) @ target
    resampled = np.stack(
        [
            ndimage.affine_transform(
                np.asarray(p, dtype=np.float32),
                matrix[:3, :3],
                offset=matrix[:3, 3],
                output_shape=shape,
                order=1,
                mode="constant",
                cval=1.0 if k == 0 else 0.0,
            )
            for k, p in enumerate(probabilities)
        ]
    )
    return resampled.argmax(axis=0).astype(np.uint8), target


def _preprocessed(
    image_path: str | Path,
    *,
    settings: PreprocessSettings,
    mask_path: str | Path | None = None,
    label_path: str | Path | None = None,
) -> Any:
    """The MONAI dictionary after every preprocessing step (MetaTensors, channel first)."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        MaskIntensityd,
        NormalizeIntensityd,
        Orientationd,
        Resized,
        ResizeWithPadOrCropd,
        ScaleIntensityd,
    )

    data: Any = {"image": str(image_path)}  # MONAI's dict transforms type it several ways
    if mask_path is not None:
        data["mask"] = str(mask_path)
    if label_path is not None:
        data["label"] = str(label_path)
    keys = list(data)
    spatial_keys = [k for k in keys if k != "mask"]
    modes = ["trilinear" if k == "image" else "nearest" for k in spatial_keys]

    steps: list[Any] = [
        LoadImaged(keys, reader="NibabelReader", image_only=True, dtype=np.float32),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes=settings.orientation, labels=_AXIS_LABELS),
    ]
    if mask_path is not None:
        steps.append(MaskIntensityd("image", mask_key="mask"))
    data = Compose(steps)(data)

    if settings.shape is not None:
        if settings.crop_foreground:
            source = "mask" if mask_path is not None else "image"
            if not bool((data[source] > 0).any()):
                raise ValueError(
                    f"{data[source].meta.get('filename_or_obj', source)} has no voxel above 0, "
                    "so there is no foreground to crop to"
                )
            data = CropForegroundd(
                keys, source_key=source, margin=CROP_MARGIN, allow_smaller=False
            )(data)
        data.pop("mask", None)
        image = data["image"]
        size = _fit_size(image.shape[1:], image.pixdim.tolist(), settings.shape)
        data = Compose(
            [
                Resized(
                    spatial_keys,
                    spatial_size=size,
                    mode=modes,
                    anti_aliasing=[k == "image" for k in spatial_keys],
                ),
                ResizeWithPadOrCropd(spatial_keys, spatial_size=settings.shape),
            ]
        )(data)
    if settings.normalize == "zscore":
        data = NormalizeIntensityd("image", nonzero=True)(data)
    elif settings.normalize == "minmax":
        data = ScaleIntensityd("image", minv=0.0, maxv=1.0)(data)
    return data


# ----------------------------------------------------------------------------- cache


def _file_hash(path: str | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum(path: Path) -> str:
    value = _file_hash(str(path))
    assert value is not None
    return value


def _npy_data_size(path: Path, shape: Sequence[int], dtype: str) -> int | None:
    """The size ``path`` must have for its header and ``shape``/``dtype``, if its header reads."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        offset = fh.tell()
    return offset + int(np.prod(shape)) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class VolumeCache:
    """A finished, verified cache of preprocessed volumes.

    Args:
        path: the ``(N, D, H, W)`` ``.npy`` array of images, in manifest row order.
        label_path: the matching uint8 ``.npy`` of label maps, or ``None``.
        sidecar_path: the ``.json`` describing both.
        shape: ``(N, D, H, W)``.
        dtype: storage dtype of the images.
        reused: ``True`` when an existing cache was verified and used as it was.
        build_seconds: time spent preprocessing and writing; ``None`` when reused.

    Examples:
        >>> cache = build_cache(df, "m.csv", columns, settings, cache_dir="c")  # doctest: +SKIP
        >>> cache.open()[0].shape  # doctest: +SKIP
        (48, 48, 48)
    """

    path: Path
    label_path: Path | None
    sidecar_path: Path
    shape: tuple[int, ...]
    dtype: str
    reused: bool
    build_seconds: float | None

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the array file(s), headers included."""
        total = self.path.stat().st_size
        if self.label_path is not None:
            total += self.label_path.stat().st_size
        return total

    def open(self) -> np.memmap:
        """The images as a read-only memory map (pages are read from disk on access)."""
        return np.load(self.path, mmap_mode="r")

    def open_labels(self) -> np.memmap:
        """The label maps as a read-only memory map.

        Raises:
            ValueError: the cache was built without a label column.
        """
        if self.label_path is None:
            raise ValueError(f"cache {self.path} has no label maps (built without a label column)")
        return np.load(self.label_path, mmap_mode="r")


def _cache_paths(cache_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.labels.npy", cache_dir / f"{stem}.json"


def _label_path_for(array: Path) -> Path:
    return array.with_name(array.name.removesuffix(".npy") + ".labels.npy")


def _fmt_setting(name: str, value: Any) -> str:
    if name == "shape":
        if value is None:
            return "own shape"
        if len(set(value)) == 1:
            return str(value[0])
        return _fmt_shape(value)
    return str(value)


def _why_stale(
    array: Path,
    labels: Path | None,
    sidecar: Path,
    settings_key: dict[str, Any],
    rows: list[dict[str, str | None]],
) -> tuple[str | None, dict[str, Any] | None]:
    """``(reason, meta)``: why the cache cannot be reused (``None`` if it can) and its sidecar.

    Checks, cheapest first: sidecar readable and complete, same settings, same input hashes,
    array files present with the recorded header/shape/dtype/size, and matching checksums.
    """
    if not sidecar.exists():
        if array.exists():
            return "is incomplete (no sidecar, the build was interrupted)", None
        return _NO_CACHE, None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return f"is corrupt (unreadable sidecar {sidecar.name})", None
    if meta.get("complete") is not True or meta.get("format") != CACHE_FORMAT:
        return "is incomplete or from another version of neurounlearn", None
    old = meta.get("settings")
    if old != settings_key:
        old = old if isinstance(old, dict) else {}
        diff = [
            f"{k} {_fmt_setting(k, old.get(k))} vs {_fmt_setting(k, settings_key.get(k))}"
            for k in sorted(set(old) | set(settings_key))
            if old.get(k) != settings_key.get(k)
        ]
        return f"was built with other settings ({'; '.join(diff)})", None
    old_rows = meta.get("rows")
    if old_rows != rows:
        if not isinstance(old_rows, list) or len(old_rows) != len(rows):
            return (
                f"was built from {len(old_rows) if isinstance(old_rows, list) else '?'} images, "
                f"not {len(rows)}",
                None,
            )
        changed = [i + 1 for i, (a, b) in enumerate(zip(old_rows, rows, strict=True)) if a != b]
        return f"was built from other file contents (rows {_preview(changed)} changed)", None
    files = [("images", array, meta.get("shape"), meta.get("dtype"))]
    if labels is not None:
        files.append(("labels", labels, meta.get("label_shape"), "uint8"))
    for what, path, shape, dtype in files:
        if not path.exists():
            return f"is incomplete ({what} file {path.name} is missing)", None
        try:
            arr = np.load(path, mmap_mode="r")
            header = (list(arr.shape), str(arr.dtype))
            del arr
            expected = _npy_data_size(path, header[0], header[1])
        except Exception as err:  # a truncated or overwritten header raises many types
            return f"is corrupt ({what} header unreadable: {type(err).__name__})", None
        if header != (shape, dtype) or shape is None or shape[0] != len(rows):
            return (
                f"is corrupt ({what} array is {_fmt_shape(header[0])} {header[1]}, the sidecar "
                f"says {_fmt_shape(shape or [])} {dtype})",
                None,
            )
        if expected != path.stat().st_size:
            return f"is corrupt ({what} file size is wrong)", None
    checksums = meta.get("checksums", {})
    for what, path, _, _ in files:
        if _checksum(path) != checksums.get(what):
            return f"is corrupt ({what} checksum mismatch)", None
    return None, meta


class _PreprocessRows(Dataset):
    """Preprocess unique inputs in DataLoader workers; errors come back as text, not raised.

    Raising inside a worker would surface as a wrapped traceback; returning the message lets
    the main process raise one clean :class:`InputError` naming the row.
    """

    def __init__(
        self, jobs: list[tuple[str, str | None, str | None]], settings: PreprocessSettings
    ) -> None:
        self.jobs = jobs
        self.settings = settings

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray | None, np.ndarray | None, str | None]:
        image, mask, label = self.jobs[k]
        try:
            x, lab = preprocess(image, settings=self.settings, mask_path=mask, label_path=label)
        except Exception as err:  # any failure is reported with its row by the caller
            return k, None, None, f"{type(err).__name__}: {err}"
        return k, x, lab, None


def _keep(item: Any) -> Any:
    return item


def build_cache(
    frame: pd.DataFrame,
    manifest: str | Path,
    columns: VolumeColumns,
    settings: PreprocessSettings,
    *,
    cache_dir: str | Path,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    num_workers: int = 0,
) -> VolumeCache:
    """Preprocess every row's image once into a memory-mapped cache, or reuse a verified one.

    The cache is named ``volumes-<hash>`` after ``settings.key()`` and the ordered content
    hashes (BLAKE2b of the bytes) of each row's image, mask and label files, so it follows the
    data wherever the files are moved, and any edit to a file or a setting gives a new cache.
    It consists of ``volumes-<hash>.npy`` (``(N, D, H, W)`` in ``settings.dtype``),
    ``volumes-<hash>.labels.npy`` (uint8, only with a label column; a row whose label cell is
    empty gets an all-zero map) and ``volumes-<hash>.json``
    (settings, per-row hashes, shape, dtype, checksums, ``complete: true``). Array files are
    written under temporary names and renamed when finished, the sidecar last, so an
    interrupted build never leaves a cache that looks complete.

    An existing cache is reused only when its sidecar, settings, input hashes, array headers,
    sizes and checksums all match; otherwise ``echo`` says why and it is rebuilt.

    Run :func:`find_volume_problems` first for a report of every bad file; here the first
    unreadable row stops the build.

    Args:
        frame: the manifest (position ``i`` is data row ``i + 1``); rows are cached in order.
        manifest: the manifest's path; relative paths resolve against its folder.
        columns: which columns hold the image, label and mask paths.
        settings: the preprocessing.
        cache_dir: folder of the cache (created if missing).
        progress: draw progress bars on stderr for many files.
        echo: receives one-line messages (building, reusing, rebuilding and why).
        num_workers: DataLoader worker processes that preprocess; ``0`` preprocesses in this
            process. Files are also hashed on that many threads.

    Returns:
        The verified cache.

    Raises:
        InputError: a path column is missing, a path cell is empty, a file cannot be read or
            preprocessed, or (with ``settings.shape`` ``None``) images differ in shape.

    Examples:
        >>> cache = build_cache(df, "m.csv", VolumeColumns(), PreprocessSettings(shape=48),
        ...                     cache_dir="~/.cache/neurounlearn")  # doctest: +SKIP
        >>> cache.reused, cache.shape  # doctest: +SKIP
        (True, (300, 48, 48, 48))
    """
    for role, col in columns.roles():
        if col not in frame.columns:
            raise InputError(
                f"{_CONFIG_KEY[role]} names column '{col}', which is not in the manifest",
                file=manifest,
                column=col,
                hint=f"set {_CONFIG_KEY[role]} to the column holding each {role}'s NIfTI path",
            )
    if len(frame) == 0:
        raise InputError("the manifest has no rows to cache", file=manifest)
    resolved = resolve_paths(frame, manifest, columns)
    jobs = _jobs(resolved, columns)
    for i, job in enumerate(jobs):
        for (role, column), cell in zip(
            [("image", columns.image), ("mask", columns.mask), ("label", columns.label)],
            job,
            strict=True,
        ):
            if column is not None and cell is None and role != "label":
                raise InputError(
                    f"the {role} path is empty", file=manifest, row=i + 1, column=column
                )

    threads = num_workers if num_workers > 0 else 0
    unique_paths = list(dict.fromkeys(p for job in jobs for p in job if p is not None))
    hashes: dict[str, str | None] = {}
    with _progress(len(unique_paths), "hashing images", enabled=progress) as advance:
        for path, digest in zip(
            unique_paths, _pool_map(_file_hash_or_none, unique_paths, threads), strict=True
        ):
            if digest is None:
                row = next(i + 1 for i, job in enumerate(jobs) if path in job)
                raise InputError(
                    f"{path} cannot be read",
                    file=manifest,
                    row=row,
                    hint=_CHECK_HINT,
                )
            hashes[path] = digest
            advance()
    rows = [
        {"image": hashes[image], "mask": hashes.get(mask or ""), "label": hashes.get(label or "")}
        for image, mask, label in jobs
    ]
    key = settings.key()
    name = hashlib.blake2b(
        json.dumps({"settings": key, "rows": rows}, sort_keys=True).encode(), digest_size=10
    ).hexdigest()
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cache_error(cache_dir, err) from None
    array, labels_file, sidecar = _cache_paths(cache_dir, f"volumes-{name}")
    labels = labels_file if columns.label else None

    reason, meta = _why_stale(array, labels, sidecar, key, rows)
    if reason is None and meta is not None:
        echo(f"reusing image cache {array} ({len(rows)} images, verified)")
        return VolumeCache(
            path=array,
            label_path=labels,
            sidecar_path=sidecar,
            shape=tuple(meta["shape"]),
            dtype=str(meta["dtype"]),
            reused=True,
            build_seconds=None,
        )
    if reason == _NO_CACHE:
        echo(f"caching {len(rows)} preprocessed images in {array}")
    else:
        echo(f"cache {array} {reason}; rebuilding")
    try:
        # A stale sidecar must not outlive the arrays it describes if this build is interrupted.
        sidecar.unlink(missing_ok=True)
        for orphan in remove_orphans(cache_dir, ".volumes-*.tmp"):
            echo(f"removed {orphan.name}, left in the cache by an interrupted build")
        return _build(
            jobs=jobs,
            rows=rows,
            manifest=manifest,
            columns=columns,
            settings=settings,
            array=array,
            labels=labels,
            sidecar=sidecar,
            progress=progress,
            echo=echo,
            num_workers=num_workers,
        )
    except OSError as err:  # a full disk, a read-only cache, a file-size limit
        raise _cache_error(cache_dir, err) from None


def _cache_error(cache_dir: Path, err: OSError) -> InputError:
    """A failed cache write as one line: what happened, and where else to put the cache."""
    what = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
    elif err.errno == errno.EFBIG:
        what = "the cache file is larger than this system allows (ulimit -f)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "the cache folder cannot be written (read-only or permission denied)"
    return InputError(
        f"cannot write the image cache: {what}; nothing partial is kept",
        file=cache_dir,
        hint="free space, or put the cache on another disk with --set data.cache_dir=DIR or "
        "NEUROUNLEARN_CACHE_DIR=DIR",
    )


def _file_hash_or_none(path: str) -> str | None:
    try:
        return _file_hash(path)
    except OSError:
        return None


def _build(
    *,
    jobs: list[tuple[str, str | None, str | None]],
    rows: list[dict[str, str | None]],
    manifest: str | Path,
    columns: VolumeColumns,
    settings: PreprocessSettings,
    array: Path,
    labels: Path | None,
    sidecar: Path,
    progress: bool,
    echo: Callable[[str], Any],
    num_workers: int,
) -> VolumeCache:
    start = time.perf_counter()
    # Rows with identical inputs (the same file listed twice) are preprocessed once.
    unique: dict[str, int] = {}
    targets: list[list[int]] = []
    for i, row in enumerate(rows):
        k = unique.setdefault(json.dumps(row, sort_keys=True), len(targets))
        if k == len(targets):
            targets.append([])
        targets[k].append(i)
    work = [jobs[t[0]] for t in targets]
    loader = DataLoader(
        _PreprocessRows(work, settings),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep,
    )
    threads = torch.get_num_threads()
    if num_workers == 0:
        # One volume is too small to split across threads: with several, synchronisation costs
        # more than it saves (measured 10x slower per 48³ volume on 2 cores). DataLoader workers
        # already run single-threaded.
        torch.set_num_threads(1)
    try:
        return _fill(
            loader=loader,
            targets=targets,
            jobs=jobs,
            rows=rows,
            manifest=manifest,
            columns=columns,
            settings=settings,
            array=array,
            labels=labels,
            sidecar=sidecar,
            progress=progress,
            echo=echo,
            start=start,
        )
    finally:
        torch.set_num_threads(threads)


def _fill(
    *,
    loader: DataLoader,
    targets: list[list[int]],
    jobs: list[tuple[str, str | None, str | None]],
    rows: list[dict[str, str | None]],
    manifest: str | Path,
    columns: VolumeColumns,
    settings: PreprocessSettings,
    array: Path,
    labels: Path | None,
    sidecar: Path,
    progress: bool,
    echo: Callable[[str], Any],
    start: float,
) -> VolumeCache:
    """Write preprocessed rows into temporary arrays, rename them, then write the sidecar."""
    n = len(jobs)
    dtype = np.dtype(settings.dtype)
    images: np.memmap | None = None
    label_maps: np.memmap | None = None
    first_shape: tuple[int, ...] | None = None
    with ExitStack() as stack:
        tmp_array = stack.enter_context(atomic_path(array, owned=True))
        tmp_labels = (
            stack.enter_context(atomic_path(labels, owned=True)) if labels is not None else None
        )
        with _progress(len(targets), "preprocessing images", enabled=progress) as advance:
            for k, x, lab, error in loader:
                row = targets[k][0] + 1
                if error is not None or x is None:
                    raise InputError(
                        f"image {jobs[row - 1][0]} could not be preprocessed: {error}",
                        file=manifest,
                        row=row,
                        column=columns.image,
                        hint=_CHECK_HINT,
                    )
                if first_shape is None:
                    first_shape = tuple(x.shape)
                    images = np.lib.format.open_memmap(
                        tmp_array, mode="w+", dtype=dtype, shape=(n, *first_shape)
                    )
                    reserve(tmp_array)  # a full disk fails here, not as a SIGBUS mid-write
                    if tmp_labels is not None:
                        label_maps = np.lib.format.open_memmap(
                            tmp_labels, mode="w+", dtype=np.uint8, shape=(n, *first_shape)
                        )
                        reserve(tmp_labels)
                elif tuple(x.shape) != first_shape:
                    raise InputError(
                        f"image {jobs[row - 1][0]} has shape {_fmt_shape(x.shape)} after "
                        f"reorientation, but row {targets[0][0] + 1} has "
                        f"{_fmt_shape(first_shape)}",
                        file=manifest,
                        row=row,
                        column=columns.image,
                        hint="resize every image to one shape with --set data.shape=48",
                    )
                stored = x.astype(dtype)
                if not np.isfinite(stored).all():
                    raise InputError(
                        f"image {jobs[row - 1][0]} has intensities beyond the range of "
                        f"{settings.dtype} (up to {np.abs(x).max():g}) after preprocessing",
                        file=manifest,
                        row=row,
                        column=columns.image,
                        hint="normalise intensities (--set data.normalize=zscore)",
                    )
                assert images is not None
                for i in targets[k]:
                    images[i] = stored
                    if label_maps is not None and lab is not None:
                        label_maps[i] = lab
                advance()
        assert images is not None and first_shape is not None
        images.flush()
        del images
        checksums = {"images": _checksum(tmp_array)}
        if label_maps is not None and tmp_labels is not None:
            label_maps.flush()
            del label_maps
            checksums["labels"] = _checksum(tmp_labels)
        # Leaving the ExitStack renames the temporary files onto their final names.
    seconds = time.perf_counter() - start
    shape = (n, *first_shape)
    meta = {
        "format": CACHE_FORMAT,
        "settings": settings.key(),
        "rows": rows,
        "files": {
            "images": array.name,
            "labels": labels.name if labels is not None else None,
        },
        "shape": list(shape),
        "dtype": settings.dtype,
        "label_shape": list(shape) if labels is not None else None,
        "checksums": checksums,
        "checksum_algorithm": "blake2b-128 of the whole .npy file",
        "build_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": True,
    }
    write_json(meta, sidecar)
    cache = VolumeCache(
        path=array,
        label_path=labels,
        sidecar_path=sidecar,
        shape=shape,
        dtype=settings.dtype,
        reused=False,
        build_seconds=seconds,
    )
    echo(
        f"cached {n} images ({_fmt_shape(first_shape)} {settings.dtype}, "
        f"{cache.nbytes / 2**20:.1f} MiB) in {seconds:.1f} s"
    )
    return cache


# ----------------------------------------------------------------------------- dataset


class CachedVolumes(Dataset):
    """Rows of a volume cache as training samples, read from the memory map.

    The memory map is opened lazily, once per process, on the first ``__getitem__``: only
    paths are pickled, so the dataset can be sent to ``DataLoader`` worker processes.

    Args:
        cache: a :class:`VolumeCache` or the path of its images ``.npy``.
        rows: cache row of each sample (positions in the manifest the cache was built from).
        y: target of each sample (``NaN`` where unknown).
        codes: integer confound codes of each sample, ``(n, C)`` (a 1D array means ``C = 1``).
        with_labels: also return the label map of each sample.
        values: optional ``(n, C)`` standardised values of continuous confounds (``NaN``: none).
        conditions: optional ``(n, C)`` target bins of target-conditioned confounds (``-1``).
        augment: ``intensity``: each image, every time it is read, gets random scanner-like
            intensity changes (:class:`~neurounlearn.data.augment.IntensityAugment`, seeded
            per process from ``torch.initial_seed()``); ``none``: images as cached.

    Raises:
        ValueError: lengths differ, a row is outside the cache, labels are asked for but the
            cache has none, or ``augment`` is unknown.

    Examples:
        >>> data = CachedVolumes(cache, np.arange(10), ages, site_codes)  # doctest: +SKIP
        >>> data[0]["x"].shape  # doctest: +SKIP
        torch.Size([1, 48, 48, 48])
    """

    def __init__(
        self,
        cache: VolumeCache | str | Path,
        rows: np.ndarray,
        y: np.ndarray,
        codes: np.ndarray,
        *,
        with_labels: bool = False,
        values: np.ndarray | None = None,
        conditions: np.ndarray | None = None,
        augment: Augmentation = "none",
    ) -> None:
        from neurounlearn.training.datamodule import confound_extras

        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
        self.augment = augment
        self._augmenter: Any = None
        self.extra = confound_extras(values, conditions)
        if isinstance(cache, VolumeCache):
            self.path = cache.path
            label_path = cache.label_path
        else:
            self.path = Path(cache)
            label_path = _label_path_for(self.path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.y = np.asarray(y, dtype=np.float32)
        codes = np.asarray(codes, dtype=np.int64)
        self.codes = codes.reshape(-1, 1) if codes.ndim == 1 else codes
        if not len(self.rows) == len(self.y) == len(self.codes):
            raise ValueError(
                f"rows, y and codes differ in length ({len(self.rows)}, {len(self.y)}, "
                f"{len(self.codes)})"
            )
        n = int(np.load(self.path, mmap_mode="r").shape[0])
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= n):
            raise ValueError(f"rows must lie in 0..{n - 1}, the rows of cache {self.path}")
        self.with_labels = with_labels
        self.label_path = label_path if with_labels else None
        if with_labels and (label_path is None or not label_path.exists()):
            raise ValueError(f"cache {self.path} has no label maps (built without a label column)")
        self._images: np.ndarray | None = None
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        # A memory map must not travel to workers: each opens its own on first access.
        state = self.__dict__.copy()
        state["_images"] = None
        state["_labels"] = None
        state["_augmenter"] = None  # each worker draws its own changes
        return state

    def state_dict(self) -> dict[str, Any]:
        """The augmentation's random streams (empty before the first augmented read, or without
        augmentation): a resumed run goes on drawing the same changes. With DataLoader workers
        each worker keeps its own streams, which are not stored."""
        return {} if self._augmenter is None else {"augment": self._augmenter.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "augment" in state:
            self._augmenter = IntensityAugment(seed=torch.initial_seed())
            self._augmenter.load_state_dict(state["augment"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
            if self.label_path is not None:
                self._labels = np.load(self.label_path, mmap_mode="r")
        row = self.rows[i]
        x = np.array(self._images[row], dtype=np.float32)
        if self.augment == "intensity":
            if self._augmenter is None:
                self._augmenter = IntensityAugment(seed=torch.initial_seed())
            x = self._augmenter(x)
        item = {
            "x": torch.from_numpy(x).unsqueeze(0),
            "y": torch.tensor(self.y[i], dtype=torch.float32),
            "codes": torch.from_numpy(self.codes[i].copy()),
        }
        if self._labels is not None:
            item["label"] = torch.from_numpy(np.array(self._labels[row], dtype=np.int64))
        return item | {k: v[i] for k, v in self.extra.items()}
