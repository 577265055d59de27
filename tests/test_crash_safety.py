"""Crash safety: kill the trainer and the ODG converter at random moments, resume, compare.

Both are SIGKILLed at least 20 times each at seeded random moments (during start-up, training,
evaluation, and while checkpoints / samples are being written). After every kill each file a
reader can see must be complete (checkpoints load and verify, metrics parse, samples read back);
after the final resume the outputs must equal those of an uninterrupted run, with no temporary or
orphaned files left. The kills run in forked copies of this process (modules and data already
loaded, so a restart costs milliseconds); one trainer kill hits the real ``spikebridge`` command.
"""
from __future__ import annotations

import contextlib
import csv
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_convert import assert_same_output, npz_files, photo, temp_files

import spikebridge.pipelines  # noqa: F401  (imported before forking: children start at once)
from spikebridge import cli
from spikebridge.data.convert import convert_image_folder_odg
from spikebridge.data.events import read_es_sample, read_label_file
from spikebridge.data.static import load_mnist5k_arrays
from spikebridge.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 12
PRETRAIN = [
    "pretrain", "--data", "mnist5k", "--model", "cnn", "--no-progress", "--seed", "11", "--epochs", str(EPOCHS),
    "--set", "ann.batch_size=32", "--set", "data.limit_train=64", "--set", "data.limit_test=48",
]
KILLS = 20
pytestmark = pytest.mark.slow  # SIGKILLs tens of runs


def _own_progress_lock() -> None:
    """tqdm guards its bars with a lock that a fork shares (a process-shared semaphore): a child
    killed while holding it would block this test process at its next progress bar for good. So a
    forked child takes a lock of its own first."""
    import threading

    import tqdm.auto
    import tqdm.std

    for cls in (tqdm.std.tqdm, tqdm.auto.tqdm):
        cls.set_lock(threading.RLock())


def _pretrain_child(out: str, resume: bool) -> None:
    """A forked child: ``spikebridge pretrain ... --out OUT [--resume]`` on one thread, quietly."""
    _own_progress_lock()
    torch.set_num_threads(1)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        code = cli.main([*PRETRAIN, "--out", out, *(["--resume"] if resume else [])])
    os._exit(code)


def start_pretrain(out: Path, resume: bool) -> multiprocessing.Process:
    proc = multiprocessing.get_context("fork").Process(target=_pretrain_child, args=(str(out), resume))
    proc.start()
    return proc


def visible_files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and not p.name.startswith("."))


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == ["epoch", "seconds", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    return rows


def check_run_state(run: Path, last_epoch: int) -> int:
    """Every visible file of a (possibly killed) run is complete; returns the checkpoint's epoch."""
    ann = run / "ann"
    allowed = {"ann/metrics.csv", "ann/checkpoints/last.json", "config.yaml",  # written atomically, as the
               "summary.json", "report.md", "metrics.csv", "accuracy_vs_time.png"}  # run's outputs at its end
    for name in visible_files(run):
        assert name in allowed or (name.startswith("ann/checkpoints/last-e") and name.endswith(".safetensors")), name
    epoch = 0
    if (ann / "checkpoints" / "last.json").exists():
        ckpt = load_checkpoint(ann / "checkpoints" / "last.json")  # verifies the SHA-256 of the tensors
        epoch = ckpt.epoch
        assert epoch >= last_epoch, "a checkpoint went back in time"
        assert len(ckpt.meta["history"]) == epoch and torch.isfinite(ckpt.model_state["fc.weight"]).all()
    if (ann / "metrics.csv").exists():
        rows = read_metrics(ann / "metrics.csv")
        # metrics.csv is replaced just before the checkpoint: it is at most one epoch ahead
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) in (epoch, epoch + 1)
    return epoch


def writing(run: Path) -> bool:
    """A checkpoint or metrics write is in progress (its hidden temporary file exists)."""
    for folder in (run / "ann" / "checkpoints", run / "ann"):
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            if any(e.name.startswith(".") and e.name.endswith(".tmp") and "write-test" not in e.name for e in entries):
                return True
    return False


def comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # wall time differs


