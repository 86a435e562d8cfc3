"""From a configuration to checked model inputs: one entry point for tables and images.

``fit``, ``predict``, ``embed`` and ``check`` all read data through :func:`load_inputs`, so a
manifest is judged the same way everywhere: the table checks of :mod:`~neurounlearn.data.manifest`
and, for images, the volume checks of :mod:`~neurounlearn.data.volumes`, every problem reported
at once before anything is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch.utils.data import Dataset

from neurounlearn.config import RunConfig
from neurounlearn.data.augment import Augmentation
from neurounlearn.data.manifest import (
    ID_CANDIDATES,
    TableSpec,
    find_problems,
    infer_task,
    read_table,
    resolve_id_column,
    select_features,
)
from neurounlearn.data.tabular import TableEncoding, has_path
from neurounlearn.errors import InputError, Problem, raise_if_errors
from neurounlearn.losses import IGNORE

if TYPE_CHECKING:
    from neurounlearn.data.volumes import PreprocessSettings, VolumeCache, VolumeColumns

CACHE_ENV = "NEUROUNLEARN_CACHE_DIR"


def resolve_task(cfg: RunConfig, frame: pd.DataFrame | None) -> tuple[str, str]:
    """``(task, reason)``: the configured task, or for ``auto`` the one the target's values
    suggest (:func:`~neurounlearn.data.manifest.infer_task`)."""
    if cfg.data.task != "auto":
        return cfg.data.task, "set in the configuration"
    if frame is None or cfg.data.target not in frame:
        return "regression", "the default"
    return infer_task(frame[cfg.data.target])


def table_spec(
    cfg: RunConfig, *, training: bool = True, frame: pd.DataFrame | None = None
) -> TableSpec:
    """What the table checks need to know of a configuration (``frame``: the manifest, to
    infer the task when ``data.task`` is auto)."""
    images = cfg.data.input == "image"
    segmentation = cfg.data.task == "segmentation"
    if not images and not cfg.data.features:
        raise InputError(
            "no feature columns given",
            hint="select them with a regex, e.g. data.features='_thickness$|Vol$' (or "
            "data.input=image for NIfTI volumes)",
        )
    return TableSpec(
        # a segmentation's target column holds label-map paths: the volume checks judge it
        target=cfg.data.target if training and not segmentation else None,
        confounds=[c.name for c in cfg.confounds] if training else [],
        subsets={c.name: c.subset for c in cfg.confounds if c.subset} if training else {},
        features=None if images else cfg.data.features,
        id_column=cfg.data.id_column,
        site_column=cfg.data.site_column,
        use_features=not images,
        task="regression" if segmentation else resolve_task(cfg, frame)[0],
        confound_kinds={c.name: c.kind for c in cfg.confounds},
        conditional={c.name: c.target_bins for c in cfg.confounds if c.conditional},
        unlabelled_sites=list(cfg.data.unlabelled_sites) if training else [],
        target_range=target_range(cfg),
        image_column=cfg.data.image_column if images else None,
    )


#: The range ``data.target_range: auto`` gives a target that is an age, in years.
AGE_RANGE = (0.0, 120.0)


def target_range(cfg: RunConfig) -> tuple[float, float] | None:
    """The plausible target range: the configured one, or for ``auto`` :data:`AGE_RANGE` when
    the target is named as an age (``age``, ``age_at_scan``, ``Age_years``), else none."""
    chosen = cfg.data.target_range
    if chosen != "auto":
        return chosen
    return AGE_RANGE if re.fullmatch(r"age([_ ].*)?", cfg.data.target.lower()) else None


def cache_dir(cfg: RunConfig) -> Path:
    """Where preprocessed volumes are cached: the config's, ``$NEUROUNLEARN_CACHE_DIR``, or
    ``~/.cache/neurounlearn`` (never the data folder, which is often read-only on clusters)."""
    if cfg.data.cache_dir is not None:
        return Path(cfg.data.cache_dir)
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neurounlearn"


def label_column(cfg: RunConfig) -> str | None:
    """The column of label-map paths: a segmentation's target, else ``data.label_column``."""
    return cfg.data.target if cfg.data.task == "segmentation" else cfg.data.label_column


