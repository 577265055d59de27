"""``spikebridge inspect PATH``: what spikebridge reads from a recording or a dataset. Every file is
written here in its real format; the expected numbers come from the events written, not from the
readers. Timer-overflow markers and special events must not count as events."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import _layouts as layouts
from spikebridge.cli import main
from spikebridge.data.events import DVS_GESTURE_CLASSES, EventSample, make_events, write_es_sample
from spikebridge.data.video import write_video_events

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def inspect(capsys, *args: str) -> dict:
    code = main(["inspect", "--json", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "spikebridge", "inspect", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=300)


def stream(rng, n, w, h, t_max=300_000):
    return make_events(rng.integers(0, w, n), rng.integers(0, h, n), np.sort(rng.integers(0, t_max, n)),
                       rng.integers(0, 2, n))


def expected(fmt, events, sensor, t=None, unit="us"):
    t = events["t"] if t is None else t
    on = int(events["p"].sum())
    return {"kind": "recording", "format": fmt, "events": len(events), "on": on, "off": len(events) - on,
            "sensor_size": list(sensor), "t_range": [int(t[0]), int(t[-1])], "t_unit": unit}


# ------------------------------------------------------------------------------------------------
# recordings
# ------------------------------------------------------------------------------------------------
def test_event_recordings(tmp_path, capsys):
    rng = np.random.default_rng(0)
    nmnist, dvs128, dv = stream(rng, 500, 34, 34), stream(rng, 400, 128, 128), stream(rng, 600, 346, 260)
    layouts.write_nmnist_bin(tmp_path / "digit.bin", nmnist)
    layouts.write_aedat2(tmp_path / "dvs128.aedat", dvs128)
    layouts.write_aedat31(tmp_path / "v31.aedat", dvs128, packet_size=150)
    layouts.write_aedat4(tmp_path / "dv.aedat4", dv, sensor=(346, 260), lz4=True, packet_size=250)
    gesture = stream(rng, 200, 128, 128, t_max=6_000_000)
    np.save(tmp_path / "3.npy", np.stack([gesture["x"], gesture["y"], gesture["p"], gesture["t"] // 1000], 1)
            .astype(np.int32))
    assert inspect(capsys, tmp_path / "digit.bin") == expected("n-mnist-bin", nmnist, [34, 34])
    assert inspect(capsys, tmp_path / "dvs128.aedat") == expected("aedat-2.0", dvs128, [128, 128])
    assert inspect(capsys, tmp_path / "v31.aedat") == expected("aedat-3.1", dvs128, [128, 128])
    assert inspect(capsys, tmp_path / "dv.aedat4") == expected("aedat-4.0", dv, [346, 260])
    assert inspect(capsys, tmp_path / "3.npy") == expected("dvs-gesture-npy", gesture, [128, 128],
                                                           t=gesture["t"] // 1000 * 1000)


def _nmnist_record(x, y, on, t):
    return bytes([x, y, (on << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])


def test_nmnist_overflow_markers_are_not_events(tmp_path, capsys):
    """y = 240 marks a timer overflow: no event, and 2**13 us more for every later one."""
    marker = _nmnist_record(0, 240, 0, 0)
    raw = (_nmnist_record(3, 4, 1, 100) + _nmnist_record(5, 6, 0, 8000) + marker + _nmnist_record(7, 8, 1, 50)
           + marker + _nmnist_record(9, 10, 1, 10))
    (tmp_path / "overflow.bin").write_bytes(raw)
    info = inspect(capsys, tmp_path / "overflow.bin")
    assert (info["events"], info["on"], info["off"]) == (4, 3, 1)
    assert info["t_range"] == [100, 10 + 2 * 2 ** 13]


def _aedat3_packet(kind, rows, overflow=0):
    """An AEDAT 3.1 packet: 28-byte header, then (uint32 data, int32 timestamp) events."""
    body = b"".join(struct.pack("<Ii", data, t) for data, t in rows)
    return struct.pack("<hhiiiiii", kind, 1, 8, 4, overflow, len(rows), len(rows), len(rows)) + body


def test_aedat31_special_and_invalid_events_are_not_events(tmp_path, capsys):
    def polarity(x, y, on, valid=1):
        return (x << 17) | (y << 2) | (on << 1) | valid

    special = _aedat3_packet(0, [((1 << 1) | 1, 5), ((2 << 1) | 1, 7)])  # timestamp wrap + reset
    events = _aedat3_packet(1, [(polarity(5, 6, 1), 10), (polarity(9, 9, 1, valid=0), 15), (polarity(7, 8, 0), 20)],
                            overflow=1)
    header = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
    (tmp_path / "special.aedat").write_bytes(header + special + events)
    info = inspect(capsys, tmp_path / "special.aedat")
    assert (info["events"], info["on"], info["off"]) == (2, 1, 1)
    assert info["t_range"] == [(1 << 31) | 10, (1 << 31) | 20] and info["format"] == "aedat-3.1"
    (tmp_path / "only_special.aedat").write_bytes(header + special)
    assert inspect(capsys, tmp_path / "only_special.aedat") == {
        "kind": "recording", "format": "aedat-3.1", "events": 0, "on": 0, "off": 0, "sensor_size": [128, 128],
        "t_range": None, "t_unit": "us"}
    assert main(["inspect", str(tmp_path / "only_special.aedat"), "--out", str(tmp_path / "figs")]) == 2
    assert "only_special.aedat: the recording holds no events to draw" in capsys.readouterr().err
    # an ES-ImageNet sample without events: refused too (it drew an empty picture and exited 0)
    np.savez(tmp_path / "noev.npz", pos=np.zeros((0, 3), np.uint8), neg=np.zeros((0, 3), np.uint8))
    assert main(["inspect", str(tmp_path / "noev.npz"), "--out", str(tmp_path / "figs")]) == 2
    assert "noev.npz: the recording holds no events to draw" in capsys.readouterr().err
    assert not list(tmp_path.rglob("inspect_noev*"))


def test_aedat2_dvs128_sync_and_special_events_are_not_events(tmp_path, capsys):
    """jAER's DVS128 addresses: bit 15 marks a sync (external input) event, bit 31 a special one."""
    events = stream(np.random.default_rng(1), 20, 128, 128)
    layouts.write_aedat2(tmp_path / "sync.aedat", events)
    raw = (tmp_path / "sync.aedat").read_bytes()
    start = len(raw) - 8 * len(events)
    extra = struct.pack(">II", 0x8000, int(events["t"][3])) + struct.pack(">II", 0x80000000, int(events["t"][3]))
    (tmp_path / "sync.aedat").write_bytes(raw[:start + 8 * 4] + extra + raw[start + 8 * 4:])
    assert inspect(capsys, tmp_path / "sync.aedat") == expected("aedat-2.0", events, [128, 128])


