"""What spikebridge reads from a recording or a dataset, before anyone trains on it
(``spikebridge inspect PATH``): :func:`inspect_path` returns a JSON-ready dict and, on request, a
:class:`Preview` of one sample to draw.

* a recording (N-MNIST ``.bin``, AEDAT ``.aedat`` / ``.aedat4``, DVS-Gesture ``.npy``, an
  ES-ImageNet sample or ES-UCF101 clip ``.npz``): ``{"kind": "recording", "format", "events",
  "on", "off", "sensor_size": [W, H], "t_range": [first, last], "t_unit"}`` (``"us"``, or
  ``"step"`` for ``.npz``: 1-based time steps). Only polarity events count, and the sensor is the
  one the dataset reader bins on (ES-ImageNet: the 224x224 frame made of the sample).
* a video clip folder: ``{"kind": "recording", "format": "video-clip", "frames", "frame_size"}``.
* a dataset folder or a built-in name: ``{"kind": "dataset", "layout", "classes", "splits":
  {"train", "test"}, "sample_shape"}``, read with the dataset openers (one sample is read).

Every bad input is a one-line :class:`~spikebridge.errors.DataError`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, SpikebridgeError
from .datasets import BUILTIN_DATASETS, open_dataset
from .events import check_events, read_event_file
from .loading import DataBundle

#: Time bins of a recording's preview.
PREVIEW_BINS = 5
#: The most panels a preview draws (longer samples are summed into this many bins).
PREVIEW_PANELS = 8
RECORDING_SUFFIXES = (".bin", ".aedat", ".aedat4", ".npy", ".npz")


@dataclass
class Preview:
    """One sample to draw: ``"events"`` frames ``[T, 2, H, W]`` (ON first) or ``"images"``
    ``[N, C, H, W]`` in [0, 1]."""

    kind: str
    data: torch.Tensor
    title: str
    #: ``"<sample>: <why>"`` of the unreadable samples passed over before this one.
    skipped: list[str] = field(default_factory=list)


def inspect_path(path: str | os.PathLike, *, preview: bool = False) -> tuple[dict[str, Any], Preview | None]:
    """(what spikebridge sees in ``path``, a :class:`Preview` when ``preview``); see the module."""
    try:
        return _inspect(os.fspath(path), preview)
    except SpikebridgeError:
        raise
    except OSError as exc:  # permission denied, a file vanishing meanwhile: a problem of the path given
        where = f" ({str(exc.filename)[:100]})" if exc.filename else ""
        raise DataError(f"cannot read {os.fspath(path)[:100]!r}: {exc.strerror or exc}{where}") from None


def _inspect(name: str, preview: bool) -> tuple[dict[str, Any], Preview | None]:
    if name in BUILTIN_DATASETS and not Path(name).exists():
        return _inspect_bundle(open_dataset(name), f"built-in:{name}", [str(i) for i in range(10)], preview)
    where = Path(name)
    if not where.exists():
        raise DataError(f"{name[:100]!r}: no such file or folder (give a recording, a dataset folder, "
                        f"or {' / '.join(BUILTIN_DATASETS)})")
    if where.is_dir():
        if _is_clip_folder(where):
            return _inspect_clip(where, preview)
        return _inspect_dataset(where, preview)
    suffix = where.suffix.lower()
    if suffix not in RECORDING_SUFFIXES:
        raise DataError(f"{name[:100]}: unknown recording format {suffix or '(no suffix)'!r:.20}; spikebridge reads "
                        ".bin (N-MNIST), .aedat (AEDAT 2.0 / 3.1), .aedat4, .npy (DVS-Gesture), .npz (ES-ImageNet "
                        "sample, ES-UCF101 clip), clip folders and dataset folders")
    if suffix == ".npz":
        return _inspect_npz(where, preview)
    fmt, events, sensor = read_event_file(where, orientation=_recording_orientation(where))
    if len(events):  # what training would refuse (outside the sensor, unsorted), refused here too
        check_events(events, sensor_size=sensor, source=where)
    on, t = int(events["p"].sum()), events["t"]
    info = _recording(fmt, on, len(events) - on, sensor, [int(t[0]), int(t[-1])] if len(t) else None, "us")
    return info, _event_preview(events, sensor, where, preview)


def _recording_orientation(path: Path) -> str:
    """The DVS128 orientation the dataset reader gives ``path``: CIFAR10-DVS's when it lies in a
    class folder beside only CIFAR-10 class names (``disk.open_dvs_folder``)."""
    from .disk import dvs_orientation

    with contextlib.suppress(OSError):
        return dvs_orientation([d.name for d in path.resolve().parent.parent.iterdir() if d.is_dir()])
    return "jaer"


# ------------------------------------------------------------------------------------------------
# recordings
# ------------------------------------------------------------------------------------------------
def _recording(fmt: str, on: int, off: int, sensor: tuple[int, int], t_range: list[int] | None,
               unit: str) -> dict[str, Any]:
    return {"kind": "recording", "format": fmt, "events": on + off, "on": on, "off": off,
            "sensor_size": [int(sensor[0]), int(sensor[1])], "t_range": t_range, "t_unit": unit}


def _event_preview(events: np.ndarray, sensor: tuple[int, int], path: Path, wanted: bool) -> Preview | None:
    from .events import events_to_frames

    if not wanted:
        return None
    if not len(events):
        raise DataError(f"{path}: the recording holds no events to draw")
    window = int(events["t"][-1] - events["t"][0]) // PREVIEW_BINS + 1  # every event, in at most 5 bins
    frames = events_to_frames(events, sensor_size=sensor, time_window=window, include_incomplete=True, source=path)
    return Preview("events", frames, f"{path.name}: {len(events)} events in {len(frames)} time bins of {window} µs")


def _inspect_npz(path: Path, wanted: bool) -> tuple[dict[str, Any], Preview | None]:
    from .disk import npz_sample_kind
    from .events import conversion_frame, read_es_sample
    from .odg import events_to_dense
    from .video import read_video_events

    kind, keys = npz_sample_kind(path)
    if kind == "es-imagenet":
        sample = read_es_sample(path)
        steps = np.concatenate([sample.pos[:, 2], sample.neg[:, 2]])
        # converted at another --size: the frame its conversion.json gives (ESImageNetDataset's)
        frame = conversion_frame(path.parent.parent) or conversion_frame(path.parent)
        frames = events_to_dense(sample, dtype=torch.float32, **frame)
        sensor = (frames.shape[-1], frames.shape[-2])  # [W, H] of the frame made of the sample (224x224 as released)
        info = _recording("es-imagenet-npz", len(sample.pos), len(sample.neg), sensor,
                          [int(steps.min()), int(steps.max())] if len(steps) else None, "step")
    elif kind == "es-ucf101":
        clip = read_video_events(path)
        active = np.flatnonzero(clip.any(axis=(0, 2, 3)))
        on, off = int(clip[0].sum(dtype=np.int64)), int(clip[1].sum(dtype=np.int64))
        info = _recording("es-ucf101-npz", on, off, (clip.shape[3], clip.shape[2]),
                          [int(active[0]) + 1, int(active[-1]) + 1] if len(active) else None, "step")
        frames = torch.from_numpy(np.ascontiguousarray(clip.transpose(1, 0, 2, 3))).float()
    else:
        raise DataError(f"{path}: an .npz holding {keys[:6]}; expected an ES-ImageNet sample (pos, neg) "
                        "or an ES-UCF101 clip (events or arr_0)")
    if wanted and not info["events"]:  # as for a recording file: an empty picture says nothing
        raise DataError(f"{path}: the recording holds no events to draw")
    preview = Preview("events", _fewer_bins(frames), f"{path.name}: {info['events']} events") if wanted else None
    return info, preview


def _is_clip_folder(path: Path) -> bool:
    """Frame images and no visible sub-folders: one video clip."""
    from .video import list_frames

    subdirs = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return not subdirs and bool(list_frames(path))


def _inspect_clip(path: Path, wanted: bool) -> tuple[dict[str, Any], Preview | None]:
    from .folders import load_image, open_image
    from .transforms import ToTensor
    from .video import list_frames, sample_indices

    frames = list_frames(path)
    with open_image(frames[0]) as img:
        size = [int(img.width), int(img.height)]
    info = {"kind": "recording", "format": "video-clip", "frames": len(frames), "frame_size": size}
    if not wanted:
        return info, None
    picks = sorted(set(sample_indices(len(frames), min(PREVIEW_BINS, len(frames))).tolist()))
    images = [ToTensor(channels=3)(load_image(frames[i], "RGB")) for i in picks]
    if any(im.shape != images[0].shape for im in images):
        raise DataError(f"{path}: its frames differ in size")
    return info, Preview("images", torch.stack(images), f"{path.name}: frames {', '.join(str(i + 1) for i in picks)}")


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------
def _inspect_dataset(path: Path, wanted: bool) -> tuple[dict[str, Any], Preview | None]:
    from .disk import locate_dataset, open_path_dataset

    root, layout = locate_dataset(path)  # a download folder holding one dataset stands for it
    path = Path(root)
    if layout == "cifar":
        return _inspect_cifar(path, wanted)
    if layout == "image-folders":
        return _inspect_image_folders(path, wanted)
    bundle = open_path_dataset(path)
    return _inspect_bundle(bundle, layout, _class_names(layout, path, bundle), wanted)


def _dataset_info(layout: str, classes: list[str], train: int, test: int, shape) -> dict[str, Any]:
    return {"kind": "dataset", "layout": layout, "classes": classes, "splits": {"train": int(train), "test": int(test)},
            "sample_shape": [int(v) for v in shape]}


def _inspect_bundle(bundle: DataBundle, layout: str, classes: list[str], wanted: bool):
    from .loading import first_readable_sample

    index, sample, skipped = first_readable_sample(bundle.train)
    info = _dataset_info(layout, classes, len(bundle.train), len(bundle.test), sample.shape)
    if not wanted:
        return info, None
    title = f"{Path(bundle.name).name or bundle.name}: training sample {index}"
    if sample.dim() == 4 and sample.shape[1] == 2:  # event frames [T, 2, H, W]
        frames = _fewer_bins(sample.float())
        steps = -(-len(sample) // len(frames))
        return info, Preview("events", frames, title + (f", {steps} steps a panel" if steps > 1 else ""), skipped)
    images = sample.float() if sample.dim() == 4 else sample.float().unsqueeze(0)  # video [T, 3, H, W] or an image
    if sample.dtype == torch.uint8:
        images = images / 255.0
    else:  # the RGB frames VideoClipDataset normalises with ImageNet's statistics
        from .transforms import IMAGENET_MEAN, IMAGENET_STD

        images = (images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
                  + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).clamp(0, 1)
    if len(images) > PREVIEW_BINS:
        images = images[np.unique(np.linspace(0, len(images) - 1, PREVIEW_BINS).round().astype(int))]
    return info, Preview("images", images, title, skipped)


def _inspect_cifar(path: Path, wanted: bool):
    from .cifar import CifarDataset

    train, test = CifarDataset(path, train=True), CifarDataset(path, train=False)
    image = train[0][0]  # float [3, 32, 32] in [0, 1]
    info = _dataset_info("cifar", list(train.classes), len(train), len(test), image.shape)
    return info, (Preview("images", image.unsqueeze(0), f"{path.name}: training image 0") if wanted else None)


def _inspect_image_folders(path: Path, wanted: bool):
    """ImageNet layout, listed without decoding (the opener decodes small images into memory)."""
    from .disk import default_image_size, image_folder_splits
    from .folders import ImageFolderDataset, inspect_image_folder, load_image
    from .loading import first_readable
    from .transforms import ToTensor

    train_dir, val_dir, _classes = image_folder_splits(str(path))  # the checks the opener makes, in its words
    train, test = ImageFolderDataset(train_dir), ImageFolderDataset(val_dir)
    found = inspect_image_folder(train_dir)
    size = default_image_size(found.typical_height, found.typical_width)
    info = _dataset_info("image-folders", train.classes, len(train), len(test), (found.channels, size, size))
    if not wanted:
        return info, None
    index, image, skipped = first_readable(len(train), lambda i: load_image(train.samples[i][0], train.mode))
    image = ToTensor(channels=found.channels)(image)
    name = Path(train.samples[index][0]).name
    return info, Preview("images", image.unsqueeze(0), f"{path.name}: {name} (as stored)", skipped)


def _labelled_files(dataset) -> list[tuple[Path, int]]:
    """``(file, label)`` of a dataset the openers build (through ``Subset`` and resizing wrappers)."""
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    if hasattr(dataset, "entries"):  # ESImageNetDataset
        return [(e.path, e.label) for e in dataset.entries]
    return [(Path(p), label) for p, label in getattr(dataset, "items", getattr(dataset, "samples", []))]


def _class_names(layout: str, root: Path, bundle: DataBundle) -> list[str]:
    """Class names in label order: class folders, DVS-Gesture's gestures, else the folders (or
    UCF101 clip names) the label files' samples lie in; ``str(label)`` where none is known."""
    from .disk import dvs_splits
    from .events import DVS_GESTURE_CLASSES
    from .folders import find_classes
    from .video import UCF101_CLIP_NAME

    if layout == "dvs-gesture":
        return list(DVS_GESTURE_CLASSES)
    if layout == "video-clips":
        from .disk import flat_ucf101_clips

        flat = flat_ucf101_clips(root)
        return sorted({cls for _clip, cls in flat}) if flat else find_classes(root)[0]
    if layout == "dvs":
        train, test = dvs_splits(root)
        return find_classes(train if train is not None and test is not None else root)[0]
    files = _labelled_files(bundle.train) + _labelled_files(bundle.test)
    names = [str(i) for i in range(bundle.num_classes)]
    labels_in: dict[Path, set[int]] = {}
    for path, label in files:
        labels_in.setdefault(path.parent, set()).add(label)
    in_folders = len(labels_in) > 1 and all(len(v) == 1 for v in labels_in.values())  # class folders
    for path, label in reversed(files):  # the first file of each label decides
        match = UCF101_CLIP_NAME.match(path.stem)
        names[label] = path.parent.name if in_folders else (match["cls"] if match else str(label))
    return names


def _fewer_bins(frames: torch.Tensor, panels: int = PREVIEW_PANELS) -> torch.Tensor:
    """At most ``panels`` frames: consecutive steps summed (a remainder of steps is dropped)."""
    if len(frames) <= panels:
        return frames
    group = -(-len(frames) // panels)
    keep = len(frames) // group * group
    return frames[:keep].reshape(keep // group, group, *frames.shape[1:]).sum(1)