def volume_columns(cfg: RunConfig, *, labels: bool = True) -> VolumeColumns:
    """The path columns of an image manifest (``labels=False``: leave label maps out, as
    ``predict`` does for new data that has none)."""
    # imported here, not at the top: MONAI is slow to import and reading a table never needs it
    from neurounlearn.data.volumes import VolumeColumns

    return VolumeColumns(
        image=cfg.data.image_column,
        label=label_column(cfg) if labels else None,
        mask=cfg.data.mask_column,
    )


def check_augment_config(cfg: RunConfig) -> None:
    """``data.augment`` changes images: refuse it for a feature table."""
    if cfg.data.augment not in ("none", "auto") and cfg.data.input != "image":
        raise InputError(
            f"data.augment={cfg.data.augment} changes images, but the input is {cfg.data.input!r}",
            hint="leave data.augment at none, or train on images (data.input=image)",
        )


def check_segmentation_config(cfg: RunConfig) -> None:
    """What a segmentation run cannot be, found before any file is read."""
    if cfg.data.task != "segmentation":
        return
    if cfg.data.input != "image":
        raise InputError(
            f"data.task=segmentation needs images, but the input is {cfg.data.input!r}",
            hint="use data.input=image with a manifest whose rows name an image and a label "
            "map (e.g. data.target=label)",
        )
    for i, c in enumerate(cfg.confounds):
        if c.conditional:
            raise InputError(
                f"confound '{c.name}' is target-conditioned, but a segmentation has no "
                "per-subject target to condition on",
                hint=f"unlearn '{c.name}' without target conditioning "
                f"(confounds.{i}.conditional=false)",
            )
    classes = cfg.data.classes
    if classes is not None and (len(classes) < 2 or len(set(classes)) != len(classes)):
        raise InputError(
            f"data.classes must name at least 2 distinct classes, got {classes}",
            hint="e.g. data.classes=[background,CSF,GM,WM] (label value 0 first)",
        )


def _segmentation_classes(
    cfg: RunConfig, frame: pd.DataFrame, path: Path, label_max: int
) -> list[str]:
    """The declared classes, or ``0..label_max`` named by value; an error when no row of the
    manifest has a label map."""
    target = cfg.data.target
    if not has_path(frame[target]).any():
        raise InputError(
            f"no row has a label map in column '{target}': a segmentation needs some labelled "
            "volumes",
            file=path,
            column=target,
            hint="give label-map paths in some rows (rows left empty serve the unlearning "
            "only), or name the label-map column with data.target",
        )
    if cfg.data.classes is not None:
        return list(cfg.data.classes)
    if label_max < 1:
        raise InputError(
            f"every label map in column '{target}' is empty (all 0, background)",
            file=path,
            column=target,
            hint="check the label maps: classes are 1, 2, ... and 0 is background",
        )
    return ["background", *(f"class_{v}" for v in range(1, label_max + 1))]


def preprocess_settings(cfg: RunConfig) -> PreprocessSettings:
    from neurounlearn.data.volumes import PreprocessSettings

    return PreprocessSettings(shape=cfg.data.shape, normalize=cfg.data.normalize)