def test_npz_samples_and_clip_folder(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rows = lambda n: np.stack([rng.integers(20, 230, n), rng.integers(20, 230, n), rng.integers(2, 8, n)], 1)  # noqa: E731
    sample = EventSample(pos=rows(70).astype(np.uint8), neg=rows(30).astype(np.uint8), height=254, width=254)
    write_es_sample(tmp_path / "img.npz", sample)
    steps = np.concatenate([sample.pos[:, 2], sample.neg[:, 2]])
    assert inspect(capsys, tmp_path / "img.npz") == {
        "kind": "recording", "format": "es-imagenet-npz", "events": 100, "on": 70, "off": 30,
        "sensor_size": [224, 224], "t_range": [int(steps.min()), int(steps.max())], "t_unit": "step"}

    clip = (rng.random((2, 30, 12, 16)) < 0.1).astype(np.uint8)
    clip[:, :3] = 0
    clip[:, 27:] = 0
    np.savez_compressed(tmp_path / "v_Archery_g01_c01.npz", clip.astype(bool))  # the authors' arr_0
    write_video_events(tmp_path / "ours.npz", clip)
    want = {"kind": "recording", "format": "es-ucf101-npz", "events": int(clip.sum()), "on": int(clip[0].sum()),
            "off": int(clip[1].sum()), "sensor_size": [16, 12], "t_range": [4, 27], "t_unit": "step"}
    assert inspect(capsys, tmp_path / "v_Archery_g01_c01.npz") == want == inspect(capsys, tmp_path / "ours.npz")

    layouts.video_clips(tmp_path / "clips", classes=1, clips_per_class=1, frames=7, size=(24, 32))
    assert inspect(capsys, tmp_path / "clips" / "Class0" / "v_Class0_g01_c00") == {
        "kind": "recording", "format": "video-clip", "frames": 7, "frame_size": [32, 24]}


# ------------------------------------------------------------------------------------------------
# datasets
# ------------------------------------------------------------------------------------------------
def _nmnist_tonic(root):
    rng = np.random.default_rng(3)
    for split, count in (("Train", 3), ("Test", 2)):
        for label in range(3):
            for i in range(count):
                layouts.write_nmnist_bin(root / split / str(label) / f"{i:05d}.bin", stream(rng, 200, 34, 34))
    return root


def _cifar10_dvs(root):
    rng = np.random.default_rng(4)
    for name in layouts.CIFAR10_NAMES[:3]:
        for i in range(4):
            layouts.write_aedat4(root / name / f"cifar10_{name}_{i}.aedat4", stream(rng, 300, 128, 128), lz4=bool(i % 2))
    return root


def _gesture(root):
    rng = np.random.default_rng(5)
    for split, users in (("ibmGestureTrain", ("user01_led", "user02_led")), ("ibmGestureTest", ("user24_led",))):
        for user in users:
            for label in (0, 3):
                ev = stream(rng, 300, 128, 128, t_max=6_000_000)
                (root / split / user).mkdir(parents=True, exist_ok=True)
                np.save(root / split / user / f"{label}.npy", np.stack([ev["x"], ev["y"], ev["p"], ev["t"] // 1000], 1))
    return root


def _es_ucf101_flat(root):
    rng = np.random.default_rng(6)
    root.mkdir()
    for cls in ("ApplyEyeMakeup", "Archery"):
        for c in range(4):
            np.savez_compressed(root / f"v_{cls}_g01_c{c + 1:02d}.npz", (rng.random((2, 30, 12, 16)) < 0.1))
    return root


NAMES = [f"n{i:08d}" for i in range(3)]
DATASETS = {  # name: (writer, layout, classes, splits, sample_shape)
    "images": (lambda p: layouts.image_folders(p, size=(20, 24)), "image-folders", NAMES, (12, 6), [3, 20, 20]),
    "photos": (lambda p: layouts.image_folders(p, size=(120, 160), classes=2, train_per_class=1, val_per_class=1,
                                               grey=True, suffix=".jpg"), "image-folders", NAMES[:2], (2, 2), [1, 224, 224]),
    "cifar": (layouts.cifar10, "cifar", layouts.CIFAR10_NAMES, (20, 6), [3, 32, 32]),
    "es-imagenet-released": (layouts.es_imagenet, "es-imagenet-released", NAMES, (9, 6), [8, 2, 224, 224]),
    "es-imagenet": (lambda p: layouts.es_imagenet(p, released=False), "es-imagenet", NAMES, (9, 6), [8, 2, 224, 224]),
    "nmnist-tonic": (_nmnist_tonic, "dvs", ["0", "1", "2"], (9, 6), [8, 2, 34, 34]),
    "cifar10-dvs-aedat4": (_cifar10_dvs, "dvs", layouts.CIFAR10_NAMES[:3], (9, 3), [8, 2, 128, 128]),
    "cifar10-dvs-aedat": (lambda p: layouts.dvs_folder(p, per_class=4), "dvs", layouts.CIFAR10_NAMES[:3], (9, 3),
                          [8, 2, 128, 128]),
    "dvs-gesture": (_gesture, "dvs-gesture", list(DVS_GESTURE_CLASSES), (4, 2), [8, 2, 128, 128]),
    "es-ucf101-flat": (_es_ucf101_flat, "es-ucf101", ["ApplyEyeMakeup", "Archery"], (6, 2), [15, 2, 12, 16]),
    "video-clips": (lambda p: layouts.video_clips(p, frames=16, size=(24, 32)), "video-clips", ["Class0", "Class1"],
                    (6, 2), [15, 3, 24, 32]),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_layouts(tmp_path, capsys, name):
    writer, layout, classes, (train, test), shape = DATASETS[name]
    root = writer(tmp_path / name)
    assert inspect(capsys, root) == {"kind": "dataset", "layout": layout, "classes": classes,
                                     "splits": {"train": train, "test": test}, "sample_shape": shape}


def test_es_ucf101_converted_labels_file(tmp_path, capsys):
    clips = layouts.video_clips(tmp_path / "clips", frames=16, size=(24, 32))
    info = inspect(capsys, layouts.es_ucf101(clips, tmp_path / "es"))
    assert info == {"kind": "dataset", "layout": "es-ucf101", "classes": ["Class0", "Class1"],
                    "splits": {"train": 6, "test": 2}, "sample_shape": [15, 2, 24, 32]}


@pytest.mark.parametrize("name, shape", [("mnist5k", [1, 28, 28]), ("es-mnist", [8, 2, 28, 28])])
def test_builtin_datasets(capsys, name, shape):
    assert inspect(capsys, name) == {"kind": "dataset", "layout": f"built-in:{name}", "classes": list("0123456789"),
                                     "splits": {"train": 4000, "test": 1000}, "sample_shape": shape}


# ------------------------------------------------------------------------------------------------
# the table, the picture, bad input
# ------------------------------------------------------------------------------------------------
def test_table_through_the_real_command(tmp_path):
    events = stream(np.random.default_rng(7), 50, 34, 34)
    layouts.write_nmnist_bin(tmp_path / "d.bin", events)
    done = run_cli(tmp_path / "d.bin")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["kind", "format", "events", "on", "off", "sensor_size", "t_range",
                                                   "t_unit"]
    assert len({len(line) - len(line[11:].lstrip()) for line in lines}) == 1  # values start in one column
    assert lines[2].split() == ["events", "50"] and lines[5].split() == ["sensor_size", "34", "x", "34"]
    t = events["t"]
    assert lines[6].split() == ["t_range", str(t[0]), "..", str(t[-1])]


@pytest.mark.parametrize("make", ["recording", "es-ucf101", "images", "clip", "video-clips", "mnist5k"])
def test_out_writes_a_picture(tmp_path, capsys, make):
    rng = np.random.default_rng(8)
    if make == "recording":
        path = tmp_path / "rec.aedat"
        layouts.write_aedat31(path, stream(rng, 300, 128, 128))
    elif make == "es-ucf101":
        path = _es_ucf101_flat(tmp_path / "es")
    elif make == "images":
        path = layouts.image_folders(tmp_path / "imgs", size=(20, 24))
    elif make == "mnist5k":
        path = Path("mnist5k")
    else:
        path = layouts.video_clips(tmp_path / "clips", clips_per_class=2, frames=9, size=(24, 32))
        path = path / "Class0" / "v_Class0_g01_c00" if make == "clip" else path
    out = tmp_path / "figs"
    info = inspect(capsys, path, "--out", out)  # stdout stays JSON
    assert info["kind"] in ("recording", "dataset")
    picture = out / f"inspect_{path.name.split('.')[0]}.png"
    assert [p.name for p in out.iterdir()] == [picture.name]  # no temporary file left
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 1000


def _bad_inputs(tmp_path):
    good = layouts.write_aedat4(tmp_path / "good.aedat4", stream(np.random.default_rng(9), 300, 128, 128))
    (tmp_path / "cut.aedat4").write_bytes(good.read_bytes()[:-100])
    layouts.write_nmnist_bin(tmp_path / "good.bin", stream(np.random.default_rng(9), 30, 34, 34))
    (tmp_path / "cut.bin").write_bytes((tmp_path / "good.bin").read_bytes()[:-2])
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "empty").mkdir()
    layouts.image_folders(tmp_path / "imnet", size=(8, 8), classes=2, train_per_class=1, val_per_class=1)
    return {
        "missing": (tmp_path / "nope", "no such file or folder"),
        "unknown format": (tmp_path / "notes.txt", "unknown recording format '.txt'"),
        "truncated .aedat4": (tmp_path / "cut.aedat4", "cut.aedat4: not a readable AEDAT 4 file"),
        "truncated .bin": (tmp_path / "cut.bin", "not a whole number of 5-byte N-MNIST events"),
        "corrupt .npz": (tmp_path / "junk.npz", "junk.npz: not a readable .npz"),
        "not a dataset": (tmp_path / "empty", "no class folders"),
        "one split of a dataset": (tmp_path / "imnet" / "train", f"train: one split of the dataset "
                                   f"{(tmp_path / 'imnet').resolve()}; give that folder"),
    }


def test_recordings_training_would_refuse_are_refused_and_cifar10dvs_keeps_its_orientation(tmp_path, capsys):
    """``inspect FILE`` reported recordings that training refuses (events outside the sensor,
    unsorted timestamps) and exited 0; a DVS128 recording in CIFAR10-DVS's class folders is read in
    the orientation training gives it; the preview draws every event (Tonic's bins cut the last)."""
    rng = np.random.default_rng(3)
    events = stream(rng, 200, 34, 34)
    backwards = events.copy()
    backwards["t"][5] = backwards["t"][4] - 1
    layouts.write_nmnist_bin(tmp_path / "unsorted.bin", backwards)
    assert main(["inspect", str(tmp_path / "unsorted.bin")]) == 2
    assert "unsorted.bin: timestamps are not sorted" in capsys.readouterr().err
    np.save(tmp_path / "3.npy", np.array([[1, 2, 1, 10], [130, 4, 0, 20]]))
    assert main(["inspect", str(tmp_path / "3.npy")]) == 2
    assert "3.npy: 1 events have x outside the sensor [0, 128)" in capsys.readouterr().err
    dvs = stream(rng, 300, 128, 128)
    for classes in (("cat", "dog"), ("cats", "dogs")):
        for name in classes:
            (tmp_path / "-".join(classes) / name).mkdir(parents=True)
            for copy in ("r", "s"):  # two each: one trains, one tests
                layouts.write_aedat2(tmp_path / "-".join(classes) / name / f"{copy}.aedat", dvs)
    from spikebridge.data.datasets import open_dataset
    from spikebridge.data.inspect import inspect_path

    for classes in (("cat", "dog"), ("cats", "dogs")):
        folder = tmp_path / "-".join(classes)
        _, preview = inspect_path(folder / classes[0] / "r.aedat", preview=True)
        trained = open_dataset(str(folder), time_steps=1).train
        frames = next(trained[i][0] for i in range(len(trained)) if trained[i][1] == 0)
        missing = preview.data.sum(0) - frames.sum(0)  # training's one Tonic bin leaves out the last event
        assert preview.data.sum() == 300 and missing.min() == 0 and missing.sum() == 1, classes
    # a recording alone, named relative to the working directory: jAER's orientation (it depended on the path)
    (tmp_path / "solo" / "recs").mkdir(parents=True)
    layouts.write_aedat2(tmp_path / "solo" / "recs" / "r.aedat", dvs)
    absolute = inspect_path(tmp_path / "solo" / "recs" / "r.aedat", preview=True)[1].data
    os.chdir(tmp_path / "solo" / "recs")
    try:
        assert torch.equal(inspect_path("r.aedat", preview=True)[1].data, absolute)
    finally:
        os.chdir(ROOT)


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    for case, (path, message) in _bad_inputs(tmp_path).items():
        code = main(["inspect", str(path)])
        out, err = capsys.readouterr()
        assert code == 2 and out == "", case
        assert err.startswith("spikebridge: error: ") and message in err and err.count("\n") == 1, (case, err)
    layouts.write_nmnist_bin(tmp_path / "d.bin", stream(np.random.default_rng(9), 30, 34, 34))
    (tmp_path / "file").write_text("x")
    assert main(["inspect", str(tmp_path / "d.bin"), "--out", str(tmp_path / "file")]) == 2
    assert "spikebridge: error: cannot create folder" in capsys.readouterr().err


def test_corrupt_aedat4_through_the_real_command(tmp_path):
    path, message = _bad_inputs(tmp_path)["truncated .aedat4"]
    done = run_cli(path, "--json")
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"spikebridge: error: {path}: not a readable AEDAT 4 file (")
    assert done.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["images", "cifar10-dvs-aedat", "es-imagenet-released", "video-clips"])
def test_a_corrupt_first_sample_is_passed_over_and_named(tmp_path, capsys, name):
    writer, layout, classes, (train, test), shape = DATASETS[name]
    root = writer(tmp_path / name)
    first = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".aedat", ".npz"))
    first[0].write_bytes(b"junk")  # the first file in sorted order: the opener's first training sample
    out = tmp_path / "figs"
    code = main(["inspect", "--json", str(root), "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    info = json.loads(stdout)
    assert info["layout"] == layout and info["sample_shape"] == shape and info["splits"] == {"train": train, "test": test}
    assert "skipped an unreadable sample: " in stderr and str(first[0]) in stderr
    assert (out / f"inspect_{name}.png").read_bytes()[:4] == b"\x89PNG"
    for path in first:  # none readable: the first one's error, in one line
        path.write_bytes(b"junk")
    code = main(["inspect", str(root), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and str(first[0]) in stderr, stderr
