"""The disk cache of preprocessed volumes: built once, verified every time it is opened.

:func:`build_cache` preprocesses every image with
:func:`~neurounlearn.data.volumes.preprocessing.preprocess` and stores the result as one
``.npy`` array of shape ``(N, D, H, W)``, written a row at a time
(:class:`~neurounlearn.data.volumes.rows.RowWriter`). The cache is named after the
preprocessing settings and the content of the input files, and is checked (settings, input
hashes, array header and size, checksum) every time it is opened, so a stale or corrupt cache is
rebuilt, never silently reused.

Reuse reads no data it need not: an input file's hash is kept under its stat (size, times,
inode) in the cache folder's :data:`HASH_INDEX` and read again only when the stat changes, and
the array's checksum is recomputed only when the array file's stat differs from the one its
build recorded. Reusing a cache of N subjects costs N ``stat`` calls and one JSON read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from neurounlearn.atomic import atomic_path, remove_orphans, reserve, write_json
from neurounlearn.data.manifest import preview_list
from neurounlearn.data.volumes.files import (
    CONFIG_KEYS,
    VolumeColumns,
    pool_map,
    progress_bar,
    resolve_paths,
)
from neurounlearn.data.volumes.preprocessing import PreprocessSettings, format_shape, preprocess
from neurounlearn.data.volumes.rows import RowWriter
from neurounlearn.errors import InputError

#: Layout version of the cache files and sidecar.
CACHE_FORMAT = 1

_CHUNK = 1 << 22  # 4 MiB reads when hashing: large enough that hashlib releases the GIL

_NO_CACHE = "missing"  # _why_stale's reason when there is simply no cache yet

_CHECK_HINT = (
    "checking the manifest first (neurounlearn.checks.check_manifest, or 'neurounlearn check') "
    "lists every bad file at once"
)


def _file_hash(path: str | None) -> str | None:
    if path is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checksum(path: Path) -> str:
    value = _file_hash(str(path))
    assert value is not None
    return value


#: The file in a cache folder that remembers each input file's content hash under its stat, so an
#: unchanged file is never read again to find its cache (at 40k subjects a reuse would otherwise
#: hash 100+ GB of NIfTI).
HASH_INDEX = "input-hashes.json"
#: Version of the hash index's layout (another version is ignored and rebuilt).
HASH_INDEX_FORMAT = 1


def file_stat(path: str | Path) -> list[int]:
    """What says a file is unchanged without reading it: size, modification and status-change
    times (ns), inode and device. An edit, a copy over it, a restore from backup or a move to
    another disk changes at least one of them."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_index(path: Path) -> dict[str, list[Any]]:
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict) or index.get("format") != HASH_INDEX_FORMAT:
        return {}
    files = index.get("files")
    return files if isinstance(files, dict) else {}


def input_hashes(
    paths: Sequence[str],
    cache_dir: Path,
    *,
    threads: int = 0,
    progress: bool = True,
) -> tuple[dict[str, str | None], int]:
    """The content hash of each input file, and how many were read to get them.

    A file whose stat (:func:`file_stat`) matches the one recorded in the cache folder's
    :data:`HASH_INDEX` keeps its recorded hash; only new or changed files are read, and the
    index is rewritten (atomically; with several writers the last one's wins and the others'
    files are read again next time). ``None``: the file cannot be read.
    """
    index_path = cache_dir / HASH_INDEX
    index = _read_index(index_path)
    hashes: dict[str, str | None] = {}
    stats: dict[str, list[int]] = {}
    todo: list[str] = []
    for path in paths:
        try:
            stats[path] = file_stat(path)
        except OSError:
            todo.append(path)  # reading it reports it
            continue
        known = index.get(os.path.abspath(path))
        if isinstance(known, list) and len(known) == 2 and known[0] == stats[path]:
            hashes[path] = str(known[1])
        else:
            todo.append(path)
    with progress_bar(len(todo), "hashing images", enabled=progress) as advance:
        for path, digest in zip(todo, pool_map(_file_hash_or_none, todo, threads), strict=True):
            hashes[path] = digest
            advance()
    fresh = {
        os.path.abspath(p): [stats[p], hashes[p]]
        for p in todo
        if hashes[p] is not None and p in stats
    }
    if fresh:
        try:
            write_json({"format": HASH_INDEX_FORMAT, "files": {**index, **fresh}}, index_path)
        except OSError:
            pass  # a read-only cache folder: the files are read again next time, nothing lost
    return hashes, len(todo)


