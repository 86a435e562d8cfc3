"""The volume cache as a ``Dataset``: rows of the cached array as training samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from neurounlearn.choices import check_choice
from neurounlearn.data.augment import AUGMENTATIONS, Augmentation, VolumeAugment
from neurounlearn.data.datasets import confound_extras
from neurounlearn.data.volumes.cache import VolumeCache, label_path_for
from neurounlearn.data.volumes.rows import RowReader


class CachedVolumes(Dataset):
    """Rows of a volume cache as training samples.

    The cache file is opened lazily, once per process, on the first ``__getitem__``, and each
    row is read with one ``pread`` (:class:`RowReader`), so resident memory stays flat over an
    epoch however large the cache; only paths are pickled, so the dataset can be sent to
    ``DataLoader`` worker processes.

    Args:
        cache: a :class:`VolumeCache` or the path of its images ``.npy``.
        rows: cache row of each sample (positions in the manifest the cache was built from).
        y: target of each sample (``NaN`` where unknown).
        codes: integer confound codes of each sample, ``(n, C)`` (a 1D array means ``C = 1``).
        with_labels: also return the label map of each sample.
        values: optional ``(n, C)`` standardised values of continuous confounds (``NaN``: none).
        conditions: optional ``(n, C)`` target bins of target-conditioned confounds (``-1``).
        augment: ``intensity``: each image, every time it is read, gets random scanner-like
            intensity changes; ``spatial``: a random flip and small move (its label map
            along); ``intensity+spatial``: both (:class:`~neurounlearn.data.augment.
            VolumeAugment`, seeded per process from ``torch.initial_seed()``); ``none``:
            images as cached.

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
        check_choice("augment", augment, [a for a in AUGMENTATIONS if a != "auto"])
        self.augment = augment
        self._augmenter: Any = None
        self.extra = confound_extras(values, conditions)
        if isinstance(cache, VolumeCache):
            self.path = cache.path
            label_path = cache.label_path
        else:
            self.path = Path(cache)
            label_path = label_path_for(self.path)
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
        self._images: RowReader | None = None
        self._labels: RowReader | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, Any]:
        # An open file must not travel to workers: each opens its own on first access.
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
            self._augmenter = self._new_augmenter()
            self._augmenter.load_state_dict(state["augment"])

    def _new_augmenter(self) -> VolumeAugment:
        return VolumeAugment(self.augment, torch.initial_seed(), with_labels=self.with_labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._images is None:
            self._images = RowReader(self.path)
            if self.label_path is not None:
                self._labels = RowReader(self.label_path)
        row = self.rows[i]
        x = self._images.row(row).astype(np.float32)
        label = None if self._labels is None else self._labels.row(row).astype(np.int64)
        if self.augment != "none":
            if self._augmenter is None:
                self._augmenter = self._new_augmenter()
            x, label = self._augmenter(x, label)
        item = {
            "x": torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0),
            "y": torch.tensor(self.y[i], dtype=torch.float32),
            "codes": torch.from_numpy(self.codes[i].copy()),
        }
        if label is not None:
            item["label"] = torch.from_numpy(np.ascontiguousarray(label))
        return item | {k: v[i] for k, v in self.extra.items()}
