"""One run per output folder: a lock, an ownership manifest, and resumes that are exact or refused.

:func:`claim_run_folder` is called once a command's plan is validated and before it writes
anything into OUT. It

* locks OUT (``.spikebridge-run.lock``: an ``flock`` held while the run lives, naming its pid, host,
  command and start). A second run into OUT is refused with one line naming the holder. The kernel
  drops the ``flock`` when a process dies, so a lock left by a killed run is taken over with a note.
* keeps a manifest (``.spikebridge-run.json``: the command, the resolved config, the names the run
  wrote and the names that were there before it). A non-empty OUT without one is refused unless
  ``overwrite`` is given. An earlier run is refused unless ``resume`` (same command, same settings)
  or ``overwrite`` (removes what that run wrote, never anything else) is given.
* refuses a ``resume`` whose settings differ from the saved ones, naming each key, before any file
  in OUT changes. :data:`RUNTIME_KEYS` may differ: they change how a run executes, not what it
  computes. ``resume`` into an empty or new OUT starts a new run (with a note).

Under torchrun rank 0 alone locks and writes; every rank gets rank 0's verdict.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, OutputError, SpikebridgeError, clip
from ..utils import atomic_write_text, ensure_dir, output_error, remove_stale_temps, temp_target
from . import distributed

LOCK, MANIFEST = ".spikebridge-run.lock", ".spikebridge-run.json"
#: what a spikebridge run writes into OUT: ``overwrite`` removes these even when a killed run could not list them
STANDARD_OUTPUTS = frozenset({
    "config.yaml", "summary.json", "report.md", "metrics.csv", "accuracy_vs_time.png", "accuracy_vs_T.png",
    "accuracy_vs_epochs.png", "benchmark.json", "benchmark.md", "ann", "snn_pretrained", "snn_scratch",
    "snn_finetuned", "snn_events_pretrained", "snn_events_scratch",
})
#: settings a resume may change: where and how fast the run executes, not what it computes
RUNTIME_KEYS = frozenset({"run.out", "run.resume", "run.progress", "run.threads", "run.device", "data.workers"})
#: per-phase settings a resume may change too (they change memory, not results: exact)
RUNTIME_SUFFIXES = (".step_in_backward",)


def _short(value: Any, limit: int = 40) -> str:
    """A value for a message: text (a path: its start and its end, :func:`~spikebridge.errors.clip`)
    or JSON, at most ``limit`` characters."""
    return clip(value if isinstance(value, str) else json.dumps(value, default=str), limit)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict, new: dict) -> list[str]:
    """``["ann.lr: 0.1 -> 0.05", ...]``: the keys (not :data:`RUNTIME_KEYS`) whose values differ."""
    old, now = _flat(saved), _flat(json.loads(json.dumps(new, default=str)))
    keys = [*now, *(k for k in old if k not in now)]
    absent = "(absent)"
    return [f"{k}: {_short(old.get(k, absent), 120)} -> {_short(now.get(k, absent), 120)}"
            for k in keys if k not in RUNTIME_KEYS and not k.endswith(RUNTIME_SUFFIXES)
            and not _same_setting(old.get(k, absent), now.get(k, absent), checkpoint=k == "ann_source")]


def _same_setting(saved: Any, now: Any, *, checkpoint: bool = False) -> bool:
    """Equal; or the same folder by another path (a symlink); or a run saved before dataset folders
    were stored absolute: its relative path read from the working directory (as that run's resume
    did) is the folder now named. ``checkpoint``: an ``--ann`` that names the same ANN checkpoint
    another way (``RUN``, ``RUN/ann``, its checkpoints folder, ``.json`` or ``.safetensors``) is the same."""
    if saved == now:
        return True
    if not (isinstance(saved, str) and isinstance(now, str) and saved and os.path.isabs(now)):
        return False
    if checkpoint and os.path.isabs(saved):
        from .checkpoint import locate_checkpoint, resolve_checkpoint_path

        try:
            saved, now = (os.path.realpath(resolve_checkpoint_path(locate_checkpoint(path, snn=False)))
                          for path in (saved, now))
            return saved == now
        except (SpikebridgeError, OSError):
            return False
    return os.path.realpath(saved) == os.path.realpath(now) if os.path.isabs(saved) else os.path.abspath(saved) == now


def _process_start(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (tells a reused pid from the original); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the process named in a lock still runs (same host only; elsewhere: assume it does)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _process_start(pid)
    return start is None or holder.get("pid_start") in (None, start)


def _describe(holder: dict) -> str:
    return (f"spikebridge {_short(holder.get('command', '?'))}, pid {holder.get('pid', '?')} on "
            f"{_short(holder.get('host', '?'))}, since {holder.get('since', '?')}")


def _read_json(path: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError, RecursionError):
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    return None


def _names(saved: dict | None, key: str) -> set[str]:
    """A manifest's list of names (a hand-edited one may hold anything)."""
    value = (saved or {}).get(key)
    return {n for n in value if isinstance(n, str)} if isinstance(value, list) else set()


