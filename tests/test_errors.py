"""The typed error surface, the bad-input catalogue (README.md, "Troubleshooting") and the training guards.

* CLI: a user error prints exactly one line on stderr (``spikebridge: error: ...``, no traceback)
  and exits 2; an internal error prints one line and exits 1, the traceback only with ``--debug``.
* Catalogue: each bad input of the README's troubleshooting section raises its ``SpikebridgeError`` subclass
  with a message naming the file / field / value.
* Training guards: a NaN/Inf loss stops the run naming the step and keeps the last good
  checkpoint; disk full and read-only / unwritable outputs are reported with the path.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import multiprocessing
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spikebridge as sb
from spikebridge import cli
from spikebridge.config import PipelineConfig, TrainConfig, load_config
from spikebridge.data.cifar import CifarDataset, load_cifar_pickle
from spikebridge.data.events import (
    ESImageNetDataset,
    events_to_frames,
    make_events,
    read_aedat,
    read_es_sample,
    read_label_file,
    read_nmnist_bin,
    write_es_sample,
)
from spikebridge.data.folders import ImageFolderDataset, find_classes, load_image
from spikebridge.data.loading import DataBundle, iterate_batches, with_time_bins
from spikebridge.data.odg import EventSample
from spikebridge.data.static import TensorSplit
from spikebridge.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    OutputError,
    SpikebridgeError,
    TrainingError,
    TransferError,
)
from spikebridge.restore import locate_checkpoint
from spikebridge.train.checkpoint import load_checkpoint, save_checkpoint
from spikebridge.train.engine import fit
from spikebridge.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SPIKEBRIDGE = ROOT / ".venv" / "bin" / "spikebridge"
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


# ================================================================================================
# 1. the CLI: one line, exit 2 for user errors; exit 1 for internal errors; --debug
# ================================================================================================

def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1, f"stderr must be exactly one line, got {len(lines)}:\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def test_console_script_user_error_is_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  nmae: cnn\n")
    proc = subprocess.run([str(SPIKEBRIDGE), "pretrain", "--config", str(recipe), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    line = assert_one_line_error(proc, 2, r"^spikebridge: error: .*recipe\.yaml: unknown config key 'model\.nmae'")
    assert re.search(r"known keys here: T, .*in_channels, name, num_classes", line)
    assert proc.stdout == "" and not (tmp_path / "run").exists()


# Many invocations of the real ``main`` in one interpreter (starting one costs seconds); each one's
# stderr is captured at the file-descriptor level, so anything printed by C code counts too. A case
# marked "inject" runs with a programming error injected into the pipeline (a KeyError, as a bug
# would raise). Under --debug ``main`` re-raises it: the runner prints the traceback as the
# interpreter would and counts exit status 1.
CLI_RUNNER = r"""
import json, os, sys, traceback
from spikebridge import cli
from spikebridge.pipelines.ann import RegistryFamily

real_pretrain = RegistryFamily.pretrain

def broken_pipeline(*args, **kwargs):
    return {}["missing key"]

