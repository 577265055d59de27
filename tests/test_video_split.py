"""The paper's 75/25 random split (seed 42) of ES-UCF101 clips: sorted first, then seeded."""
from __future__ import annotations

import random

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from spikebridge.data.video_split import split_clips
from spikebridge.errors import ConfigError, DataError

UCF_LIKE = [f"{cls}/v_{cls}_g{g:02d}_c{c:02d}" for cls in ("ApplyEyeMakeup", "Archery", "Basketball")
            for g in range(1, 8) for c in range(1, 4)]  # 63 clips


def test_split_is_sklearn_train_test_split_of_the_sorted_list():
    train, test = split_clips(UCF_LIKE)
    ref_train, ref_test = train_test_split(sorted(UCF_LIKE), test_size=0.25, random_state=42)
    assert train == ref_train and test == ref_test
    assert len(test) == 16 and len(train) == 47  # ceil(0.25 * 63)
    assert sorted(train + test) == sorted(UCF_LIKE) and not set(train) & set(test)


def test_split_does_not_depend_on_listing_order():
    shuffled = UCF_LIKE[:]
    random.Random(3).shuffle(shuffled)
    assert split_clips(shuffled) == split_clips(UCF_LIKE)
    # another seed gives another split, same sizes
    other = split_clips(UCF_LIKE, seed=7)
    assert other != split_clips(UCF_LIKE) and len(other[1]) == 16


def test_split_sorts_naturally_and_keeps_paths(tmp_path):
    clips = [tmp_path / f"c/clip{i}" for i in range(12)]
    train, test = split_clips(clips, test_fraction=0.5, seed=0)
    ordered = sorted(clips, key=lambda p: int(p.name[4:]))  # clip2 before clip10
    perm = np.random.RandomState(0).permutation(12)
    assert test == [ordered[i] for i in perm[:6]] and train == [ordered[i] for i in perm[6:]]


def test_split_errors(tmp_path):
    with pytest.raises(ConfigError, match="test_fraction"):
        split_clips(UCF_LIKE, test_fraction=1.0)
    with pytest.raises(DataError, match="non-empty"):
        split_clips(["a/one"])
    with pytest.raises(DataError, match="duplicates"):
        split_clips(["a/one", "a/one", "a/two"])