def test_kill_trainer_and_resume_equals_uninterrupted(tmp_path):
    load_mnist5k_arrays()  # parsed once here; every forked child reuses the cache
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())  # its first use imports torch._dynamo (seconds)
    reference = tmp_path / "reference"
    started = time.monotonic()
    proc = start_pretrain(reference, resume=False)
    first_checkpoint = None
    while proc.is_alive() and time.monotonic() - started < 120:
        if first_checkpoint is None and (reference / "ann" / "checkpoints" / "last.json").exists():
            first_checkpoint = time.monotonic() - started
        time.sleep(0.005)
    proc.join(timeout=60)
    full = time.monotonic() - started
    assert proc.exitcode == 0 and first_checkpoint is not None
    epoch_time = (full - first_checkpoint) / (EPOCHS - 1)
    print(f"uninterrupted run: {full:.2f} s, first checkpoint after {first_checkpoint:.2f} s, "
          f"then {epoch_time:.2f} s per epoch")

    run = tmp_path / "killed"
    rng = np.random.default_rng(2024)
    state = {"kills": 0, "epoch": 0, "mid_write": 0, "advanced": 0}

    def kill_once(targeted: bool) -> None:
        """Start a resumed run and SIGKILL it: at a random moment from the start to ~1 epoch after
        its first checkpoint (start-up, training, evaluation or a write), or, ``targeted``, as
        soon as a temporary file shows a write in progress. Paced so that 20 kills happen before
        the run ends: once ahead of schedule, random kills come before the first checkpoint."""
        ahead = state["epoch"] >= (EPOCHS // 2) * (state["kills"] + 1) / KILLS
        window = 0.8 * first_checkpoint if ahead else first_checkpoint + 1.2 * epoch_time
        temps_before = {p.name for p in run.rglob(".*.tmp")}
        proc = start_pretrain(run, resume=True)
        if targeted:
            deadline = time.monotonic() + first_checkpoint + 2 * epoch_time
            while proc.is_alive() and time.monotonic() < deadline and not writing(run):
                time.sleep(0.0005)
        else:
            proc.join(timeout=rng.uniform(0.0, window))
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=60)
            state["kills"] += 1
            state["mid_write"] += bool({p.name for p in run.rglob(".*.tmp")} - temps_before)
        new_epoch = check_run_state(run, state["epoch"])  # every visible file is complete
        state["advanced"] += new_epoch > state["epoch"]
        state["epoch"] = new_epoch

    while state["kills"] < KILLS and state["epoch"] < EPOCHS:
        kill_once(targeted=state["kills"] % 4 == 3)
    for _ in range(10):  # make sure at least one kill hit a write in progress
        if state["mid_write"] or state["epoch"] >= EPOCHS - 2:
            break
        kill_once(targeted=True)
    kills, epoch = state["kills"], state["epoch"]
    print(f"{kills} kills; the checkpoint advanced {state['advanced']} times; {state['mid_write']} kills left a "
          f"temporary file (killed mid-write); epoch {epoch} of {EPOCHS} reached")
    assert kills >= KILLS, "the run finished before 20 kills: the kill moments are too late"
    assert state["mid_write"] >= 1, "no kill landed during a write"

    # one more kill, of the real command (its own process, its own interpreter), once it has
    # written a checkpoint; then resume to the end
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [str(ROOT / ".venv" / "bin" / "spikebridge"), *PRETRAIN, "--out", str(run), "--resume"]
    if epoch < EPOCHS - 2:  # two epochs left at least: the kill comes before the run can end
        before = (run / "ann" / "checkpoints" / "last.json").stat().st_mtime_ns if epoch else 0
        real = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while real.poll() is None and time.monotonic() < deadline:
            last = run / "ann" / "checkpoints" / "last.json"
            if last.exists() and last.stat().st_mtime_ns != before:
                time.sleep(rng.uniform(0.0, 0.5 * epoch_time))
                break
            time.sleep(0.01)
        real.send_signal(signal.SIGKILL)
        assert real.wait(timeout=60) == -signal.SIGKILL, "the real command ended before it was killed"
        epoch = check_run_state(run, epoch)
        print(f"killed the real spikebridge command at epoch {epoch}")
    proc = start_pretrain(run, resume=True)
    proc.join(timeout=300)
    assert proc.exitcode == 0

    # the same result as the uninterrupted run: metrics, weights, optimizer and RNG state
    assert comparable(read_metrics(run / "ann" / "metrics.csv")) == comparable(read_metrics(reference / "ann" / "metrics.csv"))
    got = load_checkpoint(run / "ann" / "checkpoints" / "last.json")
    want = load_checkpoint(reference / "ann" / "checkpoints" / "last.json")
    assert got.epoch == want.epoch == EPOCHS
    assert got.tensors.keys() == want.tensors.keys()
    for key in want.tensors:
        assert torch.equal(got.tensors[key], want.tensors[key]), key
    assert got.record["sha256"] == want.record["sha256"]
    # nothing partial or orphaned is left: no temporary files, one tensors file
    assert visible_files(run) == visible_files(reference) == [
        "accuracy_vs_time.png", f"ann/checkpoints/last-e{EPOCHS:04d}.safetensors", "ann/checkpoints/last.json",
        "ann/metrics.csv", "config.yaml", "metrics.csv", "report.md", "summary.json"]
    hidden = [p.name for p in run.rglob(".*")]
    assert hidden == [".spikebridge-run.json"], f"temporary files left behind: {hidden}"  # the run's manifest stays
    assert load_file(str(run / "ann" / "checkpoints" / f"last-e{EPOCHS:04d}.safetensors"))


