"""What the trainer sees of a dataset: a :class:`DataBundle` and a batch iterator.

Two kinds of split are supported:

* :class:`~spikebridge.data.static.TensorSplit` (in memory, uint8): batches are cut by index from
  a seeded permutation (fast, no worker processes), normalised, and augmented with a random
  integer shift on the batch;
* any ``torch.utils.data.Dataset`` returning ``(tensor, label)`` (image folders, event files): a
  ``DataLoader`` with workers; the dataset's own transforms do the augmentation.

Batches come out model-ready: static images ``[B, C, H, W]`` float; event frames time-major
``[T, B, 2, H, W]`` float. Under DDP each rank takes an equal, disjoint share of every epoch's
permutation (the global batch is split across ranks).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError, SpikebridgeError
from .static import TensorSplit
from .transforms import random_shift


@dataclass
class DataBundle:
    name: str
    train: TensorSplit | Dataset
    test: TensorSplit | Dataset
    num_classes: int
    in_channels: int
    kind: str = "static"  # static | events
    image_size: int = 28
    mean: tuple[float, ...] = (0.0,)  # normalisation of in-memory uint8 images
    std: tuple[float, ...] = (1.0,)
    max_shift: int = 0  # augmentation of in-memory training batches
    workers: int = 0
    info: dict = field(default_factory=dict)
    #: called with each test batch's size once the batch has been consumed (a progress bar's
    #: ``update``; ``dataclasses.replace(bundle, progress=bar.update)``); never for training batches
    progress: Callable[[int], None] | None = None

    def first_sample(self) -> torch.Tensor:
        """The first readable training sample as the model reads it (in-memory images as stored,
        uint8; see :func:`first_readable`)."""
        return first_readable_sample(self.train)[1]

    @property
    def time_steps(self) -> int | None:
        """T of event data (None for static images)."""
        return int(self.first_sample().shape[0]) if self.kind == "events" else None

    def input_meta(self) -> dict:
        """What a checkpoint records of the data it was trained on, so that ``evaluate`` and
        ``export`` read the same inputs: ``data_path`` (a folder's absolute path, None for the
        built-in datasets), ``image_size``, ``input_shape`` (one frame's ``[C, H, W]``),
        ``split_seed`` (the seed of a split made by the opener: the same test samples),
        ``time_steps`` (event frames per sample; None for images) and ``mean`` / ``std`` (the
        per-channel normalisation of static images: in memory a folder's own training split's,
        streamed photos ImageNet's; None for events)."""
        import os

        path = os.path.abspath(self.name) if os.path.exists(self.name) else None
        sample = self.first_sample()
        seed = self.info.get("split_seed")
        return {"data_path": path, "image_size": int(self.image_size), "input_shape": list(sample.shape[-3:]),
                "split_seed": int(seed) if isinstance(seed, int) else None,
                "time_steps": int(sample.shape[0]) if self.kind == "events" else None,
                **{key: [float(v) for v in values] if self.normalised else None
                   for key, values in (("mean", self.mean), ("std", self.std))}}

    @property
    def normalised(self) -> bool:
        """Whether ``mean`` / ``std`` are the normalisation the model's inputs had: in-memory static
        images, and photos streamed from an image folder (their transforms normalise with them)."""
        return self.normalises_in_memory or (self.kind == "static" and self.info.get("format") == "imagefolder"
                                             and len(self.mean) == self.in_channels)

    @property
    def normalises_in_memory(self) -> bool:
        """Whether batches are normalised with ``mean`` / ``std`` (in-memory static images)."""
        return self.kind == "static" and isinstance(self.train, TensorSplit)

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(height, width)`` of the training samples' images / event frames (the first sample's)."""
        sample = self.first_sample()
        return int(sample.shape[-2]), int(sample.shape[-1])


#: How many training samples :func:`first_readable` tries, in order, for one it can read.
SAMPLE_TRIES = 20


def first_readable(count: int, read: Callable[[int], Any], tries: int = SAMPLE_TRIES) -> tuple[int, Any, list[str]]:
    """``(index, read(index), skipped)`` for the first of the first ``tries`` of ``count`` samples
    that ``read`` can read, and why each one before it could not (its one-line
    :class:`DataError`). One corrupt file does not decide what a dataset's samples look like; the
    first error is raised only when none of them can be read."""
    skipped: list[str] = []
    for index in range(min(count, tries)):
        try:
            return index, read(index), skipped
        except DataError as exc:
            skipped.append(str(exc))
    if not skipped:
        raise DataError("the training split holds no samples")
    raise DataError(skipped[0] + (f" (and the next {len(skipped) - 1} samples)" if len(skipped) > 1 else ""))


def first_readable_sample(split: TensorSplit | Dataset) -> tuple[int, torch.Tensor, list[str]]:
    """:func:`first_readable` of a split's samples (an in-memory split's first image as stored)."""
    if isinstance(split, TensorSplit):
        return 0, split.images[0], []
    return first_readable(len(split), lambda i: split[i][0])


def limit_bundle(bundle: DataBundle, limit_train: int = 0, limit_test: int = 0, *, seed: int = 0) -> DataBundle:
    """The same bundle with at most ``limit_train`` / ``limit_test`` samples (0 = all): a seeded
    random subset of each split, kept in the split's order (quick runs and tests)."""

    def subset(split: TensorSplit | Dataset, limit: int, offset: int) -> TensorSplit | Dataset:
        if limit <= 0 or limit >= len(split):
            return split
        generator = torch.Generator().manual_seed(seed * 2 + offset)
        keep = torch.randperm(len(split), generator=generator)[:limit].sort().values
        if isinstance(split, TensorSplit):
            return TensorSplit(split.images[keep], split.labels[keep])
        return torch.utils.data.Subset(split, keep.tolist())

    return replace(bundle, train=subset(bundle.train, limit_train, 0), test=subset(bundle.test, limit_test, 1))


