"""The NIfTI files a manifest names: the columns that hold them, their absolute paths, and a
map over many files on threads with a progress bar."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

#: Show a progress bar from this many files on; fewer finish before a bar would be readable.
PROGRESS_MIN_FILES = 20


# ----------------------------------------------------------------------------- columns


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


#: The configuration key that names each role's column (for messages).
CONFIG_KEYS = {
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


# ----------------------------------------------------------------------------- progress


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool) -> Iterator[Callable[[], None]]:
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


def pool_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map`` in order, on threads when ``workers > 0`` (file reading and zlib drop the GIL)."""
    if workers <= 0 or len(items) < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)