def _npy_data_size(path: Path, shape: Sequence[int], dtype: str) -> int | None:
    """The size ``path`` must have for its header and ``shape``/``dtype``, if its header reads."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        offset = fh.tell()
    return offset + int(np.prod(shape)) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class VolumeCache:
    """A finished, verified cache of preprocessed volumes.

    Args:
        path: the ``(N, D, H, W)`` ``.npy`` array of images, in manifest row order.
        label_path: the matching uint8 ``.npy`` of label maps, or ``None``.
        sidecar_path: the ``.json`` describing both.
        shape: ``(N, D, H, W)``.
        dtype: storage dtype of the images.
        reused: ``True`` when an existing cache was verified and used as it was.
        build_seconds: time spent preprocessing and writing; ``None`` when reused.

    Examples:
        >>> cache = build_cache(df, "m.csv", columns, settings, cache_dir="c")  # doctest: +SKIP
        >>> cache.open()[0].shape  # doctest: +SKIP
        (48, 48, 48)
    """

    path: Path
    label_path: Path | None
    sidecar_path: Path
    shape: tuple[int, ...]
    dtype: str
    reused: bool
    build_seconds: float | None

    @property
    def nbytes(self) -> int:
        """Bytes on disk of the array file(s), headers included."""
        total = self.path.stat().st_size
        if self.label_path is not None:
            total += self.label_path.stat().st_size
        return total

    def open(self) -> np.memmap:
        """The images as a read-only memory map (pages are read from disk on access)."""
        return np.load(self.path, mmap_mode="r")

    def open_labels(self) -> np.memmap:
        """The label maps as a read-only memory map.

        Raises:
            ValueError: the cache was built without a label column.
        """
        if self.label_path is None:
            raise ValueError(f"cache {self.path} has no label maps (built without a label column)")
        return np.load(self.label_path, mmap_mode="r")


def _cache_paths(cache_dir: Path, stem: str) -> tuple[Path, Path, Path]:
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.labels.npy", cache_dir / f"{stem}.json"


def label_path_for(array: Path) -> Path:
    """The label maps' ``.npy`` that belongs to the images' ``.npy`` of a cache."""
    return array.with_name(array.name.removesuffix(".npy") + ".labels.npy")


def _fmt_setting(name: str, value: Any) -> str:
    if name == "shape":
        if value is None:
            return "own shape"
        if len(set(value)) == 1:
            return str(value[0])
        return format_shape(value)
    return str(value)


def _why_stale(
    array: Path,
    labels: Path | None,
    sidecar: Path,
    settings_key: dict[str, Any],
    rows: list[dict[str, str | None]],
) -> tuple[str | None, dict[str, Any] | None]:
    """``(reason, meta)``: why the cache cannot be reused (``None`` if it can) and its sidecar.

    Checks, cheapest first: sidecar readable and complete, same settings, same input hashes,
    array files present with the recorded header/shape/dtype/size, and matching checksums.
    """
    if not sidecar.exists():
        if array.exists():
            return "is incomplete (no sidecar, the build was interrupted)", None
        return _NO_CACHE, None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        return f"is corrupt (unreadable sidecar {sidecar.name})", None
    if meta.get("complete") is not True or meta.get("format") != CACHE_FORMAT:
        return "is incomplete or from another version of neurounlearn", None
    old = meta.get("settings")
    if old != settings_key:
        old = old if isinstance(old, dict) else {}
        diff = [
            f"{k} {_fmt_setting(k, old.get(k))} vs {_fmt_setting(k, settings_key.get(k))}"
            for k in sorted(set(old) | set(settings_key))
            if old.get(k) != settings_key.get(k)
        ]
        return f"was built with other settings ({'; '.join(diff)})", None
    old_rows = meta.get("rows")
    if old_rows != rows:
        if not isinstance(old_rows, list) or len(old_rows) != len(rows):
            return (
                f"was built from {len(old_rows) if isinstance(old_rows, list) else '?'} images, "
                f"not {len(rows)}",
                None,
            )
        changed = [i + 1 for i, (a, b) in enumerate(zip(old_rows, rows, strict=True)) if a != b]
        return f"was built from other file contents (rows {preview_list(changed)} changed)", None
    files = [("images", array, meta.get("shape"), meta.get("dtype"))]
    if labels is not None:
        files.append(("labels", labels, meta.get("label_shape"), "uint8"))
    for what, path, shape, dtype in files:
        if not path.exists():
            return f"is incomplete ({what} file {path.name} is missing)", None
        try:
            arr = np.load(path, mmap_mode="r")
            header = (list(arr.shape), str(arr.dtype))
            del arr
            expected = _npy_data_size(path, header[0], header[1])
        except Exception as err:  # a truncated or overwritten header raises many types
            return f"is corrupt ({what} header unreadable: {type(err).__name__})", None
        if header != (shape, dtype) or shape is None or shape[0] != len(rows):
            return (
                f"is corrupt ({what} array is {format_shape(header[0])} {header[1]}, the sidecar "
                f"says {format_shape(shape or [])} {dtype})",
                None,
            )
        if expected != path.stat().st_size:
            return f"is corrupt ({what} file size is wrong)", None
    checksums, stats = meta.get("checksums", {}), meta.get("stats") or {}
    restamped = False
    for what, path, _, _ in files:
        if stats.get(what) == file_stat(path):
            continue  # not written since the build checksummed it: no need to read it all
        if _checksum(path) != checksums.get(what):
            return f"is corrupt ({what} checksum mismatch)", None
        stats[what], restamped = file_stat(path), True  # touched, same bytes: note its stat
    if restamped:
        meta["stats"] = stats
        with contextlib.suppress(OSError):  # a read-only cache is checksummed every time
            write_json(meta, sidecar)
    return None, meta


class _PreprocessRows(Dataset):
    """Preprocess unique inputs in DataLoader workers; errors come back as text, not raised.

    Raising inside a worker would surface as a wrapped traceback; returning the message lets
    the main process raise one clean :class:`InputError` naming the row.
    """

    def __init__(
        self, jobs: list[tuple[str, str | None, str | None]], settings: PreprocessSettings
    ) -> None:
        self.jobs = jobs
        self.settings = settings

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, k: int) -> tuple[int, np.ndarray | None, np.ndarray | None, str | None]:
        image, mask, label = self.jobs[k]
        try:
            x, lab = preprocess(image, settings=self.settings, mask_path=mask, label_path=label)
        except Exception as err:  # any failure is reported with its row by the caller
            return k, None, None, f"{type(err).__name__}: {err}"
        return k, x, lab, None


def _keep(item: Any) -> Any:
    return item


def _jobs(
    resolved: pd.DataFrame, columns: VolumeColumns
) -> list[tuple[str, str | None, str | None]]:
    """``(image, mask, label)`` paths per row."""
    n = len(resolved)
    none: list[str | None] = [None] * n
    images = list(resolved[columns.image])
    masks = list(resolved[columns.mask]) if columns.mask else none
    labels = list(resolved[columns.label]) if columns.label else none
    return list(zip(images, masks, labels, strict=True))


def build_cache(
    frame: pd.DataFrame,
    manifest: str | Path,
    columns: VolumeColumns,
    settings: PreprocessSettings,
    *,
    cache_dir: str | Path,
    progress: bool = True,
    echo: Callable[[str], Any] = print,
    num_workers: int = 0,
) -> VolumeCache:
    """Preprocess every row's image once into a memory-mapped cache, or reuse a verified one.

    The cache is named ``volumes-<hash>`` after ``settings.key()`` and the ordered content
    hashes (BLAKE2b of the bytes) of each row's image, mask and label files, so it follows the
    data wherever the files are moved, and any edit to a file or a setting gives a new cache.
    It consists of ``volumes-<hash>.npy`` (``(N, D, H, W)`` in ``settings.dtype``),
    ``volumes-<hash>.labels.npy`` (uint8, only with a label column; a row whose label cell is
    empty gets an all-zero map) and ``volumes-<hash>.json``
    (settings, per-row hashes, shape, dtype, checksums, ``complete: true``). Array files are
    written under temporary names and renamed when finished, the sidecar last, so an
    interrupted build never leaves a cache that looks complete.

    An existing cache is reused only when its sidecar, settings, input hashes, array headers,
    sizes and checksums all match; otherwise ``echo`` says why and it is rebuilt. Input files
    are hashed again only when their stat has changed (:func:`input_hashes`), and the arrays
    checksummed again only when theirs has.

    Run :func:`find_volume_problems` first for a report of every bad file; here the first
    unreadable row stops the build.

    Args:
        frame: the manifest (position ``i`` is data row ``i + 1``); rows are cached in order.
        manifest: the manifest's path; relative paths resolve against its folder.
        columns: which columns hold the image, label and mask paths.
        settings: the preprocessing.
        cache_dir: folder of the cache (created if missing).
        progress: draw progress bars on stderr for many files.
        echo: receives one-line messages (building, reusing, rebuilding and why).
        num_workers: DataLoader worker processes that preprocess; ``0`` preprocesses in this
            process. Files are also hashed on that many threads.

    Returns:
        The verified cache.

    Raises:
        InputError: a path column is missing, a path cell is empty, a file cannot be read or
            preprocessed, or (with ``settings.shape`` ``None``) images differ in shape.

    Examples:
        >>> cache = build_cache(df, "m.csv", VolumeColumns(), PreprocessSettings(shape=48),
        ...                     cache_dir="~/.cache/neurounlearn")  # doctest: +SKIP
        >>> cache.reused, cache.shape  # doctest: +SKIP
        (True, (300, 48, 48, 48))
    """
    for role, col in columns.roles():
        if col not in frame.columns:
            raise InputError(
                f"{CONFIG_KEYS[role]} names column '{col}', which is not in the manifest",
                file=manifest,
                column=col,
                hint=f"set {CONFIG_KEYS[role]} to the column holding each {role}'s NIfTI path",
            )
    if len(frame) == 0:
        raise InputError("the manifest has no rows to cache", file=manifest)
    resolved = resolve_paths(frame, manifest, columns)
    jobs = _jobs(resolved, columns)
    for i, job in enumerate(jobs):
        for (role, column), cell in zip(
            [("image", columns.image), ("mask", columns.mask), ("label", columns.label)],
            job,
            strict=True,
        ):
            if column is not None and cell is None and role != "label":
                raise InputError(
                    f"the {role} path is empty", file=manifest, row=i + 1, column=column
                )

    threads = num_workers if num_workers > 0 else 0
    unique_paths = list(dict.fromkeys(p for job in jobs for p in job if p is not None))
    cache_dir = Path(cache_dir).expanduser()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _cache_error(cache_dir, err) from None
    with one_builder(cache_dir, echo):
        return _find_or_build(
            jobs,
            unique_paths,
            manifest,
            columns,
            settings,
            cache_dir,
            threads=threads,
            progress=progress,
            echo=echo,
            num_workers=num_workers,
        )


@contextlib.contextmanager
def one_builder(cache_dir: Path, echo: Callable[[str], Any]) -> Iterator[None]:
    """Hold the cache folder's build lock (``.build.lock``, an advisory ``flock``) while the
    caller finds or builds its cache, so that processes sharing the folder (every process of a
    multi-device run, or several runs on shared storage) build each cache once: the others wait,
    then find it built. The lock goes with the process that holds it, killed or not. A folder
    that cannot hold a lock file (read-only) is used without one: it can only be read."""
    try:
        fd = os.open(cache_dir / ".build.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"waiting for another process building an image cache in {cache_dir}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _find_or_build(
    jobs: list[tuple[str, str | None, str | None]],
    unique_paths: list[str],
    manifest: str | Path,
    columns: VolumeColumns,
    settings: PreprocessSettings,
    cache_dir: Path,
    *,
    threads: int,
    progress: bool,
    echo: Callable[[str], Any],
    num_workers: int,
) -> VolumeCache:
    """The cache of these files and settings: reused when one is complete and verified, else
    built (under :func:`one_builder`)."""
    hashes, _ = input_hashes(unique_paths, cache_dir, threads=threads, progress=progress)
    unreadable = next((p for p in unique_paths if hashes.get(p) is None), None)
    if unreadable is not None:
        row = next(i + 1 for i, job in enumerate(jobs) if unreadable in job)
        raise InputError(f"{unreadable} cannot be read", file=manifest, row=row, hint=_CHECK_HINT)
    rows = [
        {"image": hashes[image], "mask": hashes.get(mask or ""), "label": hashes.get(label or "")}
        for image, mask, label in jobs
    ]
    key = settings.key()
    name = hashlib.blake2b(
        json.dumps({"settings": key, "rows": rows}, sort_keys=True).encode(), digest_size=10
    ).hexdigest()
    array, labels_file, sidecar = _cache_paths(cache_dir, f"volumes-{name}")
    labels = labels_file if columns.label else None

    reason, meta = _why_stale(array, labels, sidecar, key, rows)
    if reason is None and meta is not None:
        echo(f"reusing image cache {array} ({len(rows)} images, verified)")
        return VolumeCache(
            path=array,
            label_path=labels,
            sidecar_path=sidecar,
            shape=tuple(meta["shape"]),
            dtype=str(meta["dtype"]),
            reused=True,
            build_seconds=None,
        )
    if reason == _NO_CACHE:
        echo(f"caching {len(rows)} preprocessed images in {array}")
    else:
        echo(f"cache {array} {reason}; rebuilding")
    plan = _Plan(
        jobs=jobs,
        rows=rows,
        manifest=manifest,
        columns=columns,
        settings=settings,
        array=array,
        labels=labels,
        sidecar=sidecar,
    )
    try:
        # A stale sidecar must not outlive the arrays it describes if this build is interrupted.
        sidecar.unlink(missing_ok=True)
        for orphan in remove_orphans(cache_dir, ".volumes-*.tmp"):
            echo(f"removed {orphan.name}, left in the cache by an interrupted build")
        return _build(plan, progress=progress, echo=echo, num_workers=num_workers)
    except OSError as err:  # a full disk, a read-only cache, a file-size limit
        raise _cache_error(cache_dir, err) from None


def _cache_error(cache_dir: Path, err: OSError) -> InputError:
    """A failed cache write as one line: what happened, and where else to put the cache."""
    what = err.strerror or str(err)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full"
    elif err.errno == errno.EFBIG:
        what = "the cache file is larger than this system allows (ulimit -f)"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "the cache folder cannot be written (read-only or permission denied)"
    return InputError(
        f"cannot write the image cache: {what}; nothing partial is kept",
        file=cache_dir,
        hint="free space, or put the cache on another disk with data.cache_dir=DIR or "
        "NEUROUNLEARN_CACHE_DIR=DIR",
    )


def _file_hash_or_none(path: str) -> str | None:
    try:
        return _file_hash(path)
    except OSError:
        return None


@dataclass(frozen=True)
class _Plan:
    """One cache build: each row's input files and their content hashes, the preprocessing,
    and the files to write (the images, the label maps or ``None``, the sidecar)."""

    jobs: list[tuple[str, str | None, str | None]]
    rows: list[dict[str, str | None]]
    manifest: str | Path
    columns: VolumeColumns
    settings: PreprocessSettings
    array: Path
    labels: Path | None
    sidecar: Path


def _build(
    plan: _Plan, *, progress: bool, echo: Callable[[str], Any], num_workers: int
) -> VolumeCache:
    start = time.perf_counter()
    # Rows with identical inputs (the same file listed twice) are preprocessed once.
    unique: dict[str, int] = {}
    targets: list[list[int]] = []
    for i, row in enumerate(plan.rows):
        k = unique.setdefault(json.dumps(row, sort_keys=True), len(targets))
        if k == len(targets):
            targets.append([])
        targets[k].append(i)
    work = [plan.jobs[t[0]] for t in targets]
    loader = DataLoader(
        _PreprocessRows(work, plan.settings),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_keep,
    )
    threads = torch.get_num_threads()
    if num_workers == 0:
        # One volume is too small to split across threads: with several, synchronisation costs
        # more than it saves (measured 10x slower per 48³ volume on 2 cores). DataLoader workers
        # already run single-threaded.
        torch.set_num_threads(1)
    try:
        return _fill(plan, loader, targets, progress=progress, echo=echo, start=start)
    finally:
        torch.set_num_threads(threads)


def _fill(
    plan: _Plan,
    loader: DataLoader,
    targets: list[list[int]],
    *,
    progress: bool,
    echo: Callable[[str], Any],
    start: float,
) -> VolumeCache:
    """Write preprocessed rows into temporary arrays, rename them, then write the sidecar."""
    n = len(plan.jobs)
    dtype = np.dtype(plan.settings.dtype)
    images: RowWriter | None = None
    label_maps: RowWriter | None = None
    first_shape: tuple[int, ...] | None = None
    with ExitStack() as stack:
        tmp_array = stack.enter_context(atomic_path(plan.array, owned=True))
        tmp_labels = (
            stack.enter_context(atomic_path(plan.labels, owned=True))
            if plan.labels is not None
            else None
        )
        with progress_bar(len(targets), "preprocessing images", enabled=progress) as advance:
            for k, x, lab, error in loader:
                row = targets[k][0] + 1
                if error is not None or x is None:
                    raise InputError(
                        f"image {plan.jobs[row - 1][0]} could not be preprocessed: {error}",
                        file=plan.manifest,
                        row=row,
                        column=plan.columns.image,
                        hint=_CHECK_HINT,
                    )
                if first_shape is None:
                    first_shape = tuple(x.shape)
                    images = RowWriter(tmp_array, (n, *first_shape), dtype)
                    stack.callback(images.close)
                    reserve(tmp_array)  # a full disk fails here, not halfway through
                    if tmp_labels is not None:
                        label_maps = RowWriter(tmp_labels, (n, *first_shape), np.uint8)
                        stack.callback(label_maps.close)
                        reserve(tmp_labels)
                elif tuple(x.shape) != first_shape:
                    raise InputError(
                        f"image {plan.jobs[row - 1][0]} has shape {format_shape(x.shape)} after "
                        f"reorientation, but row {targets[0][0] + 1} has "
                        f"{format_shape(first_shape)}",
                        file=plan.manifest,
                        row=row,
                        column=plan.columns.image,
                        hint="resize every image to one shape with data.shape=48",
                    )
                stored = x.astype(dtype)
                if not np.isfinite(stored).all():
                    raise InputError(
                        f"image {plan.jobs[row - 1][0]} has intensities beyond the range of "
                        f"{plan.settings.dtype} (up to {np.abs(x).max():g}) after preprocessing",
                        file=plan.manifest,
                        row=row,
                        column=plan.columns.image,
                        hint="normalise intensities (data.normalize=zscore)",
                    )
                assert images is not None
                for i in targets[k]:
                    images.write(i, stored)
                    if label_maps is not None and lab is not None:
                        label_maps.write(i, lab)
                advance()
        assert images is not None and first_shape is not None
        images.close()
        checksums = {"images": _checksum(tmp_array)}
        if label_maps is not None and tmp_labels is not None:
            label_maps.close()
            checksums["labels"] = _checksum(tmp_labels)
        # Leaving the ExitStack renames the temporary files onto their final names.
    stats = {"images": file_stat(plan.array)}
    if plan.labels is not None:
        stats["labels"] = file_stat(plan.labels)
    seconds = time.perf_counter() - start
    shape = (n, *first_shape)
    meta = {
        "format": CACHE_FORMAT,
        "settings": plan.settings.key(),
        "rows": plan.rows,
        "files": {
            "images": plan.array.name,
            "labels": plan.labels.name if plan.labels is not None else None,
        },
        "shape": list(shape),
        "dtype": plan.settings.dtype,
        "label_shape": list(shape) if plan.labels is not None else None,
        "checksums": checksums,
        "checksum_algorithm": "blake2b-128 of the whole .npy file",
        # read again on reuse only when a file's stat (size, times, inode) has changed
        "stats": stats,
        "build_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": True,
    }
    write_json(meta, plan.sidecar)
    cache = VolumeCache(
        path=plan.array,
        label_path=plan.labels,
        sidecar_path=plan.sidecar,
        shape=shape,
        dtype=plan.settings.dtype,
        reused=False,
        build_seconds=seconds,
    )
    echo(
        f"cached {n} images ({format_shape(first_shape)} {plan.settings.dtype}, "
        f"{cache.nbytes / 2**20:.1f} MiB) in {seconds:.1f} s"
    )
    return cache