# ------------------------------------------------------------------------------------------------
# the ODG converter (extends tests/test_convert.py's kill test: more kills, a smaller tree)
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("odg_input")
    rng = np.random.default_rng(9)
    shapes = [(120, 160), (160, 120), (90, 90), (64, 200), (200, 64), (100, 150), (150, 100), (80, 120),
              (128, 128), (70, 210), (140, 90), (96, 96)]
    for i, (h, w) in enumerate(shapes):
        cls = root / f"class_{i % 3}"
        cls.mkdir(exist_ok=True)
        Image.fromarray(photo(rng, h, w)).save(cls / f"img_{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "class_1" / "notes.txt").write_text("not an image")
    (root / "class_2" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return root


def _convert_child(src: str, out: str) -> None:
    """A forked child converting inline on one thread (an OpenMP pool does not survive a fork)."""
    _own_progress_lock()
    torch.set_num_threads(1)
    convert_image_folder_odg(src, out, workers=0, progress=False)
    os._exit(0)


def start_conversion(src: Path, out: Path) -> multiprocessing.Process:
    proc = multiprocessing.get_context("fork").Process(target=_convert_child, args=(str(src), str(out)))
    proc.start()
    return proc


def test_kill_converter_and_resume_equals_uninterrupted(small_image_tree, tmp_path):
    reference = tmp_path / "reference"
    started = time.monotonic()
    proc = start_conversion(small_image_tree, reference)
    proc.join(timeout=300)
    full = time.monotonic() - started  # an uninterrupted conversion in a forked child, as killed below
    assert proc.exitcode == 0
    ref = convert_image_folder_odg(small_image_tree, reference, workers=0, progress=False)  # reuses all
    assert ref.written == 12 and ref.reused == 12 and [p for p, _ in ref.failed] == ["class_2/broken.png"]
    out = tmp_path / "killed"
    rng = np.random.default_rng(77)
    counts: list[int] = []
    for kill in range(KILLS):
        # paced by the converter's progress, not by the clock (a loaded machine starts a child in
        # anything from 10 ms to seconds): kills cycle through start-up (a random early moment), a
        # write in progress (a temporary file shows), and "one more sample on disk" then a moment
        before = len(npz_files(out)) if out.exists() else 0
        proc = start_conversion(small_image_tree, out)
        stage = kill % 3
        if stage == 0:
            proc.join(timeout=rng.uniform(0.0, 0.05 * full))
        else:
            deadline = time.monotonic() + 2 * full + 5
            while proc.is_alive() and time.monotonic() < deadline:
                if stage == 1 and out.exists() and temp_files(out):
                    break
                if stage == 2 and out.exists() and len(npz_files(out)) > before:
                    time.sleep(rng.uniform(0.0, 0.02))
                    break
                time.sleep(0.0005)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=60)
        done = npz_files(out) if out.exists() else []
        for rel in done:  # whatever the moment of the kill, every visible sample is complete
            read_es_sample(out / rel)
        if (out / "labels.txt").exists():  # and the label file, when there, lists readable samples
            assert len(read_label_file(out / "labels.txt")) == ref.written
        counts.append(len(done))
    print(f"samples on disk after each of {KILLS} kills: {counts}")
    assert len(set(counts)) >= 3, "the kills did not land at different stages of the conversion"
    report = convert_image_folder_odg(small_image_tree, out, workers=0, progress=False)
    assert report.written == ref.written and report.reused + report.converted == ref.written
    assert_same_output(out, reference)
    assert not temp_files(out)
