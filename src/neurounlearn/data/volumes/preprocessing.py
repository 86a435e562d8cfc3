"""Preprocess one image (and its label map) with MONAI, and map results back to its grid.

:class:`PreprocessSettings` says what is done to every image before it is cached;
:func:`preprocess` does it to one image. :func:`preprocessed_affine` and :func:`to_input_grid`
put a prediction made on the preprocessed grid back on the input image's grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from neurounlearn.errors import InputError

#: Bump whenever :func:`preprocess` changes its output for the same settings: it is part of
#: :meth:`PreprocessSettings.key`, so every cache built by older code is rebuilt.
PREPROCESS_VERSION = 1

NORMALIZE_CHOICES = ("zscore", "minmax", "none")
DTYPE_CHOICES = ("float16", "float32")

#: Voxels kept around the cropped foreground, so that edge voxels keep a background neighbour.
CROP_MARGIN = 1

# Orientation letters as nibabel writes them (left→Right, posterior→Anterior, inferior→Superior).
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class PreprocessSettings:
    """How every image is preprocessed before it is cached.

    Args:
        shape: output ``(D, H, W)`` in voxels; an ``int`` means a cube. ``None`` keeps each
            image's own shape after reorientation (no cropping, no resizing), and then every
            image must have the same shape.
        orientation: target axis codes for ``Orientationd`` (``"RAS"``: voxel axes run to the
            Right, Anterior and Superior).
        crop_foreground: crop to the bounding box of the brain (the mask, or voxels > 0) plus
            one voxel before resizing, so the brain fills the output. Only used with ``shape``.
        normalize: ``"zscore"`` over the nonzero (brain) voxels, ``"minmax"`` to ``[0, 1]``, or
            ``"none"``.
        dtype: storage dtype of the cache, ``"float16"`` (half the disk and page cache; z-scored
            intensities lose nothing that matters) or ``"float32"``.

    Raises:
        InputError: a setting is out of range.

    Examples:
        >>> PreprocessSettings(shape=48).shape
        (48, 48, 48)
        >>> PreprocessSettings(shape=(32, 40, 32)).key()["shape"]
        [32, 40, 32]
    """

    shape: tuple[int, int, int] | None = None
    orientation: str = "RAS"
    crop_foreground: bool = True
    normalize: str = "zscore"
    dtype: str = "float16"

    def __post_init__(self) -> None:
        shape: Any = self.shape
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
            shape = (int(shape),) * 3
        if shape is not None:
            try:
                shape = tuple(int(s) for s in shape)
            except (TypeError, ValueError):
                shape = ()
            if len(shape) != 3 or min(shape) < 1:
                raise InputError(
                    f"data.shape must be three positive voxel counts or one int, "
                    f"got {self.shape!r}",
                    hint="e.g. data.shape=48 (a cube) or data.shape=[40,48,40]",
                )
        # Frozen dataclass: normalise in place once, so key() and equality see one spelling.
        object.__setattr__(self, "shape", shape)
        orientation = str(self.orientation).upper()
        axes = [
            next((i for i, pair in enumerate(AXIS_LABELS) if c in pair), -1) for c in orientation
        ]
        if len(orientation) != 3 or sorted(axes) != [0, 1, 2]:
            raise InputError(
                f"orientation must name each axis once with one of L/R, P/A, I/S, got "
                f"{self.orientation!r}",
                hint="use 'RAS' unless your models were trained on another orientation",
            )
        object.__setattr__(self, "orientation", orientation)
        if self.normalize not in NORMALIZE_CHOICES:
            raise InputError(
                f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {self.normalize!r}",
                hint="e.g. data.normalize=zscore",
            )
        if self.dtype not in DTYPE_CHOICES:
            raise InputError(
                f"cache dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}"
            )

    def key(self) -> dict[str, Any]:
        """Everything that decides the preprocessed arrays, as JSON-able values.

        Includes :data:`PREPROCESS_VERSION` and the MONAI version, because a change of either
        can change the output for the same settings.

        Examples:
            >>> sorted(PreprocessSettings().key())[:3]
            ['crop_foreground', 'dtype', 'monai']
        """
        import monai

        out = asdict(self)
        out["shape"] = list(self.shape) if self.shape is not None else None
        out["version"] = PREPROCESS_VERSION
        out["monai"] = monai.__version__
        return out


def format_shape(shape: Sequence[int]) -> str:
    """A voxel grid's shape as text: ``48x56x48``."""
    return "x".join(str(s) for s in shape)