def _holds_files(path: Path) -> bool:
    """Whether ``path`` is anything but a tree of empty folders (e.g. a phase's checkpoint folder
    made before its first epoch ended)."""
    if path.is_symlink() or not path.is_dir():
        return True
    return any(_holds_files(path / name) for name in os.listdir(path))


def _entries(out: Path) -> set[str]:
    """OUT's names, less the lock, the manifest and spikebridge's temporary files."""
    return {n for n in os.listdir(out) if n not in (LOCK, MANIFEST) and temp_target(n) is None}


def foreign_names(out: Path) -> set[str]:
    """The names in OUT that its run did not write (its manifest's record; empty without one)."""
    return _names(_read_json(out / MANIFEST), "foreign")


def _save(out: Path, manifest: dict) -> None:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, default=str))


def _in_use(out: Path, holder: dict) -> OutputError:
    return OutputError(f"{_short(str(out), 100)} is in use by another run ({_describe(holder)}); "
                       f"wait for it to end or use another --out")


def _held(fd: int, holder: dict, operation: int) -> bool:
    """Whether a live run holds the lock file open as ``fd`` (its record ``holder``), trying the
    ``flock`` ``operation`` on it without waiting (kept when it succeeds)."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:  # no flock on this file system: judge by the pid
        return _alive(holder)


def _check_not_in_use(out: Path) -> None:
    """OutputError when a live run holds OUT's lock (found without writing: the plan's check)."""
    try:
        fd = os.open(out / LOCK, os.O_RDONLY)
    except OSError:  # no lock file: no run holds it
        return
    try:
        holder = _read_json(out / LOCK) or {}
        if _held(fd, holder, fcntl.LOCK_SH):
            raise _in_use(out, holder)
    finally:
        os.close(fd)


def _lock(out: Path, command: str) -> int:
    """Hold OUT's lock; returns its open descriptor. OutputError naming the holder while it is held."""
    path = out / LOCK
    for _ in range(20):  # a holder that ends between our open() and flock() unlinks the file: retry
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise output_error(path, exc, "cannot create the lock") from exc
        holder = _read_json(path) or {}
        if _held(fd, holder, fcntl.LOCK_EX):
            os.close(fd)
            raise _in_use(out, holder)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        os.close(fd)
    else:
        raise OutputError(f"{_short(str(out), 100)}: cannot take the lock {LOCK} (it keeps changing)")
    if holder.get("pid"):
        print(f"note: taking over the lock of a run that ended without releasing it ({_describe(holder)})",
              file=sys.stderr)
    mine = {"pid": os.getpid(), "pid_start": _process_start(os.getpid()), "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    return fd


def _unlock(out: Path, fd: int) -> None:
    """Give up OUT's lock taken by :func:`_lock`."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out / LOCK)
    os.close(fd)


class RunFolder:
    """A claimed OUT; :meth:`release` (or leaving the ``with`` block) records its names, unlocks;
    leaving the block by an exception first discards a new run that wrote no result."""

    def __init__(self, out: Path, fd: int | None, manifest: dict, *, created: Path | None = None) -> None:
        self.out, self._fd, self.manifest = out, fd, manifest
        # not a resume; the topmost folder the claim made (OUT, or a parent of it for --out a/b/c)
        self._new_run, self._created = not manifest["names"], created

    def _ours(self) -> list[str]:
        return sorted((_entries(self.out) - set(self.manifest["foreign"])) | set(self.manifest["names"]))

    def own(self, *names: str) -> None:
        """Record names the run is about to write into OUT beyond :data:`STANDARD_OUTPUTS` (e.g. a
        benchmark method's run folder), so that ``--overwrite`` removes them even after a SIGKILL."""
        if self._fd is not None:
            self.manifest["names"] = sorted(set(self.manifest["names"]) | set(names))
            self.manifest["foreign"] = sorted(set(self.manifest["foreign"]) - set(names))
            _save(self.out, self.manifest)

    def discard_if_empty(self) -> None:
        """After a new run failed before it wrote any result (bad data found when it opened, Ctrl-C):
        remove what it wrote (``config.yaml``, empty phase folders, the manifest, the lock; OUT and
        the parents the claim made, where empty), so that the corrected command runs into the same OUT as it is. A resumed
        run, or one that wrote anything else, keeps its folder."""
        if self._fd is None or not self._new_run:
            return
        written = {name for name in self._ours() if os.path.lexists(self.out / name)}
        if any(_holds_files(self.out / name) for name in written - {"config.yaml"}):
            return
        for name in (*written, MANIFEST):
            target = self.out / name
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        _unlock(self.out, self._fd)
        self._fd = None
        folder = self.out
        while self._created is not None:
            try:
                folder.rmdir()
            except OSError:
                break
            if folder == self._created:
                break
            folder = folder.parent

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # OutputError too: never hide the error that ends the run
                self.manifest["names"] = self._ours()
                _save(self.out, self.manifest)
        finally:
            _unlock(self.out, self._fd)
            self._fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:  # failed before any result (e.g. bad data found when it opened): nothing left
            self.discard_if_empty()
        self.release()


def _refuse(where: str, saved: dict | None, entries: set[str], command: str, config: dict, resume: bool,
            overwrite: bool) -> None:
    """OutputError / ConfigError when OUT (its manifest ``saved``, its ``entries``) is not this run's to take."""
    if saved is None and entries and not overwrite:
        raise OutputError(f"{where} is not empty and was not written by spikebridge {command}; "
                          f"use a new --out or --overwrite")
    if saved is not None and saved.get("command") != command and not overwrite:
        raise OutputError(f"{where} holds an earlier spikebridge {_short(saved.get('command'))} run, not {command}; "
                          f"use a new --out or --overwrite")
    if saved is not None and not (resume or overwrite):
        raise OutputError(f"{where} holds an earlier {command} run; --resume continues it, --overwrite replaces it")
    if saved is not None and resume:
        old = saved.get("config")
        changed = config_differences(old if isinstance(old, dict) else {}, config)
        if changed:
            more = f"; and {len(changed) - 8} more" if len(changed) > 8 else ""
            raise ConfigError(f"--resume: the settings differ from the saved run ({'; '.join(changed[:8])}{more}); "
                              f"rerun without those changes, or start a new --out")


def check_run_folder(out: str | os.PathLike, *, command: str, config: dict, resume: bool, overwrite: bool) -> None:
    """What :func:`claim_run_folder` would refuse, found without writing anything (the run plan's
    check, so that ``--plan`` fails as the run would)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: give only one")
    out = Path(out)
    existing = next((p for p in (out, *out.parents) if os.path.lexists(p)), None)
    if existing is not None and not existing.is_dir():  # a file in the way
        raise output_error(out, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)), "cannot create folder")
    if existing != out:
        return
    try:
        entries = _entries(out)
    except OSError as exc:
        raise output_error(out, exc, "cannot use") from exc
    _check_not_in_use(out)
    _refuse(_short(str(out), 100), _read_json(out / MANIFEST), entries, command, config, resume, overwrite)


#: what ``spikebridge evaluate`` writes by default beside a checkpoint: ``checkpoints/evaluation/``
EVALUATION_FOLDER = "evaluation"
EVALUATION_FILES = ("evaluation.json", "evaluation.md", "accuracy_vs_T.png", "firing_rates.png", "spike_raster.png",
                    "event_frames.png")


def _phase_output(relative: Path) -> bool:
    """A file a phase writes into its folder: ``metrics.csv``, ``checkpoints/NAME.json`` and
    its tensors, the evaluation of its checkpoint (it describes the checkpoint replaced), or the
    temporary file of one a killed write left."""
    name = temp_target(relative.name) or relative.name
    if len(relative.parts) == 1:
        return name == "metrics.csv"
    if relative.parts[:2] == ("checkpoints", EVALUATION_FOLDER):
        return len(relative.parts) == 3 and name in EVALUATION_FILES
    return len(relative.parts) == 2 and relative.parts[0] == "checkpoints" and name.endswith((".json", ".safetensors"))


def _remove_run_output(target: Path) -> None:
    """``--overwrite``: remove a file the earlier run wrote, or of a phase folder only the files the
    phase wrote (:func:`_phase_output`) and the folders left empty; what the user put there stays."""
    if not target.is_dir() or target.is_symlink():
        target.unlink()
        return
    for folder, subfolders, files in os.walk(target, topdown=False):
        for name in files:
            path = Path(folder) / name
            if _phase_output(path.relative_to(target)):
                path.unlink()
        with contextlib.suppress(OSError):  # not empty: something of the user's is in it
            os.rmdir(folder)


def _claim(out: Path, command: str, config: dict, resume: bool, overwrite: bool) -> RunFolder:
    missing = [folder for folder in (out, *out.parents) if not os.path.lexists(folder)]
    created = missing[-1] if missing else None  # the topmost folder that ensure_dir makes
    ensure_dir(out)
    fd = _lock(out, command)
    try:
        saved = _read_json(out / MANIFEST)
        entries = _entries(out)
        where = _short(str(out), 100)
        names: set[str] = set()
        earlier = _names(saved, "names")  # what the earlier run wrote (its killed writes may have left temporary files)
        _refuse(where, saved, entries, command, config, resume, overwrite)
        if saved is not None and resume:
            names = earlier
            old = saved.get("config")
            threads = (_flat(old if isinstance(old, dict) else {}).get("run.threads"), _flat(config).get("run.threads"))
            if threads[0] != threads[1] and None not in threads:  # allowed, but not bit-exact (README)
                said = [f"run.threads {t}" if t else "torch's default threads (run.threads 0)" for t in threads]
                print(f"note: --resume with {said[1]} (the run used {said[0]}): the resumed epochs "
                      "match an uninterrupted run only with the same thread count", file=sys.stderr)
        elif resume:
            print(f"note: --resume: {where} holds no earlier run; starting a new one", file=sys.stderr)
        if saved is not None and overwrite:
            owned = (earlier | STANDARD_OUTPUTS) & entries
            for name in owned:
                target = out / name
                try:
                    _remove_run_output(target)
                except OSError as exc:
                    raise output_error(target, exc, "--overwrite cannot remove") from exc
            entries = _entries(out)
        # what was there before (or appeared since) and is not a spikebridge output: never ours to remove
        kept = _names(saved, "foreign") & entries if resume else set()
        foreign = kept | (entries - names - (STANDARD_OUTPUTS if saved is not None else set()))
        manifest = {"command": command, "config": config, "names": sorted(names), "foreign": sorted(foreign)}
        # leftovers of a run killed mid-write (its manifest, config.yaml, its outputs): we hold the lock
        remove_stale_temps(out, sorted(earlier | STANDARD_OUTPUTS | {MANIFEST}))
        _save(out, manifest)
        return RunFolder(out, fd, manifest, created=created)
    except BaseException:
        _unlock(out, fd)
        raise


def claim_run_folder(out: str | os.PathLike, *, command: str, config: dict, resume: bool, overwrite: bool,
                     is_main: bool | None = None) -> RunFolder:
    """Claim OUT for one run of ``command`` (see the module docstring); ``config``: the resolved
    config as a nested dict (``dataclasses.asdict(cfg)``). ``is_main`` defaults to this process's
    rank being 0; under torchrun every rank must call this, and each raises rank 0's refusal."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: give only one")

    def claim() -> RunFolder:
        try:
            return _claim(Path(out), command, config, resume, overwrite)
        except SpikebridgeError:
            raise
        except OSError as exc:
            raise output_error(out, exc, "cannot use") from None

    unclaimed = RunFolder(Path(out), None, {"names": [], "foreign": []})  # what the other ranks hold
    if is_main is not None:  # this process alone (tests)
        return claim() if is_main else unclaimed
    return distributed.rank_0_decides(claim) or unclaimed
