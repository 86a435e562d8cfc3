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

__all__ = ["AUGMENTATIONS", "Augmentation", "IntensityAugment"]

GAMMA = (0.5, 2.0)
BIAS_COEFF = (-0.1, 0.1)
BLUR_SIGMA = (0.25, 1.0)
NOISE_SD = 0.02
LOW_Q, HIGH_Q = 0.5, 99.5


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