# ----------------------------------------------------------------------------- preprocessing


def _fit_size(
    spatial: Sequence[int], pixdim: Sequence[float], target: Sequence[int]
) -> tuple[int, int, int]:
    """Voxel counts that fit ``target`` while keeping the image's aspect ratio in millimetres.

    Using physical extents (voxels x voxel size) rather than voxel counts means that a site that
    scans with 1x1x2 mm voxels is not stretched differently from one with 1 mm voxels, which
    would hand the model a site signal.
    """
    sizes = []
    for s, p in zip(spatial, pixdim, strict=True):
        p = float(p)
        sizes.append(s * (p if math.isfinite(p) and p > 0 else 1.0))
    scale = min(t / e for t, e in zip(target, sizes, strict=True))
    fit = [min(t, max(1, round(e * scale))) for t, e in zip(target, sizes, strict=True)]
    return fit[0], fit[1], fit[2]


def preprocess(
    image_path: str | Path,
    *,
    settings: PreprocessSettings,
    mask_path: str | Path | None = None,
    label_path: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and preprocess one image (and its label map) with MONAI dictionary transforms.

    Steps: ``LoadImaged`` (nibabel) → ``EnsureChannelFirstd`` → ``Orientationd`` → with a
    mask, ``MaskIntensityd`` (voxels outside the mask become 0). With ``settings.shape``:
    ``CropForegroundd`` (the mask, else image > 0, plus a 1-voxel margin) → ``Resized`` to the
    largest size that fits ``shape`` with the aspect ratio kept in millimetres → centred
    ``ResizeWithPadOrCropd`` to exactly ``shape`` (zero padding) → intensity normalisation
    (``NormalizeIntensityd(nonzero=True)`` for zscore, ``ScaleIntensityd`` for minmax). The
    label map follows every spatial step with nearest-neighbour interpolation; the image is
    resized trilinearly, with anti-aliasing when it shrinks. The image stays float32 throughout.

    Args:
        image_path: the NIfTI image.
        settings: what to do.
        mask_path: a brain mask on the image's grid; ``None``: no mask.
        label_path: a label map on the image's grid; ``None``: none.

    Returns:
        ``(image, label)``: ``image`` float32 ``(D, H, W)``; ``label`` uint8 ``(D, H, W)`` or
        ``None``.

    Raises:
        ValueError: the image has no foreground to crop to.

    Examples:
        >>> settings = PreprocessSettings(shape=48)
        >>> image, _ = preprocess("sub1.nii.gz", settings=settings)  # doctest: +SKIP
        >>> image.shape, image.dtype  # doctest: +SKIP
        ((48, 48, 48), dtype('float32'))
    """
    data = _preprocessed(image_path, settings=settings, mask_path=mask_path, label_path=label_path)
    image_out = np.asarray(data["image"].detach().cpu().numpy()[0], dtype=np.float32)
    label_out = None
    if label_path is not None:
        label = data["label"].detach().cpu().numpy()[0]
        label_out = np.clip(np.rint(label), 0, 255).astype(np.uint8)
    return image_out, label_out


def preprocessed_affine(
    image_path: str | Path, *, settings: PreprocessSettings, mask_path: str | Path | None = None
) -> np.ndarray:
    """The voxel-to-world affine of an image after :func:`preprocess` (MONAI tracks it through
    reorientation, cropping, resizing and padding): where each cached voxel lies in the scanner's
    space, so a prediction made on the cached grid can be put back on the input's grid."""
    data = _preprocessed(image_path, settings=settings, mask_path=mask_path)
    return np.asarray(data["image"].affine, dtype=np.float64)


def to_input_grid(
    probabilities: np.ndarray, affine: np.ndarray, image_path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities on the preprocessed grid -> a label map on the input image's grid.

    Each class's probability is resampled trilinearly into the input's voxels (outside the
    preprocessed field of view: background), then the most probable class is taken, so the
    label map has the input's resolution rather than blocky upsampled labels.

    Args:
        probabilities: ``(K, D, H, W)`` class probabilities, background first.
        affine: the preprocessed grid's voxel-to-world affine (:func:`preprocessed_affine`).
        image_path: the input image, whose grid and affine the label map takes.

    Returns:
        ``(labels, affine)``: uint8 labels on the input's grid and the input's affine.
    """
    import nibabel as nib

    img: Any = nib.load(str(image_path))
    shape = tuple(int(s) for s in img.shape[:3])
    target = np.asarray(img.affine, dtype=np.float64)
    # input voxel -> world -> preprocessed voxel
    matrix = np.linalg.inv(affine) @ target
    resampled = np.stack(
        [
            ndimage.affine_transform(
                np.asarray(p, dtype=np.float32),
                matrix[:3, :3],
                offset=matrix[:3, 3],
                output_shape=shape,
                order=1,
                mode="constant",
                cval=1.0 if k == 0 else 0.0,
            )
            for k, p in enumerate(probabilities)
        ]
    )
    return resampled.argmax(axis=0).astype(np.uint8), target


def _preprocessed(
    image_path: str | Path,
    *,
    settings: PreprocessSettings,
    mask_path: str | Path | None = None,
    label_path: str | Path | None = None,
) -> Any:
    """The MONAI dictionary after every preprocessing step (MetaTensors, channel first)."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        MaskIntensityd,
        NormalizeIntensityd,
        Orientationd,
        Resized,
        ResizeWithPadOrCropd,
        ScaleIntensityd,
    )

    data: Any = {"image": str(image_path)}  # MONAI's dict transforms type it several ways
    if mask_path is not None:
        data["mask"] = str(mask_path)
    if label_path is not None:
        data["label"] = str(label_path)
    keys = list(data)
    spatial_keys = [k for k in keys if k != "mask"]
    modes = ["trilinear" if k == "image" else "nearest" for k in spatial_keys]

    steps: list[Any] = [
        LoadImaged(keys, reader="NibabelReader", image_only=True, dtype=np.float32),
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes=settings.orientation, labels=AXIS_LABELS),
    ]
    if mask_path is not None:
        steps.append(MaskIntensityd("image", mask_key="mask"))
    data = Compose(steps)(data)

    if settings.shape is not None:
        if settings.crop_foreground:
            source = "mask" if mask_path is not None else "image"
            if not bool((data[source] > 0).any()):
                raise ValueError(
                    f"{data[source].meta.get('filename_or_obj', source)} has no voxel above 0, "
                    "so there is no foreground to crop to"
                )
            data = CropForegroundd(
                keys, source_key=source, margin=CROP_MARGIN, allow_smaller=False
            )(data)
        data.pop("mask", None)
        image = data["image"]
        size = _fit_size(image.shape[1:], image.pixdim.tolist(), settings.shape)
        data = Compose(
            [
                Resized(
                    spatial_keys,
                    spatial_size=size,
                    mode=modes,
                    anti_aliasing=[k == "image" for k in spatial_keys],
                ),
                ResizeWithPadOrCropd(spatial_keys, spatial_size=settings.shape),
            ]
        )(data)
    if settings.normalize == "zscore":
        data = NormalizeIntensityd("image", nonzero=True)(data)
    elif settings.normalize == "minmax":
        data = ScaleIntensityd("image", minv=0.0, maxv=1.0)(data)
    return data
