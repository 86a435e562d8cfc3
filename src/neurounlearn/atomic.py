"""Atomic writes: every file the package writes appears whole or not at all.

Examples:
    >>> import pathlib, tempfile
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)  # on disk before the rename, so a crash never leaves a truncated file
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(obj: Any, path: str | Path) -> None:
    """JSON with ``allow_nan=False``: a NaN must never reach a results file as a number."""
    write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n", path)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically. torch reports a failed write (a full disk, a file-size limit)
    as a ``RuntimeError`` from its zip writer; the operating system's error is raised instead,
    so callers see ``ENOSPC``/``EFBIG`` with the file named."""
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                torch.save(obj, fh)
        except RuntimeError as err:
            cause = err.__context__ or err.__cause__
            if isinstance(cause, OSError):
                raise type(cause)(cause.errno, cause.strerror, str(path)) from None
            raise
