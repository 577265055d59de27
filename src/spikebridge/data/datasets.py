"""``--data`` names and paths -> a :class:`DataBundle` the trainer can use.

* ``mnist5k``: the embedded real MNIST (4,000 train / 1,000 test), static 28x28 grey.
* ``es-mnist``: ODG events made from the same digits (same split), ``[8, 2, 28, 28]`` per sample,
  cached on first use.
* a path: an ImageNet-layout folder with ``train/`` and ``val/`` class sub-folders, a CIFAR-10/100
  python folder, or an ES-ImageNet folder (label file + ``.npz`` samples).
"""
from __future__ import annotations

from ..errors import DataError
from .loading import DataBundle
from .static import MNIST_MEAN, MNIST_STD, load_mnist5k

BUILTIN_DATASETS = ("mnist5k", "es-mnist")


def open_mnist5k(*, max_shift: int = 2, split_seed: int = 0) -> DataBundle:
    train, test = load_mnist5k(seed=split_seed)
    return DataBundle(
        name="mnist5k", train=train, test=test, num_classes=10, in_channels=1, kind="static",
        image_size=28, mean=(MNIST_MEAN,), std=(MNIST_STD,), max_shift=max_shift,
    )


def open_dataset(name: str, *, max_shift: int = 2, split_seed: int = 0, workers: int = 0, image_size: int = 0) -> DataBundle:
    if name == "mnist5k":
        return open_mnist5k(max_shift=max_shift, split_seed=split_seed)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)} or a folder path")
