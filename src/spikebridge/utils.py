"""Small shared helpers: atomic file writes, writable-folder checks, and seeding."""
from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import random
import re
import secrets
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .errors import OutputError, SpikebridgeError

#: Temporary files of :func:`atomic_path` are ``.spikebridge-tmp.<target name>.<12 hex digits>.tmp``:
#: hidden, and named so that clean-ups (:func:`remove_stale_temps`) never touch anyone else's file.
TEMP_PREFIX = ".spikebridge-tmp."
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\.spikebridge-tmp\.(?P<target>.+)\.[0-9a-f]{12}\.tmp", re.DOTALL)

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


def counted(n: int, noun: str, plural: str = "") -> str:
    """``"1 epoch"``, ``"3 epochs"``: a count and its noun, plural (``plural``, else ``noun + "s"``)
    where it is not one."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def output_error(path: str | os.PathLike, exc: OSError, action: str = "cannot write") -> OutputError:
    """An :class:`OutputError` naming ``path``, the system's reason and what to do; ``errno`` kept."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hint = _HINTS.get(exc.errno or -1)
    name = os.fspath(exc.filename) if exc.filename else ""
    ours = not name or name == os.fspath(path) or temp_target(os.path.basename(name)) is not None
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
    probe = path / temp_name("write-test")
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


def temp_name(target: str) -> str:
    """A fresh temporary file name for ``target`` (a file name): ``.spikebridge-tmp.<target>.<hex>.tmp``."""
    return f"{TEMP_PREFIX}{target}.{secrets.token_hex(6)}{TEMP_SUFFIX}"


def temp_target(name: str) -> str | None:
    """The target name of a temporary file name :func:`temp_name` made, else ``None``."""
    match = _TEMP_NAME.fullmatch(name)
    return match["target"] if match else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (:func:`temp_name`, created with the process's umask);
    on success it is fsynced and renamed onto ``path``. On any exception it is removed and ``path``
    is left untouched, so a reader never sees a half-written file. File-system failures (disk full,
    permission denied, a file where a folder is needed) raise :class:`~spikebridge.errors.OutputError`
    naming ``path``.
    """
    path = Path(path)
    ensure_dir(path.parent)
    tmp_path = path.parent / temp_name(path.name)
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
    """Delete temporary files that killed writes left in ``folder`` (not recursive): only files
    :func:`temp_name` named for a target matching a glob of ``targets`` (``"last-e*.safetensors"``),
    never another program's. Only call it when no other process writes these targets. Returns how
    many were removed.
    """
    removed = 0
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if e.name.startswith(TEMP_PREFIX)]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        target = temp_target(entry.name)
        if target is None or entry.is_dir(follow_symlinks=False):
            continue
        if any(fnmatch.fnmatchcase(target, pattern) for pattern in targets):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed += 1
    return removed


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch.Generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class Stopwatch:
    """Wall and process-CPU seconds since it was made: a span of work counted in a time to target
    (on a shared machine the CPU seconds are the ones to quote)."""

    def __init__(self) -> None:
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def seconds(self) -> tuple[float, float]:
        """``(wall, cpu)`` seconds so far, rounded to the millisecond."""
        return round(time.perf_counter() - self.wall_start, 3), round(time.process_time() - self.cpu_start, 3)
