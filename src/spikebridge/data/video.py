"""Video -> events (ES-UCF101, arXiv:2203.01158 "ES-UCF101: event streams from video").

A clip is a folder of frame images (UCF101 ``jpegs_256``: ``class/clip/frame000001.jpg``), sorted
by name in natural order (``frame9`` before ``frame10``). ``n_frames`` (31) of them are sampled
evenly, converted to greyscale in [0, 1], and the ``n_frames - 1`` (30) differences of consecutive
samples become events:

* ``mode="percentile"`` (default): per clip, ON where the difference is strictly above the
  clip's ``upper`` (92.5th) percentile of all differences, OFF where strictly below its ``lower``
  (7.5th) percentile -- an event ratio of about 0.15.
* ``mode="random"``: per pixel (fixed over the clip) an ON threshold drawn from ``N(upper
  percentile, noise_std)`` and an OFF one from ``N(lower percentile, noise_std)`` (``noise_std`` =
  0.03), clipped to ``|threshold| >= min_threshold`` (0.01) with the natural sign; draws from ``rng``.

Stored as uint8 ``[2, T, H, W]`` (channel 0 = ON, 1 = OFF; T = 30) in a compressed ``.npz``
under the key ``events``; the authors' script's files (the one array ``arr_0``, uint8 or bool, in
class folders or a flat folder of ``v_<Class>_g08_c01.npz``) read the same.
:class:`ESUCF101Dataset` returns time-major float frames ``[T, 2, H, W]``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..utils import atomic_path
from .events import load_npz_arrays, npz_array_names
from .folders import open_image

#: File suffixes taken as frames / images (compared lower-case).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: The most frames sampled per clip (the paper: 31); memory grows with frames x pixels.
MAX_FRAMES = 1000
#: The most bytes one clip's conversion may hold: float32 frames and differences plus uint8
#: events, ~10 bytes per sampled pixel (31 UCF101 frames of 256 x 342: 27 MB).
MAX_CLIP_BYTES = 2 << 30


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs numerically: ``frame9 < frame10``."""
    parts = re.split(r"(\d+)", name)
    return tuple((0, int(p), p) if p.isdigit() else (1, 0, p.lower()) for p in parts) + (name,)


def list_frames(clip_dir: str | os.PathLike) -> list[Path]:
    """The clip's frame files (visible files with an image suffix), in natural name order."""
    clip_dir = Path(clip_dir)
    if not clip_dir.is_dir():
        raise DataError(f"{clip_dir}: clip folder not found")
    files = [p for p in clip_dir.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def sample_indices(n_available: int, n_frames: int = 31) -> np.ndarray:
    """``n_frames`` indices spread evenly over ``0 .. n_available-1`` (rounded ``linspace``).

    A clip shorter than ``n_frames`` repeats frames (their differences are 0: no events).
    """
    if n_available < 1:
        raise DataError("a clip needs at least one frame")
    return np.rint(np.linspace(0, n_available - 1, n_frames)).astype(np.int64)


#: How the ANN's RGB frames are picked from a clip (:func:`rgb_frame_indices`)
RGB_SAMPLINGS = ("first", "even")


def rgb_frame_indices(n_available: int, steps: int, sampling: str = "first") -> np.ndarray:
    """Indices (into the sorted frames) of the ``steps`` RGB frames an ANN reads from a clip.

    * ``"first"`` (default, the authors' code, arXiv:2203.01158 ES-UCF101): the raw frames
      ``1..steps`` (indices ``0..steps-1``); a shorter clip repeats its last frame.
    * ``"even"``: the first ``steps`` of the 31 frames spread evenly over the clip
      (:func:`sample_indices`), i.e. the frames the event frames ``1..steps`` are made from: the
      ANN then sees the same span of the clip as the event SNN, which the reference does not do.
    """
    if n_available < 1:
        raise DataError("a clip needs at least one frame")
    if sampling == "first":
        return np.minimum(np.arange(steps, dtype=np.int64), n_available - 1)
    if sampling == "even":
        return sample_indices(n_available)[:steps]
    raise ConfigError(f"RGB frame sampling must be one of {', '.join(RGB_SAMPLINGS)}, got {str(sampling)[:40]!r}")


def load_clip(clip_dir: str | os.PathLike, *, n_frames: int = 31) -> np.ndarray:
    """Load ``n_frames`` evenly sampled frames as float32 greyscale ``[n_frames, H, W]`` in [0, 1].

    Greyscale is PIL's ``convert("L")`` (ITU-R 601 luma), divided by 255. Raises
    :class:`DataError` for an empty folder, an unreadable frame or frames of different sizes.
    """
    check_n_frames(n_frames)
    frames = list_frames(clip_dir)
    if not frames:
        raise DataError(f"{clip_dir}: no frame images ({', '.join(IMAGE_SUFFIXES)}) in the clip folder")
    out: list[np.ndarray] = []
    for index in sample_indices(len(frames), n_frames):
        path = frames[int(index)]
        with open_image(path) as im:
            if not out and n_frames * im.width * im.height * 10 > MAX_CLIP_BYTES:
                raise DataError(f"{path}: {n_frames} frames of {im.width}x{im.height} need about "
                                f"{n_frames * im.width * im.height * 10 / 2**30:.1f} GiB to convert, more than "
                                f"{MAX_CLIP_BYTES / 2**30:.0f} GiB; sample fewer frames")
            grey = np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0)
        if out and grey.shape != out[0].shape:
            raise DataError(f"{path}: frame size {grey.shape} differs from the clip's {out[0].shape}")
        out.append(grey)
    return np.stack(out)


