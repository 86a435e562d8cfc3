"""Checking a manifest before training: every problem in it, with its row and column.

What ``neurounlearn check`` runs; the command only parses its flags, calls
:func:`check_manifest` and prints the problems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from neurounlearn.config import RunConfig
from neurounlearn.data.inputs import (
    check_segmentation_config,
    preprocess_settings,
    table_spec,
    volume_columns,
)
from neurounlearn.data.manifest import find_id_column, find_problems, read_table
from neurounlearn.data.overlap import entanglement_problem, unlearns_site_everywhere
from neurounlearn.errors import InputError, Problem


@dataclass(frozen=True)
class ManifestCheck:
    """What :func:`check_manifest` found.

    Args:
        rows: data rows in the manifest.
        problems: every problem, errors and warnings, in the order found (the table's, then
            the volumes' for an image manifest).
        subjects: distinct subject ids (``None`` without an id column).
        sites: rows per site (empty without a site column).
    """

    rows: int
    problems: list[Problem]
    subjects: int | None = None
    sites: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """``"546 rows, 518 subjects, 6 sites"``: what the manifest holds."""
        parts = [f"{self.rows} rows"]
        if self.subjects is not None:
            parts.append(f"{self.subjects} subjects")
        if self.sites:
            parts.append(f"{len(self.sites)} sites")
        return ", ".join(parts)

    @property
    def errors(self) -> list[Problem]:
        """The problems that stop a run (``severity == "error"``)."""
        return [p for p in self.problems if p.severity == "error"]


def check_manifest(cfg: RunConfig, path: str | Path | None = None) -> ManifestCheck:
    """Check the manifest ``cfg`` describes, as ``fit`` would before training.

    The table: columns, ids, targets, confounds, feature values. For ``data.input: image`` also
    every volume (opened and checked; label maps too, optional for segmentation, whose label
    values must fit ``data.classes``).

    Args:
        cfg: the run configuration.
        path: the manifest to read (default: ``cfg.data.path``).

    Returns:
        The row count and every problem found.

    Raises:
        InputError: a configuration no manifest can satisfy (e.g. an inconsistent segmentation
            setting), no manifest given, or a file that cannot be read as a table.
    """
    if path is None:
        if cfg.data.path is None:
            raise InputError("no manifest to check", hint="give the manifest CSV as data.path")
        path = cfg.data.path
    check_segmentation_config(cfg)
    frame = read_table(path)
    problems = find_problems(frame, path, table_spec(cfg, frame=frame))
    if cfg.data.input == "image":
        from neurounlearn.data.volumes import find_volume_problems  # slow to import

        segmentation = cfg.data.task == "segmentation"
        problems += find_volume_problems(
            frame,
            path,
            volume_columns(cfg),
            preprocess_settings(cfg),
            labels_optional=segmentation,
            classes=cfg.data.classes if segmentation else None,
        )
    unlearning = cfg.strategy.name != "baseline"
    if cfg.data.task != "classification" and unlearning and unlearns_site_everywhere(cfg):
        entangled = entanglement_problem(frame, cfg.data.target, cfg.data.site_column, path=path)
        if entangled is not None:
            problems.append(entangled)
    id_column = find_id_column(frame, cfg.data.id_column)
    site = cfg.data.site_column
    return ManifestCheck(
        rows=len(frame),
        problems=problems,
        subjects=int(frame[id_column].dropna().nunique()) if id_column else None,
        sites=(
            {str(k): int(v) for k, v in frame[site].dropna().astype(str).value_counts().items()}
            if site in frame
            else {}
        ),
    )