def preprocess_workers() -> int:
    """Processes that preprocess volumes into the cache: none on a small machine (measured no
    faster on 2 cores), else up to 8, leaving one core free."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


@dataclass
class Inputs:
    """A checked manifest and what was found in it.

    Attributes:
        frame: the manifest; for training, the targets of unlabelled sites are blanked.
        task: the task (``regression`` or ``classification``), resolved when ``auto``.
        task_reason: why that task (shown to the user when it was inferred).
        hidden_targets: rows whose target was blanked (``data.unlabelled_sites``).
        classes: segmentation: class names by label value (background first).
    """

    path: Path
    frame: pd.DataFrame
    id_column: str | None
    feature_columns: list[str]
    warnings: list[Problem]
    task: str = "regression"
    task_reason: str = ""
    hidden_targets: int = 0
    classes: list[str] = field(default_factory=list)


def load_inputs(cfg: RunConfig, path: str | Path) -> Inputs:
    """Read ``path`` and check it for training with ``cfg``; raise every error found at once.

    Args:
        cfg: the run configuration (input kind, columns, features, target, confounds).
        path: the manifest.

    Raises:
        InputError: the manifest or (for images) any volume has a problem; all are listed.
    """
    path = Path(path)
    table_spec(cfg)  # a missing data.features is reported before the file is read
    check_segmentation_config(cfg)
    check_augment_config(cfg)
    segmentation = cfg.data.task == "segmentation"
    id_names = (*ID_CANDIDATES, cfg.data.id_column) if cfg.data.id_column else ID_CANDIDATES
    frame = read_table(path, text_columns=id_names)
    spec = table_spec(cfg, frame=frame)
    problems = find_problems(frame, path, spec)
    found: dict[str, Any] = {}
    if cfg.data.input == "image":
        from neurounlearn.data.volumes import find_volume_problems

        problems += find_volume_problems(
            frame,
            path,
            volume_columns(cfg),
            preprocess_settings(cfg),
            progress=cfg.train.progress_bar,
            labels_optional=segmentation,
            classes=cfg.data.classes if segmentation else None,
            stats=found,
        )
    raise_if_errors(problems)
    id_column = resolve_id_column(frame, cfg.data.id_column, path)
    features: list[str] = []
    if cfg.data.input == "features":
        exclude = {c for c in (id_column, spec.site_column, spec.target, *spec.confounds) if c}
        features = select_features(frame, spec.features, path, exclude=exclude)
    warnings = [p for p in problems if p.severity != "error"]
    task, reason = resolve_task(cfg, frame)
    hidden = 0
    target = cfg.data.target if segmentation else spec.target
    if cfg.data.unlabelled_sites:
        rows = frame[spec.site_column].astype(str).isin(cfg.data.unlabelled_sites)
        rows &= frame[target].notna() if target else False
        hidden = int(rows.sum())
        if hidden:
            frame = frame.copy()
            frame.loc[rows, target] = np.nan
            warnings.append(
                Problem(
                    f"the targets of {hidden} row(s) at unlabelled site(s) "
                    f"{', '.join(cfg.data.unlabelled_sites)} are hidden from training; those "
                    "rows serve the unlearning only",
                    file=path,
                    column=target,
                    severity="warning",
                )
            )
    classes: list[str] = []
    if segmentation:
        task, reason = "segmentation", "set in the configuration"
        classes = _segmentation_classes(cfg, frame, path, int(found.get("label_max", 0)))
    return Inputs(path, frame, id_column, features, warnings, task, reason, hidden, classes)


def load_new_images(
    cfg: RunConfig,
    path: str | Path,
    *,
    classes: Sequence[str] | None = None,
    frame: pd.DataFrame | None = None,
) -> Inputs:
    """Read new image data for ``predict``/``embed``: only the volumes must be sound (no target,
    site or id needed).

    With a segmentation run's ``classes``, the label maps are read too (``evaluate --data``):
    rows may lack one, but a map must hold only those classes. ``frame``: the manifest's rows,
    given in place of reading ``path`` (whose folder still anchors relative image paths).
    """
    from neurounlearn.data.volumes import find_volume_problems

    path = Path(path)
    id_names = (*ID_CANDIDATES, cfg.data.id_column) if cfg.data.id_column else ID_CANDIDATES
    if frame is None:
        frame = read_table(path, text_columns=id_names)
    else:
        frame = frame.reset_index(drop=True)
    raise_if_errors(
        find_volume_problems(
            frame,
            path,
            volume_columns(cfg, labels=classes is not None),
            preprocess_settings(cfg),
            progress=False,
            labels_optional=True,
            classes=classes,
        )
    )
    id_column = next((c for c in id_names if c in frame), None)
    return Inputs(path, frame, id_column, [], [])


class RowData:
    """Model inputs for every row of a manifest: ``subset(rows)`` gives a dataset over some.

    For tables the standardised features live in memory; for images the preprocessed volumes
    live in a memory-mapped cache that DataLoader workers read.

    Attributes:
        y: standardised targets (NaN where missing), one per row.
        codes: ``(N, C)`` confound classes (``-1`` where ignored).
        input_shape: shape of one input (``(F,)`` for tables, ``(D, H, W)`` for images).
        cache_info: for images, what the cache did (path, reused, build seconds, bytes).
    """

    def __init__(
        self,
        *,
        y: np.ndarray,
        codes: np.ndarray,
        input_shape: tuple[int, ...],
        features: np.ndarray | None = None,
        cache: VolumeCache | None = None,
        values: np.ndarray | None = None,
        conditions: np.ndarray | None = None,
        with_labels: bool = False,
    ) -> None:
        if (features is None) == (cache is None):
            raise ValueError("give exactly one of features and cache")
        self.y = y
        self.codes = codes
        self.values = values
        self.conditions = conditions
        self.input_shape = input_shape
        self.features = features
        self.cache = cache
        self.with_labels = with_labels

    def __len__(self) -> int:
        return len(self.y)

    @property
    def cache_info(self) -> dict[str, Any]:
        if self.cache is None:
            return {}
        return {
            "path": str(self.cache.path),
            "reused": self.cache.reused,
            "build_seconds": self.cache.build_seconds,
            "bytes": int(self.cache.nbytes),
        }

    def subset(self, rows: np.ndarray, *, augment: Augmentation = "none") -> Dataset:
        """A dataset over ``rows`` (integer positions or a boolean mask); ``augment``
        (images only): see :class:`~neurounlearn.data.volumes.CachedVolumes`."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        values = None if self.values is None else self.values[rows]
        conditions = None if self.conditions is None else self.conditions[rows]
        if self.features is not None:
            from neurounlearn.data.datasets import TensorDictDataset

            if augment != "none":
                raise ValueError("augmentation changes images; a feature table has none")

            return TensorDictDataset(
                self.features[rows],
                self.y[rows],
                self.codes[rows],
                values=values,
                conditions=conditions,
            )
        from neurounlearn.data.volumes import CachedVolumes

        assert self.cache is not None
        return CachedVolumes(
            self.cache,
            rows,
            self.y[rows],
            self.codes[rows],
            values=values,
            conditions=conditions,
            with_labels=self.with_labels,
            augment=augment,
        )

    def all(self) -> Dataset:
        return self.subset(np.arange(len(self)))


