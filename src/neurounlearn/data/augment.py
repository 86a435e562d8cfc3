"""Scanner-like random intensity changes of training volumes (``data.augment: intensity``).

Unlearning removes the scanner from the features; augmentation instead shows the network many
scanners, so that it learns not to depend on one. The two are compared in
``benchmarks/segmentation.py``, and can be combined.

Each training volume, every time it is drawn, goes through MONAI's random intensity
transforms, applied to the foreground (the voxels that are not 0 after preprocessing: the brain
for ``zscore``, which leaves the background at 0):

1. the foreground is mapped onto [0, 1] between its 0.5th and 99.5th percentiles (clipped);
2. with probability 0.5, a gamma in [0.5, 2] (``RandAdjustContrast``);
3. with probability 0.5, a smooth multiplicative bias field: the exponential of a random
   degree-3 Legendre polynomial with coefficients in [-0.1, 0.1] (``RandBiasField``);
4. with probability 0.2, a Gaussian blur of 0.25-1 voxel sd per axis (``RandGaussianSmooth``);
5. with probability 0.2, Gaussian noise of sd up to 0.02 (``RandGaussianNoise``);
6. the foreground gets its own mean and sd back and the background its 0s, so the
   normalisation the cache applied still holds.

``data.augment: spatial`` changes the geometry instead (:class:`SpatialAugment`; the label map
moves with the image): with probability 0.5 a left-right flip (``RandFlip``), then a random
rotation of up to 5 degrees about each axis, a shift of up to 2 voxels and a scale of up to 5 %
per axis (``RandAffine``, trilinear for the image, nearest for labels, zeros outside).
``intensity+spatial`` does both, geometry first.

The ranges were set before any benchmark ran and not tuned on one. Validation, test and
prediction volumes are never augmented, and the batch-norm statistics recomputed after
training (``train.precise_bn``) come from the training volumes as they are.

Examples:
    >>> augment = IntensityAugment(seed=0)
    >>> x = np.zeros((16, 16, 16), np.float32)
    >>> x[4:12, 4:12, 4:12] = np.random.default_rng(0).normal(size=(8, 8, 8))
    >>> y = augment(x)
    >>> y.shape, bool((y[x == 0] == 0).all())
    ((16, 16, 16), True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neurounlearn.choices import AUGMENTATIONS, Augmentation

__all__ = ["AUGMENTATIONS", "Augmentation", "IntensityAugment", "SpatialAugment", "VolumeAugment"]

GAMMA = (0.5, 2.0)
BIAS_COEFF = (-0.1, 0.1)
BLUR_SIGMA = (0.25, 1.0)
NOISE_SD = 0.02
LOW_Q, HIGH_Q = 0.5, 99.5
FLIP_PROB = 0.5
ROTATE_DEG = 5.0
SHIFT_VOXELS = 2.0
SCALE = 0.05


class IntensityAugment:
    """Random scanner-like intensity changes of one ``(D, H, W)`` volume (see the module).

    Args:
        seed: seeds the transforms' random state; each call draws new changes.
    """

    def __init__(self, seed: int) -> None:
        from monai.transforms import (
            Compose,
            RandAdjustContrast,
            RandBiasField,
            RandGaussianNoise,
            RandGaussianSmooth,
        )

        self.transforms: Any = Compose(
            [
                RandAdjustContrast(prob=0.5, gamma=GAMMA),
                RandBiasField(prob=0.5, degree=3, coeff_range=BIAS_COEFF),
                RandGaussianSmooth(
                    prob=0.2, sigma_x=BLUR_SIGMA, sigma_y=BLUR_SIGMA, sigma_z=BLUR_SIGMA
                ),
                RandGaussianNoise(prob=0.2, mean=0.0, std=NOISE_SD),
            ]
        )
        self.transforms.set_random_state(seed=seed % 2**32)

    def state_dict(self) -> dict[str, Any]:
        """Where each transform's random stream stands (weights-only types), for checkpoints."""
        from neurounlearn.rng import pack_numpy_state

        return {"streams": [pack_numpy_state(t.R.get_state()) for t in self.transforms.transforms]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from neurounlearn.rng import unpack_numpy_state

        for t, packed in zip(self.transforms.transforms, state["streams"], strict=True):
            t.R.set_state(unpack_numpy_state(packed))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        foreground = x != 0
        values = x[foreground].astype(np.float64)
        if values.size == 0:
            return x
        lo, hi = np.percentile(values, [LOW_Q, HIGH_Q])
        if hi <= lo:  # a flat foreground has no contrast to change
            return x
        unit = np.zeros_like(x, dtype=np.float32)
        unit[foreground] = np.clip((values - lo) / (hi - lo), 0.0, 1.0)
        out = np.asarray(self.transforms(unit[None]), dtype=np.float32)[0]
        changed = out[foreground].astype(np.float64)
        sd = changed.std()
        restored = np.zeros_like(x, dtype=np.float32)
        if sd > 0:
            restored[foreground] = (changed - changed.mean()) / sd * values.std() + values.mean()
        else:
            restored[foreground] = values.mean()
        return restored


class SpatialAugment:
    """Random left-right flips and small rigid-plus-scale moves of one ``(D, H, W)`` volume and
    its label map (see the module); axis 0 runs left to right (the cache is in RAS).

    Args:
        seed: seeds the transforms' random state; each call draws new changes.
        with_labels: a label map goes along (nearest-neighbour).
    """

    def __init__(self, seed: int, *, with_labels: bool = False) -> None:
        from monai.transforms import Compose, RandAffined, RandFlipd

        keys = ["image", "label"] if with_labels else ["image"]
        self.transforms: Any = Compose(
            [
                RandFlipd(keys, prob=FLIP_PROB, spatial_axis=0),
                RandAffined(
                    keys,
                    prob=1.0,
                    rotate_range=[float(np.radians(ROTATE_DEG))] * 3,
                    translate_range=[SHIFT_VOXELS] * 3,
                    scale_range=[SCALE] * 3,
                    mode=["bilinear", "nearest"][: len(keys)],
                    padding_mode="zeros",
                ),
            ]
        )
        self.transforms.set_random_state(seed=seed % 2**32)

    def state_dict(self) -> dict[str, Any]:
        from neurounlearn.rng import pack_numpy_state

        return {"streams": [pack_numpy_state(t.R.get_state()) for t in self._random()]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from neurounlearn.rng import unpack_numpy_state

        for t, packed in zip(self._random(), state["streams"], strict=True):
            t.R.set_state(unpack_numpy_state(packed))

    def _random(self) -> list[Any]:
        # every random stream: RandAffined draws with its own, its RandAffine's and that one's
        # RandAffineGrid's
        from monai.transforms import Randomizable

        def streams(obj: Any) -> list[Any]:
            inner = [v for _, v in sorted(vars(obj).items()) if isinstance(v, Randomizable)]
            return [obj] + [s for v in inner for s in streams(v)]

        return [s for t in self.transforms.transforms for s in streams(t)]

    def __call__(
        self, x: np.ndarray, label: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        data: dict[str, Any] = {"image": x[None]}
        if label is not None:
            data["label"] = label[None].astype(np.float32)
        out = self.transforms(data)
        image = np.asarray(out["image"], dtype=np.float32)[0]
        moved = None if label is None else np.asarray(out["label"])[0].round().astype(label.dtype)
        return image, moved


class VolumeAugment:
    """What ``data.augment`` does to a training volume: geometry first (``spatial``), then
    intensities (``intensity``).

    Args:
        kind: ``intensity``, ``spatial`` or ``intensity+spatial``.
        seed: seeds both; the intensity changes draw from ``seed`` itself, so ``intensity``
            alone draws what :class:`IntensityAugment` does.
        with_labels: a label map goes along with the geometry.
    """

    def __init__(self, kind: Augmentation, seed: int, *, with_labels: bool = False) -> None:
        self.intensity = IntensityAugment(seed) if "intensity" in kind else None
        self.spatial = (
            SpatialAugment(seed + 1, with_labels=with_labels) if "spatial" in kind else None
        )

    def state_dict(self) -> dict[str, Any]:
        state = {} if self.intensity is None else self.intensity.state_dict()
        if self.spatial is not None:
            state["spatial"] = self.spatial.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.intensity is not None:
            self.intensity.load_state_dict(state)
        if self.spatial is not None:
            self.spatial.load_state_dict(state["spatial"])

    def __call__(
        self, x: np.ndarray, label: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.spatial is not None:
            x, label = self.spatial(x, label)
        if self.intensity is not None:
            x = self.intensity(x)
        return x, label
