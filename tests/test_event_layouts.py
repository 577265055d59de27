"""Event data as the field stores it (issue 13 item 2, issue 12 item 4): Tonic's on-disk layouts of
N-MNIST (``Train/`` + ``Test/``), CIFAR10-DVS (class folders of ``.aedat4``) and DVS-Gesture
(``ibmGestureTrain/`` + ``ibmGestureTest/`` of user folders of ``<label>.npy``), split folders in
any case, AEDAT 4.0 decoding (LZ4 and uncompressed), and ES-UCF101 clips as the authors'
conversion script writes them (``arr_0``). Every file is written here in the real format."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import _layouts as layouts
from spikebridge.data.datasets import open_dataset
from spikebridge.data.disk import detect_layout
from spikebridge.data.events import (AEDAT4_EXTRA_HINT, events_to_frames, make_events, read_aedat, read_aedat4,
                                     read_event_file, read_gesture_npy, read_nmnist_bin)
from spikebridge.data.folders import split_layout
from spikebridge.data.video import ESUCF101Dataset, read_video_events
from spikebridge.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _stream(rng, n, w, h, label=0, t_max=300_000):
    x = (rng.integers(0, w // 2, n) + label * (w // 6)) % w
    return make_events(x, rng.integers(0, h, n), np.sort(rng.integers(0, t_max, n)), rng.integers(0, 2, n))


def _items(ds):
    return [ds[i] for i in range(len(ds))]


# ------------------------------------------------------------------------------------------------
# AEDAT 4.0
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lz4", [False, True])
def test_aedat4_reads_the_events_and_sensor(tmp_path, lz4):
    events = _stream(np.random.default_rng(1), 2500, 346, 260)
    path = layouts.write_aedat4(tmp_path / "rec.aedat4", events, sensor=(346, 260), lz4=lz4, packet_size=700)
    got, sensor = read_aedat4(path)
    assert sensor == (346, 260) and got.dtype == events.dtype
    np.testing.assert_array_equal(got, events)
    np.testing.assert_array_equal(read_aedat(path), events)  # read_aedat dispatches on the version line


def test_aedat4_corrupt_files_are_one_line_errors(tmp_path):
    good = layouts.write_aedat4(tmp_path / "good.aedat4", _stream(np.random.default_rng(2), 300, 128, 128))
    raw = good.read_bytes()
    cases = {
        "cut.aedat4": raw[: len(raw) - 100],                      # a truncated packet
        "header.aedat4": raw[:14] + b"\xff" * 40,                  # garbage IOHeader
        "empty.aedat4": b"#!AER-DAT4.0\r\n",
        "zeros.aedat4": b"#!AER-DAT4.0\r\n" + bytes(20),  # the decoder panics (Rust): a BaseException
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DataError) as info:
            read_aedat4(tmp_path / name)
        message = str(info.value)
        assert name in message and "\n" not in message and len(message) < 400, message


def test_aedat4_without_the_extra_names_it(tmp_path):
    path = layouts.write_aedat4(tmp_path / "rec.aedat4", _stream(np.random.default_rng(3), 50, 128, 128))
    code = ("import sys; sys.modules['aedat'] = None\n"  # the import fails as when the package is absent
            "from spikebridge.data.events import read_aedat4\n"
            f"read_aedat4({str(path)!r})")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith(AEDAT4_EXTRA_HINT) and "pip install 'spikebridge[aedat4]'" in last


# ------------------------------------------------------------------------------------------------
# Tonic's layouts
# ------------------------------------------------------------------------------------------------
def _nmnist_tonic(root: Path, train="Train", test="Test", per_class=3) -> Path:
    rng = np.random.default_rng(4)
    for split, count in ((train, per_class), (test, 2)):
        for label in range(3):
            for i in range(count):
                layouts.write_nmnist_bin(root / split / str(label) / f"{i:05d}.bin", _stream(rng, 400, 34, 34, label))
    return root


def test_nmnist_tonic_layout(tmp_path):
    root = _nmnist_tonic(tmp_path / "NMNIST")
    assert detect_layout(root) == "dvs"
    bundle = open_dataset(str(root), time_steps=5)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (3, 2, 34)
    assert bundle.info["split"] == "folders" and len(bundle.train) == 9 and len(bundle.test) == 6
    items = _items(bundle.test)
    assert [y for _, y in items] == [0, 0, 1, 1, 2, 2]
    path = root / "Test" / "1" / "00001.bin"
    expected = events_to_frames(read_nmnist_bin(path), sensor_size=(34, 34), n_time_bins=5)
    assert torch.equal(items[3][0], expected) and expected.sum() > 0
    # one stray event (x = 40) in one recording made every frame 240 x 180 (N-Caltech101's sensor)
    stray = root / "Train" / "0" / sorted(p.name for p in (root / "Train" / "0").iterdir())[0]
    events = read_nmnist_bin(stray)
    events["x"][0] = 40
    layouts.write_nmnist_bin(stray, events)
    with pytest.raises(DataError, match=f"{stray.name}: events outside the 34x34 sensor of the dataset's other N-MNIST"):
        open_dataset(str(root), time_steps=5)


@pytest.mark.parametrize("train, test", [("train", "Test"), ("TRAIN", "val"), ("Train", "test")])
def test_split_folders_match_in_any_case(tmp_path, train, test):
    root = _nmnist_tonic(tmp_path / "d", train=train, test=test, per_class=2)
    bundle = open_dataset(str(root), time_steps=3)
    assert bundle.info["split"] == "folders" and (len(bundle.train), len(bundle.test)) == (6, 6)
    images = layouts.image_folders(tmp_path / "img", size=(28, 28), grey=True)
    (images / "train").rename(images / train)
    (images / "val").rename(images / test)
    layout = split_layout(images)
    assert Path(layout.train).name == train and Path(layout.val).name == test
    assert open_dataset(str(images)).num_classes == 3


def test_cifar10dvs_tonic_layout_aedat4(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "CIFAR10DVS"
    streams = {}
    for label, name in enumerate(layouts.CIFAR10_NAMES[:3]):
        for i in range(4):
            path = root / name / f"cifar10_{name}_{i}.aedat4"
            streams[path] = _stream(rng, 600, 128, 128, label)
            layouts.write_aedat4(path, streams[path], lz4=bool(i % 2))
    assert detect_layout(root) == "dvs"
    bundle = open_dataset(str(root), time_steps=4)
    assert (bundle.num_classes, bundle.image_size) == (3, 128) and len(bundle.train) + len(bundle.test) == 12
    for path, label in bundle.test.samples:
        frames, y = bundle.test[bundle.test.samples.index((path, label))]
        assert y == label and torch.equal(frames, events_to_frames(streams[path], sensor_size=(128, 128), n_time_bins=4))


def _gesture_npy(path: Path, events: np.ndarray, dtype) -> None:
    """Tonic's DVS-Gesture sample: an [N, 4] array of x, y, p, t in ms."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack([events["x"], events["y"], events["p"], events["t"] // 1000], 1).astype(dtype)
    np.save(path, arr)