cases, folder = json.loads(sys.argv[1]), sys.argv[2]
codes = []
for i, (argv, inject) in enumerate(cases):
    RegistryFamily.pretrain = broken_pipeline if inject else real_pretrain
    fd = os.open(os.path.join(folder, f"{i}.err"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code
        except Exception:
            traceback.print_exc()
            code = 1
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    codes.append(code)
print(json.dumps(codes))
"""


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_inputs")
    (folder / "wrong_type.yaml").write_text("finetune:\n  lr: fast\n")
    (folder / "broken.yaml").write_text("model: {name: cnn\n")
    (folder / "a_file").write_text("not a folder")
    (folder / "truncated.json").write_text('{"format": "spikebridge-checkpoint-1", "weig')
    return folder


def cli_cases(folder: Path) -> list[tuple[list[str], int, str]]:
    """(argv, exit status, a pattern the one stderr line must match)."""
    quick = ["--no-progress", "--set", "data.limit_train=32", "--set", "data.limit_test=32", "--set", "ann.batch_size=16"]
    out = ["--out", str(folder / "run")]
    return [
        (["pretrain", "--config", str(folder / "missing.yaml"), *out], 2, r"config file not found: .*missing\.yaml"),
        (["pretrain", "--config", str(folder), *out], 2, r"config .* is a folder; give one YAML recipe in it \(e\.g\. "),
        (["export", "CKPT.json"], 2, r"the following arguments are required: --out"),
        (["pipes", "--trust-code", *out], 2, r"--trust-code goes with --ann CKPT \(a checkpoint of your own ANN class\)"),
        (["pretrain", "--config", str(folder / "wrong_type.yaml"), *out], 2,
         r"wrong_type\.yaml: finetune\.lr: expected a number, got 'fast'"),
        (["pretrain", "--config", str(folder / "broken.yaml"), *out], 2, r"broken\.yaml: line 2: not valid YAML \(expected .,. or .}."),
        (["pipes", "--T", "0", *out], 2, r"model\.T must be an integer >= 1, got 0"),
        (["pretrain", "--set", "neuron.threshold=0", *out], 2, r"neuron: threshold must be a finite number in \(0\.0, inf\), got 0"),
        (["pretrain", "--set", "neuron.decay=1.5", *out], 2, r"neuron: decay must be a number in \[0\.0, 1\.0\], got 1\.5"),
        (["pretrain", "--set", "ann.lr=.nan", *out], 2, r"ann\.lr must be a positive number, got nan"),
        (["pretrain", "--set", "run.seed=-1", *out], 2, r"run\.seed must be an integer in \[0, 2\*\*63\), got -1"),
        (["pretrain", "--set", "lr=0.1", *out], 2, r"unknown config key 'lr'"),
        (["pretrain", "--set", "ann.lr", *out], 2, r"override 'ann\.lr' must look like section\.key=value"),
        (["pipes", "--T", "four", *out], 2, r"argument --T: invalid int value: 'four'"),
        (["pretrain", "--data", str(folder / "no_such_dataset"), *out], 2, r"no_such_dataset"),
        (["pretrain", "--data", "mnist5k", *quick, "--out", str(folder / "a_file" / "run")], 2,
         r"cannot create folder .*a_file.*: Not a directory; a file stands where a folder is needed"),
        (["pretrain", "--data", "mnist5k", *quick, "--out", "/sys/spikebridge-run"], 2,
         r"cannot create folder /sys/spikebridge-run.*: Operation not permitted|Permission denied"),
        (["piped", "--ann", str(folder / "truncated.json"), *out], 2,
         r"truncated\.json: checkpoint metadata is not valid JSON \(truncated or corrupt\)"),
    ]


def run_cli_cases(cases: list[tuple[list[str], bool]], folder: Path) -> list[tuple[int, str]]:
    proc = subprocess.run([sys.executable, "-c", CLI_RUNNER, json.dumps(cases), str(folder)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return [(code, (folder / f"{i}.err").read_text()) for i, code in enumerate(codes)]


def test_cli_errors_user_exit_2_internal_exit_1(cli_inputs, tmp_path):
    cases = cli_cases(cli_inputs)
    internal = ["pretrain", "--no-progress", "--out", str(tmp_path / "internal")]
    debug = ["pretrain", "--no-progress", "--out", str(tmp_path / "internal-debug"), "--debug"]
    results = run_cli_cases([(argv, False) for argv, _, _ in cases] + [(internal, True), (debug, True)], tmp_path)
    for (argv, code, pattern), (got, stderr) in zip(cases, results):
        assert_one_line_error(subprocess.CompletedProcess(argv, got, "", stderr), code, pattern)
    # an internal error: one line and exit 1; the traceback only with --debug
    (code, stderr), (debug_code, debug_stderr) = results[-2:]
    assert_one_line_error(subprocess.CompletedProcess(internal, code, "", stderr), 1,
                          r"^spikebridge: internal error: KeyError: 'missing key' \(run with --debug for the traceback\)$")
    assert debug_code == 1 and "Traceback (most recent call last)" in debug_stderr
    assert debug_stderr.rstrip().endswith("KeyError: 'missing key'")


# ================================================================================================
# 2. the bad-input catalogue (README.md, "Troubleshooting"), in-process
# ================================================================================================

def raises(error: type[SpikebridgeError], pattern: str, call, *args, **kwargs) -> str:
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message.strip(), "messages are one line"
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message


# --- paths and image folders ------------------------------------------------------------------

def test_missing_and_empty_image_folders(tmp_path):
    raises(DataError, r"image folder .*nowhere does not exist", ImageFolderDataset, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    raises(DataError, r"image folder .*empty has no class sub-folders; expected root/<class>/<image>",
           ImageFolderDataset, tmp_path / "empty")
    (tmp_path / "loose").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "loose" / "a.png")
    raises(DataError, r"holds 1 loose images: put each class in its own sub-folder", find_classes, tmp_path / "loose")
    (tmp_path / "loose" / "cat").mkdir()  # beside class folders they were left out without a word
    Image.new("L", (4, 4)).save(tmp_path / "loose" / "cat" / "b.png")
    raises(DataError, r"holds 1 loose image\(s\) beside its class folders \(e.g. a.png\)", find_classes, tmp_path / "loose")
    (tmp_path / "notes" / "cats").mkdir(parents=True)
    (tmp_path / "notes" / "cats" / "readme.txt").write_text("not an image")
    raises(DataError, r"class folder .*cats holds no images with extensions .jpg", ImageFolderDataset, tmp_path / "notes")
    (tmp_path / "split" / "train" / "a").mkdir(parents=True)
    (tmp_path / "split" / "val" / "a").mkdir(parents=True)
    raises(DataError, r"holds dataset splits \(train, val\), not classes; pass .*train", find_classes, tmp_path / "split")


def test_non_image_and_unreadable_images(tmp_path):
    cls = tmp_path / "root" / "cats"
    cls.mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(cls / "good.png")
    (cls / "notes.txt").write_text("skipped: not an image suffix")
    (cls / "fake.jpg").write_text("a text file with an image suffix")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "PNG")
    (cls / "truncated.png").write_bytes(good.getvalue()[:300])
    ds = ImageFolderDataset(tmp_path / "root")
    assert [Path(p).name for p, _ in ds.samples] == ["fake.jpg", "good.png", "truncated.png"]  # .txt skipped
    raises(DataError, r"cannot decode image .*fake\.jpg: not a recognised image format", ds.__getitem__, 0)
    raises(DataError, r"cannot decode image .*truncated\.png: .*(truncated|OSError)", ds.__getitem__, 2)
    raises(DataError, r"cannot decode image .*missing\.png", load_image, cls / "missing.png")
    assert ds[1][1] == 0


# --- event files --------------------------------------------------------------------------------

def test_corrupt_and_truncated_npz(tmp_path):
    sample = EventSample(pos=np.array([[5, 6, 1]], np.uint8), neg=np.zeros((0, 3), np.uint8), height=254, width=254)
    write_es_sample(tmp_path / "ok.npz", sample)
    data = (tmp_path / "ok.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    raises(DataError, r"truncated\.npz: not an \.npz archive \(no zip directory: truncated", read_es_sample,
           tmp_path / "truncated.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    raises(DataError, r"empty\.npz: not an \.npz archive", read_es_sample, tmp_path / "empty.npz")
    np.savez(tmp_path / "keys.npz", pos=sample.pos)
    raises(DataError, r"keys\.npz: missing array\(s\) \['neg'\]", read_es_sample, tmp_path / "keys.npz")
    np.savez(tmp_path / "dtype.npz", pos=sample.pos.astype(np.int32), neg=sample.neg)
    raises(DataError, r"dtype\.npz: pos must be uint8, got int32", read_es_sample, tmp_path / "dtype.npz")
    raises(DataError, r"nothere\.npz: file not found", read_es_sample, tmp_path / "nothere.npz")


def test_time_bins_that_do_not_divide_the_stream():
    frames = torch.zeros(4, 15, 2, 8, 8)
    bundle = sb.dataset_bundle(torch.utils.data.TensorDataset(frames, torch.tensor([0, 1, 0, 1])),
                               torch.utils.data.TensorDataset(frames[:2], torch.tensor([0, 1])), num_classes=2,
                               name="clips")
    raises(ConfigError, r"^events.time_bins=4 must divide the 15 time steps of clips: --set events.time_bins=0 keeps "
           r"all 15, or give one of 1, 3, 5, 15$", with_time_bins, bundle, 4)
    assert with_time_bins(bundle, 5).time_steps == 5 and with_time_bins(bundle, 0) is bundle


def test_event_streams(tmp_path):
    events = make_events([1, 2, 40], [3, 4, 5], [10, 20, 30], [1, 0, 1])
    raises(DataError, r"rec\.bin: 1 events have x outside the sensor \[0, 34\) \(first: event 2, x=40\)",
           events_to_frames, events, sensor_size=(34, 34), n_time_bins=2, source="rec.bin")
    backwards = make_events([1, 2, 3], [3, 4, 5], [10, 30, 20], [1, 0, 1])
    raises(DataError, r"rec\.bin: timestamps are not sorted: event 2 \(t=20\) comes before event 1 \(t=30\)",
           events_to_frames, backwards, sensor_size=(34, 34), n_time_bins=2, source="rec.bin")
    raises(DataError, r"rec\.bin: the event stream is empty", events_to_frames, make_events([], [], [], []),
           sensor_size=(34, 34), n_time_bins=2, source="rec.bin")
    nan_t = {"x": np.array([1, 2]), "y": np.array([1, 1]), "t": np.array([0.0, np.nan]), "p": np.array([1, 0])}
    raises(DataError, r"timestamps contain NaN or Inf", events_to_frames, nan_t, sensor_size=(34, 34), n_time_bins=2)
    (tmp_path / "cut.bin").write_bytes(bytes(12))
    raises(DataError, r"cut\.bin: 12 bytes is not a whole number of 5-byte N-MNIST events \(truncated file\?\)",
           read_nmnist_bin, tmp_path / "cut.bin")
    (tmp_path / "big.bin").write_bytes(bytes([200, 3, 0, 0, 1]))
    raises(DataError, r"big\.bin: not an N-MNIST file: event 0 at x=200, y=3 lies outside the 34x34 sensor",
           read_nmnist_bin, tmp_path / "big.bin")
    (tmp_path / "rec.aedat").write_bytes(b"PK\x03\x04 not an aedat")
    raises(DataError, r"rec\.aedat: not an AEDAT file \(it must start with '#!AER-DAT'", read_aedat, tmp_path / "rec.aedat")
    (tmp_path / "cut.aedat").write_bytes(b"#!AER-DAT2.0\r\n" + bytes(13))
    raises(DataError, r"cut\.aedat: AEDAT 2\.0 data is 13 bytes, not a whole number of 8-byte events",
           read_aedat, tmp_path / "cut.aedat")


def make_es_folder(root: Path, lines: list[str]) -> Path:
    sample = EventSample(pos=np.array([[30, 40, 1]], np.uint8), neg=np.array([[31, 40, 2]], np.uint8),
                         height=254, width=254)
    for cls in ("n01", "n02"):
        for i in range(2):
            write_es_sample(root / cls / f"s{i}.npz", sample)
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_label_files(tmp_path):
    good = ["n01/s0.npz 0 254 254", "n01/s1.npz 0 254 254", "n02/s0.npz 1 254 254", "n02/s1.npz 1 254 254"]
    assert len(ESImageNetDataset(make_es_folder(tmp_path / "ok", good))) == 4
    missing = make_es_folder(tmp_path / "missing", [*good[:3], "n02/s7.npz 1 254 254"])
    raises(DataError, r"labels\.txt:4: sample file .*n02/s7\.npz not found", ESImageNetDataset, missing)
    disagree = make_es_folder(tmp_path / "disagree", [good[0], "n01/s1.npz 1 254 254", *good[2:]])
    raises(DataError, r"labels\.txt:2: s1\.npz has label 1, but line 1 gives label 0 to s0\.npz in the same folder "
           r"n01/: the label file disagrees with the class folders", ESImageNetDataset, disagree)
    fields = make_es_folder(tmp_path / "fields", [*good[:3], "n02/s1.npz 1"])
    raises(DataError, r"labels\.txt:4: expected 'path label height width', got 2 field\(s\)", ESImageNetDataset, fields)
    numbers = make_es_folder(tmp_path / "numbers", [*good[:3], "n02/s1.npz one 254 254"])
    raises(DataError, r"labels\.txt:4: label, height and width must be integers, got 'one 254 254'",
           read_label_file, numbers / "labels.txt")
    raises(DataError, r"nowhere/labels\.txt: label file not found", read_label_file, tmp_path / "nowhere" / "labels.txt")
    # a sample that becomes corrupt after the dataset was opened: named with its label-file line
    ds = ESImageNetDataset(tmp_path / "ok")
    (tmp_path / "ok" / "n02" / "s0.npz").write_bytes(b"garbage")
    raises(DataError, r"s0\.npz: not an \.npz archive .*\(listed at .*labels\.txt:3\)", ds.__getitem__, 2)


def test_cifar_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    blob = pickle.dumps(batch, protocol=2)
    (folder / "test_batch").write_bytes(blob[: len(blob) // 2])
    raises(DataError, r"corrupt or truncated CIFAR file .*test_batch", load_cifar_pickle, folder / "test_batch")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": batch[b"data"], b"labels": [0, 12]}, protocol=2))
    raises(DataError, r"test_batch field 'labels' has label 12, outside \[0, 10\)", CifarDataset, tmp_path, train=False)


# --- NaN / Inf and labels in the data the trainer sees -------------------------------------------

class FloatImages(torch.utils.data.Dataset):
    """A float dataset on disk-like terms: ``samples`` name the files the tensors came from."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels
        self.samples = [(f"/data/digits/{i:03d}.png", int(c)) for i, c in enumerate(labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def float_bundle(train, test=None, workers: int = 0) -> DataBundle:
    return DataBundle(name="digits", train=train, test=test if test is not None else train, num_classes=3,
                      in_channels=1, kind="events", workers=workers)


def toy_images(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("workers", [0, 1])
def test_nan_inf_in_samples_are_named(workers):
    images, labels = toy_images()
    images[17, 0, 2, 2] = float("nan")
    bundle = float_bundle(FloatImages(images, labels), workers=workers)
    message = raises(DataError, r"^digits train split: sample 17 \(/data/digits/017\.png\) holds NaN or Inf values$",
                     lambda: list(iterate_batches(bundle, bundle.train, 8, train=True,
                                                  generator=torch.Generator().manual_seed(0))))
    assert "Traceback" not in message  # a worker's error arrives as its own one line
    images, labels = toy_images()
    images[5] = float("inf")
    bundle = float_bundle(TensorSplit(images, labels))
    raises(DataError, r"digits test split: sample 5 holds NaN or Inf", lambda: list(
        iterate_batches(bundle, TensorSplit(images, labels), 8, train=False)))


def test_labels_outside_the_classes_are_named():
    images, labels = toy_images()
    labels[9] = 7
    bundle = float_bundle(FloatImages(images, labels))
    raises(DataError, r"sample 9 \(/data/digits/009\.png\) has label 7, outside \[0, 3\) for this 3-class dataset",
           lambda: list(iterate_batches(bundle, bundle.train, 8, train=False)))


# --- checkpoints and the bridge ------------------------------------------------------------------

@pytest.fixture
def saved_checkpoint(tmp_path):
    model = sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1)
    path = save_checkpoint(tmp_path / "ckpt", "last", model, {"model": {"name": "cnn"}}, epoch=3)
    return model, path


def test_checkpoint_files(tmp_path, saved_checkpoint):
    _model, path = saved_checkpoint
    raises(CheckpointError, r"checkpoint not found: .*nothing\.json", load_checkpoint, tmp_path / "nothing.json")
    raises(CheckpointError, r"checkpoint not found: .*nothing\.safetensors", load_checkpoint, tmp_path / "x" / "nothing.safetensors")
    raises(CheckpointError, r"checkpoint path is empty", load_checkpoint, "")
    record = json.loads(path.read_text())
    weights = path.parent / record["weights"]
    good = weights.read_bytes()
    weights.write_bytes(good[:-10] + bytes(10))
    raises(CheckpointError, r"last-e0003\.safetensors: checksum mismatch \(the file is corrupt or was changed\)",
           load_checkpoint, path)
    weights.write_bytes(good[:100])
    raises(CheckpointError, r"last-e0003\.safetensors: not a readable safetensors file", load_checkpoint, weights)
    weights.write_bytes(good)
    path.write_text(json.dumps(record)[:40])
    raises(CheckpointError, r"last\.json: checkpoint metadata is not valid JSON \(truncated or corrupt\)", load_checkpoint, path)
    # named by its folder, its phase folder or its tensors file it said "found none" / "without its .json"
    phase = tmp_path / "run" / "snn"
    (phase / "checkpoints").mkdir(parents=True)
    for name in (path.name, weights.name):
        (phase / "checkpoints" / name).write_bytes((path.parent / name).read_bytes())
    for named in (path.parent, weights, phase, phase / "checkpoints" / weights.name):
        raises(CheckpointError, r"last\.json: checkpoint metadata is not valid JSON", load_checkpoint,
               locate_checkpoint(named))
    # by its run folder, beside a sound ANN phase: the damage is said (the ANN was evaluated instead)
    save_checkpoint(tmp_path / "run" / "ann" / "checkpoints", "last", _model, {"model": {"name": "cnn"},
                    "neuron": {"kind": "relu"}}, epoch=1)
    raises(CheckpointError, r"snn.checkpoints.last\.json: checkpoint metadata is not valid JSON", load_checkpoint,
           locate_checkpoint(tmp_path / "run"))
    path.write_text(json.dumps({**record, "weights": "../../etc/passwd"}))
    raises(CheckpointError, r"checkpoint field 'weights' must be the name of a tensors file beside the JSON",
           load_checkpoint, path)
    path.write_text(json.dumps({**record, "epoch": "three"}))
    raises(CheckpointError, r"checkpoint field 'epoch' must be an integer >= 0, got 'three'", load_checkpoint, path)
    path.write_text(json.dumps(record))
    weights.unlink()
    raises(CheckpointError, r"last\.json: its tensors file last-e0003\.safetensors is missing", load_checkpoint, path)
    (tmp_path / "two").mkdir()
    raises(CheckpointError, r"two: expected one checkpoint \.json in the folder, found none", load_checkpoint, tmp_path / "two")


def test_transfer_from_another_architecture_or_class_count(saved_checkpoint):
    _model, path = saved_checkpoint
    vgg = sb.create_model("vgg11", num_classes=10, neuron="lif", T=2, in_channels=1)
    raises(TransferError, r"only \d+% of the SNN's tensors match the source \(need 50%\): is it a checkpoint of another "
           r"architecture or class count\?", sb.transfer, path, vgg)
    snn_100 = sb.create_model("cnn", num_classes=100, neuron="lif", T=2, in_channels=1)
    raises(TransferError, r"shape mismatch: fc\.weight \[10, 1024\] vs \[100, 1024\]", sb.transfer, path, snn_100,
           "mean", strict_shapes=True)
    report = sb.transfer(path, snn_100, "mean")  # by default: a new classifier, reported
    assert [k for k, _, _ in report.mismatched] == ["fc.weight", "fc.bias"] and "shape mismatch fc.weight" in report.summary()


# --- configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, pattern", [
    ("model: {nmae: cnn}", r"unknown config key 'model\.nmae'; known keys here: T, .*in_channels, name, num_classes"),
    ("modle: {name: cnn}", r"unknown config key 'modle'"),
    ("model: {T: four}", r"model\.T: expected an integer, got 'four'"),
    ("model: {T: 0}", r"model\.T must be an integer >= 1, got 0"),
    ("model: {T: -3}", r"model\.T must be an integer >= 1, got -3"),
    ("neuron: {threshold: 0}", r"neuron: threshold must be a finite number in \(0\.0, inf\), got 0"),
    ("neuron: {threshold: -0.5}", r"neuron: threshold must be a finite number in \(0\.0, inf\), got -0\.5"),
    ("neuron: {threshold: .inf}", r"neuron: threshold must be a finite number in \(0\.0, inf\), got inf"),
    ("neuron: {surrogate_center: abc}", r"neuron\.surrogate_center: expected a number or null, got 'abc'"),
    ("neuron: {decay: 1.2}", r"neuron: decay must be a number in \[0\.0, 1\.0\], got 1\.2"),
    ("neuron: {decay: -0.1}", r"neuron: decay must be a number in \[0\.0, 1\.0\], got -0\.1"),
    ("neuron: {decay: .nan}", r"neuron: decay must be a number in \[0\.0, 1\.0\], got nan"),
    ("ann: {lr: .inf}", r"ann\.lr must be a positive number, got inf"),
    ("ann: {lr: 1" + "0" * 400 + "}", r"ann\.lr: the number 100000000000\.\.\. \(401 digits\) is too large"),
    ("ann: {batch_size: 0}", r"ann\.batch_size must be an integer >= 1, got 0"),
    ("ann: {optimizer: adamm}", r"ann\.optimizer must be one of sgd, adam, adamw, got 'adamm'"),
    ("data: {limit_train: -1}", r"data\.limit_train must be an integer >= 0, got -1"),
    ("data: {name: ''}", r"data\.name must name a dataset"),
    ("bridge: {min_match: 2}", r"bridge\.min_match must be a number in \[0\.0, 1\.0\], got 2"),
    ("run: {seed: 2024-13-45}", r"not valid YAML \(month must be in 1\.\.12\)"),
    ("model: [cnn]", r"model: expected a mapping of keys, got \['cnn'\]"),
    ("- a\n- b", r"the top level must be a mapping of sections"),
    ("model: {name: cnn", r"not valid YAML"),
])
def test_yaml_errors_name_the_file_and_key(tmp_path, text, pattern):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text + "\n")
    message = raises(ConfigError, pattern, load_config, PipelineConfig, recipe)
    assert str(recipe) in message


def test_neuron_and_model_arguments():
    raises(ConfigError, r"threshold must be a finite number in \(0\.0, inf\), got 0", sb.LIF, threshold=0)
    raises(ConfigError, r"decay must be a number in \[0\.0, 1\.0\], got 1\.5", sb.LIF, decay=1.5)
    raises(ConfigError, r"unknown model 'resnet7'", sb.create_model, "resnet7")
    raises(ConfigError, r"num_classes must be a positive integer, got 0", sb.create_model, "cnn", num_classes=0)


# ================================================================================================
# 3. training guards: NaN/Inf loss, disk full, unwritable outputs
# ================================================================================================

def small_fit(bundle: DataBundle, run_dir, epochs: int, resume: bool = False, **train):
    torch.manual_seed(0)
    model = sb.create_model("cnn", num_classes=3, neuron="relu", in_channels=1)
    cfg = TrainConfig(epochs=epochs, batch_size=8, **train)
    return fit(model, bundle, cfg, name="ann", run_dir=run_dir, progress=False, resume=resume)


def test_nan_loss_stops_naming_the_step(tmp_path):
    images, labels = toy_images()
    # a learning rate far too high: the first step throws the classifier's weights to ~1e20, the
    # logits overflow, and the loss of the next step is NaN
    raises(TrainingError, r"^ann epoch 1/2, step [23]: the loss became nan \(the inputs are finite, largest \|x\| = 0\.999\); "
           r"lower the learning rate or check the data; no checkpoint was written yet$",
           small_fit, float_bundle(TensorSplit(images, labels)), tmp_path, 2, optimizer="sgd", lr=1e20, momentum=0.0,
           schedule="constant")
    assert not (tmp_path / "ann" / "checkpoints" / "last.json").exists()


def test_diverging_run_keeps_the_last_good_checkpoint(tmp_path):
    images, labels = toy_images()
    small_fit(float_bundle(TensorSplit(images, labels)), tmp_path, 1)
    last = tmp_path / "ann" / "checkpoints" / "last.json"
    before = {p.name: p.read_bytes() for p in last.parent.iterdir()}
    poisoned = images.clone()
    poisoned[4] = 3e38  # a corrupt (huge but finite) sample meets the resumed run in epoch 2
    message = raises(TrainingError, r"ann (epoch 2/3, step \d+: the loss became nan|: after epoch 2 the weights hold NaN)",
                     small_fit, float_bundle(TensorSplit(poisoned, labels), TensorSplit(images, labels)),
                     tmp_path, 3, resume=True)
    assert f"the last good checkpoint (epoch 1) is kept: {last}" in message
    assert {p.name: p.read_bytes() for p in last.parent.iterdir()} == before  # untouched, no temporary files
    assert load_checkpoint(last).epoch == 1


def test_exploding_weights_are_not_saved(tmp_path):
    images, labels = toy_images()
    raises(TrainingError, r"ann: after epoch 1 the weights hold NaN/Inf \(.*\); nothing of this epoch is saved",
           small_fit, float_bundle(TensorSplit(images, labels)), tmp_path, 2, optimizer="sgd", lr=1e6,
           schedule="constant")
    assert not (tmp_path / "ann" / "checkpoints" / "last.json").exists()


def test_resume_with_another_architecture(tmp_path):
    images, labels = toy_images()
    small_fit(float_bundle(TensorSplit(images, labels)), tmp_path, 1)
    model = sb.create_model("cnn", num_classes=5, neuron="relu", in_channels=1)  # another class count
    bundle = DataBundle(name="digits", train=TensorSplit(images, labels), test=TensorSplit(images, labels),
                        num_classes=5, in_channels=1, kind="events")
    raises(CheckpointError, r"last\.json: cannot resume from this checkpoint, it does not fit this model or configuration "
           r"\(Error\(s\) in loading state_dict .*\); use another --out, or drop --resume to start over",
           fit, model, bundle, TrainConfig(epochs=2, batch_size=8), name="ann", run_dir=tmp_path, progress=False,
           resume=True)


def test_training_split_smaller_than_a_batch(tmp_path):
    images, labels = toy_images(5)
    raises(TrainingError, r"ann: the training split has 5 samples, fewer than one batch of 8",
           small_fit, float_bundle(TensorSplit(images, labels)), tmp_path, 1)


# --- disk full, read-only, a file in the way ------------------------------------------------------

CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_REC, MS_PRIVATE = 1, 16384, 1 << 18


def private_tmpfs(mount_point: Path, size: str, read_only: bool = False) -> str:
    """In a (single-threaded, forked) child: mount a small tmpfs on ``mount_point`` in a private
    mount namespace (a user namespace when not privileged). Returns how, or raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    how = "mount namespace"
    if libc.unshare(CLONE_NEWNS) != 0:
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        how = "user + mount namespace"
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "make / private")
    flags = MS_RDONLY if read_only else 0
    if libc.mount(b"tmpfs", str(mount_point).encode(), b"tmpfs", flags, f"size={size}".encode()) != 0:
        raise OSError(ctypes.get_errno(), "mount tmpfs")
    return f"a {size} tmpfs in a {how}"


def _guarded_child(mount_point: str, report: str, size: str, read_only: bool, epochs: int) -> None:
    """A forked child: a small full (or read-only) file system under ``mount_point``, then
    ``spikebridge pretrain`` into it; the outcome goes to ``report`` (outside the mount)."""
    torch.set_num_threads(1)
    result: dict = {}
    try:
        result["how"] = private_tmpfs(Path(mount_point), size, read_only)
    except OSError as exc:  # no namespaces here (e.g. a container without them): a file-size limit
        result["how"] = f"RLIMIT_FSIZE (namespaces unavailable: {exc})"
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))
    run = Path(mount_point) / "run"
    stderr = io.StringIO()
    argv = ["pretrain", "--data", "mnist5k", "--no-progress", "--epochs", str(epochs), "--out", str(run),
            "--set", "ann.batch_size=16", "--set", "data.limit_train=32", "--set", "data.limit_test=16"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        result["code"] = cli.main(argv)
    result["stderr"] = stderr.getvalue()
    last = run / "ann" / "checkpoints" / "last.json"
    result["epoch"] = load_checkpoint(last).epoch if last.exists() else None
    result["files"] = sorted(p.name for p in run.rglob("*")) if run.exists() else []
    Path(report).write_text(json.dumps(result))
    os._exit(0)


def guarded_run(tmp_path: Path, size: str, read_only: bool = False, epochs: int = 3) -> dict:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    report = tmp_path / "report.json"
    proc = multiprocessing.get_context("fork").Process(
        target=_guarded_child, args=(str(mount_point), str(report), size, read_only, epochs))
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == 0 and report.exists()
    result = json.loads(report.read_text())
    print(f"disk: {result['how']}")
    return result


def test_disk_full_is_reported_and_keeps_the_last_checkpoint(tmp_path):
    # one checkpoint (~420 kB: weights + Adam state) fits, the second does not
    result = guarded_run(tmp_path, "700k")
    assert result["code"] == 2, result
    lines = result["stderr"].splitlines()
    assert len(lines) == 1 and "Traceback" not in result["stderr"]
    assert re.search(r"^spikebridge: error: ann: cannot save epoch 2: cannot write .*/run/ann/checkpoints/"
                     r"last-e0002\.safetensors: (No space left on device; the disk is full|File too large)", lines[0]), lines[0]
    assert "the last good checkpoint (epoch 1) is kept" in lines[0]
    assert result["epoch"] == 1
    assert not [name for name in result["files"] if name.endswith(".tmp")], result["files"]


def test_read_only_output_folder_fails_at_once(tmp_path):
    result = guarded_run(tmp_path, "64k", read_only=True)
    assert result["code"] == 2
    if "tmpfs" in result["how"]:
        assert re.fullmatch(r"spikebridge: error: cannot create folder .*/disk/run: Read-only file "
                            r"system; the file system is read-only: choose another output folder\n",
                            result["stderr"])
        assert result["files"] == []


def test_unwritable_outputs_are_output_errors(tmp_path):
    (tmp_path / "occupied").write_text("a file where a folder should be")
    raises(OutputError, r"cannot create folder .*occupied/run: Not a directory; a file stands where a folder is needed",
           atomic_write_text, tmp_path / "occupied" / "run" / "summary.json", "{}")
    with pytest.raises(OutputError) as info:
        atomic_write_text("/sys/spikebridge-report.md", "x")
    assert info.value.errno in (errno.EACCES, errno.EPERM) and isinstance(info.value, OSError)
    (tmp_path / "folder.json").mkdir()
    raises(OutputError, r"cannot write .*folder\.json: Is a directory", atomic_write_text, tmp_path / "folder.json", "{}")
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_long_path_in_a_message_keeps_its_start_and_its_file_name(tmp_path):
    """Messages name long paths by their start and end (the file name), never by a front cut."""
    deep = tmp_path.joinpath(*["a_rather_long_folder_name"] * 12) / "my_network.nir"
    with pytest.raises(CheckpointError) as caught:
        sb.from_nir(deep, T=4)
    message = str(caught.value)
    assert len(message) < 260 and str(tmp_path)[:40] in message and "folder_name/my_network.nir does not" in message


def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path):
    """A Ctrl-C while PyTorch and the command load (``import spikebridge`` imports neither until
    used) ends with ``spikebridge: interrupted`` and status 130, not a traceback."""
    import time

    src = str(Path(__file__).resolve().parents[1] / "src")
    probe = subprocess.run([sys.executable, "-c", "import sys, spikebridge.cli; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": src})
    assert probe.stdout.strip() == "False", probe.stderr
    assert sb.create_model is sb.models.create_model  # the public names and submodules load on first use
    ends = []
    for delay in (0.1, 0.2, 0.4, 0.6, 0.8):
        child = subprocess.Popen([sys.executable, "-m", "spikebridge", "pipes", "--plan", "--out", str(tmp_path / "r")],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": src},
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        child.send_signal(signal.SIGINT)
        err = child.communicate(timeout=120)[1]
        ends.append((child.returncode, err))
        # 130 and one line (PyTorch's import once swallowed it, or aborted: SIGABRT, C++'s "terminate
        # called"); on a fast machine the plan may be done by 0.6 s: then 0, or SIGINT's -2 as Python exits
        done = ((0, ""), (-signal.SIGINT, "")) if delay >= 0.6 else ()
        assert (child.returncode, err) in ((130, "spikebridge: interrupted\n"), *done), (delay, child.returncode, err)
    assert ends.count((130, "spikebridge: interrupted\n")) >= 3, ends


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_during_training_says_whether_resume_continues(tmp_path, sig, code, word):
    """A Ctrl-C, or a scheduler's SIGTERM (it ended the process silently, leaving a fresh run's
    folder that a rerun refused), stops the run in one line: after an epoch that --resume
    continues it; before the first, the fresh run's folder is gone and the line says nothing of
    --resume."""
    src = str(Path(__file__).resolve().parents[1] / "src")

    def start(out):
        return subprocess.Popen([sys.executable, "-m", "spikebridge", "pretrain", "--out", str(out), "--no-progress",
                                 "--epochs", "50", "--set", "data.limit_train=512", "--set", "ann.batch_size=16",
                                 "--set", "run.threads=1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"},
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    child = start(tmp_path / "r")
    while not child.stdout.readline().startswith("ann epoch 2:"):  # epoch 1 saved
        pass
    child.send_signal(sig)
    _out, err = child.communicate(timeout=120)
    assert child.returncode == code and err.splitlines()[-1] == (
        f"spikebridge: {word}; the same command with --resume continues from the last complete epoch"), err
    assert (tmp_path / "r" / "ann" / "checkpoints" / "last.json").is_file()
    child = start(tmp_path / "fresh")
    assert child.stdout.readline().startswith("[plan] pretrain")
    child.send_signal(sig)
    _out, err = child.communicate(timeout=120)
    assert child.returncode == code and err.splitlines()[-1] == f"spikebridge: {word}", err
    assert not (tmp_path / "fresh").exists()
