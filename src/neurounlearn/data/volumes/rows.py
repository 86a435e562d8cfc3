"""Whole rows of a cache's ``.npy`` arrays, read and written with one system call each.

A memory map keeps every page it touches in the process's resident memory until it is closed:
an epoch through a cache of 40k volumes, or the build that writes it, would make a process look
as large as the cache. Reading and writing rows with ``pread``/``pwrite`` leaves those pages in
the kernel's page cache instead (shared, dropped whenever memory is wanted), so a process stays
the same size however large the cache. The files are ordinary ``.npy`` arrays: ``np.load``
reads them as ever.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt


def _row_bytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize


class RowReader:
    """Reads whole rows of a C-ordered ``.npy`` file with one ``pread`` each.

    Unlike a memory map, the pages read are not mapped into this process: they stay in the
    kernel's page cache and out of its resident memory, which therefore stays flat however many
    rows an epoch reads (a memory map's touched pages count as resident until the map closes).

    Examples:
        >>> reader = RowReader("cache.npy")  # doctest: +SKIP
        >>> reader.row(3).shape  # doctest: +SKIP
        (48, 48, 48)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read is None:
                raise ValueError(f"{self.path}: .npy format {version} is not one this reads")
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if fortran:
            raise ValueError(f"{self.path} is stored in Fortran order; rows are not contiguous")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = _row_bytes(self.shape, self.dtype)
        self._fd = os.open(self.path, os.O_RDONLY)

    def row(self, i: int) -> np.ndarray:
        """Row ``i`` as a new array (read from the page cache or the disk)."""
        data = os.pread(self._fd, self.row_bytes, self.offset + int(i) * self.row_bytes)
        if len(data) != self.row_bytes:
            raise OSError(f"{self.path}: row {i} is cut short (the file is truncated)")
        return np.frombuffer(data, dtype=self.dtype).reshape(self.shape[1:])

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


class RowWriter:
    """Creates a C-ordered ``.npy`` of ``shape`` and ``dtype`` (zeros until written) and writes
    whole rows into it with one ``pwrite`` each; the header is the one ``np.save`` writes.

    Examples:
        >>> writer = RowWriter("cache.npy", (10, 48, 48, 48), "float16")  # doctest: +SKIP
        >>> writer.write(0, volume); writer.close()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, shape: Sequence[int], dtype: npt.DTypeLike) -> None:
        self.path = Path(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        with open(self.path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            self.offset = fh.tell()
        self.row_bytes = _row_bytes(self.shape, self.dtype)
        os.truncate(self.path, self.offset + self.shape[0] * self.row_bytes)
        self._fd: int | None = os.open(self.path, os.O_WRONLY)

    def write(self, i: int, row: np.ndarray) -> None:
        """Write ``row`` (cast to the file's dtype) as row ``i``."""
        data = np.ascontiguousarray(row, dtype=self.dtype).tobytes()
        if len(data) != self.row_bytes:
            raise ValueError(f"row of {len(data)} bytes for rows of {self.row_bytes}")
        assert self._fd is not None, "the writer is closed"
        at, done = self.offset + int(i) * self.row_bytes, 0
        while done < len(data):  # pwrite may write less than asked
            done += os.pwrite(self._fd, data[done:], at + done)

    def close(self) -> None:
        """Close the file (it is flushed to disk by whoever renames it into place)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
