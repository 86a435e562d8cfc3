"""Find every problem with the image, mask and label files of a manifest, in one pass.

:func:`find_volume_problems` opens every NIfTI file named in the manifest once and reports
every problem at once (missing or corrupt files, 4D images, NaN voxels, label maps or masks that
do not match their image, images of different shapes), each with its manifest row and column.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from neurounlearn.data.manifest import cap_row_problems, missing_column_problem
from neurounlearn.data.volumes.files import (
    CONFIG_KEYS,
    VolumeColumns,
    pool_map,
    progress_bar,
    resolve_paths,
)
from neurounlearn.data.volumes.preprocessing import AXIS_LABELS, PreprocessSettings, format_shape
from neurounlearn.errors import Problem


def _default_threads() -> int:
    return min(8, os.cpu_count() or 1)


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
        target = nib.orientations.axcodes2ornt(tuple(orientation), labels=AXIS_LABELS)
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
    """One kind of row problem: its summary text for
    :func:`~neurounlearn.data.manifest.cap_row_problems` and its hint."""

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
            out += cap_row_problems(kind.problems, kind.what, self.manifest, kind.hint)
        # Row order reads like the manifest; the capped summaries (no row) come last.
        out.sort(key=lambda p: math.inf if p.row is None else p.row)
        return out


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
            missing_column_problem(
                frame,
                manifest,
                col,
                CONFIG_KEYS[role],
                f"set {CONFIG_KEYS[role]} to the column holding each {role}'s NIfTI path",
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
    with progress_bar(len(todo), "checking images", enabled=progress) as advance:
        found = pool_map(lambda k: _inspect(k[0], k[1], settings.orientation), todo, threads)
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
                    f"{name} has shape {format_shape(info.shape)} but its image "
                    f"{resolved[columns.image].iloc[i]} has shape {format_shape(image_info.shape)}",
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
                    "declare every class, background first (e.g. "
                    "data.classes=[background,CSF,GM,WM]), or fix the label map",
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
                    f"{format_shape(shape)} (in {settings.orientation} orientation), but "
                    f"{n_common} of {len(shapes)} images have shape {format_shape(common)}; "
                    "without data.shape all images must have one shape",
                    row,
                    columns.image,
                    "resize every image to one shape with data.shape=48 (a cube) or "
                    "data.shape=[D,H,W]",
                )
    return problems + report.problems()
