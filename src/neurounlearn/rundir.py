"""The run directory: the one place that names its files and reads them back.

``fit`` writes a run directory, ``evaluate`` adds ``metrics.json`` to it, ``report`` and
``compare`` read it. Every module asks this one for a file's name instead of spelling it, and
reads the run's tables and JSON through it, so a damaged or incomplete directory always gives the
same clear error.

Examples:
    >>> from pathlib import Path
    >>> RunFiles(Path("runs/age")).predictions.as_posix()
    'runs/age/predictions.csv'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurounlearn.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

CONFIG = "config.yaml"
RUN_INFO = "run.json"
MODEL_FILE = "model.pt"
CHECKPOINT = "model.ckpt"
#: Lightning's checkpoints while the run trains: ``CHECKPOINT_DIR/LAST_CHECKPOINT`` is the one
#: ``fit(resume=True)`` goes on from
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
PREDICTIONS = "predictions.csv"
EMBEDDINGS = "embeddings.csv"
METRICS = "metrics.json"
HISTORY = "history.csv"
SPLITS = "splits.csv"
SEGMENTATIONS = "segmentations.csv"

#: what ``compare`` writes in its output directory
COMPARISON_JSON = "comparison.json"
COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
OOF_PREDICTIONS = "oof_predictions.csv"
EXTERNAL_PREDICTIONS = "external_predictions.csv"
FOLDS = "folds.csv"
#: each arm's fold-1 features of every subject, for the report's embedding plots
FIRST_FOLD_EMBEDDINGS = "first_fold_embeddings"
REPORT = "report.html"

REWRITE_HINT = (
    "the run directory is incomplete or was edited: resuming the run (fit with resume=True, or "
    "--resume) writes its outputs again"
)


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run directory's files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def info(self) -> Path:
        return self.root / RUN_INFO

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.root / CHECKPOINT_DIR / LAST_CHECKPOINT

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def embeddings(self) -> Path:
        return self.root / EMBEDDINGS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def history(self) -> Path:
        return self.root / HISTORY

    @property
    def splits(self) -> Path:
        return self.root / SPLITS

    def is_finished(self) -> bool:
        """Whether ``fit`` ran to the end here (the model and the run summary are written)."""
        return self.model.is_file() and self.info.is_file()


def read_output(run_dir: Path, name: str, **kwargs: Any) -> pd.DataFrame:
    """One of the CSVs ``fit`` wrote, with a clear error when it is missing or damaged.

    ``kwargs`` go to :func:`pandas.read_csv`.
    """
    import pandas as pd  # here, not at the top: the command line imports the names above

    path = run_dir / name
    if not path.is_file():
        raise InputError(f"the run has no {name}", file=path, hint=REWRITE_HINT)
    try:
        frame = pd.read_csv(path, **kwargs)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else "unreadable"
        raise InputError(f"cannot read {name}: {first}", file=path, hint=REWRITE_HINT) from None
    if "split" not in frame.columns and name == PREDICTIONS:
        raise InputError(f"{name} has no 'split' column", file=path, hint=REWRITE_HINT)
    return frame


def read_info(run_dir: Path) -> dict[str, Any]:
    """The run summary ``run.json``; a clear error when it is damaged."""
    path = run_dir / RUN_INFO
    hint = "the file is damaged; resuming the run (fit with resume=True, or --resume) rewrites it"
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the run summary: {err}", file=path, hint=hint) from None
    if not isinstance(info, dict):
        raise InputError("the run summary is not a JSON object", file=path, hint=hint)
    return info


def run_facts(info: dict[str, Any]) -> dict[str, Any]:
    """What ``metrics.json`` repeats from the run summary: timing, warnings, versions."""
    return {
        "timing": {
            "fit_seconds": info.get("fit_seconds"),
            "epochs_run": info.get("epochs_run"),
            "samples_per_second": info.get("samples_per_second"),
        },
        "warnings": info.get("warnings", []),
        "versions": info.get("versions", {}),
    }