def _prepare_tensor_batch(bundle: DataBundle, images: torch.Tensor, train: bool, generator) -> torch.Tensor:
    x = images.float()
    if bundle.kind == "static":
        mean = torch.tensor(bundle.mean).view(1, -1, 1, 1)
        std = torch.tensor(bundle.std).view(1, -1, 1, 1)
        x = x.div_(255.0).sub_(mean).div_(std)
    if train and bundle.max_shift > 0:
        x = random_shift(x, bundle.max_shift, generator)
    return x


def to_time_major(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Event batches arrive sample-major ``[B, T, C, H, W]``; the SNN path is ``[T, B, C, H, W]``."""
    return x.transpose(0, 1).contiguous() if kind == "events" and x.dim() == 5 else x


def iterate_batches(
    bundle: DataBundle,
    split: TensorSplit | Dataset,
    batch_size: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, labels)``; training batches are shuffled with ``generator`` and drop the
    last incomplete global batch; evaluation covers every sample once across the ranks, one batch
    at a time (nothing holds the split), reporting each consumed test batch to ``bundle.progress``."""
    report = (bundle.progress if not train and split is bundle.test else None) or (lambda _n: None)
    n = len(split)
    if train:
        order = torch.randperm(n, generator=generator)
        usable = (n // batch_size) * batch_size
        order = order[:usable]
    else:
        order = torch.arange(n)
    local_batch = batch_size // world_size if train else batch_size
    where = f"{bundle.name} {'train' if split is bundle.train else 'test'} split"
    if isinstance(split, TensorSplit):
        # under DDP with augmentation, augment the whole global batch and keep this rank's share:
        # the same random draws (and generator state) as one process training on the global batch
        whole = world_size > 1 and train and bundle.max_shift > 0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            idx = idx if whole or world_size == 1 else idx[rank::world_size]
            if len(idx) == 0:
                continue
            images, labels = split.images[idx], split.labels[idx]
            _check_batch(images, labels, idx, bundle.num_classes, where, split)
            x = _prepare_tensor_batch(bundle, images, train, generator)
            if whole:
                x, labels = x[rank::world_size], labels[rank::world_size]
            yield to_time_major(x, bundle.kind), labels
            report(len(labels))
        return
    if world_size > 1:
        order = order.view(-1, batch_size)[:, rank::world_size].reshape(-1) if train else order[rank::world_size]
    loader = DataLoader(
        _CheckedSamples(split, order.tolist(), where),
        batch_size=local_batch,
        shuffle=False,
        num_workers=bundle.workers,
        persistent_workers=False,
    )
    try:
        start = 0
        for x, y in _worker_errors_as_raised(loader):
            _check_batch(None, y, order[start : start + len(y)], bundle.num_classes, where, split)
            start += len(y)
            yield to_time_major(x.float(), bundle.kind), y
            report(len(y))
    finally:
        del loader


def calibration_batches(bundle: DataBundle, count: int, batch_size: int = 256, seed: int = 0, *,
                        rank: int = 0, world_size: int = 1) -> Iterator[torch.Tensor]:
    """Inputs of ``count`` seeded random training batches without augmentation (shuffled, not
    shifted): a fixed sample of the training data for calibration and BatchNorm statistics.
    Smaller batches when the split is smaller than ``batch_size``; under DDP this rank's share."""
    plain = replace(bundle, max_shift=0)
    batch_size = max(1, min(batch_size, len(plain.train)))
    generator = torch.Generator().manual_seed(seed)
    batches = iterate_batches(plain, plain.train, batch_size, train=True, generator=generator,
                              rank=rank, world_size=world_size)
    return (x for x, _y in itertools.islice(batches, count))


def describe_sample(dataset: TensorSplit | Dataset, index: int) -> str:
    """``sample 17`` plus its file when the dataset knows it (image folders, event label files)."""
    while isinstance(dataset, torch.utils.data.Subset):  # e.g. DataConfig.limit_train: the file behind it
        dataset, index = dataset.dataset, int(dataset.indices[index])
    path = None
    try:
        if hasattr(dataset, "samples"):  # ImageFolderDataset: (path, class)
            path = dataset.samples[index][0]
        elif hasattr(dataset, "entries"):  # ESImageNetDataset: LabelEntry
            path = dataset.entries[index].path
        elif hasattr(dataset, "items"):  # ESUCF101Dataset: (path, label)
            path = dataset.items[index][0]
    except (IndexError, KeyError, TypeError, AttributeError):
        path = None
    return f"sample {index} ({path})" if path is not None else f"sample {index}"


def _check_batch(images: torch.Tensor | None, labels: torch.Tensor, idx: torch.Tensor, num_classes: int,
                 where: str, split: TensorSplit | Dataset) -> None:
    """NaN/Inf in float images, labels outside ``[0, num_classes)``: :class:`DataError` naming the sample."""
    if images is not None and images.is_floating_point():
        finite = torch.isfinite(images.reshape(len(images), -1)).all(1)
        if not finite.all():
            row = int((~finite).nonzero()[0])
            raise DataError(f"{where}: {describe_sample(split, int(idx[row]))} holds NaN or Inf values")
    bad = (labels < 0) | (labels >= num_classes) if num_classes > 0 else labels < 0
    if bad.any():
        row = int(bad.nonzero()[0])
        raise DataError(f"{where}: {describe_sample(split, int(idx[row]))} has label {int(labels[row])}, "
                        f"outside [0, {num_classes}) for this {num_classes}-class dataset")


class _CheckedSamples(Dataset):
    """``dataset[indices[i]]`` with NaN/Inf in a float sample reported as a :class:`DataError`
    naming the sample (and its file), e.g. from a transform that divides by zero."""

    def __init__(self, dataset: Dataset, indices: list[int], where: str) -> None:
        self.dataset, self.indices, self.where = dataset, indices, where

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        x, y = self.dataset[index]
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
            raise DataError(f"{self.where}: {describe_sample(self.dataset, index)} holds NaN or Inf values")
        return x, y


def _worker_errors_as_raised(loader: DataLoader) -> Iterator:
    """Iterate ``loader``; a SpikebridgeError raised in a worker process arrives with the worker's
    traceback in its message: raise it again with its own one-line message."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except SpikebridgeError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            last = [line for line in text.strip().splitlines() if line.strip()][-1]
            message = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].endswith("Error") else last
            raise type(exc)(message) from None
        yield batch


def merge_frames(frames: torch.Tensor, bins: int, time_dim: int) -> torch.Tensor:
    """Sum groups of consecutive event frames: ``T`` steps -> ``bins`` steps along ``time_dim``."""
    steps = frames.shape[time_dim]
    if bins <= 0 or steps % bins:
        raise ConfigError(f"events.time_bins={bins} must divide the stream's {steps} time steps")
    shape = list(frames.shape)
    shape[time_dim : time_dim + 1] = [bins, steps // bins]
    return frames.reshape(shape).sum(time_dim + 1).to(frames.dtype)


class MappedDataset(Dataset):
    """``(transform(x), label(y))`` of another dataset's samples (``label=None`` keeps ``y``)."""

    def __init__(self, dataset: Dataset, transform: Callable, label: Callable | None = None) -> None:
        self.dataset, self.transform, self.label = dataset, transform, label

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        return self.transform(x), (y if self.label is None else self.label(y))


def merged_time_steps(bins: int, steps: int, name: str) -> int:
    """The time steps of ``steps`` event frames merged into ``events.time_bins`` = ``bins`` (0 =
    keep them all); ConfigError, naming the choices, when ``bins`` does not divide ``steps``."""
    if bins and steps % bins:
        raise ConfigError(f"events.time_bins={bins} must divide the {steps} time steps of {name[:100]}: "
                          f"--set events.time_bins=0 keeps all {steps}, or give one of {step_divisors(steps)}")
    return bins or steps


def step_divisors(steps: int) -> str:
    """``"1, 2, 4, 8"``: the step counts ``steps`` event frames merge into."""
    return ", ".join(str(d) for d in range(1, steps + 1) if steps % d == 0)


def with_time_bins(bundle: DataBundle, bins: int) -> DataBundle:
    """The same event bundle with its frames merged into ``bins`` time steps (0 = unchanged)."""
    if bins == 0 or bundle.kind != "events":
        return bundle
    steps = bundle.time_steps  # reads the first sample: once
    if merged_time_steps(bins, steps, bundle.name) == steps:  # checked when the data opens, not at the first batch
        return bundle

    def merged(split):
        if isinstance(split, TensorSplit):
            return TensorSplit(merge_frames(split.images, bins, 1), split.labels)
        return MappedDataset(split, functools.partial(merge_frames, bins=bins, time_dim=0))

    return replace(bundle, train=merged(bundle.train), test=merged(bundle.test))


def _as_float32(x) -> torch.Tensor:
    """An array (a Tonic dataset's ``ToFrame`` output is numpy ``int16``) or tensor as float32."""
    return torch.as_tensor(x).to(torch.float32)


def _off_on_as_float32(x) -> torch.Tensor:
    """:func:`_as_float32` of ``[T, 2, H, W]`` frames with OFF first (Tonic's), ON first (ours)."""
    return _as_float32(x).flip(-3)


def dataset_bundle(train: Dataset, test: Dataset, *, num_classes: int | None = None,
                   name: str = "user dataset", polarity: str = "on_off") -> DataBundle:
    """Any pair of torch ``Dataset``s as the data of a spikebridge run: samples ``[T, C, H, W]``
    (event frames: a Tonic dataset with ``ToFrame(n_time_bins=T)``) or ``[C, H, W]`` (images),
    arrays or tensors, with integer labels. The class count is ``num_classes``, else the
    dataset's ``classes`` (Tonic and torchvision datasets have one). The samples are read as
    given: augment with the dataset's own transforms. ``polarity``: the order of two event
    channels, ``"on_off"`` (spikebridge's: ON first, which ``bridge.first_layer:
    signed_polarity`` relies on) or ``"off_on"`` (Tonic's ``ToFrame``: polarity 0, OFF, first;
    swapped to ON first). Pass the result to :func:`spikebridge.pipelines.piped` (``events=``) or
    :func:`spikebridge.pipelines.pipes` (``bundle=``)."""
    if polarity not in ("on_off", "off_on"):
        raise ConfigError(f"dataset_bundle: polarity must be 'on_off' or 'off_on' (Tonic's ToFrame), got {polarity!r}")
    for split, which in ((train, "train"), (test, "test")):
        if not hasattr(split, "__getitem__") or not hasattr(split, "__len__"):
            raise DataError(f"dataset_bundle: the {which} split is a {type(split).__name__}, not a map-style Dataset")
        if len(split) == 0:
            raise DataError(f"dataset_bundle: the {which} split is empty")
    if num_classes is None:
        classes = getattr(train, "classes", None)
        if not classes:
            raise DataError("dataset_bundle: give num_classes= (the train split has no 'classes' list)")
        num_classes = len(classes)
    to_float = _off_on_as_float32 if polarity == "off_on" else _as_float32
    train, test = MappedDataset(train, to_float, int), MappedDataset(test, to_float, int)
    try:
        sample, _label = train[0]
        test_sample, _label = test[0]
    except (TypeError, ValueError) as exc:
        raise DataError(f"dataset_bundle: the first sample is not (array, label): {exc}"[:200]) from None
    if tuple(test_sample.shape) != tuple(sample.shape):  # a model trained at one T (or size) tested at another
        raise DataError(f"dataset_bundle: the test samples are {list(test_sample.shape)}, the training samples "
                        f"{list(sample.shape)}; give both splits the same time bins and frame size")
    if sample.dim() not in (3, 4):
        raise DataError(f"dataset_bundle: samples must be [T, C, H, W] event frames or [C, H, W] images, "
                        f"got shape {list(sample.shape)}")
    kind = "events" if sample.dim() == 4 else "static"
    if polarity == "off_on" and (kind != "events" or sample.shape[-3] != 2):
        raise DataError(f"dataset_bundle: polarity='off_on' orders the two channels of event frames; the samples "
                        f"are {list(sample.shape)}")
    return DataBundle(name=name, train=train, test=test, num_classes=int(num_classes),
                      in_channels=int(sample.shape[-3]), kind=kind, image_size=int(sample.shape[-1]))
