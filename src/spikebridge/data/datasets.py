"""``--data`` names and paths -> a :class:`DataBundle` the trainer can use.

* ``mnist5k``: the embedded real MNIST (4,000 train / 1,000 test), static 28x28 grey.
* ``es-mnist``: ODG events made from the same digits (same split), ``[8, 2, 28, 28]`` per sample,
  cached on first use.
* a path: an ImageNet-layout folder with ``train/`` and ``val/`` class sub-folders, a CIFAR-10/100
  python folder, or an ES-ImageNet folder (label file + ``.npz`` samples).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DataError, clip
from .loading import DataBundle, limit_bundle
from .static import MNIST_MEAN, MNIST_STD, TensorSplit, load_mnist5k

BUILTIN_DATASETS = ("mnist5k", "es-mnist")


def open_mnist5k(*, max_shift: int = 2, split_seed: int = 0) -> DataBundle:
    train, test = load_mnist5k(seed=split_seed)
    return DataBundle(
        name="mnist5k", train=train, test=test, num_classes=10, in_channels=1, kind="static",
        image_size=28, mean=(MNIST_MEAN,), std=(MNIST_STD,), max_shift=max_shift,
    )


def open_es_mnist(*, split_seed: int = 0, cache_dir: str | Path | None = None) -> DataBundle:
    """ODG events of the embedded digits (same split), cached as ``.npz`` on first use."""
    from .odg import ESMNISTConfig, cached_es_mnist

    train, test = load_mnist5k(seed=split_seed)
    images = torch.cat([train.images, test.images]).squeeze(1).numpy()
    labels = torch.cat([train.labels, test.labels]).numpy()
    cache = Path(cache_dir or default_cache_dir()) / f"es_mnist_split{split_seed}.npz"
    frames, labels_t = cached_es_mnist(images, labels, cache)
    n = len(train)
    return DataBundle(
        name="es-mnist", train=TensorSplit(frames[:n], labels_t[:n]), test=TensorSplit(frames[n:], labels_t[n:]),
        num_classes=10, in_channels=2, kind="events", image_size=int(frames.shape[-1]),
        max_shift=0, info={"odg": repr(ESMNISTConfig())},
    )


def default_cache_dir() -> Path:
    """``$SPIKEBRIDGE_CACHE`` or ``~/.cache/spikebridge``."""
    return Path(os.environ.get("SPIKEBRIDGE_CACHE") or Path.home() / ".cache" / "spikebridge")


def check_builtin_size(name: str, image_size: int) -> None:
    """A built-in dataset is 28 x 28: any other ``image_size`` is refused (DataError)."""
    if name in BUILTIN_DATASETS and image_size not in (0, 28):
        raise DataError(f"{name} is 28 x 28: image_size={image_size} applies only to dataset folders")


def event_steps(name: str) -> int | None:
    """The time steps of the event frames a dataset name or folder yields; None for static images.
    A missing or unrecognised folder raises DataError (nothing is read but the folder's layout)."""
    from .disk import EVENT_LAYOUT_STEPS, ODG_STEPS, detect_layout

    if name in BUILTIN_DATASETS:
        return ODG_STEPS if name == "es-mnist" else None
    try:
        return EVENT_LAYOUT_STEPS.get(detect_layout(name))
    except OSError as exc:
        raise DataError(f"dataset {clip(name)!r}: cannot read it ({exc.strerror or exc})") from None


def video_clip_frames(name: str) -> int:
    """The frames every model reads from a folder of RGB video clips (the paper's ES-UCF101
    frames 1..15), 0 for any other dataset or a folder that cannot be read (the plan says why)."""
    from .disk import DEFAULT_VIDEO_STEPS, detect_layout

    if name in BUILTIN_DATASETS or not os.path.isdir(name):
        return 0
    try:
        return DEFAULT_VIDEO_STEPS if detect_layout(name) == "video-clips" else 0
    except (DataError, OSError):
        return 0


def open_dataset(name: str, *, max_shift: int = 2, split_seed: int = 0, workers: int = 0, image_size: int = 0,
                 limit_train: int = 0, limit_test: int = 0, time_steps: int = 0) -> DataBundle:
    """A built-in dataset by name, or the dataset in folder ``name`` (:mod:`spikebridge.data.disk`).

    ``image_size`` (0 = from the data), ``workers`` and ``time_steps`` (DVS / video: 0 = the
    paper's) apply to folders; ``limit_train`` / ``limit_test`` take seeded subsets.
    """
    if limit_train or limit_test:  # a seeded subset (DataConfig.limit_train / limit_test): quick runs, tests
        full = open_dataset(name, max_shift=max_shift, split_seed=split_seed, workers=workers, image_size=image_size,
                            time_steps=time_steps)
        return limit_bundle(full, limit_train, limit_test, seed=split_seed)
    check_builtin_size(name, image_size)
    if name == "mnist5k":
        bundle = open_mnist5k(max_shift=max_shift, split_seed=split_seed)
    elif name == "es-mnist":
        bundle = open_es_mnist(split_seed=split_seed)
    elif not Path(name).exists():
        raise DataError(f"dataset {name!r} not found: use one of {', '.join(BUILTIN_DATASETS)} or an existing dataset folder")
    else:
        from .disk import open_path_dataset

        bundle = open_path_dataset(name, max_shift=max_shift, split_seed=split_seed, workers=workers,
                                   image_size=image_size, time_steps=time_steps)
    bundle.info.setdefault("split_seed", split_seed)  # a checkpoint records it (DataBundle.input_meta)
    return bundle


def open_data_config(data, *, name: str | None = None) -> DataBundle:
    """Open the dataset a :class:`~spikebridge.config.DataConfig` describes (``name`` replaces
    ``data.name``, e.g. pipeD's ``events.data``)."""
    return open_dataset(
        name or data.name, max_shift=data.max_shift, split_seed=data.split_seed, workers=data.workers,
        image_size=data.image_size, limit_train=data.limit_train, limit_test=data.limit_test,
    )


def planned_model(name: str, data: str, image_size: int = 0) -> str:
    """``name``, or for ``"auto"`` (or empty) the model it will pick for dataset ``data`` when
    that can be told without opening it (:func:`~spikebridge.data.disk.peek_model`), else
    ``"auto"``: the run plan's view of :func:`resolve_model_name`."""
    from .disk import model_for, peek_model

    if name and name != "auto":
        return name
    if data in BUILTIN_DATASETS:
        return model_for(None, image_size or 28, 2 if data == "es-mnist" else 1)
    try:
        return peek_model(data, image_size) or "auto"
    except (DataError, OSError):  # the plan's data checks name the problem
        return "auto"


def resolve_model_name(name: str, bundle: DataBundle) -> str:
    """``name``, or the model :func:`~spikebridge.data.disk.suggest_model` picks for ``bundle``
    when ``name`` is ``"auto"`` (or empty)."""
    if name and name != "auto":
        return name
    from .disk import suggest_model

    return suggest_model(bundle)