def _gesture_tonic(root: Path) -> dict[Path, np.ndarray]:
    """DVS-Gesture as Tonic extracts it (3 gestures a user, 2 training users, 1 test user); the
    events of each file written."""
    rng = np.random.default_rng(6)
    written = {}
    for split, users in (("ibmGestureTrain", ("user01_fluorescent", "user02_led")), ("ibmGestureTest", ("user24_natural",))):
        for user in users:
            for label in (0, 3, 10):
                events = _stream(rng, 500, 128, 128, label % 4, t_max=6_000_000)
                path = root / split / user / f"{label}.npy"
                _gesture_npy(path, events, np.float64 if label % 2 else np.int32)
                written[path] = events
    return written


def test_dvs_gesture_tonic_layout(tmp_path):
    root = tmp_path / "DVSGesture"
    written = _gesture_tonic(root)
    assert detect_layout(root) == "dvs-gesture"
    bundle = open_dataset(str(root), time_steps=6)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (11, 2, 128)
    assert (len(bundle.train), len(bundle.test)) == (6, 3)
    assert [y for _, y in bundle.test.samples] == [0, 10, 3]  # sorted file names: 0, 10, 3
    path = root / "ibmGestureTest" / "user24_natural" / "3.npy"
    events = read_gesture_npy(path)
    ms = written[path]["t"] // 1000
    np.testing.assert_array_equal(events["t"], ms * 1000)
    np.testing.assert_array_equal(events["x"], written[path]["x"])
    np.testing.assert_array_equal(events["p"], written[path]["p"])
    frames, label = bundle.test[2]
    assert label == 3 and torch.equal(frames, events_to_frames(events, sensor_size=(128, 128), n_time_bins=6))
    # a file not named by a label in 0..10 is refused with one line
    _gesture_npy(root / "ibmGestureTrain" / "user01_fluorescent" / "11.npy", written[path], np.int32)
    with pytest.raises(DataError, match=r"11\.npy: a DVS-Gesture sample is named by its label, 0\.\.10\.npy"):
        open_dataset(str(root))


