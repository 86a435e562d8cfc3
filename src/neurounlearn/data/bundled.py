"""The real dataset that ships inside the package: OpenNeuroTransfer FreeSurfer features.

546 scans of 6 OpenNeuro studies (CC0): ``sub_id``, ``age``, ``sex`` (0 female, 1 male),
``site``, ``sitenum``, then 245 FreeSurfer measures. Site and age are strongly confounded. 28
``sub_id`` occur twice (the same child scanned twice: identical measures, ages a year apart), so
splits must be subject-level. See :func:`attribution` for provenance and checksums.

Examples:
    >>> df = openneuro_transfer()
    >>> df.shape, df["site"].nunique()
    ((546, 250), 6)
    >>> from neurounlearn.data.manifest import select_features
    >>> len(select_features(df, OPENNEURO_FEATURES, "openneuro_transfer"))
    245
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from neurounlearn.atomic import write_csv

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: Shipped files, training file first (rows 1-110 of the combined table come from it).
OPENNEURO_FILES = ("openneuro_transfer_tr.csv", "openneuro_transfer_te.csv")

#: Selects exactly the 245 FreeSurfer columns: hemisphere-prefixed cortical measures
#: (``lh_*``, ``rhCortexVol``), aseg structures (``Left-*``, ``3rd-Ventricle``, ``CC_*``, ...),
#: global volumes (``*Vol*``, ``eTIV``) and surface holes; never sub_id/age/sex/site/sitenum.
OPENNEURO_FEATURES = (
    r"^(?:[lr]h_|[lr]h[A-Z]|Left-|Right-|CC_|\d+(?:rd|th)-Ventricle)"
    r"|^(?:Brain-Stem|CSF|Optic-Chiasm|eTIV|(?:non-)?WM-hypointensities)$"
    r"|Vol|SurfaceHoles"
)

#: Default file name when :func:`write_openneuro_transfer` is given a folder.
OPENNEURO_CSV = "openneuro_transfer.csv"


def _bundled(name: str) -> Traversable:
    return files("neurounlearn.data").joinpath("bundled", "openneuro_transfer", name)


def openneuro_transfer() -> pd.DataFrame:
    """Both shipped files as one cohort (training file first), with a RangeIndex.

    No column is added: the table is exactly the two files stacked, 546 rows x 250 columns.
    Make your own subject-level split (:func:`neurounlearn.data.splits.make_splits`).
    """
    frames = []
    for name in OPENNEURO_FILES:
        with _bundled(name).open("rb") as fh:
            frames.append(pd.read_csv(fh, dtype={"sub_id": str, "site": str}))
    return pd.concat(frames, ignore_index=True)


def write_openneuro_transfer(path: str | Path) -> Path:
    """Write the combined table as a CSV manifest and return its path.

    Args:
        path: the CSV to write, or an existing folder (the file is then
            ``openneuro_transfer.csv`` inside it). Missing parent folders are created.

    The file is written to a temporary name in the same folder and renamed into place, so a
    reader never sees half a file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / OPENNEURO_CSV
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(openneuro_transfer(), path)
    return path


def attribution() -> str:
    """Provenance, licence and sha256 checksums of the shipped files (ATTRIBUTION.md)."""
    return _bundled("ATTRIBUTION.md").read_text(encoding="utf-8")


def bundled_sha256() -> dict[str, str]:
    """The sha256 of each shipped CSV, as listed in ATTRIBUTION.md."""
    sums = {}
    for line in attribution().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] in OPENNEURO_FILES and len(parts[0]) == 64:
            sums[parts[1]] = parts[0]
    return sums


def bundled_bytes(name: str) -> bytes:
    """Raw bytes of one shipped file (for checksums)."""
    return _bundled(name).read_bytes()
