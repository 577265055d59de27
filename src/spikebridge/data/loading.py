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

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

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

    @property
    def time_steps(self) -> int | None:
        """T of event data (None for static images)."""
        if self.kind != "events":
            return None
        sample = self.train.images[0] if isinstance(self.train, TensorSplit) else self.train[0][0]
        return int(sample.shape[0])


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
    last incomplete global batch; evaluation covers every sample once across the ranks."""
    n = len(split)
    if train:
        order = torch.randperm(n, generator=generator)
        usable = (n // batch_size) * batch_size
        order = order[:usable]
    else:
        order = torch.arange(n)
    local_batch = batch_size // world_size if train else batch_size
    if isinstance(split, TensorSplit):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            idx = idx[rank::world_size] if world_size > 1 else idx
            if len(idx) == 0:
                continue
            x = _prepare_tensor_batch(bundle, split.images[idx], train, generator)
            yield to_time_major(x, bundle.kind), split.labels[idx]
        return
    if world_size > 1:
        order = order.view(-1, batch_size)[:, rank::world_size].reshape(-1) if train else order[rank::world_size]
    loader = DataLoader(
        torch.utils.data.Subset(split, order.tolist()),
        batch_size=local_batch,
        shuffle=False,
        num_workers=bundle.workers,
        persistent_workers=False,
    )
    try:
        for x, y in loader:
            yield to_time_major(x.float(), bundle.kind), y
    finally:
        del loader
