"""``spikebridge convert odg|video`` as a user runs it: real digit images and small clips in, the
ES-ImageNet / ES-UCF101 formats out (read back with the dataset readers), a one-paragraph report,
resumption, and one-line errors with exit status 2."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spikebridge.cli import main
from spikebridge.data.events import ESImageNetDataset, read_es_sample, read_label_file
from spikebridge.data.odg import events_to_dense, odg
from spikebridge.data.static import load_mnist5k_arrays
from spikebridge.data.video import ESUCF101Dataset, clip_to_events, read_video_events

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "spikebridge", *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory):
    """Real MNIST digits (the embedded 5k set) as PNGs in 3 class folders, plus a blank image (no
    events: dropped), a corrupt PNG (unreadable) and a text file (ignored)."""
    root = tmp_path_factory.mktemp("digits")
    images, labels = load_mnist5k_arrays()
    digits = {}
    for cls in (3, 5, 7):
        folder = root / f"digit_{cls}"
        folder.mkdir()
        for i in np.flatnonzero(labels == cls)[:3]:
            Image.fromarray(images[i]).save(folder / f"mnist_{i}.png")
            digits[f"digit_{cls}/mnist_{i}"] = images[i]
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "digit_3" / "blank.png")
    (root / "digit_5" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "digit_7" / "README.txt").write_text("not an image")
    return root, digits


def test_convert_odg_digits_then_resume(digit_folder, tmp_path):
    src, digits = digit_folder
    out = tmp_path / "es"
    done = run_cli("convert", "odg", "--input", str(src), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    report = done.stdout.strip()
    assert "\n" not in report  # one paragraph
    assert report.startswith("Converted 9 images, skipped 0 already done, dropped 1 with too few events, 1 unreadable")
    assert "digit_3/blank.png (0 events)" in report and "digit_5/broken.png" in report
    assert "ignored 1 entry (not images)" in report

    # the ES-ImageNet format: labels.txt (sorted class order) + one .npz per digit, equal to odg()
    entries = read_label_file(out / "labels.txt")
    assert sorted(e.path.relative_to(out).as_posix() for e in entries) == sorted(f"{k}.npz" for k in digits)
    for e in entries:
        key = e.path.relative_to(out).with_suffix("").as_posix()
        assert e.label == {"digit_3": 0, "digit_5": 1, "digit_7": 2}[key.split("/")[0]]
        expected = odg(digits[key])
        stored = read_es_sample(e.path, height=e.height, width=e.width)
        assert (e.height, e.width) == (254, 254)
        np.testing.assert_array_equal(stored.pos, expected.pos)
        np.testing.assert_array_equal(stored.neg, expected.neg)
    dataset = ESImageNetDataset(out)
    assert len(dataset) == 9 and dataset.num_classes == 3
    frames, label = dataset[0]
    assert frames.shape == (8, 2, 224, 224) and frames.dtype == torch.float32
    first = dataset.entries[0]
    assert torch.equal(frames, events_to_dense(odg(digits[first.path.relative_to(out).with_suffix("").as_posix()]),
                                               dtype=torch.float32))
    assert label == first.label and frames.sum() > 1000

    # a rerun keeps every finished file
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")}
    again = run_cli("convert", "odg", "--input", str(src), "--out", str(out), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Converted 0 images, skipped 9 already done, dropped 1")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npz")} == before


def test_a_rerun_converts_a_changed_image_and_refuses_another_input(digit_folder, tmp_path, capsys):
    """'Already done' went by the output's name alone: a rerun from another --input (same file
    names, other images) or over an image replaced in place kept the old events."""
    import os
    import shutil

    src, digits = digit_folder
    mine = tmp_path / "digits"
    shutil.copytree(src, mine)
    out = tmp_path / "es"
    assert main(["convert", "odg", "--input", str(mine), "--out", str(out), "--no-progress"]) == 0
    changed = mine / "digit_3" / next(k.split("/")[1] for k in digits if k.startswith("digit_3"))
    changed = changed.with_suffix(".png")
    Image.fromarray(255 - np.asarray(Image.open(changed))).save(changed)
    later = os.path.getmtime(out / "labels.txt") + 5
    os.utime(changed, (later, later))
    capsys.readouterr()
    assert main(["convert", "odg", "--input", str(mine), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("Converted 1 image, skipped 8 already done")
    stored = read_es_sample(out / "digit_3" / changed.with_suffix(".npz").name)
    np.testing.assert_array_equal(stored.pos, odg(np.asarray(Image.open(changed))).pos)
    other = tmp_path / "other"
    shutil.copytree(src, other)
    assert main(["convert", "odg", "--input", str(other), "--out", str(out), "--no-progress"]) == 2
    assert f"holds a conversion of another input ({mine})" in capsys.readouterr().err
    os.symlink(mine, tmp_path / "link")  # the same folder by another path: the same input
    assert main(["convert", "odg", "--input", str(tmp_path / "link"), "--out", str(out), "--no-progress"]) == 0
    # a folder converted before the input was recorded: not claimed for whichever input comes next
    record = json.loads((out / "conversion.json").read_text())
    del record["input"]
    (out / "conversion.json").write_text(json.dumps(record))
    assert main(["convert", "odg", "--input", str(other), "--out", str(out), "--no-progress"]) == 0
    assert "input" not in json.loads((out / "conversion.json").read_text())


def test_convert_odg_parameters_and_errors(digit_folder, tmp_path, capsys):
    src, digits = digit_folder
    out = tmp_path / "es"
    # non-default parameters reach ODG: a 30 px canvas for 28 px digits
    assert main(["convert", "odg", "--input", str(src), "--out", str(out), "--size", "28", "--window", "0", "32",
                 "--min-events", "50", "--threshold", "0.3", "--workers", "0", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("Converted 9 images")
    entry = next(e for e in read_label_file(out / "labels.txt") if e.path.stem.startswith("mnist"))
    key = entry.path.relative_to(out).with_suffix("").as_posix()
    expected = odg(digits[key], size=28, window=(0, 32), min_events=50, threshold=0.3)
    np.testing.assert_array_equal(read_es_sample(entry.path, height=28, width=28).pos, expected.pos)
    # other parameters on the same folder need --overwrite
    assert main(["convert", "odg", "--input", str(src), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other parameters" in err
    # nothing converted at all: the report, then a one-line error
    assert main(["convert", "odg", "--input", str(src), "--out", str(out), "--min-events", "10000000",
                 "--overwrite", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "dropped 10 with too few events" in captured.out
    assert captured.err.startswith("spikebridge: error: no image") and captured.err.count("\n") == 1
    # bad parameter values and folders
    for argv, message in [
        (["--threshold", "-1"], "threshold"),
        (["--window", "100", "50"], "window"),
        (["--size", "300", "--window", "0", "400"], "above 255"),
        (["--size", "0"], "size"),
    ]:
        assert main(["convert", "odg", "--input", str(src), "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("spikebridge: error:")
    assert main(["convert", "odg", "--input", str(src), "--out", str(src / "events")]) == 2
    assert "inside --input" in capsys.readouterr().err
    assert main(["convert", "odg", "--input", str(src), "--out", str(out), "--workers", "-2"]) == 2
    assert "--workers" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["odg", "video"])
def test_convert_refuses_a_folder_of_splits_or_of_empty_classes_before_writing(digit_folder, tmp_path, kind, capsys):
    """``--input`` of an ImageNet root (train/ and val/, not classes), or class folders holding
    nothing to convert: one line saying so, and no ``--out`` folder."""
    src, _ = digit_folder
    imagenet = tmp_path / "image net"  # the suggested command quotes a path with a space
    for split in ("train", "val"):
        (imagenet / split).mkdir(parents=True)
        os.symlink(src / "digit_3", imagenet / split / "digit_3")
    out = tmp_path / "events"
    assert main(["convert", kind, "--input", str(imagenet), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds dataset splits (train, val), not class folders" in err, err
    assert f"--input '{imagenet / 'train'}' --out {out / 'train'}" in err and not out.exists()
    empty = tmp_path / "empty_classes"
    (empty / "cat").mkdir(parents=True)
    (empty / "cat" / "notes.txt").write_text("no images here")
    assert main(["convert", kind, "--input", str(empty), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"class folder {empty / 'cat'} holds no " + (
        "clip folders" if kind == "video" else "images") in err
    assert not out.exists()
    if kind == "odg":  # one empty class among others (converted: its label held no sample, inspect lost the
        # names), or an image beside the class folders (left out without a word): refused, as training does
        mixed = tmp_path / "mixed"
        shutil.copytree(src / "digit_3", mixed / "digit_3")
        (mixed / "dog").mkdir()
        assert main(["convert", kind, "--input", str(mixed), "--out", str(out), "--no-progress"]) == 2
        assert f"class folder {mixed / 'dog'} holds no images" in capsys.readouterr().err
        (mixed / "dog").rmdir()
        shutil.copy(next((mixed / "digit_3").glob("mnist_*.png")), mixed / "a.png")
        assert main(["convert", kind, "--input", str(mixed), "--out", str(out), "--no-progress"]) == 2
        assert "holds 1 loose image(s) beside its class folders (e.g. a.png)" in capsys.readouterr().err
        assert not out.exists()


def test_convert_bad_input_is_one_line_in_a_real_process(tmp_path):
    done = run_cli("convert", "video", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2
    assert done.stderr == f"spikebridge: error: {tmp_path / 'missing'}: input folder not found\n"


def test_convert_usage_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["convert", "odg", "--input", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no class folders" in err and err.count("\n") == 1
    for argv in (["convert"], ["convert", "video", "--out", str(tmp_path)], ["convert", "video", "--input", str(empty),
                 "--out", str(tmp_path / "o"), "--mode", "median"]):
        assert main(argv) == 2  # the argument parser's error: one line, exit 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("spikebridge convert")
    (empty / "cls" / "clip").mkdir(parents=True)
    assert main(["convert", "video", "--input", str(empty), "--out", str(tmp_path / "o"), "--frames", "1"]) == 2
    assert "n_frames" in capsys.readouterr().err


def _clip(rng, n, h=24, w=32):
    """A bright bar sweeping right over a noisy background: n RGB frames."""
    frames = rng.integers(0, 40, (n, h, w, 3)).astype(np.uint8)
    for i in range(n):
        frames[i, :, (i * (w - 4)) // n:(i * (w - 4)) // n + 4] = 230
    return frames


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    for cls in ("Archery", "Bowling"):
        for g in range(2):
            clip = root / cls / f"v_{cls}_g{g:02d}_c01"
            clip.mkdir(parents=True)
            for i, frame in enumerate(_clip(rng, 12 + 5 * g)):
                Image.fromarray(frame).save(clip / f"frame{i + 1:06d}.jpg")
    (root / "Bowling" / "v_Bowling_g09_c01").mkdir()  # an empty clip: unreadable
    return root


@pytest.mark.parametrize("mode", ["random", "percentile"])
def test_convert_video(clip_folder, tmp_path, mode, capsys):
    out = tmp_path / "es-ucf"
    argv = ["convert", "video", "--input", str(clip_folder), "--out", str(out), "--mode", mode,
            "--seed", "3", "--frames", "11", "--no-progress"]
    if mode == "random":  # once as a real process
        done = run_cli(*argv)
        assert done.returncode == 0, done.stderr
        stdout = done.stdout
    else:
        assert main(argv) == 0
        stdout = capsys.readouterr().out
    assert stdout.startswith("Converted 4 clips, skipped 0 already done, dropped 0 with too few events, 1 unreadable")
    assert "Bowling/v_Bowling_g09_c01" in stdout
    dataset = ESUCF101Dataset(out)
    assert len(dataset) == 4 and dataset.labels == [0, 0, 1, 1]
    frames, label = dataset[3]
    assert frames.shape == (10, 2, 24, 32) and label == 1
    for rel in ("Archery/v_Archery_g00_c01", "Bowling/v_Bowling_g01_c01"):
        kwargs = {"rng": np.random.default_rng([3, zlib.crc32(rel.encode())])} if mode == "random" else {}
        expected = clip_to_events(clip_folder / rel, n_frames=11, mode=mode, **kwargs)
        np.testing.assert_array_equal(read_video_events(out / f"{rel}.npz"), expected)
        assert expected.any(axis=(0, 2, 3)).all()  # the moving bar makes events at every step


@pytest.fixture(scope="module")
def es_root(digit_folder, tmp_path_factory):
    """An ES-ImageNet root in our converted layout: train/ and val/ from the digits (3 classes)."""
    from spikebridge.data.convert import convert_image_folder_odg

    src, _ = digit_folder
    root = tmp_path_factory.mktemp("es-root")
    for split in ("train", "val"):
        convert_image_folder_odg(src, root / split, progress=False)
    return root


def test_convert_edge_integral_writes_an_image_folder_then_resumes(es_root, tmp_path, capsys):
    from spikebridge.data.datasets import open_dataset
    from spikebridge.data.odg import edge_integral_image

    out = tmp_path / "edge"
    assert main(["convert", "edge-integral", "--input", str(es_root), "--out", str(out), "--no-progress"]) == 0
    report = capsys.readouterr().out.strip()
    assert "\n" not in report
    assert report.startswith("Converted 18 samples to edge-integral images, skipped 0 already done, 0 unreadable "
                             "(18 samples in 3 classes")
    for split in ("train", "val"):  # the source's class names (its class folders), in label order
        assert sorted(p.name for p in (out / split).iterdir()) == ["digit_3", "digit_5", "digit_7"]
        for entry in read_label_file(es_root / split / "labels.txt"):
            assert entry.path.parent.name == ["digit_3", "digit_5", "digit_7"][entry.label]
            png = out / split / entry.path.parent.name / f"{entry.path.stem}.png"
            with Image.open(png) as im:
                assert im.format == "PNG" and im.mode == "L" and im.size == (224, 224)
                stored = np.asarray(im)
            frames = events_to_dense(read_es_sample(entry.path, height=entry.height, width=entry.width))
            np.testing.assert_array_equal(stored, edge_integral_image(frames))
            assert stored.min() < 128 < stored.max()  # a digit's edges: both signs of the integral
    # an ImageNet-layout folder: pretrain reads it as grey static images with the events' labels
    bundle = open_dataset(str(out))
    assert bundle.kind == "static" and bundle.in_channels == 1 and bundle.num_classes == 3
    labels = sorted(int(bundle.train[i][1]) for i in range(len(bundle.train)))
    assert labels == sorted(e.label for e in read_label_file(es_root / "train" / "labels.txt"))

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    stale = out / "val" / "digit_5" / ".spikebridge-tmp.x.png.0123456789ab.tmp"
    stale.write_bytes(b"half")
    assert main(["convert", "edge-integral", "--input", str(es_root), "--out", str(out), "--no-progress"]) == 0
    again = capsys.readouterr().out
    assert again.startswith("Converted 0 samples to edge-integral images, skipped 18 already done")
    assert "Removed 1 partial files" in again and not stale.exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == before


def test_convert_edge_integral_keeps_the_frame_of_a_small_conversion(digit_folder, tmp_path, capsys):
    """``convert odg --size 32`` writes samples read in the window of that size (``conversion.json``);
    their edge-integral images have the frames' size (they were 224 x 224, the digit in a corner of
    ES-ImageNet's canvas), so the self-pretrained ANN sees what the SNN sees."""
    from spikebridge.data.datasets import open_dataset
    from spikebridge.data.odg import edge_integral_image

    src, _ = digit_folder
    es = tmp_path / "es32"
    for split in ("train", "val"):
        assert main(["convert", "odg", "--input", str(src), "--out", str(es / split), "--size", "32", "--no-progress"]) == 0
    frames = open_dataset(str(es)).first_sample()
    out = tmp_path / "edge"
    assert main(["convert", "edge-integral", "--input", str(es), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    entry = read_label_file(es / "train" / "labels.txt")[0]
    with Image.open(out / "train" / entry.path.parent.name / f"{entry.path.stem}.png") as im:
        stored = np.asarray(im)
    assert stored.shape == tuple(frames.shape[-2:]) != (224, 224)
    np.testing.assert_array_equal(stored, edge_integral_image(frames))  # the first sample, as the SNN reads it


def test_convert_edge_integral_numbers_classes_without_usable_names(es_root, tmp_path, capsys):
    """Class folders that do not follow the labels (here: the folders' sorted order is not the
    label order; then flat samples) give zero-padded class indices, so the image folder's class
    index stays the events' label."""
    import shutil

    root = tmp_path / "es"
    shutil.copytree(es_root, root)
    for split in ("train", "val"):
        labels = root / split / "labels.txt"
        labels.write_text(labels.read_text().replace(" 0 ", " 9 ").replace(" 2 ", " 0 ").replace(" 9 ", " 2 "))
    out = tmp_path / "swapped"
    assert main(["convert", "edge-integral", "--input", str(root), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["0000", "0001", "0002"]
    assert {p.stem for p in (out / "train" / "0000").iterdir()} == {
        e.path.stem for e in read_label_file(root / "train" / "labels.txt") if e.path.parent.name == "digit_7"}
    for split in ("train", "val"):  # every sample in the split's own folder: no class folders at all
        labels = root / split / "labels.txt"
        for entry in read_label_file(labels):
            entry.path.rename(root / split / f"{entry.path.parent.name}-{entry.path.name}")
        labels.write_text("".join(f"{line.replace('/', '-', 1)}\n" for line in labels.read_text().splitlines()))
    flat = tmp_path / "flat"
    assert main(["convert", "edge-integral", "--input", str(root), "--out", str(flat), "--no-progress"]) == 0
    assert sorted(p.name for p in (flat / "val").iterdir()) == ["0000", "0001", "0002"]
    capsys.readouterr()


def test_convert_edge_integral_replaces_a_planted_link_not_its_target(es_root, tmp_path, capsys):
    """An attacker links an output name of an earlier conversion to a victim file: the rerun writes
    a new file in place of the link and the victim stays as it was."""
    out = tmp_path / "edge"
    assert main(["convert", "edge-integral", "--input", str(es_root), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = next((out / "train" / "digit_5").glob("*.png"))
    target.unlink()
    target.symlink_to(victim)
    assert main(["convert", "edge-integral", "--input", str(es_root), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("Converted 1 sample")
    assert victim.read_text() == "keep me"
    assert not target.is_symlink() and Image.open(target).mode == "L"


def test_convert_edge_integral_refusals(es_root, tmp_path, capsys):
    def refused(argv, words, out=None):
        assert main(["convert", "edge-integral", *argv, "--no-progress"]) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and words in captured.err and "Traceback" not in captured.err
        if out is not None:
            assert not out.exists()

    # a user's own folder is never written into
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    refused(["--input", str(es_root), "--out", str(mine)], "not empty")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    refused(["--input", str(es_root), "--out", str(es_root / "edge")], "inside --input", es_root / "edge")
    refused(["--input", str(es_root / "train"), "--out", str(tmp_path / "o")], "train and a val split", tmp_path / "o")
    refused(["--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "input folder not found", tmp_path / "o")
    # a label file that points outside its dataset is refused before anything is written
    evil = tmp_path / "evil"
    for split in ("train", "val"):
        (evil / split).mkdir(parents=True)
        (evil / split / "labels.txt").write_text("../../../../etc/passwd 0 254 254\n")
    refused(["--input", str(evil), "--out", str(tmp_path / "o")], "leaves the dataset folder", tmp_path / "o")


def test_convert_edge_integral_reports_a_broken_sample(es_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "es"
    shutil.copytree(es_root, root)
    broken = next((root / "val").rglob("*.npz"))
    broken.write_bytes(b"PK not an archive")
    out = tmp_path / "edge"
    assert main(["convert", "edge-integral", "--input", str(root), "--out", str(out), "--no-progress",
                 "--workers", "2"]) == 0
    report = capsys.readouterr().out
    assert report.startswith("Converted 17 samples to edge-integral images, skipped 0 already done, 1 unreadable")
    assert f"val/{broken.name}" in report
    assert len(list(out.rglob("*.png"))) == 17


def test_splits_converted_one_at_a_time_share_their_class_numbers(tmp_path, capsys):
    """val/ without one of train/'s classes, converted as the refusal above advises: its labels
    are train/'s (not shifted), and a label file numbered otherwise is refused when opened."""
    import shutil

    import _layouts as layouts
    from spikebridge.data.datasets import open_dataset
    from spikebridge.errors import DataError

    photos = layouts.image_folders(tmp_path / "photos", size=(32, 32), classes=3)
    shutil.rmtree(photos / "val" / "n00000001")
    out = tmp_path / "events"
    for split in ("train", "val"):
        assert main(["convert", "odg", "--input", str(photos / split), "--out", str(out / split), "--size", "32",
                     "--window", "2", "30", "--min-events", "1", "--no-progress"]) == 0, capsys.readouterr().err
    val = [line.split() for line in (out / "val" / "labels.txt").read_text().splitlines()]
    assert {(path.split("/")[0], int(label)) for path, label, *_ in val} == {("n00000000", 0), ("n00000002", 2)}
    assert not (out / "val" / "n00000001").exists()
    bundle = open_dataset(str(out))
    assert bundle.num_classes == 3 and len(bundle.test) == 4
    labels = out / "val" / "labels.txt"  # as an earlier version wrote it: n00000002 numbered 1
    labels.write_text(labels.read_text().replace(" 2 32 32", " 1 32 32"))
    with pytest.raises(DataError, match=r"labels\.txt:3: class folder n00000002/ has label 1, but .*train/labels\.txt"
                                        r":\d+ gives it label 2"):
        open_dataset(str(out))


def test_convert_odg_takes_every_image_kind_training_reads(tmp_path, capsys):
    """.tif, .ppm, .pgm images train in pipeS; ODG converts them too (pipeD sees the same samples)."""
    import _layouts as layouts

    photos = layouts.image_folders(tmp_path / "photos", size=(32, 32), classes=2, train_per_class=1, val_per_class=1)
    rng = np.random.default_rng(0)
    for suffix in (".tif", ".ppm", ".pgm"):
        Image.fromarray(layouts.class_image(rng, 0, 32, 32, grey=suffix == ".pgm")).save(
            photos / "train" / "n00000000" / f"extra{suffix}")
    out = tmp_path / "events"
    assert main(["convert", "odg", "--input", str(photos / "train"), "--out", str(out), "--size", "32",
                 "--min-events", "1", "--no-progress"]) == 0, capsys.readouterr().err
    listed = sorted(line.split()[0] for line in (out / "labels.txt").read_text().splitlines())
    assert listed == ["n00000000/extra.pgm.npz", "n00000000/extra.ppm.npz", "n00000000/extra.tif.npz",
                      "n00000000/img0.npz", "n00000001/img0.npz"]
    # --size 32 without --window: ES-ImageNet's 16..240 of 254 in proportion (it cropped 16 px of a 36 px canvas)
    assert json.loads((out / "conversion.json").read_text())["odg_kwargs"]["window"] == [2, 30]
    # inspect reads a sample in the frame training does (it drew ES-ImageNet's 224 x 224 canvas)
    capsys.readouterr()
    assert main(["inspect", "--json", str(out / "n00000000" / "img0.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["sensor_size"] == [28, 28]


def test_convert_odg_reads_images_nested_in_class_folders_as_training_does(tmp_path, capsys):
    """Tiny-ImageNet keeps train/<wnid>/images/*.JPEG: pipeS trains on them, so ODG converts them
    (flat in the output's class folder; a name two sub-folders share keeps its path)."""
    import _layouts as layouts

    photos = layouts.image_folders(tmp_path / "photos", size=(32, 32), classes=2, train_per_class=2, val_per_class=1)
    for folder in (photos / "train").iterdir():
        for sub in ("images", "more"):
            (folder / sub).mkdir()
        (folder / "img0.png").rename(folder / "images" / "img0.png")
        (folder / "img1.png").rename(folder / "more" / "img0.png")  # the same name in another sub-folder
        (folder / f"{folder.name}_boxes.txt").write_text("img0.png 0 0 8 8\n")
    out = tmp_path / "events"
    assert main(["convert", "odg", "--input", str(photos / "train"), "--out", str(out), "--size", "32",
                 "--min-events", "1", "--no-progress"]) == 0, capsys.readouterr().err
    listed = sorted(line.split()[0] for line in (out / "labels.txt").read_text().splitlines())
    assert listed == ["n00000000/images__img0.png.npz", "n00000000/more__img0.png.npz",
                      "n00000001/images__img0.png.npz", "n00000001/more__img0.png.npz"]


def test_a_conversion_at_another_size_trains_on_frames_of_that_size(tmp_path, capsys):
    """``convert odg --size 32`` samples are read as frames of their own window (28 x 28), not
    centred on ES-ImageNet's 224 x 224 canvas (49x the pixels); every event is kept."""
    import _layouts as layouts
    from spikebridge.data.datasets import open_dataset
    from spikebridge.data.events import read_es_sample
    from spikebridge.data.odg import events_to_dense

    photos = layouts.image_folders(tmp_path / "photos", size=(32, 32), classes=2, train_per_class=2, val_per_class=1)
    out = tmp_path / "events"
    for split in ("train", "val"):
        assert main(["convert", "odg", "--input", str(photos / split), "--out", str(out / split), "--size", "32",
                     "--min-events", "1", "--no-progress"]) == 0, capsys.readouterr().err
    bundle = open_dataset(str(out))
    frames = bundle.first_sample()
    assert tuple(frames.shape) == (8, 2, 28, 28) and bundle.image_size == 28
    entry = bundle.train.entries[0]  # the first sample's
    on_224 = events_to_dense(read_es_sample(entry.path, height=entry.height, width=entry.width), dtype=torch.float32)
    assert on_224.shape[-1] == 224 and frames.sum() == on_224.sum() > 0
    capsys.readouterr()
    assert main(["benchmark", "--data", str(out), "--methods", "scratch", "--plan"]) == 0  # auto: the 28 px model
    assert json.loads(capsys.readouterr().out)["phases"][0]["model"] == "cnn"
