"""A run directory: what ``fit`` writes and ``evaluate``/``predict``/``embed`` read back.

``RUN_DIR/model.pt`` holds the weights *and* everything needed to rebuild the model and to
encode new data (configuration, feature columns, scaling, confound classes), so a run can be
used without the original manifest.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from neurounlearn.atomic import atomic_path
from neurounlearn.config import RunConfig, validate_config
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.errors import InputError
from neurounlearn.models.unlearning import MLPEncoder, UnlearningModel

MODEL_FILE = "model.pt"
RUN_INFO = "run.json"


def versions() -> dict[str, str]:
    import lightning
    import monai
    import sklearn

    import neurounlearn

    return {
        "neurounlearn": neurounlearn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
    }


def build_model(cfg: RunConfig, encoding: TableEncoding) -> UnlearningModel:
    """The model a configuration describes, sized by the fitted encoding."""
    m = cfg.model
    encoder = MLPEncoder(
        in_features=len(encoding.feature_columns),
        hidden=m.hidden,
        embedding_dim=m.embedding_dim,
        dropout=m.dropout,
    )
    confounds = {name: len(levels) for name, levels in encoding.confound_levels.items()}
    return UnlearningModel(
        encoder,
        nn.Linear(m.embedding_dim, 1),
        confounds,
        head_hidden=m.head_hidden,
        n_heads=m.adversary_heads,
    )


@dataclass
class LoadedRun:
    """A finished run, ready for inference."""

    run_dir: Path
    config: RunConfig
    encoding: TableEncoding
    model: UnlearningModel
    info: dict[str, Any]


def is_finished(run_dir: Path) -> bool:
    return (run_dir / MODEL_FILE).is_file() and (run_dir / RUN_INFO).is_file()


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load a finished run; a clear :class:`InputError` when the directory holds none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(
            "run directory not found",
            file=run_dir,
            hint="give the --out directory of a finished 'neurounlearn fit'",
        )
    if not is_finished(run_dir):
        raise InputError(
            f"holds no finished run (no {MODEL_FILE} and {RUN_INFO})",
            file=run_dir,
            hint="run 'neurounlearn fit ... --out DIR' to the end first, or "
            "'neurounlearn fit --resume --out DIR' to finish an interrupted run",
        )
    try:
        blob = torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True)
        cfg = validate_config(json.loads(blob["config"]), str(run_dir / MODEL_FILE))
        encoding = TableEncoding.from_dict(json.loads(blob["encoding"]))
        model = build_model(cfg, encoding)
        model.load_state_dict(blob["state_dict"])
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise InputError(
            f"cannot read the model: {err}",
            file=run_dir / MODEL_FILE,
            hint="the file is damaged or from another version; refit",
        ) from None
    model.eval()
    info = json.loads((run_dir / RUN_INFO).read_text())
    return LoadedRun(run_dir, cfg, encoding, model, info)


def save_model(path: Path, model: UnlearningModel, cfg: RunConfig, encoding: TableEncoding) -> None:
    blob = {
        "state_dict": model.state_dict(),
        "config": json.dumps(cfg.model_dump(mode="json")),
        "encoding": json.dumps(encoding.to_dict()),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)


@torch.no_grad()
def infer(
    model: UnlearningModel, x: np.ndarray, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``f`` and task predictions (model units) for every row, in eval mode."""
    model.eval()
    feats, preds = [], []
    xt = torch.as_tensor(x, dtype=torch.float32)
    for start in range(0, len(xt), batch_size):
        f = model.encode(xt[start : start + batch_size])
        feats.append(f.float().numpy())
        preds.append(model.predict_task(f).float().numpy())
    if not feats:
        width = int(getattr(model.encoder, "out_features", 0))
        return np.zeros((0, width), np.float32), np.zeros(0, np.float32)
    return np.concatenate(feats), np.concatenate(preds)


def embedding_frame(ids: pd.DataFrame, features: np.ndarray) -> pd.DataFrame:
    cols = {f"e{i}": features[:, i] for i in range(features.shape[1])}
    return pd.concat([ids.reset_index(drop=True), pd.DataFrame(cols)], axis=1)
