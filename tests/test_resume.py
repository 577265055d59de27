"""Kill a real CLI run with SIGKILL in the middle of an epoch, ``--resume`` it, and get exactly the
weights and metrics of the same run left alone (CPU, same seed)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikebridge import cli
from spikebridge.errors import CheckpointError
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


# --- a hand-edited checkpoint JSON: one line naming the file and the key, never an internal error ---

def _tiny_fit(run_dir: Path, epochs: int, resume: bool = False):
    from spikebridge import create_model
    from spikebridge.config import TrainConfig
    from spikebridge.data.loading import DataBundle
    from spikebridge.data.static import TensorSplit
    from spikebridge.train.engine import fit

    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g))
    bundle = DataBundle(name="toy", train=split, test=split, num_classes=3, in_channels=1, kind="events")
    torch.manual_seed(0)
    model = create_model("cnn", num_classes=3, neuron="relu", in_channels=1)
    return fit(model, bundle, TrainConfig(epochs=epochs, batch_size=8), name="ann", run_dir=run_dir, progress=False,
               resume=resume)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("one_epoch")
    _tiny_fit(run, 1)
    return run


@pytest.mark.parametrize("field, value", [
    ("meta.history", 5), ("meta.history", [5]), ("meta.history", [{"epoch": 1}]),
    ("meta.history", [{"test_acc": "x", "train_loss": 1.0}]),
    ("meta.curve", [["a"]]), ("meta.curve", [[1.0, 1]]), ("meta.curve", [[1.0, 1, "x"]]), ("meta.curve", "abc"),
    ("meta.curve", [[1.0, 1, True]]), ("meta.cpu_curve", {"x": 1}), ("meta.cpu_curve", [[1.0, 1, 0.5, 7]]),
    ("meta.seconds", "abc"), ("meta.cpu_seconds", None), ("meta.cpu_seconds", -1.0), ("meta.grad_scaler", 5),
    ("meta.grad_scaler", {"scale": "x"}), ("scheduler", {"step": "x"}), ("scheduler", {}),
    ("scheduler", {"step_count": -9, "base_lrs": [0.1]}), ("scheduler", {"step_count": 2, "base_lrs": []}),
    ("optimizer.param_groups[0].eps", "x"), ("optimizer.param_groups[0].betas", "x"),
    ("optimizer.param_groups[0].params", ["a"]), ("optimizer.param_groups[0].params", None),
])
def test_resume_refuses_a_hand_edited_checkpoint_naming_the_key(one_epoch_run, tmp_path, field, value):
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    last = _last(run)
    record = json.loads(last.read_text())
    if field.startswith("optimizer."):
        group = record["optimizer"]["param_groups"][0]
        if value is None:
            del group[field.rsplit(".", 1)[1]]
        else:
            group[field.rsplit(".", 1)[1]] = value
    else:
        *parents, key = field.split(".")
        (record["meta"] if parents else record)[key] = value
    last.write_text(json.dumps(record))
    with pytest.raises(CheckpointError) as info:
        _tiny_fit(run, 2, resume=True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{last}: checkpoint field {field!r} must be "), message


def test_resume_state_of_an_untouched_checkpoint(one_epoch_run, tmp_path):
    state = load_checkpoint(_last(one_epoch_run)).resume_state()
    assert [row[1:] for row in state["curve"]] == [row[1:] for row in state["cpu_curve"]] == [[1, state["history"][0]["test_acc"]]]
    assert state["seconds"] > 0 and state["grad_scaler"] == {}
    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    assert _tiny_fit(run, 2, resume=True).epochs == 2  # the checks pass what fit itself wrote
