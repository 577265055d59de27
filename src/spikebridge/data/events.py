"""Event streams: arrays -> frames (:func:`events_to_frames`, binned exactly as
``tonic.transforms.ToFrame`` bins), and the event file formats spikebridge reads: ES-ImageNet
samples and label files (:class:`ESImageNetDataset`), N-MNIST / N-Caltech101 ``.bin``, AEDAT 2.0
(DVS128, DAVIS240) and 3.1 (:func:`read_aedat`), AEDAT 4.0 through the MIT-licensed ``aedat``
package, the optional extra ``spikebridge[aedat4]`` (:func:`read_aedat4`), and DVS-Gesture as
Tonic stores it (:func:`read_gesture_npy`).

Event arrays use Tonic's structured dtype :data:`EVENT_DTYPE` (fields ``x``, ``y``, ``t``, ``p``;
``p`` True = ON). The readers are plain numpy (``np.frombuffer``): Tonic (GPL-3.0) is never needed.
Every malformed input raises :class:`~spikebridge.errors.DataError` naming the file.
"""
from __future__ import annotations

import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..utils import atomic_path, atomic_write_text
from .folders import VAL_SPLIT_NAMES
from .odg import ES_IMAGENET_SIZE, ES_IMAGENET_WINDOW, EventSample, events_to_dense

#: Tonic's event layout: pixel column ``x``, pixel row ``y``, timestamp ``t`` (µs), ``p`` True = ON.
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", bool)])


def make_events(x: Any, y: Any, t: Any, p: Any) -> np.ndarray:
    """Build a structured :data:`EVENT_DTYPE` array; ``p`` is True for ON (``p > 0``)."""
    x, y, t, p = (np.asarray(v) for v in (x, y, t, p))
    out = np.empty(x.shape[0], dtype=EVENT_DTYPE)
    out["x"], out["y"], out["t"], out["p"] = x, y, t, p > 0
    return out


# ================================================================================================
# events -> frames
# ================================================================================================

def _where(source: str | os.PathLike | None) -> str:
    return f"{source}: " if source is not None else ""


def _fields(events: Any, source: str | os.PathLike | None) -> tuple[np.ndarray, ...]:
    """(x, y, t, p) arrays from a structured array, a mapping or a 4-sequence."""
    try:
        if isinstance(events, np.ndarray) and events.dtype.names is not None:
            x, y, t, p = (events[k] for k in ("x", "y", "t", "p"))
        elif isinstance(events, Mapping):
            x, y, t, p = (np.asarray(events[k]) for k in ("x", "y", "t", "p"))
        elif isinstance(events, (tuple, list)) and len(events) == 4:
            x, y, t, p = (np.asarray(v) for v in events)
        else:
            raise DataError(
                f"{_where(source)}events must be a structured array with fields x, y, t, p, a dict of "
                f"those arrays or an (x, y, t, p) tuple, got {type(events).__name__}"
            )
    except (KeyError, ValueError) as exc:
        raise DataError(f"{_where(source)}events lack a field: {exc} (need x, y, t, p)") from None
    arrays = [np.asarray(v).reshape(-1) if np.ndim(v) <= 1 else np.asarray(v) for v in (x, y, t, p)]
    if any(a.ndim != 1 for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
        raise DataError(f"{_where(source)}x, y, t, p must be 1-D arrays of one length, got shapes "
                        f"{[a.shape for a in arrays]}")
    return tuple(arrays)


def _on_flags(p: np.ndarray, source: str | os.PathLike | None) -> np.ndarray:
    """Polarity -> bool ON flags. Accepts bool, {0, 1} (1 = ON) or {-1, 1} (1 = ON)."""
    if p.dtype == np.bool_:
        return p
    values = np.unique(p)
    if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {-1, 1}):
        raise DataError(f"{_where(source)}polarity must be bool, 0/1 or -1/1, got values {values[:6].tolist()}")
    return p > 0


def _integer_coords(v: np.ndarray, name: str, limit: int, source: str | os.PathLike | None) -> np.ndarray:
    if v.dtype.kind not in "iub" and not (
            v.dtype.kind == "f" and np.all(np.isfinite(v)) and np.all(v == np.round(v))):
        raise DataError(f"{_where(source)}{name} coordinates must be integers, got dtype {v.dtype}")
    v = v.astype(np.int64)
    bad = (v < 0) | (v >= limit)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{_where(source)}{int(bad.sum())} events have {name} outside the sensor [0, {limit}) "
            f"(first: event {i}, {name}={int(v[i])})"
        )
    return v


def _sensor_wh(sensor_size: Sequence[int]) -> tuple[int, int]:
    if len(sensor_size) not in (2, 3) or (len(sensor_size) == 3 and int(sensor_size[2]) not in (1, 2)):
        raise ConfigError(f"sensor_size must be (W, H) or Tonic's (W, H, P) with P = 2, got {tuple(sensor_size)}")
    w, h = int(sensor_size[0]), int(sensor_size[1])
    if w <= 0 or h <= 0:
        raise ConfigError(f"sensor_size must be positive, got {tuple(sensor_size)}")
    return w, h