# ------------------------------------------------------------------------------------------------
# Tonic's save_to folder: the folder given holds the dataset (./data/NMNIST/, ./data/DVSGesture/)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, make, layout", [("NMNIST", _nmnist_tonic, "dvs"),
                                                ("DVSGesture", _gesture_tonic, "dvs-gesture")])
def test_tonic_save_to_folder_opens_the_dataset_in_it(tmp_path, name, make, layout):
    """``tonic.datasets.NMNIST(save_to="data")`` extracts to ``data/NMNIST/``: ``--data data`` opens
    that folder, as ``--data data/NMNIST`` does; files (archives), hidden folders and folders that
    are no dataset (torchvision's ``MNIST/raw``) beside it are passed over."""
    save_to = tmp_path / "data"
    make(save_to / name)
    (save_to / f"{name}.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    (save_to / ".cache" / "Train" / "0").mkdir(parents=True)
    (save_to / "MNIST" / "raw").mkdir(parents=True)
    (save_to / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b")
    assert detect_layout(save_to) == layout
    direct, via_parent = open_dataset(str(save_to / name), time_steps=3), open_dataset(str(save_to), time_steps=3)
    assert (len(via_parent.train), len(via_parent.test)) == (len(direct.train), len(direct.test))
    assert via_parent.num_classes == direct.num_classes and via_parent.info["format"] == layout
    assert via_parent.info["path"] == via_parent.name == str(save_to / name)
    assert torch.equal(via_parent.test[1][0], direct.test[1][0])
    from spikebridge.data.inspect import inspect_path

    info, _ = inspect_path(save_to)
    assert info["layout"] == layout and info["splits"] == {"train": len(direct.train), "test": len(direct.test)}


def test_save_to_folder_with_several_datasets_names_them(tmp_path):
    save_to = tmp_path / "data"
    _nmnist_tonic(save_to / "NMNIST", per_class=1)
    _gesture_tonic(save_to / "DVSGesture")
    for call in (detect_layout, open_dataset):
        with pytest.raises(DataError) as info:
            call(str(save_to))
        message = str(info.value)
        assert "\n" not in message and "holds 2 datasets: DVSGesture (dvs-gesture), NMNIST (dvs)" in message, message
        assert "pass the one to use" in message
    assert detect_layout(save_to / "NMNIST") == "dvs"  # each one, passed itself, opens


def test_plan_with_the_save_to_folder_shows_the_dataset_used(tmp_path, capsys):
    import json

    from spikebridge import cli

    save_to = tmp_path / "data"
    _nmnist_tonic(save_to / "NMNIST", per_class=1)
    out = tmp_path / "out"
    status = cli.main(["piped", "--data", "mnist5k", "--events", str(save_to), "--out", str(out), "--plan",
                       "--set", "events.time_bins=0"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    events = [p for p in json.loads(captured.out)["phases"] if p["name"].startswith("snn_events")]
    assert events and {p["data"] for p in events} == {str(save_to / "NMNIST")} and {p["T"] for p in events} == {8}
    assert not out.exists()


def test_gesture_npy_bad_files(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"a\.npy: a DVS-Gesture sample is a numeric \[N, 4\] array"):
        read_gesture_npy(tmp_path / "a.npy")
    (tmp_path / "b.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match=r"b\.npy: not a readable \.npy"):
        read_gesture_npy(tmp_path / "b.npy")
    # values that were read wrong without a word: polarity 3 as ON, x = 65541 wrapped to 5 through
    # int16, x = 1.5 cut to 1, t = 1e17 ms overflowing the µs
    good = np.array([[1, 2, 1, 10.0], [3, 4, 0, 20.0]])
    for column, value, words in ((2, 3, "polarity must be bool, 0/1 or -1/1"), (0, 65541, "x outside the sensor"),
                                 (0, 1.5, "x coordinates must be integers"), (1, -1, "y outside the sensor"),
                                 (3, 1e17, "timestamps must lie in")):
        bad = good.copy()
        bad[1, column] = value
        np.save(tmp_path / "c.npy", bad)
        with pytest.raises(DataError, match=words):
            read_gesture_npy(tmp_path / "c.npy")
    # Tonic's structured (x, y, t, p) arrays saved as they are: said so (the message was about [N, 4] arrays
    # or uint8 [2, T, H, W] clips)
    structured = make_events([1, 2], [3, 4], [10, 20], [1, 0])
    np.save(tmp_path / "d.npy", structured)
    np.savez(tmp_path / "e.npz", events=structured)
    for path, read in ((tmp_path / "d.npy", read_gesture_npy), (tmp_path / "e.npz", read_video_events)):
        with pytest.raises(DataError, match=r"structured \(x, y, t, p\) event array .*events_to_frames"):
            read(path)


# ------------------------------------------------------------------------------------------------
# ES-UCF101 as the authors' conversion script writes it (issue 12 item 4)
# ------------------------------------------------------------------------------------------------
def _clip(rng, label, steps=30, h=12, w=16):
    events = (rng.random((2, steps, h, w)) < 0.1).astype(np.uint8)
    events[0, :, label, :] = 1
    return events


@pytest.mark.parametrize("flat", [False, True])
def test_es_ucf101_arr_0_files(tmp_path, flat):
    rng = np.random.default_rng(7)
    root = tmp_path / "es-ucf101"
    clips = {}
    for label, cls in enumerate(("ApplyEyeMakeup", "Archery")):
        for c in range(4):
            name = f"v_{cls}_g01_c{c + 1:02d}.npz"
            path = root / name if flat else root / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            clips[path] = (_clip(rng, label), label)
            np.savez_compressed(path, clips[path][0].astype(bool) if c == 0 else clips[path][0])  # key arr_0
    assert detect_layout(root) == "es-ucf101"
    for path, (events, _label) in clips.items():
        np.testing.assert_array_equal(read_video_events(path), events)
    ds = ESUCF101Dataset(root, n_steps=15)
    assert sorted((str(p), y) for p, y in ds.items) == sorted((str(p), y) for p, (_, y) in clips.items())
    frames, label = ds[0]
    events, expected_label = clips[ds.items[0][0]]
    assert label == expected_label and torch.equal(frames, torch.from_numpy(events[:, :15].transpose(1, 0, 2, 3)).float())
    bundle = open_dataset(str(root))
    assert (bundle.num_classes, bundle.info["format"], len(bundle.train) + len(bundle.test)) == (2, "es-ucf101", 8)
    # a clip of another frame size: named (training crashed in the collate, or it passed unseen)
    odd = sorted(clips)[-1]
    np.savez_compressed(odd, _clip(rng, 1, h=10))
    ds = ESUCF101Dataset(root, n_steps=15)
    with pytest.raises(DataError, match=f"{odd.name}: frames of 10 x 16, but the dataset's first clip .* has 12 x 16"):
        ds[[str(p) for p, _ in ds.items].index(str(odd))]
    if not flat:  # a folder without clips (UCF101's split lists) is no class: it took a label and held no clip
        (root / "Aaa").mkdir()
        (root / "ucfTrainTestlist").mkdir()
        (root / "ucfTrainTestlist" / "trainlist01.txt").write_text("x\n")
        assert sorted({y for _, y in ESUCF101Dataset(root).items}) == [0, 1]


def test_es_ucf101_flat_folder_needs_ucf101_names(tmp_path):
    np.savez_compressed(tmp_path / "clip1.npz", _clip(np.random.default_rng(8), 0))
    with pytest.raises(DataError, match=r"clip1\.npz: a flat ES-UCF101 folder needs UCF101 clip names"):
        open_dataset(str(tmp_path))


def test_dvs_class_folders_are_checked_as_image_folders_are(tmp_path):
    """Some of CIFAR10-DVS's classes keep its orientation; a macOS zip's ``__MACOSX`` is no class;
    a class folder without recordings, or train and test with other classes, are refused."""
    import shutil

    some = layouts.dvs_folder(tmp_path / "some", classes=layouts.CIFAR10_NAMES[:3], per_class=4)
    full = tmp_path / "full"
    shutil.copytree(some, full)
    for name in layouts.CIFAR10_NAMES[3:]:  # the other 7 classes, with copies of the airplane recordings
        shutil.copytree(some / "airplane", full / name)
    bundles = [open_dataset(str(root)) for root in (full, some)]
    assert [b.info["orientation"] for b in bundles] == ["cifar10dvs", "cifar10dvs"]
    first = some / "airplane" / "cifar10_airplane_0.aedat"
    reader = type(bundles[1].train.dataset if hasattr(bundles[1].train, "dataset") else bundles[1].train)
    frames = [reader([(first, 0)], time_steps=8, orientation=b.info["orientation"])[0][0] for b in bundles]
    assert torch.equal(frames[0], frames[1])  # a recording reads the same in the subset as in the whole
    (some / "__MACOSX" / "airplane").mkdir(parents=True)
    (some / "__MACOSX" / "airplane" / "._cifar10_airplane_0.aedat").write_bytes(b"\x00\x05\x16\x07")
    assert open_dataset(str(some)).num_classes == 3
    (some / "deer").mkdir()
    with pytest.raises(DataError, match=r"class folder .*deer holds no recordings with extensions \.aedat"):
        open_dataset(str(some))
    split = tmp_path / "split"
    layouts.dvs_folder(split / "Train", classes=["0", "1", "2"], per_class=2)
    layouts.dvs_folder(split / "Test", classes=["0", "1"], per_class=2)
    with pytest.raises(DataError, match=r"Test: its class folders differ from .*Train's \(only in Test: none; "
                                        r"only in Train: \['2'\]\)"):
        open_dataset(str(split))


def test_one_sensor_for_a_dataset_and_the_chip_its_headers_name(tmp_path):
    """AEDAT 3.1 carries no sensor size: a recording whose events stay in a corner must not make
    smaller frames than the others (a batch of them could not be stacked); a chip the header names
    (cAER's ``#Source 1: DAVIS346B``, jAER's ``# AEChip: ...Davis346B``) gives its sensor."""
    rng = np.random.default_rng(0)

    def stream(width, height, n=200):
        return make_events(rng.integers(0, width, n), rng.integers(0, height, n), np.sort(rng.integers(0, 10**6, n)),
                           rng.integers(0, 2, n))

    root = tmp_path / "davis240"
    for split in ("train", "test"):
        for label in ("a", "b"):
            for i in range(3):
                corner = i == 0  # the first recording of each class: every event within 100x100
                (root / split / label).mkdir(parents=True, exist_ok=True)
                layouts.write_aedat31(root / split / label / f"r{i}.aedat", stream(*((100, 100) if corner else (240, 180))))
    assert read_event_file(root / "train" / "a" / "r0.aedat")[2] == (128, 128)  # alone: the smallest sensor that fits
    bundle = open_dataset(str(root))
    frames = [bundle.train[i][0] for i in range(len(bundle.train))] + [bundle.test[i][0] for i in range(len(bundle.test))]
    assert {tuple(f.shape) for f in frames} == {(8, 2, 180, 240)}
    for size in (180, 64):  # the shorter side too (it kept 180 x 240 frames)
        assert tuple(open_dataset(str(root), image_size=size).train[0][0].shape) == (8, 2, size, size)
    named = tmp_path / "davis346.aedat"
    layouts.write_aedat31(named, stream(240, 180))
    named.write_bytes(named.read_bytes().replace(b"#Source 1: spikebridge", b"#Source 1: DAVIS346B"))
    assert read_event_file(named)[2] == (346, 260)
    x, y = rng.integers(0, 346, 50), rng.integers(0, 260, 50)  # jAER's AEDAT 2.0 of a DAVIS346: DAVIS240's address layout
    records = np.empty(50, dtype=[("addr", ">u4"), ("t", ">u4")])
    records["addr"], records["t"] = (y << 22) | (x << 12) | (1 << 11), np.arange(50)
    jaer = tmp_path / "davis346_v2.aedat"
    jaer.write_bytes(b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.Davis346B\r\n" + records.tobytes())
    _format, events, sensor = read_event_file(jaer)
    assert sensor == (346, 260) and events["x"].tolist() == x.tolist() and events["y"].tolist() == y.tolist()


def test_es_imagenet_samples_without_their_label_file_are_named(tmp_path):
    """A converted split (``<class>/*.npz`` of pos/neg) whose labels.txt is gone was opened as ES-UCF101
    clips and failed on 'missing array(s) ['events']' for every sample."""
    root = layouts.es_imagenet(tmp_path / "es", released=False)
    (root / "train" / "labels.txt").unlink()
    with pytest.raises(DataError, match=r"ES-ImageNet samples \(pos, neg\) in class folders without their label file "
                                        r".*labels.txt \(convert odg writes it\): label file not found"):
        open_dataset(str(root / "train"))


def test_a_converted_root_without_a_split_label_file_is_named_by_the_plan(tmp_path, capsys):
    """The root of a conversion (train/ + val/ of class folders) whose train/labels.txt is gone said
    'class folder ... holds no images'; with val/labels.txt gone the plan passed and the run failed
    with 'not an ES-ImageNet root'. Both name the missing file, at the plan."""
    from spikebridge.cli import main

    root = layouts.es_imagenet(tmp_path / "es", released=False)
    (root / "train" / "labels.txt").rename(tmp_path / "train-labels.txt")
    with pytest.raises(DataError, match=r"es/train: ES-ImageNet samples \(pos, neg\) in class folders without their "
                                        r"label file .*train/labels.txt"):
        open_dataset(str(root))
    (tmp_path / "train-labels.txt").rename(root / "train" / "labels.txt")
    (root / "val" / "labels.txt").unlink()
    assert main(["piped", "--events", str(root), "--out", str(tmp_path / "run"), "--plan"]) == 2
    assert f"{root / 'val' / 'labels.txt'} not found (train/labels.txt is there)" in capsys.readouterr().err
