"""``spikebridge evaluate`` at any scale (issue 13 item 6): every pass streams the test split batch
by batch (no pass holds it), progress bars for each pass (off with ``--no-progress``), and a
default ``--samples`` that bounds the activity and accuracy-vs-T passes (0 = the whole split)."""
import json
import weakref
from dataclasses import replace

import pytest
import torch

import spikebridge as sb
from spikebridge.cli import main
from spikebridge.cli.evaluate import DEFAULT_SAMPLES, evaluate_model
from spikebridge.data.datasets import open_dataset
from spikebridge.data.loading import iterate_batches
from spikebridge.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = sb.create_model("cnn", num_classes=10, neuron="lif", T=2, in_channels=1)
    meta = {"model": {"name": "cnn", "num_classes": 10, "in_channels": 1, "T": 2}, "neuron": {"kind": "lif"}, "data": "mnist5k"}
    return model, save_checkpoint(tmp_path_factory.mktemp("ckpt"), "last", model, meta)


def test_no_pass_holds_the_test_split(checkpoint, tmp_path):
    """Count the input batches alive at once (weak references: a batch dies when nothing holds it)."""
    model, _ = checkpoint
    bundle = open_dataset("mnist5k", limit_test=1000)
    alive, peak, calls = set(), [0], [0]

    def watch(_module, inputs):
        x = inputs[0]
        key = id(x)
        if key not in alive:
            alive.add(key)
            weakref.finalize(x, alive.discard, key)
        calls[0] += 1
        peak[0] = max(peak[0], len(alive))

    handle = model.register_forward_pre_hook(watch)
    try:
        result, activity = evaluate_model(model, bundle, tmp_path, samples=0, t_max=3, progress=False)
    finally:
        handle.remove()
    assert activity.samples == 1000 and result["curve_samples"] == 1000 and result["test_samples"] == 1000
    assert calls[0] >= 8  # 4 top-1 batches of 250 and 4 activity batches at least
    assert peak[0] <= 2, peak  # the current batch and the first one (kept for the spike raster)


def test_progress_hook_counts_each_test_sample_once():
    bundle = open_dataset("mnist5k", limit_train=300, limit_test=130)
    seen = []
    tracked = replace(bundle, progress=seen.append)
    batches = list(iterate_batches(tracked, tracked.test, 50, train=False))
    assert seen == [50, 50, 30] and sum(len(y) for _, y in batches) == 130
    seen.clear()
    list(iterate_batches(tracked, tracked.train, 50, train=True, generator=torch.Generator().manual_seed(0)))
    list(iterate_batches(tracked, tracked.train, 50, train=False))
    assert seen == []  # training and calibration batches are not test progress


def test_cli_progress_bars_and_default_samples(checkpoint, tmp_path, capsys):
    _, ckpt = checkpoint
    assert DEFAULT_SAMPLES == 10000
    args = ["evaluate", str(ckpt), "--data", "mnist5k", "--T-max", "2", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    for bar in ("evaluate: top-1", "evaluate: activity", "accuracy vs T (T=1..2)"):
        assert bar in err, err[-500:]
    result = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    n_test = result["test_samples"]
    assert n_test < DEFAULT_SAMPLES and result["curve_samples"] == n_test and result["activity"]["samples"] == n_test

    assert main(args + ["--out", str(tmp_path / "b"), "--samples", "100", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "evaluate: top-1" not in err and "accuracy vs T" not in err
    result = json.loads((tmp_path / "b" / "evaluation.json").read_text())
    assert result["curve_samples"] == 100 and result["activity"]["samples"] == 100 and result["test_samples"] == n_test

    assert main(["evaluate", "--help"]) == 0
    assert "0 = the whole test split" in capsys.readouterr().out