def row_data(
    cfg: RunConfig,
    inputs: Inputs,
    encoding: TableEncoding,
    *,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    labels: bool = True,
    confounds: bool = True,
) -> RowData:
    """Encode every row of ``inputs``: scaled features, or volumes preprocessed into the cache.

    ``labels=False`` leaves label maps out of the cache (new data for ``predict``);
    ``confounds=False`` leaves the confounds uncoded (every row ``-1``/NaN), so new data needs no
    confound column and the run's stored subset queries are never evaluated on it.

    Images are decoded and preprocessed once; later epochs, runs and ``predict`` calls on the
    same files with the same settings read the memory-mapped cache only.
    """
    y = encoding.targets(inputs.frame)
    if confounds:
        codes = encoding.codes(inputs.frame)
        values, conditions = encoding.values(inputs.frame), encoding.conditions(inputs.frame)
    else:
        shape = (len(inputs.frame), len(encoding.confound_levels))
        codes = np.full(shape, IGNORE, dtype=np.int64)
        conditions = np.full(shape, IGNORE, dtype=np.int64)
        values = np.full(shape, np.nan, dtype=np.float32)
    if cfg.data.input == "features":
        x = encoding.features(inputs.frame)
        return RowData(
            y=y,
            codes=codes,
            input_shape=(x.shape[1],),
            features=x,
            values=values,
            conditions=conditions,
        )
    from neurounlearn.data.volumes import build_cache

    cache = build_cache(
        inputs.frame,
        inputs.path,
        volume_columns(cfg, labels=labels),
        preprocess_settings(cfg),
        cache_dir=cache_dir(cfg),
        progress=progress,
        echo=echo,
        num_workers=preprocess_workers(),
    )
    return RowData(
        y=y,
        codes=codes,
        input_shape=tuple(cache.shape[1:]),
        cache=cache,
        values=values,
        conditions=conditions,
        with_labels=cfg.data.task == "segmentation" and cache.label_path is not None,
    )
