"""Datasets on disk -> a :class:`~spikebridge.data.loading.DataBundle` (``--data PATH``).

:func:`detect_layout` names the layout of a folder (the layouts and what each is opened as: README,
"Data"; split folders match case-insensitively) and :func:`open_path_dataset` opens it; a folder
that is no dataset but holds one (a download folder) stands for it (:func:`locate_dataset`).

Photos (shorter side >= 100 px) stream from disk with the paper's transforms. Small images
(<= 64 px: digits, CIFAR, Tiny-ImageNet) are decoded once into memory (resized + centre-cropped to
a square), normalised with the training split's own per-channel statistics and augmented on the
batch with a random shift of ``max_shift`` pixels (zero fill: RandomCrop with that padding): far
faster on CPU than per-image decoding, and bit-reproducible under DDP and ``--resume``.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError, DataError, SpikebridgeError
from ..errors import clip as clip_text
from .folders import (
    IMG_EXTENSIONS,
    TRAIN_SPLIT_NAMES,
    find_split,
    ImageFolderDataset,
    find_classes,
    hidden_folder,
    inspect_image_folder,
    load_image,
    scan_image_folder,
    split_layout,
    walk_folder,
)
from .loading import DataBundle, MappedDataset
from .odg import ODG_PATH
from .static import TensorSplit, stratified_indices
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    Normalize,
    Resize,
    ToTensor,
    imagenet_eval_transform,
    imagenet_train_transform,
    norm_stats,
)

#: Shorter image sides from this size up count as photographs (streamed, RandomResizedCrop 224).
PHOTO_MIN_SIDE = 100
#: Images up to this size (after resizing) are decoded into memory.
IN_MEMORY_MAX_SIDE = 64
IN_MEMORY_MAX_BYTES = 2 << 30
DVS_EXTENSIONS = (".aedat", ".aedat4", ".bin")
#: Split folders of event datasets, matched case-insensitively (Tonic's DVS-Gesture: ibmGesture*).
DVS_TRAIN_NAMES = TRAIN_SPLIT_NAMES + ("ibmgesturetrain",)
DVS_TEST_NAMES = ("test", "val", "validation", "valid", "ibmgesturetest")
DEFAULT_DVS_STEPS = 8  # the paper's CIFAR10-DVS T
DEFAULT_VIDEO_STEPS = 15  # the paper's ES-UCF101: frames 1..15
ODG_STEPS = len(ODG_PATH) - 1  # ES-ImageNet's (and ES-MNIST's) 8 frames: one per move of the path
#: the event layouts :func:`detect_layout` names, with the time steps of the frames each yields
EVENT_LAYOUT_STEPS = {"es-imagenet": ODG_STEPS, "es-imagenet-released": ODG_STEPS, "es-imagenet-single": ODG_STEPS,
                      "es-ucf101": DEFAULT_VIDEO_STEPS, "es-ucf101-split": DEFAULT_VIDEO_STEPS,
                      "dvs": DEFAULT_DVS_STEPS, "dvs-gesture": DEFAULT_DVS_STEPS}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ------------------------------------------------------------------------------------------------
# model suggestion
# ------------------------------------------------------------------------------------------------
def default_image_size(height: int, width: int) -> int:
    """The training resolution for images of a typical ``height x width``: 224 for photographs
    (shorter side >= 100 px), else the shorter side itself (28 for MNIST, 32 for CIFAR)."""
    side = min(int(height), int(width))
    return 224 if side >= PHOTO_MIN_SIDE else side


def suggest_model(bundle: DataBundle) -> str:
    """A sensible default registry model for ``bundle`` (used when ``model.name`` is ``auto``):
    :func:`model_for` its format, image size and channels."""
    return model_for(bundle.info.get("format"), int(bundle.image_size), bundle.in_channels)


def model_for(fmt: str | None, image_size: int, channels: int) -> str:
    """The registry model ``auto`` picks:

    * frame sequences of video clips (RGB or ES-UCF101 events): ``crnn``;
    * up to 40 px with 1-2 channels (digits, ES-MNIST, N-MNIST): ``cnn``;
    * up to 64 px (CIFAR, Tiny-ImageNet): ``vgg11``;
    * larger (ImageNet at 224, ES-ImageNet, CIFAR10-DVS at 128): ``resnet18`` (the paper's).
    """
    if fmt in ("video-clips", "es-ucf101"):
        return "crnn"
    if image_size <= 40 and channels <= 2:
        return "cnn"
    return "vgg11" if image_size <= 64 else "resnet18"


#: layout -> (image size, channels) of every dataset in it
_FIXED_SHAPES = {"cifar": (32, 3), "es-imagenet": (224, 2), "es-imagenet-released": (224, 2),
                 "es-imagenet-single": (224, 2), "dvs-gesture": (128, 2)}


def peek_model(path: str | os.PathLike, image_size: int = 0) -> str | None:
    """The model ``auto`` will pick (:func:`model_for`) for the dataset folder ``path`` opened at
    ``image_size`` (0: its own), told by its layout and file headers without decoding samples
    (for the run plan); None where only opening the data tells."""
    layout, frame = peek_frame(path, image_size)
    if layout in ("video-clips", "es-ucf101"):
        return model_for(layout, image_size, 3)
    return model_for(layout, *frame) if frame else None


def peek_frame(path: str | os.PathLike, image_size: int = 0) -> tuple[str, tuple[int, int] | None]:
    """``(layout, (square frame side, channels))`` the models read from the dataset folder ``path``
    opened at ``image_size`` (0: its own), told by its layout and file headers without decoding
    samples; the frame is None where only opening the data tells (video clips, ES-UCF101)."""
    root, layout = locate_dataset(path)
    if layout in _FIXED_SHAPES:
        size, channels = _FIXED_SHAPES[layout]
        if layout in ("es-imagenet", "es-imagenet-single"):  # converted at another --size: its window
            from .events import conversion_frame

            frame = conversion_frame(Path(root) / "train" if layout == "es-imagenet" else Path(root))
            size = frame["crop"][1] - frame["crop"][0] if frame else size
        return layout, (image_size or size, channels)
    if layout == "image-folders":
        split = split_layout(root)
        info = inspect_image_folder(split.train if split is not None else root)
        return layout, (image_size or default_image_size(info.typical_height, info.typical_width), info.channels)
    if layout == "dvs":
        classes, recordings = _dvs_recordings(Path(root))
        if recordings:
            return layout, (image_size or min(dataset_sensor(recordings, dvs_orientation(classes))), 2)
    return layout, None


class ResizeFrames:
    """Resize frames ``[T, C, H, W]`` to ``size x size`` by area averaging (event counts keep
    their density)."""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        if tuple(frames.shape[-2:]) == (self.size, self.size):
            return frames
        return F.interpolate(frames.float(), size=(self.size, self.size), mode="area")


# ------------------------------------------------------------------------------------------------
# static images
# ------------------------------------------------------------------------------------------------
def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean / std of uint8 images ``[N, C, H, W]`` scaled to [0, 1]."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(max(float(s), 1e-3) for s in std)


def _decode_folder(samples: list[tuple[str, int]], size: int, mode: str, where: str) -> TensorSplit:
    """Decode every image, resize the shorter side to ``size`` and centre-crop: uint8 ``[N, C, S, S]``."""
    channels = 1 if mode == "L" else 3
    if len(samples) * channels * size * size > IN_MEMORY_MAX_BYTES:
        raise DataError(f"{where}: too large to hold in memory at {size} px")
    resize, crop = Resize(size), CenterCrop(size)
    images = torch.empty((len(samples), channels, size, size), dtype=torch.uint8)
    for i, (path, _label) in enumerate(samples):
        img = crop(resize(load_image(path, mode, need=size)))  # a large JPEG decodes at a reduced scale
        arr = np.array(img, dtype=np.uint8)  # a writable copy
        images[i] = torch.from_numpy(arr.reshape(size, size, channels)).permute(2, 0, 1)
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return TensorSplit(images, labels)


def _in_memory_bundle(name: str, train: TensorSplit, test: TensorSplit, num_classes: int, size: int,
                      max_shift: int, info: dict) -> DataBundle:
    mean, std = _channel_stats(train.images)
    shift = max_shift if max_shift >= 0 else max(1, round(size / 8))
    return DataBundle(
        name=name, train=train, test=test, num_classes=num_classes, in_channels=int(train.images.shape[1]),
        kind="static", image_size=size, mean=mean, std=std, max_shift=shift, info=info,
    )


def image_folder_splits(root: str) -> tuple[str, str, list[str]]:
    """An ImageNet-layout folder's ``train`` and ``val`` folders and its classes, checked without
    reading an image (the plan's check, and the first step of opening it): both splits there, the
    same class folders in each, none without an image file."""
    layout = split_layout(root)
    if layout is None or layout.val is None:
        raise DataError(f"{root}: expected train/ and val/ folders of class folders (ImageNet layout)")
    if os.path.isfile(os.path.join(layout.val, "val_annotations.txt")):
        raise DataError(f"{layout.val}: Tiny-ImageNet's val/ lists the class of each image in val_annotations.txt; "
                        "move each image into val/<wnid>/ first, as train/ holds them")
    return layout.train, layout.val, split_classes(layout.train, layout.val, IMG_EXTENSIONS, "images")


def split_classes(train_dir: str | os.PathLike, test_dir: str | os.PathLike | None, extensions: tuple[str, ...],
                  what: str) -> list[str]:
    """The class folders of ``train_dir``, checked against ``test_dir``'s (None: one folder, split
    later): the same names in both, and none without a file of ``extensions`` (``what`` they hold)."""
    classes, _ = find_classes(train_dir)
    if test_dir is not None:
        test_classes, _ = find_classes(test_dir)
        if test_classes != classes:
            extra = sorted(set(test_classes) - set(classes))
            missing = sorted(set(classes) - set(test_classes))
            name = Path(test_dir).name
            raise DataError(f"{test_dir}: its class folders differ from {train_dir}'s "
                            f"(only in {name}: {extra[:5] or 'none'}; only in {Path(train_dir).name}: "
                            f"{missing[:5] or 'none'})")
    for split in (train_dir, test_dir) if test_dir is not None else (train_dir,):
        for cls in classes:
            folder = os.path.join(split, cls)
            if not any(f.lower().endswith(extensions) and not f.startswith(".")
                       for _dir, files in walk_folder(folder) for f in files):
                raise DataError(f"class folder {folder} holds no {what} with extensions {' '.join(extensions)}")
    return classes


def open_image_folders(root: str, *, image_size: int, max_shift: int, workers: int, **_) -> DataBundle:
    """ImageNet layout: ``train/<class>/...`` and ``val/<class>/...``."""
    train_dir, val_dir, classes = image_folder_splits(root)
    class_to_idx = {name: i for i, name in enumerate(classes)}
    info = inspect_image_folder(train_dir)
    size = image_size or default_image_size(info.typical_height, info.typical_width)
    mode = "L" if info.channels == 1 else "RGB"
    meta = {"format": "imagefolder", "path": root, "classes": len(classes), "typical_size": [info.typical_height, info.typical_width]}
    in_memory = size <= IN_MEMORY_MAX_SIDE and info.num_images * info.channels * size * size <= IN_MEMORY_MAX_BYTES
    if in_memory:
        train = _decode_folder(scan_image_folder(train_dir, class_to_idx), size, mode, train_dir)
        test = _decode_folder(scan_image_folder(val_dir, class_to_idx), size, mode, val_dir)
        return _in_memory_bundle(root, train, test, len(classes), size, max_shift, {**meta, "in_memory": True})
    channels = info.channels
    # mid-size images too many to hold in memory: the photos' recipe with a milder crop scale
    scale = (0.08, 1.0) if size >= PHOTO_MIN_SIDE else (0.35, 1.0)
    train_tf = imagenet_train_transform(size, scale=scale, channels=channels)
    test_tf = imagenet_eval_transform(size, channels=channels)
    train_ds = ImageFolderDataset(train_dir, transform=train_tf, mode=mode)
    test_ds = ImageFolderDataset(val_dir, transform=test_tf, mode=mode)
    mean, std = norm_stats(IMAGENET_MEAN, IMAGENET_STD, channels)
    return DataBundle(
        name=root, train=train_ds, test=test_ds, num_classes=len(classes), in_channels=channels, kind="static",
        image_size=size, mean=mean, std=std, max_shift=0, workers=workers, info={**meta, "in_memory": False},
    )


def open_cifar(root: str, *, image_size: int, max_shift: int, **_) -> DataBundle:
    """CIFAR-10/100 python batches, in memory (``image_size`` other than 32 resizes them)."""
    from .cifar import CifarDataset

    train_ds, test_ds = CifarDataset(root, train=True), CifarDataset(root, train=False)

    def split(ds) -> TensorSplit:
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        if image_size and image_size != 32:
            images = F.interpolate(images.float(), size=(image_size, image_size), mode="bilinear",
                                   align_corners=False, antialias=True).round().clamp(0, 255).to(torch.uint8)
        return TensorSplit(images, torch.tensor(ds.targets, dtype=torch.int64))

    size = image_size or 32
    return _in_memory_bundle(root, split(train_ds), split(test_ds), train_ds.num_classes, size, max_shift,
                             {"format": train_ds.variant, "path": root})


# ------------------------------------------------------------------------------------------------
# events
# ------------------------------------------------------------------------------------------------
def npz_sample_kind(path: str | os.PathLike) -> tuple[str | None, list[str]]:
    """(``"es-imagenet"`` (arrays ``pos``, ``neg``), ``"es-ucf101"`` (``events``, or the authors'
    ``arr_0``) or None, the file's array names) of an event ``.npz``."""
    from .events import npz_array_names
    from .video import VIDEO_EVENT_KEYS

    keys = sorted(npz_array_names(path))
    if {"pos", "neg"} <= set(keys):
        return "es-imagenet", keys
    return ("es-ucf101" if set(keys) & set(VIDEO_EVENT_KEYS) else None), keys


def _events_kind(label_file: Path) -> str:
    """The kind (:func:`npz_sample_kind`) of the first sample ``label_file`` lists."""
    from .events import read_label_file

    entries = read_label_file(label_file, check_files=False)
    if not entries:
        raise DataError(f"{label_file}: lists no samples")
    kind, keys = npz_sample_kind(entries[0].path)
    if kind is None:
        raise DataError(f"{label_file}: its samples hold {keys}; expected ES-ImageNet (pos, neg) or ES-UCF101 "
                        "(events or arr_0)")
    return kind


def _event_bundle(name: str, train: Dataset, test: Dataset, num_classes: int, image_size: int, workers: int,
                  info: dict) -> DataBundle:
    from .loading import first_readable_sample

    sample = first_readable_sample(train)[1]
    native = int(min(sample.shape[-2:]))
    if image_size and tuple(sample.shape[-2:]) != (image_size, image_size) and info.get("format") != "es-ucf101":
        resize = ResizeFrames(image_size)
        train, test = MappedDataset(train, resize), MappedDataset(test, resize)
        native, info = image_size, {**info, "resized_from": [int(v) for v in sample.shape[-2:]]}
    return DataBundle(
        name=name, train=train, test=test, num_classes=num_classes, in_channels=int(sample.shape[-3]),
        kind="events", image_size=native, max_shift=0, workers=workers, info=info,
    )


def open_es_imagenet(root: str, *, image_size: int, workers: int, **_) -> DataBundle:
    """ES-ImageNet: released (``trainlabel.txt`` + ``train/``) or converted (``train/labels.txt``)."""
    from .events import ESImageNetDataset, es_imagenet_splits

    train, test = (ESImageNetDataset(label_file, data_dir=data_dir)
                   for label_file, data_dir in es_imagenet_splits(Path(root)).values())
    _same_labels_per_class(train, test)
    classes = max(train.num_classes, test.num_classes)
    return _event_bundle(root, train, test, classes, image_size, workers, {"format": "es-imagenet", "path": root})


def _same_labels_per_class(train, test) -> None:
    """The label files of two splits whose samples lie in class folders must give a folder name
    the same label in both (splits converted one at a time from folders with other classes
    number them differently: every such test sample would be scored as another class)."""
    def labels(split) -> tuple[dict[str, tuple[int, int]], bool]:
        first: dict[str, tuple[int, int]] = {}
        for entry in split.entries:
            first.setdefault(entry.path.parent.name, (entry.label, entry.line))
        return first, len({entry.path.parent for entry in split.entries}) > 1

    (train_labels, in_folders), (test_labels, test_in_folders) = labels(train), labels(test)
    if not (in_folders and test_in_folders):
        return
    for name, (label, line) in test_labels.items():
        if name in train_labels and train_labels[name][0] != label:
            raise DataError(f"{test.label_file}:{line}: class folder {name}/ has label {label}, but "
                            f"{train.label_file}:{train_labels[name][1]} gives it label {train_labels[name][0]}: "
                            "the splits were numbered with other class lists (convert every split with the "
                            "same classes: spikebridge convert numbers a split by its sibling train/'s)")


def open_es_imagenet_single(root: str, *, split_seed: int, image_size: int, workers: int, **_) -> DataBundle:
    """One ES-ImageNet folder (``labels.txt``): a seeded, stratified 80/20 split."""
    from .events import ESImageNetDataset

    full = ESImageNetDataset(root)
    train_idx, test_idx = stratified_indices(full.labels, 0.2, split_seed)
    return _event_bundle(root, Subset(full, train_idx), Subset(full, test_idx), full.num_classes, image_size, workers,
                         {"format": "es-imagenet", "path": root, "split": "80/20 stratified", "split_seed": split_seed})


def _clip_names(paths: Sequence[Path], root: Path) -> list[str]:
    """Relative clip names without suffix (``class/clip``): the key the ES-UCF101 / UCF101 splits
    share. A UCF101 clip lying in ``root`` itself is keyed under its class as well, so that a flat
    folder and one of class folders make the same split."""
    from .video import UCF101_CLIP_NAME

    names = []
    for path in paths:
        name = path.relative_to(root).with_suffix("").as_posix() if path.suffix else path.relative_to(root).as_posix()
        match = UCF101_CLIP_NAME.match(name)
        names.append(f"{match['cls']}/{name}" if match else name)
    return names


def flat_ucf101_clips(base: Path) -> list[tuple[Path, str]]:
    """``(clip folder, class)`` of a folder of UCF101-named clip folders of frames (``jpegs_256``
    as distributed), else empty."""
    from .video import UCF101_CLIP_NAME

    dirs = _class_dirs(base)
    matches = [UCF101_CLIP_NAME.match(d.name) for d in dirs]
    if not dirs or not all(matches) or not any(f.suffix.lower() in IMG_EXTENSIONS for f in dirs[0].iterdir()):
        return []
    return [(d, m["cls"]) for d, m in zip(dirs, matches)]


def _video_split(names: list[str], split_seed: int) -> tuple[list[int], list[int]]:
    """The paper's ES-UCF101 split: 75/25 after sorting, seed 42 (``split_seed`` != 0 replaces 42)."""
    from .video_split import split_clips

    seed = split_seed or 42
    train_names, test_names = split_clips(names, test_fraction=0.25, seed=seed)
    position = {name: i for i, name in enumerate(names)}
    return [position[n] for n in train_names], [position[n] for n in test_names]


def open_es_ucf101(root: str, *, split_seed: int, time_steps: int, workers: int, **_) -> DataBundle:
    """ES-UCF101 (``labels.txt`` or class folders of ``.npz``): the first ``time_steps`` steps."""
    from .video import ESUCF101Dataset

    steps = time_steps or DEFAULT_VIDEO_STEPS
    full = ESUCF101Dataset(root, n_steps=steps)
    names = _clip_names([Path(p) for p, _ in full.items], Path(root))
    train_idx, test_idx = _video_split(names, split_seed)
    classes = max(full.labels) + 1
    return _event_bundle(root, Subset(full, train_idx), Subset(full, test_idx), classes, 0, workers,
                         {"format": "es-ucf101", "path": root, "split": "75/25", "split_seed": split_seed or 42})


class EventFileDataset(Dataset):
    """DVS recordings (``.aedat`` AEDAT 2.0/3.1, ``.aedat4`` AEDAT 4.0, ``.bin`` N-MNIST, ``.npy``
    DVS-Gesture) -> float frames ``[T, 2, H, W]``
    (event counts per bin, ON first), binned into ``time_steps`` equal-duration bins (Tonic's rule).

    ``orientation`` is passed to :func:`~spikebridge.data.events.read_aedat` for DVS128 files
    (``"cifar10dvs"`` gives CIFAR10-DVS upright)."""

    def __init__(self, samples: list[tuple[Path, int]], *, time_steps: int, orientation: str = "jaer",
                 sensor: tuple[int, int] | None = None) -> None:
        self.samples, self.time_steps, self.orientation = samples, int(time_steps), orientation
        self.sensor = sensor  # (W, H) of every frame (None: each recording's own)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from .events import events_to_frames, read_event_file

        path, label = self.samples[index]
        _format, events, sensor = read_event_file(path, orientation=self.orientation)
        frames = events_to_frames(events, sensor_size=self.sensor or sensor, n_time_bins=self.time_steps, source=path)
        return frames, label


#: How many recordings decide a DVS dataset's sensor (:func:`dataset_sensor`).
SENSOR_PROBES = 8


def dataset_sensor(samples: list[tuple[Path, int]], orientation: str) -> tuple[int, int]:
    """One sensor (W, H) for every recording of a dataset: the largest of its first readable
    recordings' (a recording that names no chip is sized by its own events, so one whose events
    stay in a corner would otherwise make smaller frames than the others)."""
    from .events import NMNIST_SENSOR, read_event_file
    from .loading import first_readable

    def sensor(index: int) -> tuple[int, int]:
        return read_event_file(samples[index][0], orientation=orientation)[2]

    probed = {}
    for index in range(min(len(samples), SENSOR_PROBES)):
        with contextlib.suppress(DataError):
            probed[samples[index][0]] = sensor(index)
    sizes = list(probed.values())
    if NMNIST_SENSOR in sizes and len(set(sizes)) > 1:  # one stray event would resize every frame
        odd = next(path for path, size in probed.items() if size != NMNIST_SENSOR)
        raise DataError(f"{odd}: events outside the 34x34 sensor of the dataset's other N-MNIST .bin recordings; "
                        "fix or remove that recording")
    if not sizes:  # none of them readable: a later one's, else the first one's error
        sizes.append(first_readable(len(samples), sensor)[1])
    return max(size[0] for size in sizes), max(size[1] for size in sizes)


def _list_event_files(class_root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    samples = []
    for label, name in enumerate(classes):
        files = sorted(Path(folder) / f for folder, names in walk_folder(class_root / name) for f in names
                       if os.path.splitext(f)[1].lower() in DVS_EXTENSIONS and not f.startswith("."))
        samples += [(p, label) for p in files if p.is_file()]
    return samples


def _dvs_recordings(base: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """(classes, recordings) of a DVS folder: its ``train/`` split's, checked against ``test/``
    (:func:`split_classes`), or, without splits, every recording of its class folders."""
    train_dir, test_dir = dvs_splits(base)
    split = train_dir is not None and test_dir is not None
    classes = split_classes(train_dir if split else base, test_dir if split else None, DVS_EXTENSIONS, "recordings")
    return classes, _list_event_files(train_dir if split else base, classes)


def dvs_orientation(classes: list[str]) -> str:
    """CIFAR10-DVS, or some of its classes: its recordings' own orientation (read_aedat)."""
    return "cifar10dvs" if classes and set(classes) <= set(CIFAR10_CLASSES) else "jaer"


def dvs_splits(base: Path) -> tuple[Path | None, Path | None]:
    """(train, test) split folders of an event dataset, names matched case-insensitively."""
    train, test = find_split(base, DVS_TRAIN_NAMES), find_split(base, DVS_TEST_NAMES)
    return (Path(train) if train else None), (Path(test) if test else None)


def open_dvs_folder(root: str, *, split_seed: int, time_steps: int, image_size: int, workers: int,
                    **_) -> DataBundle:
    """Class folders of DVS recordings (``train/`` + ``test/`` splits, any case, or one set split 90/10 per class)."""
    base = Path(root)
    steps = time_steps or DEFAULT_DVS_STEPS
    train_dir, test_dir = dvs_splits(base)
    classes, recordings = _dvs_recordings(base)  # the training split's, or every recording to split here
    if train_dir is not None and test_dir is not None:
        train_samples = recordings
        test_samples = _list_event_files(test_dir, classes)
        split = "folders"
    else:
        train_idx, test_idx = stratified_indices([y for _, y in recordings], 0.1, split_seed)
        train_samples = [recordings[i] for i in train_idx]
        test_samples = [recordings[i] for i in test_idx]
        split = "90/10 stratified"
    if not train_samples or not test_samples:
        raise DataError(f"{root}: no event recordings ({', '.join(DVS_EXTENSIONS)}) found in its class folders")
    orientation = dvs_orientation(classes)
    sensor = dataset_sensor(recordings, orientation)  # the recordings the plan's peek_model reads too
    train = EventFileDataset(train_samples, time_steps=steps, orientation=orientation, sensor=sensor)
    test = EventFileDataset(test_samples, time_steps=steps, orientation=orientation, sensor=sensor)
    return _event_bundle(root, train, test, len(classes), image_size, workers,
                         {"format": "dvs", "path": root, "split": split, "split_seed": split_seed, "orientation": orientation})


def _list_gesture_files(split_dir: Path) -> list[tuple[Path, int]]:
    """DVS-Gesture samples of one split: ``<user folder>/<label>.npy`` (Tonic's layout)."""
    from .events import DVS_GESTURE_CLASSES

    samples = []
    for folder in _class_dirs(split_dir):
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() != ".npy" or f.name.startswith(".") or not f.is_file():
                continue
            if not f.stem.isdigit() or int(f.stem) >= len(DVS_GESTURE_CLASSES):
                raise DataError(f"{f}: a DVS-Gesture sample is named by its label, 0..{len(DVS_GESTURE_CLASSES) - 1}.npy")
            samples.append((f, int(f.stem)))
    return samples


def open_dvs_gesture(root: str, *, time_steps: int, image_size: int, workers: int, **_) -> DataBundle:
    """DVS-Gesture as Tonic extracts it: ``ibmGestureTrain/`` + ``ibmGestureTest/`` (or ``train/`` +
    ``test/``) of user folders (``user01_fluorescent/``) holding ``<label>.npy`` (x, y, p, t in ms)."""
    from .events import DVS_GESTURE_CLASSES

    train_dir, test_dir = dvs_splits(Path(root))
    if train_dir is None or test_dir is None:
        raise DataError(f"{root}: DVS-Gesture needs ibmGestureTrain/ and ibmGestureTest/ (or train/ and test/)")
    train_samples, test_samples = _list_gesture_files(train_dir), _list_gesture_files(test_dir)
    if not train_samples or not test_samples:
        raise DataError(f"{root}: no DVS-Gesture samples (<user>/<label>.npy) in {train_dir.name}/ and {test_dir.name}/")
    steps = time_steps or DEFAULT_DVS_STEPS
    train = EventFileDataset(train_samples, time_steps=steps)
    test = EventFileDataset(test_samples, time_steps=steps)
    return _event_bundle(root, train, test, len(DVS_GESTURE_CLASSES), image_size, workers,
                         {"format": "dvs-gesture", "path": root, "split": "folders"})


# ------------------------------------------------------------------------------------------------
# RGB video clips
# ------------------------------------------------------------------------------------------------
class VideoClipDataset(Dataset):
    """Clips stored as folders of frame images -> normalised float frames ``[T, 3, H, W]``: per clip
    the raw frames 1..T (the authors' code, :func:`spikebridge.data.video.rgb_frame_indices`), at
    their own size (the CRNN is built for 256 x 342)."""

    def __init__(self, clips: list[tuple[Path, int]], *, time_steps: int) -> None:
        self.clips, self.time_steps = clips, int(time_steps)
        self.to_tensor = ToTensor(channels=3)
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int):
        from .video import rgb_frame_indices

        clip, label = self.clips[index]
        frames = _clip_frames(clip)
        picks = rgb_frame_indices(len(frames), self.time_steps)
        tensors = [self.normalize(self.to_tensor(load_image(frames[int(i)], "RGB"))) for i in picks]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise DataError(f"{clip}: its frames differ in size")
        return torch.stack(tensors), label


def _looks_like_clips(class_dir: Path) -> bool:
    """Clip folders of frames, and no images of the class folder's own (as an image class has)."""
    entries = sorted(class_dir.iterdir())
    if any(p.suffix.lower() in IMG_EXTENSIONS and p.is_file() for p in entries):
        return False
    subdirs = [p for p in entries if p.is_dir() and not hidden_folder(p.name)]
    if not subdirs:
        return False
    return any(f.suffix.lower() in IMG_EXTENSIONS for f in subdirs[0].iterdir())


def _clip_folders(class_dir: Path) -> bool:
    """Its sub-folders are video clips, not a folder of images: UCF101 clip names, or several."""
    from .video import UCF101_CLIP_NAME

    subdirs = [p for p in class_dir.iterdir() if p.is_dir() and not hidden_folder(p.name)]
    return len(subdirs) > 1 or any(UCF101_CLIP_NAME.match(p.name) for p in subdirs)


def check_clip_size(root: str, image_size: int) -> None:
    """Video clips are read at their own frame size: an ``image_size`` is refused (ConfigError)."""
    if image_size:
        raise ConfigError(f"data.image_size={image_size}: the video clips of {clip_text(root)} are read at their own "
                          "frame size; resize the frames beforehand, or leave data.image_size at 0")


def open_video_clips(root: str, *, split_seed: int, time_steps: int, workers: int, image_size: int = 0,
                     **_) -> DataBundle:
    """``root/<class>/<clip>/<frames>``, or UCF101's ``jpegs_256`` as distributed, ``root/<clip>/<frames>``
    with ``v_<Class>_gXX_cYY`` clip names: 75/25 split as ES-UCF101's."""
    check_clip_size(root, image_size)
    base = Path(root)
    flat = flat_ucf101_clips(base)
    if flat:  # jpegs_256 as distributed: the clip folders themselves, the class in each name
        classes = sorted({cls for _clip, cls in flat})
        clips = [(clip, classes.index(cls)) for clip, cls in flat]
    else:
        classes, _ = find_classes(base)
        clips = [(clip, label) for label, name in enumerate(classes)
                 for clip in sorted(p for p in (base / name).iterdir() if p.is_dir() and not hidden_folder(p.name))]
    if not clips:
        raise DataError(f"{root}: no clip folders found")
    names = _clip_names([c for c, _ in clips], base)
    train_idx, test_idx = _video_split(names, split_seed)
    full = VideoClipDataset(clips, time_steps=time_steps or DEFAULT_VIDEO_STEPS)
    train, test = Subset(full, train_idx), Subset(full, test_idx)
    height, width = _frame_size([clip for clip, _ in clips])
    return DataBundle(
        name=root, train=train, test=test, num_classes=len(classes), in_channels=3, kind="events",
        image_size=min(height, width), max_shift=0, workers=workers,
        info={"format": "video-clips", "path": root, "split": "75/25", "split_seed": split_seed or 42,
              "frame_size": [height, width]},
    )


def _clip_frames(clip: Path) -> list[Path]:
    from .video import list_frames

    frames = list_frames(clip)
    if not frames:
        raise DataError(f"{clip}: no frame images in the clip folder")
    return frames


def _frame_size(clips: list[Path]) -> tuple[int, int]:
    """(height, width) of the first readable clip's first frame, from its header."""
    from PIL import Image

    from .loading import first_readable

    def first_frame_size(index: int) -> tuple[int, int]:
        frame = _clip_frames(clips[index])[0]
        try:
            with Image.open(frame) as img:
                return int(img.height), int(img.width)
        except (OSError, ValueError) as exc:
            raise DataError(f"{frame}: cannot read the frame ({type(exc).__name__}: {exc})") from None

    return first_readable(len(clips), first_frame_size)[1]


# ------------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------------
def _one_class(root: Path) -> bool:
    """Whether class folders (of ``root``, or of its training split) are a single one (refused when
    opened); False where the classes are not folders (label files, CIFAR)."""
    split = split_layout(root)
    return len(_class_dirs(Path(split.train) if split is not None else root)) == 1


def _class_dirs(path: Path) -> list[Path]:
    return [p for p in sorted(path.iterdir()) if p.is_dir() and not hidden_folder(p.name)]


def _refuse_unlabelled_samples(folder: Path, class_dirs: list[Path]) -> None:
    """DataError where ``folder``'s class folders hold ES-ImageNet samples (pos, neg) but it has no
    label file: they were read as ES-UCF101 clips ("missing array 'events'") or as no images."""
    first = next((f for d in class_dirs[:3] for f in sorted(d.iterdir()) if f.is_file() and f.suffix.lower() == ".npz"),
                 None)
    kind = None
    with contextlib.suppress(DataError):  # a damaged first file: the opener names it
        kind = npz_sample_kind(first)[0] if first is not None else None
    if kind == "es-imagenet":
        raise DataError(f"{folder}: ES-ImageNet samples (pos, neg) in class folders without their label file "
                        f"{folder / 'labels.txt'} (convert odg writes it): label file not found")


def _holds(class_dirs: list[Path], suffixes: tuple[str, ...]) -> bool:
    return any(f.is_file() and f.suffix.lower() in suffixes for d in class_dirs[:3] for f in d.iterdir())


#: Folders that are never datasets: the file system root and the kernel's virtual file systems
#: (``/proc`` alone holds a folder per process, and reading it fails or never ends).
SYSTEM_FOLDERS = ("/", "/proc", "/sys", "/dev")


def _unreadable(path: str | os.PathLike, exc: OSError) -> DataError:
    where = f" ({str(exc.filename)[:100]})" if exc.filename else ""
    return DataError(f"cannot read dataset folder {str(path)[:100]!r}: {exc.strerror or exc}{where}")


def _check_not_system(base: Path) -> None:
    real = os.path.realpath(base)
    for system in SYSTEM_FOLDERS:
        if real == system or (system != "/" and real.startswith(system + "/")):
            raise DataError(f"dataset folder {str(base)[:100]!r} is the system folder {system}, not a dataset; "
                            "give the folder that holds your dataset")


def detect_layout(path: str | os.PathLike) -> str:
    """Name the dataset layout of folder ``path``, or of the one dataset in it
    (:func:`locate_dataset`; README, "Data"); raises DataError."""
    return locate_dataset(path)[1]


def locate_dataset(path: str | os.PathLike) -> tuple[str, str]:
    """(the dataset folder, its layout) for folder ``path``: ``path`` itself when it is a dataset,
    else its one sub-folder that is (a download folder holding the dataset: Tonic's ``save_to``
    ``./data`` holding ``NMNIST/``; one level only, hidden entries and files skipped). Raises
    DataError, naming them, when several sub-folders are datasets."""
    base = Path(path)
    if not base.exists():
        raise DataError(f"dataset {str(path)[:100]!r} not found: use mnist5k, es-mnist or a dataset folder")
    if not base.is_dir():
        raise DataError(f"dataset {str(path)[:100]!r} is a file; give the dataset's folder")
    _check_not_system(base)
    try:
        layout = _detect_layout(base)
        if layout is not None:
            return str(path), layout
        found = [(sub, kind) for sub in _class_dirs(base) if (kind := _sub_layout(sub)) is not None]
        found = [(sub, kind) for sub, kind in found if kind not in _UNSUPPORTED and not _one_class(sub)] or found
    except SpikebridgeError:
        raise
    except OSError as exc:  # permission denied, a vanished file...: a problem of the folder given
        raise _unreadable(path, exc) from None
    if len(found) == 1:
        return os.path.join(str(path), found[0][0].name), found[0][1]
    if found:
        kinds = ", ".join(f"{sub.name} ({layout})" for sub, layout in found[:6]) + (", ..." if len(found) > 6 else "")
        raise DataError(f"{str(path)[:100]} holds {len(found)} datasets: {kinds}; pass the one to use, "
                        f"e.g. {os.path.join(str(path)[:100], found[0][0].name)}")
    raise DataError(f"{base}: not a dataset spikebridge recognises (ImageNet layout train/ + val/, CIFAR batches, "
                    "ES-ImageNet, ES-UCF101, DVS class folders, DVS-Gesture, or video clip folders)")


def _sub_layout(sub: Path) -> str | None:
    """The layout of sub-folder ``sub`` of a folder that is no dataset itself, or None when it is none."""
    try:
        _check_not_system(sub)  # a link to /proc
        return _detect_layout(sub)
    except (DataError, OSError):
        return None


def _detect_layout(base: Path) -> str | None:
    """The layout of ``base``; None when it is no dataset spikebridge recognises (DataError for a
    dataset it cannot open: no class folders, a bad label file, clips in train/ + val/)."""
    from .cifar import locate_cifar
    from .events import es_imagenet_splits

    try:
        locate_cifar(base)
        return "cifar"
    except DataError:
        pass
    if (base / "trainlabel.txt").is_file():
        return "es-imagenet-released"
    if (base / "train" / "labels.txt").is_file():
        kind = _events_kind(base / "train" / "labels.txt")
        if kind == "es-imagenet":
            es_imagenet_splits(base)  # its val split's label file too (the run refused it after the plan)
        return "es-imagenet" if kind == "es-imagenet" else "es-ucf101-split"
    if (base / "labels.txt").is_file():
        return "es-imagenet-single" if _events_kind(base / "labels.txt") == "es-imagenet" else "es-ucf101"
    classes = _class_dirs(base)
    if not classes and any(f.suffix.lower() == ".npz" and f.is_file() for f in base.iterdir()):
        return "es-ucf101"  # the authors' flat folder of v_<Class>_g.._c...npz clips
    if not classes:
        raise DataError(f"{base}: no class folders, CIFAR batches or label files found")
    train_dir, _test_dir = dvs_splits(base)
    if train_dir is not None:
        inner = _class_dirs(train_dir)
        if inner and _holds(inner, DVS_EXTENSIONS):
            return "dvs"
        if inner and _holds(inner, (".npy",)):
            return "dvs-gesture"
        if inner and _holds(inner, (".npz",)):  # a converted root whose train/labels.txt is gone
            _refuse_unlabelled_samples(train_dir, inner)
        if inner and _looks_like_clips(inner[0]) and _clip_folders(inner[0]):
            raise DataError(f"{base}: video clips in train/ and val/ are not supported; give the folder of class folders "
                            "(the paper's 75/25 split is made from it)")
        return "image-folders"  # images in class folders, at any depth (Tiny-ImageNet's <wnid>/images/)
    if _holds(classes, (".npz",)):
        _refuse_unlabelled_samples(base, classes)
        return "es-ucf101"
    if _holds(classes, DVS_EXTENSIONS):
        return "dvs"
    # class folders of clip folders of frames (one such folder alone, or one beside a dataset with
    # train/ and val/ splits, is a folder around image sets, not a video dataset)
    if (len(classes) > 1 and _looks_like_clips(classes[0]) and not any(split_layout(c) for c in classes)) \
            or flat_ucf101_clips(base):
        return "video-clips"
    if _holds(classes, IMG_EXTENSIONS):
        return "image-folder-single"
    return None


def open_path_dataset(
    path: str | os.PathLike,
    *,
    max_shift: int = -1,
    split_seed: int = 0,
    workers: int = 0,
    image_size: int = 0,
    time_steps: int = 0,
) -> DataBundle:
    """Open the dataset in folder ``path``, or the one dataset in it (:func:`locate_dataset`;
    layouts: README, "Data").

    Args:
        max_shift: random-shift augmentation of in-memory images in pixels; ``-1`` = ``size / 8``
            (4 at 32 px, 2 at 16..19 px...).
        split_seed: seed of splits made here (0 for ES-UCF101 and video means the paper's 42).
        workers: DataLoader worker processes for datasets streamed from disk.
        image_size: the square training resolution (0 = chosen from the data: 224 for photos).
        time_steps: frames per sample for DVS recordings (0 = 8) and video (0 = 15).
    """
    root, layout = _supported_layout(path)
    try:
        bundle = _OPENERS[layout](root, max_shift=max_shift, split_seed=split_seed, workers=workers,
                                  image_size=image_size, time_steps=time_steps)
    except SpikebridgeError:
        raise
    except OSError as exc:
        raise _unreadable(root, exc) from None
    if bundle.num_classes < 2:
        split = split_layout(root)
        _refuse_one_class(root, bundle.num_classes, [d.name for d in _class_dirs(Path(split.train if split else root))])
    return bundle


def _refuse_one_class(root: str, count: int, names: Sequence[str] = ()) -> None:
    """A dataset of fewer than two classes trains a classifier to 100% on nothing: DataError."""
    if count < 2:
        held = f" ({names[0]})" if len(names) == 1 else ""
        raise DataError(f"{root}: holds {count} class{held}; a classifier needs 2 or more (is it one class folder "
                        "of a dataset, or a folder around the dataset's own class folders?)")


def _supported_layout(path: str | os.PathLike) -> tuple[str, str]:
    root, layout = locate_dataset(path)
    if layout == "image-folder-single":
        parent = split_layout(Path(root).resolve().parent)
        if parent is not None and parent.val is not None and Path(root).resolve() in (Path(parent.train), Path(parent.val)):
            raise DataError(f"{root}: one split of the dataset {parent.root}; give that folder (its train/ and "
                            f"{Path(parent.val).name}/ are read together)")
    if layout in _UNSUPPORTED:
        raise DataError(f"{root}: " + _UNSUPPORTED[layout].format(root=root))
    return root, layout


def check_dataset(path: str | os.PathLike) -> None:
    """What the run plan checks of a dataset folder before any work, reading no sample: a
    supported layout and, for image folders, their splits and class folders
    (:func:`image_folder_splits`); DataError otherwise."""
    root, layout = _supported_layout(path)
    if layout == "image-folders":
        classes = image_folder_splits(root)[2]
        _refuse_one_class(root, len(classes), classes)


#: layout (:func:`detect_layout`) -> opener; each takes the options of :func:`open_path_dataset`
_OPENERS = {"cifar": open_cifar, "es-imagenet-released": open_es_imagenet, "es-imagenet": open_es_imagenet,
            "es-imagenet-single": open_es_imagenet_single, "es-ucf101": open_es_ucf101, "dvs": open_dvs_folder,
            "dvs-gesture": open_dvs_gesture, "video-clips": open_video_clips, "image-folders": open_image_folders}
_UNSUPPORTED = {
    "es-ucf101-split": "ES-UCF101 in train/ and val/ folders is not supported; give the folder holding "
                       "labels.txt (the paper's 75/25 split is made from it)",
    "image-folder-single": "class folders without train/ and val/ splits; put them in {root}/train and add "
                           "{root}/val with the same class folders",
}


__all__ = [
    "EventFileDataset",
    "ResizeFrames",
    "VideoClipDataset",
    "default_image_size",
    "detect_layout",
    "locate_dataset",
    "open_path_dataset",
    "stratified_indices",
    "suggest_model",
]
