"""A finished run, loaded (:func:`load_run`), and what it does to new data: ``predict`` and
``embed`` (no site column needed).

Examples:
    >>> import neurounlearn as nu  # doctest: +SKIP
    >>> run = nu.load_run("run")  # doctest: +SKIP
    >>> run.predict(new_table)  # doctest: +SKIP
    >>> run.transform(new_table)  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import numpy as np
import pandas as pd

from neurounlearn.atomic import atomic_path
from neurounlearn.config import RunConfig, validate_config
from neurounlearn.data.manifest import check_new_data, read_table
from neurounlearn.data.tabular import TableEncoding
from neurounlearn.errors import InputError
from neurounlearn.models.unlearning import UnlearningModel
from neurounlearn.registry import build_model
from neurounlearn.rundir import MODEL_FILE, RUN_INFO, read_info
from neurounlearn.training.checkpoints import read_weights
from neurounlearn.training.run import (
    embedding_frame,
    infer,
    is_finished,
    point_frame,
    prediction_columns,
    segment,
)

if TYPE_CHECKING:
    from neurounlearn.data.inputs import Inputs, RowData
    from neurounlearn.models.segmentation import SegmentationModel

#: the file name shown in messages about rows of a DataFrame given in place of a file
FRAME_NAME = "(DataFrame)"

Data: TypeAlias = pd.DataFrame | str | Path


@dataclass
class LoadedRun:
    """A finished run, ready for inference: :meth:`predict` and :meth:`transform` take a
    DataFrame (a feature table, or an image manifest whose relative paths are read from the
    working directory) or the path of a manifest, and return DataFrames.

    Attributes:
        run_dir: the run directory.
        config: the run's configuration.
        encoding: feature columns, scaling and classes, as fit on the training split.
        model: the trained model (eval mode).
        info: ``run.json``.
    """

    run_dir: Path
    config: RunConfig
    encoding: TableEncoding
    model: UnlearningModel | SegmentationModel
    info: dict[str, Any]

    def predict(self, data: Data) -> pd.DataFrame:
        """The model's output for every row of ``data``: ``predictions.csv``'s columns (the id
        and site columns carried over when present; ``prediction``, and for classification one
        ``prob_CLASS`` per class; for a segmentation run, voxels per class)."""
        return self._apply(data)[0]

    def transform(self, data: Data) -> pd.DataFrame:
        """The embeddings of every row of ``data`` (``embeddings.csv``'s columns; erased where
        the run erases; a segmentation run's pooled features)."""
        return self._apply(data)[1]

    def _apply(self, data: Data) -> tuple[pd.DataFrame, pd.DataFrame]:
        if isinstance(data, pd.DataFrame):
            return predict_file(self, FRAME_NAME, frame=data, echo=lambda _: None)
        return predict_file(self, data, echo=lambda _: None)


def load_run(run_dir: str | Path) -> LoadedRun:
    """Load a finished run; a clear :class:`InputError` when the directory holds none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(
            "run directory not found",
            file=run_dir,
            hint="give the directory of a finished run (what fit wrote)",
        )
    if not is_finished(run_dir):
        raise InputError(
            f"holds no finished run (no {MODEL_FILE} and {RUN_INFO})",
            file=run_dir,
            hint="let fit run to the end first, or finish an interrupted run by resuming it "
            "(fit with resume=True, or --resume)",
        )
    model_file = run_dir / MODEL_FILE
    refit = "the file is damaged, incomplete or not one this package wrote; refit"
    blob = read_weights(model_file, what="model", hint=refit)
    missing = [
        k
        for k in ("state_dict", "config", "encoding")
        if not isinstance(blob, dict) or k not in blob
    ]
    if missing:
        raise InputError(
            f"is not a neurounlearn model (no {', '.join(missing)})", file=model_file, hint=refit
        )
    try:
        cfg = validate_config(json.loads(blob["config"]), str(model_file))
        encoding = TableEncoding.from_dict(json.loads(blob["encoding"]))
        model = build_model(cfg, encoding, input_shape=blob.get("input_shape"))
        state = blob["state_dict"]
        if "eraser.proj_left" in state and isinstance(model, UnlearningModel):
            from neurounlearn.erasure import EraserLayer

            dim, rank = state["eraser.proj_left"].shape
            model.eraser = EraserLayer(int(dim), int(rank))
        model.load_state_dict(state)
    except InputError:
        raise
    except Exception as err:  # json, KeyError, TypeError, shape mismatch, ...
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read the model: {first}", file=model_file, hint=refit) from None
    model.eval()
    return LoadedRun(run_dir, cfg, encoding, model, read_info(run_dir))


def predict_table(
    run: LoadedRun, frame: pd.DataFrame, path: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings for every row of ``frame``.

    The feature columns must be exactly those the run was trained on; bad values are reported
    with their row and column. Site and target columns are carried over when present.
    """
    enc = run.encoding
    cfg = run.config
    never_features = [
        run.info.get("id_column"),
        cfg.data.site_column,
        cfg.data.target,
        *(c.name for c in cfg.confounds),
    ]
    check_new_data(
        frame,
        path,
        enc.feature_columns,
        cfg.data.features,
        exclude=[c for c in never_features if c],
    )
    feats, pred = infer(run.model, enc.features(frame))  # type: ignore[arg-type]
    return _frames(run, frame, feats, pred)


def id_frame(run: LoadedRun, frame: pd.DataFrame, *extra: str) -> pd.DataFrame:
    """The run's id and site columns (and ``extra`` ones) that ``frame`` has, to carry over."""
    names = (run.info.get("id_column"), run.config.data.site_column, *extra)
    return frame[[c for c in names if c and c in frame]].reset_index(drop=True)


def _frames(
    run: LoadedRun, frame: pd.DataFrame, feats: np.ndarray, pred: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings frames, with the id and site columns carried over if present."""
    cfg, enc = run.config, run.encoding
    ids = id_frame(run, frame, *([cfg.data.image_column] if cfg.data.input == "image" else []))
    preds = prediction_columns(ids, enc, frame.reset_index(drop=True), pred)
    return preds, embedding_frame(ids, feats)


def _new_rows(
    run: LoadedRun, data: str | Path, echo: Callable[[str], Any], frame: pd.DataFrame | None = None
) -> tuple[Inputs, RowData]:
    """New volumes checked and preprocessed with the run's own settings (through the same cache
    as training, so volumes seen before are not decoded again); ``frame``: the manifest's rows,
    given in place of reading ``data``."""
    from neurounlearn.data.inputs import load_new_images, row_data

    inputs = load_new_images(run.config, data, frame=frame)
    rows = row_data(
        run.config, inputs, run.encoding, progress=False, echo=echo, labels=False, confounds=False
    )
    if tuple(rows.input_shape) != tuple(run.info.get("input_shape") or rows.input_shape):
        raise InputError(
            f"the volumes preprocess to shape {list(rows.input_shape)}, but the model was "
            f"trained on {run.info.get('input_shape')}",
            file=data,
            column=run.config.data.image_column,
            hint="train with data.shape set (e.g. data.shape=48) so that every volume is "
            "resized to one shape",
        )
    return inputs, rows


def predict_images(
    run: LoadedRun,
    data: str | Path,
    *,
    echo: Callable[[str], Any] = print,
    frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings for every volume listed in the manifest ``data`` (or in
    ``frame``, its rows given directly)."""
    inputs, rows = _new_rows(run, data, echo, frame)
    feats, pred = infer(run.model, rows.all(), batch_size=run.config.train.batch_size)  # type: ignore[arg-type]
    return _frames(run, inputs.frame, feats, pred)


def _names(frame: pd.DataFrame, id_column: str | None, images: list[str]) -> list[str]:
    """A file name stem per row: the subject id, else the image's name; made unique."""
    stems = []
    for i, image in enumerate(images):
        if id_column and id_column in frame and not pd.isna(frame[id_column].iloc[i]):
            stem = str(frame[id_column].iloc[i])
        else:
            stem = Path(image).name.removesuffix(".gz").removesuffix(".nii")
        stems.append("".join(c if c.isalnum() or c in "-_." else "_" for c in stem))
    seen: dict[str, int] = {}
    out = []
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return out


def segment_images(
    run: LoadedRun,
    data: str | Path,
    *,
    out_dir: str | Path | None = None,
    echo: Callable[[str], Any] = print,
    frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Segment every volume of the manifest ``data`` with a segmentation run.

    With ``out_dir``, writes ``OUT_DIR/<id>_seg.nii.gz`` per subject: the label map on the
    input image's own grid with its affine (class probabilities are resampled from the
    preprocessed grid, then the most probable class taken), each file written under a
    temporary name and renamed.

    Returns:
        ``(segmentations, embeddings)``: per row the ids and image, and with ``out_dir`` the
        label-map file and the volume of each class in millilitres; and each attach point's
        pooled features. Without ``out_dir`` nothing is resampled (``embed`` needs no maps).
    """
    import nibabel as nib
    import torch

    from neurounlearn.data.inputs import preprocess_settings, volume_columns
    from neurounlearn.data.volumes import preprocessed_affine, resolve_paths, to_input_grid

    cfg, enc = run.config, run.encoding
    model = cast("SegmentationModel", run.model)
    inputs, rows = _new_rows(run, data, echo, frame)
    columns = volume_columns(cfg, labels=False)
    resolved = resolve_paths(inputs.frame, data, columns)
    images = [str(p) for p in resolved[columns.image]]
    masks = list(resolved[columns.mask]) if columns.mask else [None] * len(images)
    names = _names(inputs.frame, run.info.get("id_column"), images)
    settings = preprocess_settings(cfg)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    pooled: dict[str, list[np.ndarray]] = {}
    i = 0
    for batch_pooled, logits, _ in segment(model, rows.all(), batch_size=cfg.train.batch_size):
        for point, values in batch_pooled.items():
            pooled.setdefault(point, []).append(values)
        for prob in torch.softmax(logits, dim=1).numpy():
            record: dict[str, Any] = {"image": images[i]}
            if out_dir is not None:
                affine = preprocessed_affine(images[i], settings=settings, mask_path=masks[i])
                labels, target = to_input_grid(prob, affine, images[i])
                path = Path(out_dir) / f"{names[i]}_seg.nii.gz"
                img = nib.Nifti1Image(labels, target)
                img.set_data_dtype(np.uint8)
                with atomic_path(path) as tmp:
                    tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6))
                record["segmentation"] = str(path)
                voxel_ml = abs(float(np.linalg.det(target[:3, :3]))) / 1000.0
                for k, name in enumerate(enc.target_classes[1:], start=1):
                    record[f"volume_ml_{name}"] = float((labels == k).sum()) * voxel_ml
            records.append(record)
            i += 1
    ids = id_frame(run, inputs.frame)
    frame = pd.concat([ids, pd.DataFrame(records)], axis=1)
    return frame, point_frame(ids, {k: np.concatenate(v) for k, v in pooled.items()})


def predict_file(
    run: LoadedRun,
    data: str | Path,
    *,
    echo: Callable[[str], Any] = print,
    frame: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and embeddings for the manifest ``data`` (a feature table or images; for a
    segmentation run, per-class volumes and pooled features, no label-map files).

    ``frame``: the manifest's rows, given in place of reading ``data``, which then only names
    them in messages and anchors relative image paths (:data:`FRAME_NAME`: the working
    directory)."""
    if run.encoding.task == "segmentation":
        return segment_images(run, data, echo=echo, frame=frame)
    if run.config.data.input == "image":
        return predict_images(run, data, echo=echo, frame=frame)
    table = read_table(data) if frame is None else frame.reset_index(drop=True)
    return predict_table(run, table, data)
