"""Small shared helpers: atomic file writes, writable-folder checks, and seeding."""
from __future__ import annotations

import contextlib
import errno
import glob
import os
import random
import secrets
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import OutputError, SpikebridgeError

#: Hidden temporary files of :func:`atomic_path` look like ``.<target name>.<random hex>.tmp``.
TEMP_SUFFIX = ".tmp"

_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and rerun (add --resume to continue a run)",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file is larger than this file system or process allows",
    errno.EROFS: "the file system is read-only: choose another output folder",
    errno.EACCES: "choose an output folder you can write to",
    errno.EPERM: "choose an output folder you can write to",
    errno.ENOTDIR: "a file stands where a folder is needed: remove it or choose another output folder",
    errno.EISDIR: "a folder stands where the file should go",
}


def output_error(path: str | os.PathLike, exc: OSError, action: str = "cannot write") -> OutputError:
    """An :class:`OutputError` naming ``path``, the system's reason and what to do; ``errno`` kept."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno or -1)
    name = os.fspath(exc.filename) if exc.filename else ""
    ours = not name or name == os.fspath(path) or os.path.basename(name).endswith(TEMP_SUFFIX)
    culprit = "" if ours else f" ({name})"
    error = OutputError(f"{action} {path}: {reason}{culprit}" + (f"; {hint}" if hint else ""))
    error.errno = exc.errno
    return error


def ensure_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path``; :class:`OutputError` when it cannot be created (a file in the way, no
    permission, read-only file system)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # ``path`` (or a parent) exists and is not a folder
        raise output_error(path, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), "cannot create folder") from exc
    except OSError as exc:
        raise output_error(path, exc, "cannot create folder") from exc
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and prove it is writable by creating and removing a hidden temporary file.

    Called before long work (training) so that a read-only or full output folder is reported at
    once, not after the first epoch. Raises :class:`OutputError` naming the folder.
    """
    path = ensure_dir(path)
    remove_stale_temps(path, ("write-test",))  # probes of killed processes
    probe = path / f".write-test.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):  # removed by a concurrent clean-up
            os.unlink(probe)
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise output_error(path, exc, "cannot write into folder") from exc
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The temporary file is ``.<name>.<random hex>.tmp`` in the same folder, created with the
    process's umask (like any new file, so the output is readable as usual). On any exception the
    temporary file is removed and ``path`` is left untouched, so a reader never sees a half-written
    file. Failures of the file system (disk full, permission denied, a file where a folder is
    needed), here or while the body writes, are raised as :class:`~spikebridge.errors.OutputError`
    naming ``path``.
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp_path = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    try:
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        mode = os.fstat(fd).st_mode & 0o777  # 0o666 less the umask: what a new file gets
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from exc
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
            if os.fstat(fh.fileno()).st_mode & 0o777 != mode:  # writers that recreate the file (safetensors: 0o600)
                os.fchmod(fh.fileno(), mode)
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, SpikebridgeError):
            raise output_error(path, exc) from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(folder: str | os.PathLike, targets: Iterable[str] = ("*",)) -> int:
    """Delete temporary files that killed writes left in ``folder`` (not recursive).

    ``targets``: glob patterns of the target names (``"metrics.csv"``, ``"last-e*.safetensors"``);
    the files removed are ``.<target>.<random>.tmp``. Only call this when no other process is
    writing these targets. Returns how many were removed.
    """
    removed = 0
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return 0
    for target in targets:
        pattern = os.path.join(glob.escape(folder), f".{target}.*{TEMP_SUFFIX}")
        for name in glob.glob(pattern, include_hidden=True):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
                removed += 1
    return removed


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