def time_bin_edges(
    t: np.ndarray,
    *,
    n_time_bins: int | None = None,
    time_window: float | None = None,
    overlap: float = 0.0,
    include_incomplete: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Index ranges ``[start_i, end_i)`` of the sorted timestamps ``t`` for each frame (Tonic's rule).

    * ``n_time_bins=n``: windows of ``max((t[-1] - t[0]) // n, 1) * (1 + overlap)`` starting every
      ``window * (1 - overlap)`` from ``t[0]``; ``overlap`` is a fraction of a bin (< 1). As in Tonic,
      the floor division means events in the last ``(t[-1] - t[0]) % n`` time units (always
      including the last event) fall after the final window and are not counted. Unlike Tonic, whose
      frames are all empty when the events span fewer than ``n`` time units, a window is at least
      one unit long.
    * ``time_window=w``: windows of ``w`` every ``w - overlap`` (``overlap`` in time units) from
      ``t[0]``; ``floor((duration - w) / stride) + 1`` of them (``ceil`` with
      ``include_incomplete``), at least one.

    A window ``[a, b)`` holds the events with ``a <= t < b``.
    """
    if (n_time_bins is None) == (time_window is None):
        raise ConfigError("give exactly one of n_time_bins and time_window")
    if n_time_bins is not None:
        if int(n_time_bins) < 1:
            raise ConfigError(f"n_time_bins must be >= 1, got {n_time_bins}")
        if not 0 <= overlap < 1:
            raise ConfigError(f"with n_time_bins, overlap is a fraction of a bin in [0, 1), got {overlap}")
        # at least one time unit: events spanning fewer units than bins filled no bin at all (Tonic's)
        window = max((t[-1] - t[0]) // int(n_time_bins), 1) * (1 + overlap)
        stride = window * (1 - overlap)
        starts = np.arange(int(n_time_bins)) * stride + t[0]
    else:
        if time_window <= 0:
            raise ConfigError(f"time_window must be > 0, got {time_window}")
        stride = time_window - overlap
        if stride <= 0:
            raise ConfigError(f"overlap ({overlap}) must be smaller than time_window ({time_window})")
        duration = t[-1] - t[0]
        rounding = np.ceil if include_incomplete else np.floor
        n_slices = max(int(rounding((duration - time_window) / stride) + 1), 1)
        window = time_window
        starts = np.arange(n_slices) * stride + t[0]
    return np.searchsorted(t, starts), np.searchsorted(t, starts + window)


def check_events(events: Any, *, sensor_size: Sequence[int], source: str | os.PathLike | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, t, on)`` of an event stream (as :func:`events_to_frames` takes it) that is not empty,
    has integer coordinates on the ``(W, H)`` sensor, finite non-decreasing timestamps and valid
    polarities; else a :class:`DataError` naming ``source``."""
    width, height = _sensor_wh(sensor_size)
    x, y, t, p = _fields(events, source)
    if x.shape[0] == 0:
        raise DataError(f"{_where(source)}the event stream is empty")
    x = _integer_coords(x, "x", width, source)
    y = _integer_coords(y, "y", height, source)
    if t.dtype.kind not in "iuf":
        raise DataError(f"{_where(source)}timestamps must be numeric, got dtype {t.dtype}")
    if t.dtype.kind == "f" and not np.all(np.isfinite(t)):
        raise DataError(f"{_where(source)}timestamps contain NaN or Inf")
    if t.dtype.kind == "u":
        t = t.astype(np.int64)
    backwards = np.flatnonzero(np.diff(t) < 0)
    if backwards.size:
        i = int(backwards[0])
        raise DataError(
            f"{_where(source)}timestamps are not sorted: event {i + 1} (t={t[i + 1]}) comes before "
            f"event {i} (t={t[i]}); {backwards.size} decreases in all"
        )
    return x, y, t, _on_flags(p, source)


def events_to_frames(
    events: Any,
    *,
    sensor_size: Sequence[int],
    n_time_bins: int | None = None,
    time_window: float | None = None,
    overlap: float = 0.0,
    include_incomplete: bool = False,
    polarity_order: str = "on_off",
    source: str | os.PathLike | None = None,
) -> torch.Tensor:
    """Count events per time bin, polarity and pixel: float32 ``[T, 2, H, W]``.

    ``events``: a structured array with fields ``x`` (column), ``y`` (row), ``t`` (timestamp, any
    unit, non-decreasing), ``p`` (bool, 0/1 or -1/1; True/1 = ON), e.g. Tonic's; or a dict of those
    arrays, or an ``(x, y, t, p)`` tuple. ``sensor_size``: ``(W, H)`` -- width first, as in Tonic
    (Tonic's ``(W, H, P)`` is accepted too). Exactly one of ``n_time_bins`` / ``time_window``; the
    bins are Tonic's (see :func:`time_bin_edges`). ``polarity_order``: ``"on_off"`` (channel 0 =
    ON, like ODG frames) or ``"off_on"`` (channel index = p, Tonic's order). ``source``: a file name
    for the error messages.

    Raises :class:`DataError` for an empty stream, coordinates outside the sensor, timestamps that
    decrease, or bad polarity values.
    """
    if polarity_order not in ("on_off", "off_on"):
        raise ConfigError(f"polarity_order must be 'on_off' or 'off_on', got {polarity_order!r}")
    width, height = _sensor_wh(sensor_size)
    x, y, t, on = check_events(events, sensor_size=sensor_size, source=source)
    channel = (~on if polarity_order == "on_off" else on).astype(np.int64)
    flat = (channel * height + y) * width + x

    starts, ends = time_bin_edges(t, n_time_bins=n_time_bins, time_window=time_window, overlap=overlap,
                                  include_incomplete=include_incomplete)
    frames = np.zeros((len(starts), 2 * height * width), dtype=np.float32)
    for i, (a, b) in enumerate(zip(starts.tolist(), ends.tolist())):
        if b > a:
            frames[i] = np.bincount(flat[a:b], minlength=2 * height * width)
    return torch.from_numpy(frames.reshape(len(starts), 2, height, width))


# ================================================================================================
# ES-ImageNet: samples, label files, dataset
# ================================================================================================

def write_es_sample(path: str | os.PathLike, sample: EventSample) -> None:
    """Write ``sample`` as a compressed ``.npz`` with uint8 ``pos`` / ``neg`` (released format).

    Written to a temporary file beside ``path`` and renamed, so ``path`` is never half-written.
    The height / width belong in the label file (:func:`write_label_file`).
    """
    if not isinstance(sample, EventSample):
        raise TypeError(f"write_es_sample needs an EventSample, got {type(sample).__name__}")
    for name, rows in (("pos", sample.pos), ("neg", sample.neg)):
        if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3:
            raise DataError(f"{path}: {name} must be uint8 [N, 3], got {rows.dtype} {tuple(rows.shape)}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, pos=sample.pos, neg=sample.neg)


#: The most bytes one array of a ``.npz`` may unpack to (a documented cap for readers without a
#: tighter bound of their own): ES-UCF101 clips are ~5 MB, ES-ImageNet samples at most 1.5 MB.
MAX_NPZ_ARRAY_BYTES = 256 << 20


def _npz_member_sizes(path: str | os.PathLike, archive: zipfile.ZipFile, names: Sequence[str],
                      max_bytes: int) -> None:
    """Refuse arrays that would unpack to more than ``max_bytes``, from the zip directory and the
    ``.npy`` headers alone (nothing is decompressed but the first bytes of each member)."""
    for name in names:
        info = archive.getinfo(f"{name}.npy")
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version not in ((1, 0), (2, 0)):
                raise DataError(f"{path}: array {name!r} uses .npy format {version}, not 1.0 or 2.0")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(fh, max_header_size=10000)
        if dtype.hasobject:
            raise DataError(f"{path}: array {name!r} holds Python objects (refused: .npz files are read without pickles)")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if nbytes > max_bytes:
            raise DataError(f"{path}: array {name!r} would unpack to {nbytes / 2**20:.0f} MiB "
                            f"(shape {tuple(shape)!s:.60}), more than the {max_bytes / 2**20:.1f} MiB allowed")
        if nbytes > info.file_size:
            raise DataError(f"{path}: array {name!r} is truncated: its header claims {nbytes} bytes, "
                            f"the archive holds {info.file_size}")


def npz_array_names(path: str | os.PathLike) -> list[str]:
    """The array names of a ``.npz`` file, from its zip directory alone; :class:`DataError` for a
    missing file or one that is not a zip archive."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        raise _unreadable(path, ".npz", exc) from None


def _unreadable(path: str | os.PathLike, what: str, exc: BaseException, limit: int = 150) -> DataError:
    text = " ".join(str(exc).split())[:limit]
    return DataError(f"{path}: not a readable {what} ({type(exc).__name__}: {text})")


def load_npz_arrays(path: str | os.PathLike, names: Sequence[str], *,
                    max_bytes: int = MAX_NPZ_ARRAY_BYTES) -> list[np.ndarray]:
    """The named arrays of a ``.npz`` file (no pickles); :class:`DataError` for a missing,
    truncated or corrupt file, a plain ``.npy``, a missing array, or an array that would unpack
    to more than ``max_bytes`` (checked from the headers before anything is decompressed)."""
    try:
        if not zipfile.is_zipfile(path):  # np.load would take it for a pickle, and advise allow_pickle
            with open(path, "rb") as fh:
                head = fh.read(16)
            kind = "a plain .npy array" if head.startswith(b"\x93NUMPY") else \
                f"no zip directory: truncated, or another format; it starts with {head!r}"
            raise DataError(f"{path}: not an .npz archive ({kind})")
        data = np.load(path, allow_pickle=False)
        with data:
            missing = [k for k in names if k not in data.files]
            if missing:
                raise DataError(f"{path}: missing array(s) {missing} (has {sorted(data.files)})")
            _npz_member_sizes(path, data.zip, names, max_bytes)
            return [data[k] for k in names]
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, NotImplementedError,
            RuntimeError, OverflowError, MemoryError, struct.error, SyntaxError) as exc:  # zipfile: unsupported version, encrypted
        raise _unreadable(path, ".npz", exc, 200) from None


def read_es_sample(
    path: str | os.PathLike,
    *,
    height: int = 254,
    width: int = 254,
    n_steps: int = 8,
) -> EventSample:
    """Read an ES-ImageNet ``.npz`` (uint8 ``pos``/``neg`` rows ``(row, col, t)``, t in 1..n_steps).

    ``height`` / ``width``: the resized image's size from the label file (the defaults mean a
    square 254x254 image, i.e. no centring shift). Raises :class:`DataError` for a missing,
    truncated or corrupt file, a missing key, a wrong dtype/shape, or ``t`` out of range.
    """
    # rows are distinct (row, col, t) with uint8 coordinates: at most 256 * 256 * n_steps of them
    pos, neg = load_npz_arrays(path, ("pos", "neg"), max_bytes=3 * 256 * 256 * max(int(n_steps), 1))
    for name, rows in (("pos", pos), ("neg", neg)):
        if rows.dtype != np.uint8:
            raise DataError(f"{path}: {name} must be uint8, got {rows.dtype}")
        if rows.ndim != 2 or rows.shape[1] != 3:
            raise DataError(f"{path}: {name} must have shape [N, 3] (row, col, t), got {tuple(rows.shape)}")
        if rows.shape[0] and (rows[:, 2].min() < 1 or rows[:, 2].max() > n_steps):
            raise DataError(f"{path}: {name} has t outside 1..{n_steps} "
                            f"({int(rows[:, 2].min())}..{int(rows[:, 2].max())})")
    return EventSample(pos=pos, neg=neg, height=int(height), width=int(width))


@dataclass(frozen=True)
class LabelEntry:
    """One label-file line: the sample's ``.npz`` path, its class, and the resized image's size."""

    path: Path
    label: int
    height: int
    width: int
    line: int


def read_label_file(
    label_file: str | os.PathLike,
    *,
    data_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> list[LabelEntry]:
    """Parse lines ``relative_path label height width`` (blank lines and ``#`` comments skipped).

    The path may contain spaces (the last three fields are split off). It is relative to
    ``data_dir`` (default: the label file's folder); a suffix other than ``.npz`` (the released
    dataset lists image names such as ``x.JPEG``) is replaced by ``.npz``. Raises
    :class:`DataError` naming the file and line for a wrong field count, a non-integer, a
    negative label, a size outside 1..65535, or (``check_files``) a missing sample file.
    """
    label_file = Path(label_file)
    base = Path(data_dir) if data_dir is not None else label_file.parent
    try:
        text = label_file.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is no part of a path
    except FileNotFoundError:
        raise DataError(f"{label_file}: label file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{label_file}: cannot read the label file ({exc})") from None
    entries: list[LabelEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 3)
        if len(fields) != 4:
            raise DataError(f"{label_file}:{number}: expected 'path label height width', got {len(fields)} "
                            f"field(s): {line!r}")
        rel, *numbers = fields
        try:
            label, height, width = (int(v) for v in numbers)
        except ValueError:
            raise DataError(f"{label_file}:{number}: label, height and width must be integers, got "
                            f"{' '.join(numbers)!r}") from None
        if label < 0:
            raise DataError(f"{label_file}:{number}: label must be >= 0, got {label}")
        if not (0 < height < 65536 and 0 < width < 65536):
            raise DataError(f"{label_file}:{number}: height/width must be positive, got {height} {width}")
        if Path(rel).name in ("", ".", "..") or rel.endswith(("/", "\\")):
            raise DataError(f"{label_file}:{number}: {rel!r:.100} does not name a sample file")
        if os.path.isabs(rel) or ".." in Path(rel.replace("\\", "/")).parts:
            raise DataError(f"{label_file}:{number}: sample path {rel!r:.100} leaves the dataset folder {base} "
                            "(absolute paths and '..' are refused)")
        path = base / rel
        if path.suffix.lower() != ".npz":
            path = path.with_suffix(".npz")
        if check_files and not path.is_file():
            raise DataError(f"{label_file}:{number}: sample file {path} not found")
        entries.append(LabelEntry(path=path, label=label, height=height, width=width, line=number))
    return entries


def check_label_folders(entries: Sequence[LabelEntry], label_file: str | os.PathLike) -> None:
    """Refuse a label file that disagrees with the class-folder layout of its samples.

    When the samples lie in two or more folders (``<class>/<sample>.npz``), every sample of a
    folder must carry the same label; a flat layout (one folder) is not checked. Raises
    :class:`DataError` naming both lines.
    """
    first: dict[Path, LabelEntry] = {}
    for entry in entries:
        first.setdefault(entry.path.parent, entry)
    if len(first) < 2:
        return
    for entry in entries:
        seen = first[entry.path.parent]
        if entry.label != seen.label:
            raise DataError(
                f"{label_file}:{entry.line}: {entry.path.name} has label {entry.label}, but line {seen.line} gives "
                f"label {seen.label} to {seen.path.name} in the same folder {entry.path.parent.name}/: the label "
                "file disagrees with the class folders"
            )


def write_label_file(label_file: str | os.PathLike, entries: Sequence[tuple[str, int, int, int]]) -> None:
    """Write ``relative_path label height width`` lines atomically (paths use ``/``)."""
    lines = []
    for rel, label, height, width in entries:
        rel = str(rel).replace(os.sep, "/")
        if "\n" in rel or rel != rel.strip():
            raise DataError(f"{label_file}: cannot store the path {rel!r} in a label file")
        lines.append(f"{rel} {int(label)} {int(height)} {int(width)}\n")
    atomic_write_text(label_file, "".join(lines))


def es_imagenet_splits(root: Path) -> dict[str, tuple[Path, Path | None]]:
    """``{"train": (label file, data dir), "val": ...}`` of an ES-ImageNet root: the released
    layout (``trainlabel.txt`` + ``train/``, ``vallabel.txt`` + ``val/``) or ours
    (``train/labels.txt`` + ``val/labels.txt``, what ``spikebridge convert odg`` writes per split)."""
    if (root / "trainlabel.txt").is_file():
        val = "val" if (root / "vallabel.txt").is_file() else "test"
        if (root / f"{val}label.txt").is_file():
            return {"train": (root / "trainlabel.txt", root / "train"), "val": (root / f"{val}label.txt", root / val)}
    elif (root / "train" / "labels.txt").is_file():
        val = next((root / n for n in VAL_SPLIT_NAMES if (root / n / "labels.txt").is_file()), None)
        if val is not None:
            return {"train": (root / "train" / "labels.txt", None), "val": (val / "labels.txt", None)}
        there = next((root / n for n in VAL_SPLIT_NAMES if (root / n).is_dir()), None)
        if there is not None:
            raise DataError(f"{root}: {there / 'labels.txt'} not found (train/labels.txt is there): label file not found")
    raise DataError(f"{root}: not an ES-ImageNet root with a train and a val split (expected trainlabel.txt + "
                    "vallabel.txt, or train/labels.txt + val/labels.txt)")


#: what ``spikebridge convert`` records of a conversion, beside its labels.txt
CONVERSION_FILE = "conversion.json"


def conversion_frame(folder: Path) -> dict[str, Any]:
    """The ``events_to_dense`` frame of samples converted into ``folder`` at another ``--size``
    (its ``conversion.json``): the window of that size, not ES-ImageNet's 224 canvas around a
    small image; ES-ImageNet's own frame (no arguments) otherwise."""
    try:
        record = json.loads((folder / CONVERSION_FILE).read_text(encoding="utf-8"))
        kwargs = record["odg_kwargs"] if record.get("kind") == "odg" else {}
        size = int(kwargs.get("size", ES_IMAGENET_SIZE))
        lo, hi = (int(v) for v in kwargs.get("window", ES_IMAGENET_WINDOW))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}
    if size == ES_IMAGENET_SIZE or not 0 <= lo < hi:
        return {}
    return {"canvas": max(hi, size + 4), "crop": (lo, hi), "size": size}


class ESImageNetDataset(Dataset):
    """ES-ImageNet samples as ``(frames float32 [8, 2, 224, 224], label int)``.

    ``root_or_label_file``: a label file (``relative_path label height width``; paths relative to
    ``data_dir``, default its own folder), a folder holding ``labels.txt`` (what ``spikebridge
    convert odg`` writes), or the released dataset's root (``<split>label.txt`` with paths relative
    to ``<split>/``, image suffixes read as ``.npz``; ``split``: ``"train"`` or ``"val"``).

    Frames follow arXiv:2203.01158 step 5 (:func:`~spikebridge.data.odg.events_to_dense`), time-major,
    channel 0 = ON. ``transform`` is applied to the frames. ``check_files`` checks at construction
    that every listed file exists (turn it off for very large sets on slow file systems).
    """

    def __init__(
        self,
        root_or_label_file: str | os.PathLike,
        *,
        split: str = "train",
        transform: Callable[[torch.Tensor], Any] | None = None,
        check_files: bool = True,
        data_dir: str | os.PathLike | None = None,
    ) -> None:
        root = Path(root_or_label_file)
        if root.is_file():
            label_file, data_dir = root, (Path(data_dir) if data_dir is not None else None)
        elif (root / "labels.txt").is_file():
            label_file, data_dir = root / "labels.txt", None
        elif (root / f"{split}label.txt").is_file():
            label_file, data_dir = root / f"{split}label.txt", root / split
        else:
            raise DataError(f"{root}: no label file found (expected a label file, {root / 'labels.txt'}, "
                            f"or the released layout {root / (split + 'label.txt')} with {root / split}/)")
        self.label_file = label_file
        self.entries = read_label_file(label_file, data_dir=data_dir, check_files=check_files)
        check_label_folders(self.entries, label_file)
        self.transform = transform
        self.frame = conversion_frame(label_file.parent)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    @property
    def num_classes(self) -> int:
        return max(self.labels, default=-1) + 1

    def __getitem__(self, index: int) -> tuple[Any, int]:
        entry = self.entries[index]
        try:
            sample = read_es_sample(entry.path, height=entry.height, width=entry.width)
        except DataError as exc:
            raise DataError(f"{exc} (listed at {self.label_file}:{entry.line})") from None
        frames = events_to_dense(sample, dtype=torch.float32, **self.frame)
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, entry.label


# ================================================================================================
# N-MNIST / N-Caltech101 .bin
# ================================================================================================

def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


#: N-MNIST's sensor (W, H); other ``.bin`` recordings (N-Caltech101) are sized by their events.
NMNIST_SENSOR = (34, 34)


def read_nmnist_bin(path: str | os.PathLike, *, sensor_size: Sequence[int] | None = NMNIST_SENSOR) -> np.ndarray:
    """Read an N-MNIST / N-Caltech101 ``.bin`` file (Orchard et al.'s 40-bit events).

    Per event 5 bytes: byte 0 = x, byte 1 = y, byte 2 bit 7 = polarity (1 = ON), then a 23-bit
    timestamp in µs (byte 2 bits 6..0, byte 3, byte 4; big-endian). An event with ``y == 240`` is
    a timestamp-overflow marker: it is dropped and 2**13 µs added to all later timestamps, as the
    dataset authors' reader (and Tonic) do. ``sensor_size``: ``(W, H)`` to check coordinates
    against (N-MNIST 34x34; pass ``None`` to skip, e.g. for N-Caltech101). Returns
    :data:`EVENT_DTYPE` events.
    """
    raw = _read_bytes(path)
    if len(raw) % 5:
        raise DataError(f"{path}: {len(raw)} bytes is not a whole number of 5-byte N-MNIST events "
                        "(truncated file?)")
    data = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = data[:, 0], data[:, 1]
    p = (data[:, 2] >> 7) & 1
    t = ((data[:, 2] & 0x7F) << 16) | (data[:, 3] << 8) | data[:, 4]
    overflow = y == 240
    if overflow.any():
        t = t + np.cumsum(overflow) * (2 ** 13)
        keep = ~overflow
        x, y, t, p = x[keep], y[keep], t[keep], p[keep]
    if sensor_size is not None:
        width, height = _sensor_wh(sensor_size)
        bad = (x >= width) | (y >= height)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: not an N-MNIST file: event {i} at x={int(x[i])}, y={int(y[i])} lies "
                            f"outside the {width}x{height} sensor")
    return make_events(x, y, t, p)


# ================================================================================================
# AEDAT 2.0 and 3.1
# ================================================================================================

#: Sensor size (W, H) of the address formats :func:`read_aedat` decodes for AEDAT 2.0 files.
AEDAT2_SENSORS: Mapping[str, tuple[int, int]] = {"dvs128": (128, 128), "davis240": (240, 180)}


#: sensors (W, H) by the chip names AEDAT headers carry (jAER's ``# AEChip:``, cAER's
#: ``#Source 1:``), and the known sizes a header without one is matched to, smallest first
CHIP_SENSORS: Mapping[str, tuple[int, int]] = {"dvs128": (128, 128), "davis240": (240, 180), "davis346": (346, 260),
                                               "dvxplorer": (640, 480), "davis640": (640, 480)}


def _header_sensor(header: bytes) -> tuple[int, int] | None:
    """The sensor of the chip an AEDAT header names, if it names one."""
    text = header.decode("latin-1").lower().replace("_", "")
    return next((size for chip, size in CHIP_SENSORS.items() if chip in text), None)


def smallest_sensor(events: np.ndarray) -> tuple[int, int]:
    """The smallest known sensor (:data:`CHIP_SENSORS`) holding every event, else the events'
    own extent: a recording that names no chip (a dataset takes the largest of its recordings')."""
    if not len(events):
        return CHIP_SENSORS["dvs128"]
    extent = (int(events["x"].max()) + 1, int(events["y"].max()) + 1)
    fits = [size for size in CHIP_SENSORS.values() if size[0] >= extent[0] and size[1] >= extent[1]]
    return min(fits, key=lambda size: size[0] * size[1]) if fits else extent


def _split_header(raw: bytes, path: str | os.PathLike) -> tuple[str, int]:
    """(version string, offset of the first data byte). Header lines start with ``#``."""
    if not raw.startswith(b"#!AER-DAT"):
        raise DataError(f"{path}: not an AEDAT file (it must start with '#!AER-DAT', got {raw[:12]!r})")
    first_end = raw.find(b"\n")
    if first_end < 0:
        raise DataError(f"{path}: AEDAT header line is not terminated")
    version = raw[len(b"#!AER-DAT"):first_end].strip().decode("ascii", "replace")
    pos = 0
    while pos < len(raw) and raw[pos:pos + 1] == b"#":
        end = raw.find(b"\n", pos)
        if end < 0:
            raise DataError(f"{path}: AEDAT header is not terminated (truncated file?)")
        line = raw[pos:end]
        pos = end + 1
        if line.rstrip(b"\r") == b"#!END-HEADER":
            break
    return version, pos


#: DVS128 (x field, y field) -> (x, y) per ``orientation`` of :func:`read_aedat` ("cifar10dvs":
#: SpikingJelly's reading of CIFAR10-DVS, transposed and mirrored).
_DVS128_ORIENTATIONS: Mapping[str, Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    "raw": lambda x, y: (x, y), "jaer": lambda x, y: (127 - x, y), "cifar10dvs": lambda x, y: (127 - y, 127 - x)}


def read_aedat(
    path: str | os.PathLike,
    *,
    camera: str = "auto",
    orientation: str = "jaer",
) -> np.ndarray:
    """Read polarity events from an AEDAT 2.0 or 3.1 file -> :data:`EVENT_DTYPE` events.

    **AEDAT 2.0** (``#!AER-DAT2.0`` header lines starting with ``#``, then big-endian pairs of
    uint32 address and uint32 timestamp in µs). ``camera`` selects the address layout (``"auto"``,
    the default: ``"davis240"`` when any address sets bits 16-30, which a DVS128 address never
    does, else ``"dvs128"``):

    * ``"dvs128"`` (DVS128; CIFAR10-DVS, DVS128-era recordings), 128x128: bit 0 = polarity
      (0 = ON, 1 = OFF, as jAER decodes it), bits 1-7 = x field, bits 8-14 = y field; addresses
      with bit 15 or bit 31 set are jAER's sync / special events and are dropped.
      ``orientation``: ``"raw"`` gives x = (addr >> 1) & 0x7F, y = (addr >> 8) & 0x7F;
      ``"jaer"`` (default) mirrors x as jAER does (x = 127 - field; y counts from the bottom);
      ``"cifar10dvs"`` gives SpikingJelly's CIFAR10-DVS reading, x = 127 - y field,
      y = 127 - x field (a transposed, upright image).
    * ``"davis240"`` (DAVIS240 AEDAT 2.0), 240x180: bit 31 = 0 and bit 10 = 0 mark a polarity event
      (APS/IMU samples and external-input events are dropped), y = bits 22-30, x = bits 12-21,
      polarity = bit 11 (1 = ON).

    **AEDAT 3.x** (``#!AER-DAT3.1``, header ending ``#!END-HEADER``, then packets of a 28-byte
    little-endian header: type, source (int16), event size, timestamp offset, timestamp
    overflow, capacity, number, valid (int32)). Polarity packets (type 1, 8-byte events: uint32
    data with bit 0 = valid, bit 1 = polarity (1 = ON), bits 2-16 = y, bits 17-31 = x; int32
    timestamp) are decoded, timestamps widened with the packet's overflow counter; invalid events
    and other packet types are skipped. ``camera``/``orientation`` do not apply.

    Raises :class:`DataError` for a wrong magic, unsupported version, or truncated data.
    """
    return _read_aedat(path, camera, orientation)[1]


def _read_aedat(path: str | os.PathLike, camera: str, orientation: str) -> tuple[str, np.ndarray, tuple[int, int]]:
    """(version, events, sensor (W, H)) of an AEDAT 2.0 / 3.x / 4.0 file (see :func:`read_aedat`)."""
    raw = _read_bytes(path)
    version, start = _split_header(raw, path)
    if version.startswith("4."):
        events, sensor = read_aedat4(path)
        return version, events, sensor if min(sensor) > 0 else AEDAT2_SENSORS["dvs128"]
    named = _header_sensor(raw[:start])
    if version.startswith("2."):
        davis = named if named is not None and named[0] > 128 else AEDAT2_SENSORS["davis240"]
        events, camera = _read_aedat2_body(raw, start, path, camera, orientation, davis)
        return version, events, davis if camera == "davis240" else AEDAT2_SENSORS[camera]
    if version.startswith("3."):
        events = _read_aedat3_body(raw, start, path)
        return version, events, named or smallest_sensor(events)
    raise DataError(f"{path}: AEDAT version {version!r} is not supported (2.0, 3.x and 4.0 are)")


def read_event_file(path: str | os.PathLike, *, orientation: str = "jaer") -> tuple[str, np.ndarray, tuple[int, int]]:
    """(format name, events, sensor (W, H)) of a DVS recording by its suffix: ``.bin`` (N-MNIST;
    ``n-mnist-bin``), ``.npy`` (DVS-Gesture; ``dvs-gesture-npy``), else AEDAT (``aedat-2.0``,
    ``aedat-3.1``, ``aedat-4.0``; ``orientation`` applies to DVS128 files, see :func:`read_aedat`)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".bin":
        events = read_nmnist_bin(path, sensor_size=None)
        width, height = NMNIST_SENSOR
        big = len(events) and (int(events["x"].max()) >= width or int(events["y"].max()) >= height)
        return "n-mnist-bin", events, AEDAT2_SENSORS["davis240"] if big else NMNIST_SENSOR
    if suffix == ".npy":
        return "dvs-gesture-npy", read_gesture_npy(path), DVS_GESTURE_SENSOR
    version, events, sensor = _read_aedat(path, "auto", orientation)
    return f"aedat-{version}", events, sensor


#: The one line said when an ``.aedat4`` file is read without the optional ``aedat`` package.
AEDAT4_EXTRA_HINT = "reading .aedat4 needs the optional extra: pip install 'spikebridge[aedat4]' (the aedat package)"


def read_aedat4(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int]]:
    """Read the first event stream of an AEDAT 4.0 file -> (:data:`EVENT_DTYPE` events, sensor (W, H)).

    AEDAT 4.0 (DV, dv-processing; Tonic's CIFAR10-DVS) is a ``#!AER-DAT4.0`` line, an IOHeader
    flatbuffer (compression, XML stream description) and flatbuffer packets, uncompressed or
    LZ4/Zstd-compressed. They are decoded by the MIT-licensed ``aedat`` package (``pip install
    'spikebridge[aedat4]'``); without it a :class:`DataError` names that extra. Coordinates are
    taken as stored (no reorientation), timestamps in µs.
    """
    try:
        import aedat
    except ImportError:
        raise DataError(f"{str(path)[:100]}: {AEDAT4_EXTRA_HINT}") from None
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found")
    try:
        decoder = aedat.Decoder(os.fspath(path))
        streams = {i: s for i, s in decoder.id_to_stream().items() if s.get("type") == "events"}
        if not streams:
            raise DataError(f"{path}: the AEDAT 4 file holds no event stream")
        stream = min(streams)
        chunks = [packet["events"] for packet in decoder if packet["stream_id"] == stream and "events" in packet]
    except DataError:
        raise
    except BaseException as exc:  # the decoder's errors; a Rust panic is pyo3's PanicException, a BaseException
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise  # Ctrl-C, SystemExit
        raise _unreadable(path, "AEDAT 4 file", exc) from None
    width, height = int(streams[stream].get("width", 0)), int(streams[stream].get("height", 0))
    if not chunks:
        return np.empty(0, dtype=EVENT_DTYPE), (width, height)
    ev = np.concatenate(chunks)
    out = make_events(ev["x"], ev["y"], ev["t"].astype(np.int64), ev["on"])
    if width > 0 and height > 0 and len(out) and (out["x"].max() >= width or out["y"].max() >= height):
        raise DataError(f"{path}: events lie outside the {width}x{height} sensor the file declares")
    return out, (width, height)


#: Said of a structured (x, y, t, p) event array found on disk (Tonic's in-memory form).
STRUCTURED_EVENTS_HINT = ("holds a structured (x, y, t, p) event array (Tonic's in-memory form), which spikebridge does "
                          "not read from disk: bin it with spikebridge.data.events.events_to_frames in your own "
                          "Dataset (README, 'A Tonic dataset'), or give the recordings in their own format")


#: DVS-Gesture's classes in label order (the ``<label>.npy`` file names of Tonic's layout).
DVS_GESTURE_CLASSES = ("hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
                       "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
                       "arm_roll", "air_drums", "air_guitar", "other_gestures")
DVS_GESTURE_SENSOR = (128, 128)


def read_gesture_npy(path: str | os.PathLike) -> np.ndarray:
    """Read a DVS-Gesture sample as Tonic stores it (``ibmGestureTrain/user01_fluorescent/3.npy``):
    a numeric ``[N, 4]`` array of columns x, y, p, t with t in ms. Returns :data:`EVENT_DTYPE`
    events with t in µs (x 1000, as Tonic does)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise _unreadable(path, ".npy", exc) from None
    if isinstance(arr, np.ndarray) and arr.dtype.names is not None:
        raise DataError(f"{path}: {STRUCTURED_EVENTS_HINT}")
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 4 or arr.dtype.kind not in "iuf":
        raise DataError(f"{path}: a DVS-Gesture sample is a numeric [N, 4] array (x, y, p, t in ms), got "
                        f"{getattr(arr, 'dtype', '?')} {getattr(arr, 'shape', '?')}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise DataError(f"{path}: the DVS-Gesture sample holds NaN or Inf")
    width, height = DVS_GESTURE_SENSOR
    x, y = _integer_coords(arr[:, 0], "x", width, path), _integer_coords(arr[:, 1], "y", height, path)
    on = _on_flags(arr[:, 2], path)
    t_ms = arr[:, 3].astype(np.float64)
    if len(t_ms) and (t_ms.min() < 0 or t_ms.max() >= 2 ** 53 / 1000):  # the µs would not fit
        raise DataError(f"{path}: DVS-Gesture timestamps must lie in [0, 2**53 / 1000) ms, got "
                        f"{t_ms.min():.6g}..{t_ms.max():.6g}")
    return make_events(x, y, np.round(t_ms * 1000).astype(np.int64), on)


def _read_aedat2_body(raw: bytes, start: int, path: str | os.PathLike, camera: str, orientation: str,
                      davis: tuple[int, int] = (240, 180)) -> tuple[np.ndarray, str]:
    """(events, the camera whose layout decoded them); ``davis``: the DAVIS sensor (W, H) the
    header names (jAER writes DAVIS346 recordings in DAVIS240's address layout)."""
    if camera not in (*AEDAT2_SENSORS, "auto"):
        raise ConfigError(f"camera must be one of auto, {', '.join(sorted(AEDAT2_SENSORS))}, got {camera!r}")
    if orientation not in _DVS128_ORIENTATIONS:
        raise ConfigError(f"orientation must be 'raw', 'jaer' or 'cifar10dvs', got {orientation!r}")
    body = len(raw) - start
    if body % 8:
        raise DataError(f"{path}: AEDAT 2.0 data is {body} bytes, not a whole number of 8-byte events "
                        "(truncated file?)")
    records = np.frombuffer(raw, dtype=np.dtype([("addr", ">u4"), ("t", ">u4")]), offset=start)
    addr = records["addr"].astype(np.int64)
    t = records["t"].astype(np.int64)
    if camera == "auto":
        camera = "davis240" if (addr & 0x7FFF0000).any() else "dvs128"
    if camera == "dvs128":
        polarity = (addr & 0x80008000) == 0  # jAER: bit 15 / bit 31 mark sync and special events
        addr, t = addr[polarity], t[polarity]
        x, y = _DVS128_ORIENTATIONS[orientation]((addr >> 1) & 0x7F, (addr >> 8) & 0x7F)
        on = (addr & 1) == 0  # jAER: polarity bit 0 = ON, 1 = OFF
    else:  # jAER's DAVIS: bit 31 set = APS / IMU sample, bit 10 set = external input (trigger) event
        dvs = ((addr >> 31) == 0) & ((addr & 0x400) == 0)
        addr, t = addr[dvs], t[dvs]
        x, y, on = (addr >> 12) & 0x3FF, (addr >> 22) & 0x1FF, ((addr >> 11) & 1) == 1
        width, height = davis
        bad = (x >= width) | (y >= height)
        if bad.any():
            raise DataError(f"{path}: {int(bad.sum())} DAVIS events lie outside the {width}x{height} sensor "
                            "(its header names no larger DAVIS chip)")
    return make_events(x, y, t, on), camera


_AEDAT3_HEADER = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("ts_offset", "<i4"),
                           ("ts_overflow", "<i4"), ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])
_AEDAT3_POLARITY = np.dtype([("data", "<u4"), ("t", "<i4")])


def _read_aedat3_body(raw: bytes, start: int, path: str | os.PathLike) -> np.ndarray:
    chunks: list[np.ndarray] = []
    pos = start
    while pos < len(raw):
        if len(raw) - pos < _AEDAT3_HEADER.itemsize:
            raise DataError(f"{path}: truncated AEDAT 3 packet header at byte {pos}")
        head = np.frombuffer(raw, dtype=_AEDAT3_HEADER, count=1, offset=pos)[0]
        size, capacity, number = int(head["size"]), int(head["capacity"]), int(head["number"])
        if size <= 0 or capacity < 0 or not 0 <= number <= capacity or not 0 <= int(head["ts_offset"]) <= size - 4:
            raise DataError(f"{path}: corrupt AEDAT 3 packet header at byte {pos} (size {size}, capacity "
                            f"{capacity}, number {number})")
        pos += _AEDAT3_HEADER.itemsize
        length = size * capacity
        if len(raw) - pos < length:
            raise DataError(f"{path}: truncated AEDAT 3 packet at byte {pos}: needs {length} bytes, "
                            f"{len(raw) - pos} left")
        if int(head["type"]) == 1:
            if size != 8:
                raise DataError(f"{path}: AEDAT 3 polarity events must be 8 bytes, got {size}")
            ev = np.frombuffer(raw, dtype=_AEDAT3_POLARITY, count=capacity, offset=pos)
            data = ev["data"].astype(np.int64)
            valid = (data & 1) == 1
            t = (int(head["ts_overflow"]) << 31) | ev["t"].astype(np.int64)
            chunks.append(make_events((data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF, t, (data >> 1) & 1)[valid])
        pos += length
    if not chunks:
        return np.empty(0, dtype=EVENT_DTYPE)
    return np.concatenate(chunks)
