"""Kill a real CLI run with SIGKILL in the middle of an epoch, ``--resume`` it, and get exactly the
weights and metrics of the same run left alone (CPU, same seed)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from spikebridge import cli
from spikebridge.train.checkpoint import load_checkpoint

SRC = Path(__file__).parent.parent / "src"
# 2 epochs of 16 steps: the sharpened-ReLU ANN (its shape follows the epoch), random-shift
# augmentation (the batch generator's state), the step schedule (the optimizer's LR and momentum)
FLAGS = [
    "pretrain", "--data", "mnist5k", "--model", "cnn", "--epochs", "2", "--seed", "7", "--device", "cpu",
    "--no-progress", "--set", "data.limit_train=512", "--set", "data.limit_test=100",
    "--set", "ann.batch_size=32", "--set", "ann.optimizer=sgd", "--set", "ann.lr=0.05",
    "--set", "ann.schedule=step", "--set", "ann.milestones=[1]", "--set", "run.threads=1",
]


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "spikebridge", *FLAGS, "--out", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def _last(out: Path) -> Path:
    return out / "ann" / "checkpoints" / "last.json"


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_command(killed), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not _last(killed).exists():
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.01)
    # epoch 1 is saved; kill 40 % into epoch 2's training (epoch 1's own duration sets the pace)
    epoch_seconds = json.loads(_last(killed).read_text())["meta"]["history"][0]["seconds"]
    time.sleep(0.4 * epoch_seconds)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(_last(killed)).epoch == 1  # it died inside epoch 2

    # resume it, and run the same command left alone; both in this process (one thread, as above:
    # the results are bit-identical to a separate process)
    threads = torch.get_num_threads()
    try:
        assert cli.main([*FLAGS, "--out", str(killed), "--resume"]) == 0
        assert cli.main([*FLAGS, "--out", str(tmp_path / "alone")]) == 0
    finally:
        torch.set_num_threads(threads)

    a, b = load_checkpoint(_last(killed)), load_checkpoint(_last(tmp_path / "alone"))
    assert a.epoch == b.epoch == 2
    for key, value in b.model_state.items():
        assert torch.equal(a.model_state[key], value), key
    opt_a, opt_b = a.optimizer_state(), b.optimizer_state()
    for index, entry in opt_b["state"].items():
        assert torch.equal(opt_a["state"][index]["momentum_buffer"], entry["momentum_buffer"])
    assert a.scheduler_state == b.scheduler_state
    metrics = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    history_a = [{k: h[k] for k in metrics} for h in a.meta["history"]]
    history_b = [{k: h[k] for k in metrics} for h in b.meta["history"]]
    assert history_a == history_b and len(history_a) == 2
    assert history_a[-1]["test_acc"] > 0.3  # it learned (chance: 0.1)
    csv_rows = (killed / "ann" / "metrics.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 3 and csv_rows[1].startswith("1,")  # epoch 1 once, no duplicate after resume
