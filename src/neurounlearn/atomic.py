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

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from neurounlearn.errors import InputError


def check_out(out: str | Path, *, folder: bool, flag: str = "the output path") -> None:
    """An output path is usable before any work starts: a folder (``folder=True``; it may
    exist) or a file (it may exist, but not as a folder), under folders this user can write.
    ``flag`` names the path in the messages (the CLI: ``--out``).

    Raises:
        InputError: naming the path and what to give instead.
    """
    out = Path(out)
    kind = "folder" if folder else "file"
    if folder and out.exists() and not out.is_dir():
        raise InputError(f"{flag} is a file, not a folder", file=out, hint="give a folder path")
    if not folder and out.is_dir():
        raise InputError(
            f"{flag} is an existing folder; a file is written here",
            file=out,
            hint="give a file path, e.g. a new name inside that folder",
        )
    parent = out if folder and out.exists() else out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(
            f"{flag} lies under {parent}, which is a file", file=out, hint=f"give a {kind} path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(
            f"cannot write in {parent} (permission denied)",
            file=out,
            hint=f"choose a {kind} you can write to",
        )


@contextmanager
def atomic_path(path: str | Path, *, owned: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any error the temporary file is removed and ``path`` is left as it was; an
    operating-system error that names no file (a write on a full disk) is raised again naming
    ``path``. ``owned`` puts this host and process id in the temporary name
    (``.NAME.HOST.PID.XXXX.tmp``), so that :func:`remove_orphans` can later remove it if a kill
    left it behind.
    """
    path = Path(path)
    prefix = f".{path.name}.{_owner()}." if owned else f".{path.name}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)  # on disk before the rename, so a crash never leaves a truncated file
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not err.filename:
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


@contextmanager
def outputs_or_nothing(folder: str | Path, names: tuple[str, ...]) -> Iterator[Path]:
    """Write several outputs into ``folder``; if the block fails (a full disk, Ctrl-C), remove
    the ``names`` it writes there, and ``folder`` itself if the block created it, so that no
    half-written set is left that looks complete. An operating-system error that names no
    file is raised again naming ``folder``.
    """
    folder = Path(folder)
    existed = folder.exists()
    try:
        yield folder
    except BaseException as err:
        for name in names:
            target = folder / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(err, OSError) and not err.filename:  # name the folder being written
            raise OSError(err.errno, err.strerror, str(folder)) from None
        raise


def _owner() -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    return f"{host}.{os.getpid()}"


#: A temporary file written from another host is taken for abandoned after this long.
ORPHAN_AGE_S = 24 * 3600


def remove_orphans(folder: str | Path, pattern: str) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` (``owned=True``) left in ``folder`` that
    match ``pattern`` and whose writer is gone: a dead process on this host, or a file from
    another host untouched for :data:`ORPHAN_AGE_S`. Returns the paths removed."""
    removed = []
    here = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
    for tmp in Path(folder).glob(pattern):
        found = re.search(r"\.([A-Za-z0-9-]+)\.(\d+)\.[^.]+\.tmp$", tmp.name)
        if found is None:
            continue
        host, pid = found.group(1), int(found.group(2))
        try:
            if host == here:
                abandoned = pid != os.getpid() and not _alive(pid)
            else:
                abandoned = time.time() - tmp.stat().st_mtime > ORPHAN_AGE_S
            if abandoned:
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # removed meanwhile, or not ours to remove: leave it
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def reserve(path: str | Path) -> None:
    """Allocate a file's whole length on disk now, so that a full disk is an ``OSError`` here
    rather than a SIGBUS when a memory map later writes into a hole. File systems without
    allocation support are left as they are."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        os.close(fd)


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


def check_table_path(path: str | Path) -> None:
    """A table can be written in the format ``path``'s suffix names (see :func:`write_table`):
    raised before any work starts.

    Raises:
        InputError: ``.parquet`` without pyarrow installed.
    """
    if Path(path).suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError(
                "writing Parquet needs the pyarrow package",
                file=path,
                hint="install it (pip install pyarrow), or write a .csv or .tsv file",
            ) from None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` atomically in the format its suffix names: ``.tsv``/``.tab``
    tab-separated, ``.parquet`` Parquet (needs pyarrow), anything else CSV."""
    check_table_path(path)
    suffix = Path(path).suffix.lower()
    with atomic_path(path) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, sep="\t" if suffix in (".tsv", ".tab") else ",")


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