def check_n_frames(n_frames: Any) -> int:
    """``n_frames`` as an int in 2..:data:`MAX_FRAMES`; :class:`ConfigError` otherwise."""
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or not 2 <= n_frames <= MAX_FRAMES:
        raise ConfigError(f"n_frames must be an integer in 2..{MAX_FRAMES}, got {n_frames!r:.40}")
    return int(n_frames)


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def frames_to_events(
    frames: np.ndarray,
    *,
    mode: str = "percentile",
    upper: float = 92.5,
    lower: float = 7.5,
    noise_std: float = 0.03,
    min_threshold: float = 0.01,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Greyscale frames float ``[N, H, W]`` in [0, 1] -> uint8 events ``[2, N-1, H, W]`` (ON, OFF).

    See the module docstring for ``mode`` (``"percentile"`` / ``"random"``); ``upper``/``lower``
    are percentiles (0..100) of all the clip's differences; ``noise_std``, ``min_threshold`` and
    ``rng`` (a ``numpy.random.Generator`` or a seed) only matter for ``"random"``.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or frames.shape[0] < 2:
        raise DataError(f"expected greyscale frames [N >= 2, H, W], got shape {tuple(frames.shape)}")
    if not 0 <= lower <= upper <= 100:
        raise ConfigError(f"need 0 <= lower <= upper <= 100, got lower={lower!r:.40}, upper={upper!r:.40}")
    diffs = frames[1:] - frames[:-1]
    hi, lo = np.percentile(diffs, [upper, lower])
    if mode == "percentile":
        on_thr, off_thr = np.float32(hi), np.float32(lo)
    elif mode == "random":
        if not (np.isfinite(noise_std) and np.isfinite(min_threshold) and noise_std >= 0 and min_threshold >= 0):
            raise ConfigError(f"noise_std and min_threshold must be finite and >= 0, got {noise_std!r:.40}, "
                              f"{min_threshold!r:.40}")
        gen = _as_rng(rng)
        shape = diffs.shape[1:]
        on_thr = np.maximum(gen.normal(hi, noise_std, shape), min_threshold).astype(np.float32)
        off_thr = np.minimum(gen.normal(lo, noise_std, shape), -min_threshold).astype(np.float32)
    else:
        raise ConfigError(f"mode must be 'percentile' or 'random', got {mode!r}")
    events = np.empty((2,) + diffs.shape, dtype=np.uint8)
    np.greater(diffs, on_thr, out=events[0], casting="unsafe")
    np.less(diffs, off_thr, out=events[1], casting="unsafe")
    return events


def clip_to_events(clip_dir: str | os.PathLike, *, n_frames: int = 31, **kwargs: Any) -> np.ndarray:
    """A clip folder -> uint8 events ``[2, n_frames-1, H, W]`` (:func:`load_clip` then
    :func:`frames_to_events` with ``kwargs``)."""
    return frames_to_events(load_clip(clip_dir, n_frames=n_frames), **kwargs)


def write_video_events(path: str | os.PathLike, events: np.ndarray) -> None:
    """Store uint8 ``[2, T, H, W]`` events as a compressed ``.npz`` (key ``events``), atomically."""
    events = np.asarray(events)
    if events.dtype != np.uint8 or events.ndim != 4 or events.shape[0] != 2:
        raise DataError(f"{path}: video events must be uint8 [2, T, H, W], got {events.dtype} {events.shape}")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, events=events)


#: Array names of a video-events ``.npz``: ours, then the authors' script's (``np.savez_compressed``
#: with one unnamed array).
VIDEO_EVENT_KEYS = ("events", "arr_0")
#: A UCF101 clip name: ``v_<Class>_g<group>_c<clip>`` (the class of a flat folder's clips).
UCF101_CLIP_NAME = re.compile(r"^v_(?P<cls>[A-Za-z0-9]+)_g\d+_c\d+$")


