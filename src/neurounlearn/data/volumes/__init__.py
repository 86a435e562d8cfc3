"""Brain images: check them, preprocess them with MONAI once, and serve them from a disk cache.

The image data path has three steps:

1. :func:`find_volume_problems` (:mod:`~neurounlearn.data.volumes.checks`) opens every NIfTI file
   named in the manifest once and reports every problem at once (missing or corrupt files, 4D
   images, NaN voxels, label maps or masks that do not match their image, images of different
   shapes), each with its manifest row and column.
2. :func:`build_cache` (:mod:`~neurounlearn.data.volumes.cache`) preprocesses every image with
   :func:`preprocess` (:mod:`~neurounlearn.data.volumes.preprocessing`: MONAI transforms on
   nibabel: orient, mask, crop the foreground, resize/pad to one shape, normalise intensities)
   and stores the result as one ``.npy`` array of shape ``(N, D, H, W)``. The cache
   is named after the preprocessing settings and the content of the input files, and is checked
   (settings, input hashes, array header, checksum; data is read again only where a file's
   stat changed) every time it is opened, so a stale or corrupt cache is rebuilt, never
   silently reused.
3. :class:`CachedVolumes` (:mod:`~neurounlearn.data.volumes.dataset`) serves rows of that array
   to a ``DataLoader``: later epochs and later runs read only the cached array and never decode
   NIfTI again.

Which manifest columns hold the files, and their absolute paths, are in
:mod:`~neurounlearn.data.volumes.files`.

Examples:
    >>> settings = PreprocessSettings(shape=(48, 48, 48))
    >>> columns = VolumeColumns(image="t1")
    >>> problems = find_volume_problems(frame, "m.csv", columns, settings)  # doctest: +SKIP
    >>> cache = build_cache(frame, "m.csv", columns, settings, cache_dir="c")  # doctest: +SKIP
    >>> data = CachedVolumes(cache, rows, y, codes)  # doctest: +SKIP
"""

from neurounlearn.data.volumes.cache import VolumeCache, build_cache
from neurounlearn.data.volumes.checks import find_volume_problems
from neurounlearn.data.volumes.dataset import CachedVolumes
from neurounlearn.data.volumes.files import VolumeColumns, resolve_paths
from neurounlearn.data.volumes.preprocessing import (
    PREPROCESS_VERSION,
    PreprocessSettings,
    preprocess,
    preprocessed_affine,
    to_input_grid,
)

__all__ = [
    "PREPROCESS_VERSION",
    "CachedVolumes",
    "PreprocessSettings",
    "VolumeCache",
    "VolumeColumns",
    "build_cache",
    "find_volume_problems",
    "preprocess",
    "preprocessed_affine",
    "resolve_paths",
    "to_input_grid",
]
