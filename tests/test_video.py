"""Video -> events (ES-UCF101): frame order, sampling, thresholds, storage, dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spikebridge.data.events import write_label_file
from spikebridge.data.video import (
    ESUCF101Dataset,
    clip_to_events,
    frames_to_events,
    list_frames,
    load_clip,
    natural_key,
    read_video_events,
    sample_indices,
    write_video_events,
)
from spikebridge.errors import ConfigError, DataError


def moving_square_clip(n=40, h=48, w=64, side=12):
    """A bright square moving right 1 px per frame over a dark, slightly textured background."""
    rng = np.random.default_rng(0)
    background = rng.integers(10, 30, (h, w)).astype(np.uint8)
    frames = []
    for i in range(n):
        f = background.copy()
        f[18:18 + side, 2 + i:2 + i + side] = 220
        frames.append(f)
    return np.stack(frames)


def write_clip(folder, frames, pattern="frame{}.png", start=1):
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(1).permutation(len(frames))  # create files in a shuffled order
    for i in order:
        Image.fromarray(frames[i]).save(folder / pattern.format(i + start))


def test_natural_order():
    names = ["frame10.jpg", "frame9.jpg", "frame1.jpg", "Frame2.jpg", "frame100.jpg"]
    assert sorted(names, key=natural_key) == ["frame1.jpg", "Frame2.jpg", "frame9.jpg", "frame10.jpg",
                                              "frame100.jpg"]


def test_frames_are_listed_in_natural_order(tmp_path):
    frames = moving_square_clip(12)
    write_clip(tmp_path / "clip", frames)
    (tmp_path / "clip" / "notes.txt").write_text("not a frame")
    (tmp_path / "clip" / ".hidden.png").write_bytes(b"")
    names = [p.name for p in list_frames(tmp_path / "clip")]
    assert names == [f"frame{i}.png" for i in range(1, 13)]


def test_sample_indices():
    idx = sample_indices(100, 31)
    assert idx[0] == 0 and idx[-1] == 99 and len(idx) == 31 and (np.diff(idx) > 0).all()
    assert sample_indices(31, 31).tolist() == list(range(31))
    short = sample_indices(20, 31)
    assert short[0] == 0 and short[-1] == 19 and (np.diff(short) >= 0).all()


def test_clip_events_follow_the_motion(tmp_path):
    frames = moving_square_clip(31)  # 31 frames: every frame is sampled
    write_clip(tmp_path / "clip", frames)
    grey = load_clip(tmp_path / "clip")
    assert grey.shape == (31, 48, 64) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, frames / 255.0, atol=1e-6)  # natural order, not name order
    events = clip_to_events(tmp_path / "clip")
    assert events.shape == (2, 30, 48, 64) and events.dtype == np.uint8
    # the square (rows 18..29) moves right: ON on its new leading column, OFF on the column it left
    for t in range(30):
        on_cols = set(np.nonzero(events[0, t])[1].tolist())
        off_cols = set(np.nonzero(events[1, t])[1].tolist())
        assert on_cols == {2 + (t + 1) + 11} and off_cols == {2 + t}
        assert set(np.nonzero(events[0, t])[0].tolist()) == set(range(18, 30))


def test_percentile_mode_matches_a_direct_computation():
    rng = np.random.default_rng(2)
    frames = rng.random((31, 16, 20)).astype(np.float32)
    events = frames_to_events(frames)
    diffs = (frames[1:] - frames[:-1]).ravel()
    ordered = np.sort(diffs)

    def percentile(q):  # linear interpolation between closest ranks
        pos = q / 100 * (len(ordered) - 1)
        lo = int(np.floor(pos))
        return ordered[lo] + (ordered[min(lo + 1, len(ordered) - 1)] - ordered[lo]) * (pos - lo)

    hi, lo = percentile(92.5), percentile(7.5)
    d = frames[1:] - frames[:-1]
    np.testing.assert_array_equal(events[0], (d > np.float32(hi)).astype(np.uint8))
    np.testing.assert_array_equal(events[1], (d < np.float32(lo)).astype(np.uint8))
    assert abs(events.mean() * 2 - 0.15) < 0.002  # the paper's event ratio
    custom = frames_to_events(frames, upper=99, lower=1)
    assert custom.sum() < events.sum()


def test_random_mode_is_seeded_and_clipped():
    rng = np.random.default_rng(3)
    # mostly static clip with small noise: the percentiles are tiny, so the 0.01 clip matters
    frames = (0.5 + 0.004 * rng.standard_normal((31, 32, 32))).astype(np.float32)
    frames[15:, 8:16, 8:16] += 0.4
    a = frames_to_events(frames, mode="random", rng=7)
    b = frames_to_events(frames, mode="random", rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    c = frames_to_events(frames, mode="random", rng=8)
    d = frames[1:] - frames[:-1]
    assert (d[a[0] == 1] >= 0.01).all() and (d[a[1] == 1] <= -0.01).all()
    assert a[0, 14, 8:16, 8:16].all()  # the step of +0.4 always fires
    assert not np.array_equal(a, frames_to_events(frames))  # thresholds differ from the percentile mode
    assert c.sum() > 0
    with pytest.raises(ConfigError):
        frames_to_events(frames, mode="bogus")


def test_storage_round_trip_and_bad_files(tmp_path):
    events = clip_to_events_from_array(moving_square_clip(31))
    write_video_events(tmp_path / "c.npz", events)
    np.testing.assert_array_equal(read_video_events(tmp_path / "c.npz"), events)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
    (tmp_path / "bad.npz").write_bytes((tmp_path / "c.npz").read_bytes()[:100])
    np.savez(tmp_path / "dtype.npz", events=events.astype(np.float32))
    np.savez(tmp_path / "key.npz", frames=events)
    for name in ("bad", "dtype", "key", "missing"):
        with pytest.raises(DataError, match=f"{name}.npz"):
            read_video_events(tmp_path / f"{name}.npz")
    with pytest.raises(DataError):
        write_video_events(tmp_path / "x.npz", events[0])


def clip_to_events_from_array(frames):
    return frames_to_events(frames.astype(np.float32) / 255)


def test_clip_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no frame images"):
        load_clip(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        load_clip(tmp_path / "nope")
    write_clip(tmp_path / "broken", moving_square_clip(5))
    (tmp_path / "broken" / "frame3.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="frame3.png"):
        load_clip(tmp_path / "broken")
    write_clip(tmp_path / "sizes", moving_square_clip(5))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "sizes" / "frame5.png")
    with pytest.raises(DataError, match="differs"):
        load_clip(tmp_path / "sizes")


def test_dataset_layouts(tmp_path):
    events = clip_to_events_from_array(moving_square_clip(31))
    root = tmp_path / "es_ucf"
    write_video_events(root / "Basketball" / "v_1.npz", events)
    write_video_events(root / "ApplyLipstick" / "v_2.npz", 1 - events)
    ds = ESUCF101Dataset(root, n_steps=15)
    assert ds.labels == [0, 1] and len(ds) == 2
    frames, label = ds[1]
    assert frames.shape == (15, 2, 48, 64) and frames.dtype == torch.float32 and label == 1
    assert torch.equal(frames, torch.from_numpy(events[:, :15].transpose(1, 0, 2, 3)).float())
    assert ESUCF101Dataset(root)[0][0].shape == (30, 2, 48, 64)
    write_label_file(root / "labels.txt", [("Basketball/v_1.npz", 4, 48, 64)])
    ds = ESUCF101Dataset(root)
    assert ds.labels == [4] and len(ds) == 1
    with pytest.raises(DataError, match="requested"):
        ESUCF101Dataset(root, n_steps=31)[0]