def read_video_events(path: str | os.PathLike) -> np.ndarray:
    """Read uint8 ``[2, T, H, W]`` video events (key ``events``, or the authors' ``arr_0``, uint8 or
    bool); :class:`DataError` on anything malformed."""
    names = npz_array_names(path)
    key = next((k for k in VIDEO_EVENT_KEYS if k in names), VIDEO_EVENT_KEYS[0])
    (events,) = load_npz_arrays(path, (key,))
    if events.dtype.names is not None:
        from .events import STRUCTURED_EVENTS_HINT  # local: events imports odg, keep video standalone

        raise DataError(f"{path}: {key!r} {STRUCTURED_EVENTS_HINT}")
    if events.dtype == np.bool_:
        events = events.astype(np.uint8)
    if events.dtype != np.uint8 or events.ndim != 4 or events.shape[0] != 2:
        raise DataError(f"{path}: {key!r} must be uint8 [2, T, H, W], got {events.dtype} {tuple(events.shape)}")
    if events.max(initial=0) > 1:
        raise DataError(f"{path}: {key!r} must be binary (0/1)")
    return events


def flat_clip_items(root: Path) -> list[tuple[Path, int]]:
    """A flat folder of UCF101-named ``.npz`` clips -> ``(path, label)``, classes in sorted order;
    :class:`DataError` naming the first clip whose name carries no class."""
    files = sorted((f for f in root.glob("*.npz") if not f.name.startswith(".")), key=lambda p: natural_key(p.name))
    classes = []
    for f in files:
        match = UCF101_CLIP_NAME.match(f.stem)
        if match is None:
            raise DataError(f"{f}: a flat ES-UCF101 folder needs UCF101 clip names (v_<Class>_g08_c01.npz) "
                            "to take the class from; or put the clips in class folders")
        classes.append(match["cls"])
    index = {name: i for i, name in enumerate(sorted(set(classes)))}
    return [(f, index[c]) for f, c in zip(files, classes)]


class ESUCF101Dataset(Dataset):
    """ES-UCF101 clips as ``(frames float32 [T, 2, H, W], label int)`` (time-major, ON first).

    ``root``: a folder with ``labels.txt`` (``relative_path label height width`` lines, as
    :func:`~spikebridge.data.convert.convert_video_folder` writes), or else class folders of
    ``.npz`` clips (class index = sorted folder order), or one flat folder of UCF101-named clips
    (``v_<Class>_g08_c01.npz``; class index = sorted class names). ``n_steps``: keep only the first ``n_steps``
    of the 30 steps (the paper uses 15). ``transform`` is applied to the frames.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        n_steps: int | None = None,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        from .events import check_label_folders, read_label_file  # local: events imports odg, keep video standalone

        root = Path(root)
        if n_steps is not None and n_steps < 1:
            raise ConfigError(f"n_steps must be >= 1, got {n_steps}")
        if (root / "labels.txt").is_file():
            entries = read_label_file(root / "labels.txt")
            check_label_folders(entries, root / "labels.txt")
            self.items = [(e.path, e.label) for e in entries]
        elif root.is_dir():
            # a folder without clips is no class (UCF101's ucfTrainTestlist/ beside the class folders)
            classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                             and any(p.glob("*.npz")))
            self.items = [(f, label) for label, name in enumerate(classes)
                          for f in sorted((root / name).glob("*.npz"), key=lambda p: natural_key(p.name))]
            if not classes:  # the authors' flat folder of v_<Class>_g.._c...npz clips
                self.items = flat_clip_items(root)
        else:
            raise DataError(f"{root}: dataset folder not found")
        if not self.items:
            raise DataError(f"{root}: no .npz clips found")
        self.n_steps = n_steps
        self.transform = transform
        self.frame_size: tuple[int, int] | None = None  # (H, W) of the first clip: every clip's

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.items[index]
        events = read_video_events(path)
        if self.frame_size is None:
            self.frame_size = tuple(events.shape[2:]) if index == 0 else tuple(read_video_events(self.items[0][0]).shape[2:])
        if tuple(events.shape[2:]) != self.frame_size:
            height, width = self.frame_size
            raise DataError(f"{path}: frames of {events.shape[2]} x {events.shape[3]}, but the dataset's first clip "
                            f"({Path(self.items[0][0]).name}) has {height} x {width}; convert every clip at one size")
        if self.n_steps is not None:
            if self.n_steps > events.shape[1]:
                raise DataError(f"{path}: has {events.shape[1]} steps, {self.n_steps} requested")
            events = events[:, : self.n_steps]
        frames = torch.from_numpy(np.ascontiguousarray(events.transpose(1, 0, 2, 3))).float()
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, label
