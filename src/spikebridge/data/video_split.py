"""The paper's ES-UCF101 split (arXiv:2203.01158 "pipeD recipes"): 75 % train / 25 % test, random with
seed 42, instead of UCF101's official splits.

The reference code split an *unsorted* directory listing with scikit-learn's
``train_test_split(clips, test_size=0.25, random_state=42)``, so its split depended on the file
system. Here the clip list is **sorted first** (natural order of the ``/``-separated relative
paths, :func:`~spikebridge.data.video.natural_key`), then shuffled with exactly the permutation
scikit-learn's ``train_test_split`` draws (``numpy.random.RandomState(seed).permutation(n)``;
the first ``ceil(test_fraction * n)`` go to test, the rest to train, in permutation order). The
split of a given set of clips is therefore the same on every machine and in any listing order.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence, TypeVar

import numpy as np

from ..errors import ConfigError, DataError
from .video import natural_key

Clip = TypeVar("Clip", str, Path)


def _sort_key(clip: str | Path) -> tuple:
    return natural_key(Path(clip).as_posix() if isinstance(clip, Path) else str(clip))


def split_clips(
    clips: Sequence[Clip], *, test_fraction: float = 0.25, seed: int = 42
) -> tuple[list[Clip], list[Clip]]:
    """``(train, test)`` lists of ``clips`` (paths or names): sorted, then a seeded random split.

    ``test_fraction``: share of clips in the test list (rounded up, as scikit-learn does);
    ``seed``: the shuffle's seed (the paper's 42). Raises :class:`ConfigError` for a fraction
    outside (0, 1) and :class:`DataError` when either side would be empty or a clip repeats.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise ConfigError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    ordered = sorted(clips, key=_sort_key)
    n = len(ordered)
    if len({_sort_key(c) for c in ordered}) != n:
        raise DataError("the clip list holds duplicates")
    n_test = math.ceil(test_fraction * n)
    if n_test < 1 or n_test >= n:
        raise DataError(f"cannot split {n} clips into non-empty train and test sets with test_fraction={test_fraction}")
    order = np.random.RandomState(seed).permutation(n)
    test = [ordered[i] for i in order[:n_test]]
    train = [ordered[i] for i in order[n_test:]]
    return train, test

