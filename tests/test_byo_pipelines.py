"""pipes / piped with the user's own ANN class (--ann FILE.py:ClassName [--ann-weights W]), the
input-conv swap for events, event-batch threshold calibration, and registry checkpoints."""
import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikebridge as sb
from spikebridge.cli import main
from spikebridge.data.datasets import open_dataset
from spikebridge.data.loading import iterate_batches, with_time_bins
from spikebridge.errors import ConfigError
from spikebridge.neurons import NeuronConfig
from spikebridge.restore import import_ann, model_from_checkpoint
from spikebridge.spikify import adapt_input_conv, calibrate_thresholds, spikify, spikify_with_graph
from spikebridge.train.checkpoint import load_checkpoint, save_checkpoint
from spikebridge.train.engine import evaluate

NET_SOURCE = textwrap.dedent('''
    import torch.nn.functional as F
    from torch import nn


    class TinyCNN(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.conv2 = nn.Conv2d(6, 12, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(12 * 7 * 7, num_classes)

        def forward(self, x):
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(self.relu(self.conv2(x)))
            x = x.view(x.size(0), -1)
            return self.fc(x)
''')

LIMITS = ["--set", "data.limit_train=128", "--set", "data.limit_test=64"]
QUICK = ["--device", "cpu", "--no-progress", *LIMITS, "--set", "run.threads=1",
         "--set", "finetune.epochs=1", "--set", "scratch.epochs=1", "--set", "scratch.until_plateau=0",
         "--set", "events.finetune.epochs=1", "--set", "events.scratch.epochs=1",
         "--set", "events.scratch.until_plateau=0", "--set", "events.compare_first_layer=false",
         "--set", "events.time_bins=2", "--set", "ann.epochs=1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def registry_ann_checkpoint(folder, name: str):
    """A (randomly initialised) registry ReLU ANN for MNIST saved as a spikebridge checkpoint."""
    torch.manual_seed(0)
    ann = sb.create_model(name, num_classes=10, neuron="relu", in_channels=1)
    meta = {"model": {"name": name, "num_classes": 10, "in_channels": 1, "T": 1},
            "neuron": {"kind": "relu"}, "data": "mnist5k"}
    return save_checkpoint(folder, "last", ann, meta)


@pytest.fixture(scope="module")
def user_net(tmp_path_factory):
    """A user's CNN file and its weights, trained briefly on 1024 digits (well above chance)."""
    folder = tmp_path_factory.mktemp("user_net")
    source = folder / "net.py"
    source.write_text(NET_SOURCE)
    torch.manual_seed(0)
    ann = import_ann(f"{source}:TinyCNN")
    bundle = open_dataset("mnist5k", limit_train=1024)
    optimizer = torch.optim.Adam(ann.parameters(), lr=3e-3)
    for x, y in iterate_batches(bundle, bundle.train, 64, train=True, generator=torch.Generator().manual_seed(0)):
        loss = F.cross_entropy(ann(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(ann.state_dict(), folder / "w.pth")
    return folder, f"{source}:TinyCNN", str(folder / "w.pth")


def _reloaded_accuracy(ckpt, bundle, spec) -> float:
    model, _meta, _ckpt = model_from_checkpoint(ckpt, code=spec)
    return evaluate(model, bundle)["acc"]


# ------------------------------------------------------------------------------------------------
# pipes
# ------------------------------------------------------------------------------------------------
def test_pipes_with_a_user_class_and_weights(user_net, tmp_path, capsys):
    _folder, spec, weights = user_net
    out = tmp_path / "pipes"
    assert main(["pipes", "--ann", spec, "--ann-weights", weights, "--baseline", "--data", "mnist5k", "--T", "2",
                 "--out", str(out), *QUICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    printed = capsys.readouterr().out
    assert "thresholds calibrated on 128 samples" in printed  # all the 128 there are, not 512
    assert f"snn_pretrained epoch 0 (before training): test acc {summary['transfer_acc']:.4f}" in printed
    runs = {run["name"]: run for run in summary["runs"]}
    assert list(runs) == ["snn_pretrained", "snn_scratch"]  # trained ANN: no pretraining run
    assert set(summary["time_to_target"]) == {"snn_scratch", "snn_pretrained", "snn_pretrained_total"}
    assert summary["target_acc"] == runs["snn_scratch"]["best_acc"]
    assert summary["ann"] == spec and summary["ann_acc"] > 0.6
    transfer = runs["snn_pretrained"]["curve"][0]
    assert transfer[:2] == [0.0, 0] and transfer[2] == summary["transfer_acc"]
    assert summary["transfer_acc"] > 0.4  # 10 classes: chance is 0.1
    assert set(summary["thresholds"]) == {"spike_relu", "relu"}
    assert "neuron:\n  kind: lif\n  decay: 0.5" in (out / "config.yaml").read_text()  # finetune's spikify default
    for name in ("snn_pretrained", "snn_scratch"):
        ckpt = out / name / "checkpoints" / "last.json"
        assert load_checkpoint(ckpt).meta["model"]["name"] == "spikify"
    # the written SNN reloads with the weights it finished with
    bundle = open_dataset("mnist5k", limit_train=128, limit_test=64)
    ckpt = out / "snn_pretrained" / "checkpoints" / "last.json"
    assert _reloaded_accuracy(ckpt, bundle, spec) == runs["snn_pretrained"]["final_acc"]
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--samples", "32", "--T-max", "2", "--device", "cpu",
                 "--out", str(tmp_path / "evaluation"), "--trust-code"]) == 0
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["spiking"] and evaluation["data"] == "mnist5k" and evaluation["top1"] > 0.4


@pytest.fixture(scope="module")
def pretrained_here(user_net, tmp_path_factory):
    """pipes --ann FILE.py:Class without weights: the class is trained as the ANN first."""
    _folder, spec, _weights = user_net
    out = tmp_path_factory.mktemp("pipes_pretrain")
    assert main(["pipes", "--ann", spec, "--data", "mnist5k", "--T", "2", "--out", str(out), *QUICK]) == 0
    return out


def test_pipes_trains_the_user_class_without_weights(user_net, pretrained_here, tmp_path):
    _folder, spec, _weights = user_net
    out = pretrained_here
    summary = json.loads((out / "summary.json").read_text())
    assert [run["name"] for run in summary["runs"]] == ["ann", "snn_pretrained"]
    ann_run = summary["runs"][0]
    assert ann_run["epochs"] == 1 and summary["ann_acc"] == ann_run["final_acc"]
    meta = load_checkpoint(out / "ann" / "checkpoints" / "last.json").meta
    assert meta["model"]["name"] == "ann_class" and meta["model"]["ann"].endswith("net.py:TinyCNN")
    bundle = open_dataset("mnist5k", limit_train=128, limit_test=64)
    ann, _meta, _ckpt = model_from_checkpoint(out / "ann" / "checkpoints" / "last.json", code=spec)
    assert type(ann).__name__ == "TinyCNN" and not hasattr(ann, "spiking")
    assert evaluate(ann, bundle)["acc"] == ann_run["final_acc"]
    assert main(["evaluate", str(out / "ann" / "checkpoints" / "last.json"), "--samples", "32", "--device", "cpu",
                 "--out", str(tmp_path / "evaluation"), "--trust-code"]) == 0


def test_pipes_from_a_registry_checkpoint_skips_pretraining(tmp_path):
    ckpt = registry_ann_checkpoint(tmp_path / "ann", "cnn")
    out = tmp_path / "pipes"
    assert main(["pipes", "--ann", str(ckpt), "--data", "mnist5k", "--T", "2", "--out", str(out), *QUICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [run["name"] for run in summary["runs"]] == ["snn_pretrained"]
    assert summary["transfer"]["match_fraction"] == 1.0 and 0 <= summary["ann_acc"] <= 1
    assert summary["transfer_acc"] == summary["runs"][0]["curve"][0][2]


# ------------------------------------------------------------------------------------------------
# piped
# ------------------------------------------------------------------------------------------------
def _events_bundle():
    return with_time_bins(open_dataset("es-mnist", limit_train=128, limit_test=64), 2)


def test_piped_with_a_user_class_and_weights(user_net, tmp_path):
    _folder, spec, weights = user_net
    out = tmp_path / "piped"
    assert main(["piped", "--ann", spec, "--ann-weights", weights, "--baseline", "--out", str(out), *QUICK]) == 0
    summary = json.loads((out / "summary.json").read_text())
    runs = {run["name"]: run for run in summary["runs"]}
    assert list(runs) == ["snn_events_pretrained", "snn_events_scratch"]
    assert summary["dataset"] == "es-mnist" and summary["T"] == 2
    assert set(summary["time_to_target"]) == {"snn_events_scratch", "snn_events_pretrained",
                                              "snn_events_pretrained_total"}
    assert summary["events_target_acc"] == runs["snn_events_scratch"]["best_acc"]
    assert summary["events_input_conv"] == {"name": "conv1", "in_channels": 2, "first_layer": "mean"}
    assert summary["transfer_acc"] == runs["snn_events_pretrained"]["curve"][0][2] > 0.2  # chance: 0.1
    assert len(runs["snn_events_pretrained"]["curve"]) == 2  # transfer + 1 epoch
    report = (out / "report.md").read_text()  # events.compare_first_layer=false: no table of the one mode
    assert "First-layer adaptation" not in report and report.startswith("# pipeD on es-mnist") and "vs from scratch" in report
    events = _events_bundle()
    for name in ("snn_events_pretrained", "snn_events_scratch"):
        ckpt = out / name / "checkpoints" / "last.json"
        info = load_checkpoint(ckpt).meta["model"]
        assert info["input_conv"] == "conv1" and info["in_channels"] == 2 and info["T"] == 2
        model, _meta, _ = model_from_checkpoint(ckpt, code=spec)
        assert model.conv1.weight.shape == (6, 2, 3, 3)
        assert evaluate(model, events)["acc"] == runs[name]["final_acc"]
    ckpt = out / "snn_events_pretrained" / "checkpoints" / "last.json"
    assert main(["evaluate", str(ckpt), "--samples", "32", "--device", "cpu", "--out", str(tmp_path / "evaluation"),
                 "--trust-code"]) == 0
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["data"] == "es-mnist" and evaluation["spiking"]


def test_piped_from_an_ann_class_checkpoint_trained_by_pipes(pretrained_here, tmp_path):
    ckpt = pretrained_here / "ann" / "checkpoints" / "last.json"
    out = tmp_path / "piped"
    assert main(["piped", "--ann", str(ckpt), "--trust-code", "--out", str(out), *QUICK,
                 "--set", "bridge.first_layer=signed_polarity"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [run["name"] for run in summary["runs"]] == ["snn_events_pretrained"]
    assert summary["events_input_conv"]["first_layer"] == "signed_polarity" and summary["ann"] == str(ckpt)
    assert "decay: 0.5" in (out / "config.yaml").read_text()  # a user class: the spikify default, as finetune


def test_piped_with_a_registry_checkpoint_takes_its_model_name(tmp_path):
    """model.name auto: the event SNN is the checkpoint's architecture (vgg11), not the model
    auto picks for ES-MNIST (cnn, whose tensors would not match)."""
    ckpt = registry_ann_checkpoint(tmp_path / "ann", "vgg11")
    out = tmp_path / "piped"
    assert main(["piped", "--ann", str(ckpt), "--out", str(out), "--device", "cpu", "--no-progress",
                 "--set", "data.limit_train=32", "--set", "data.limit_test=16", "--set", "events.finetune.epochs=0",
                 "--set", "events.compare_first_layer=false", "--set", "bridge.calibration_batches=1",
                 "--set", "bridge.calibration_batch_size=16", "--set", "events.time_bins=2",
                 "--set", "events.finetune.batch_size=16"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [run["name"] for run in summary["runs"]] == ["snn_events_pretrained"]
    assert summary["events_transfer"]["match_fraction"] == 1.0  # the vgg11 SNN took every tensor but the adapted conv
    assert summary["events_transfer"]["adapted"] == ["features.0.weight"] and not summary["events_transfer"]["mismatched"]


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def test_bad_ann_flags_are_one_line_exit_2(user_net, tmp_path, capsys):
    folder, spec, weights = user_net
    torch.save({"conv1.weight": torch.zeros(3, 1, 3, 3)}, folder / "wrong.pth")
    ckpt = save_checkpoint(tmp_path / "ann", "last", sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1),
                           {"model": {"name": "cnn", "num_classes": 10, "in_channels": 1, "T": 1},
                            "neuron": {"kind": "relu"}, "data": "mnist5k"})
    out = tmp_path / "never"
    cases = [
        (["pipes", "--ann-weights", weights], "--ann-weights / --ann-kwargs go with --ann FILE.py:ClassName"),
        (["piped", "--ann", str(ckpt), "--ann-weights", weights], "a checkpoint has its own"),
        (["pipes", "--ann", f"{folder}/missing.py:TinyCNN", "--ann-weights", weights], "file not found"),
        (["piped", "--ann", spec, "--ann-weights", str(folder / "missing.pth")], "--ann-weights: file not found"),
        (["pipes", "--ann", spec, "--ann-weights", str(folder / "wrong.pth")], "do not fit TinyCNN"),
        (["piped", "--ann", spec, "--ann-weights", str(folder / "wrong.pth")], "do not fit TinyCNN"),
        (["pipes", "--ann", str(folder / "net.py")], "expected FILE.py:ClassName"),
        (["pipes", "--ann", f"{spec[:-len('TinyCNN')]}Nope", "--ann-weights", weights], "no class 'Nope'"),
        (["piped", "--ann", spec, "--ann-weights", weights, "--ann-kwargs", '{"num_classes": 3}'], "do not fit TinyCNN"),
    ]
    for argv, message in cases:
        assert main([*argv, "--out", str(out), "--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert not out.exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------------
# the input-conv swap and event calibration
# ------------------------------------------------------------------------------------------------
class SecondDeclaredFirst(nn.Module):
    """conv_late is registered first but reads the features; conv_early reads the input."""

    def __init__(self, in_channels=1):
        super().__init__()
        self.conv_late = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_early = nn.Conv2d(in_channels, 4, 3, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.conv_early(x * 2.0))
        x = F.relu(self.conv_late(x))
        return self.fc(x.flatten(1))


class NormFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(F.relu(self.conv(self.norm(x))).flatten(1))


def test_adapt_input_conv_mean_signed_and_skip():
    torch.manual_seed(0)
    ann = SecondDeclaredFirst(in_channels=1)
    grey = torch.randn(3, 1, 8, 8)
    original = ann.conv_early.weight.detach().clone()
    snns = {}
    for mode in ("mean", "signed_polarity", "skip"):
        snn = spikify(ann, "lif", T=2)
        assert adapt_input_conv(snn, 2, mode) == "conv_early"
        snns[mode] = snn
        new = snn.conv_early
        assert new.weight.shape == (4, 2, 3, 3) and new.stride == (2, 2) and new.padding == (1, 1)
        assert snn.conv_late.weight.shape == (4, 4, 3, 3)
        events = torch.rand(2, 3, 2, 8, 8)  # [T, B, 2, H, W]
        assert snn(events).shape == (3, 10)
    old = ann.conv_early
    with torch.no_grad():
        # mean from 1 channel: both polarities carry the kernel, so half the grey on each = the grey
        half = torch.cat([grey / 2, grey / 2], dim=1)
        assert torch.allclose(snns["mean"].conv_early(half), old(grey), atol=1e-6)
        # signed polarity: ON = the grey kernel, OFF = its negative (same bias)
        on, off = torch.cat([grey, 0 * grey], 1), torch.cat([0 * grey, grey], 1)
        assert torch.allclose(snns["signed_polarity"].conv_early(on), old(grey), atol=1e-6)
        assert torch.allclose(snns["signed_polarity"].conv_early(off), 2 * old.bias.view(1, -1, 1, 1) - old(grey), atol=1e-6)
    assert not torch.allclose(snns["skip"].conv_early.weight, snns["mean"].conv_early.weight)
    assert ann.conv_early.in_channels == 1 and torch.equal(ann.conv_early.weight, original)  # the ANN is untouched


def test_adapt_input_conv_mean_averages_colours():
    torch.manual_seed(0)
    ann = SecondDeclaredFirst(in_channels=3)
    snn = spikify(ann, "lif", T=2)
    adapt_input_conv(snn, 2, "mean")
    grey = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        # the colour-mean kernel m on both channels: new([a, b]) = m * (a + b); old(grey RGB) = 3 m * g
        assert torch.allclose(snn.conv_early(torch.cat([1.5 * grey, 1.5 * grey], 1)),
                              ann.conv_early(grey.expand(-1, 3, -1, -1)), atol=1e-5)


def test_adapt_input_conv_refuses_a_norm_on_the_input():
    snn = spikify(NormFirst(), "lif", T=2)
    with pytest.raises(ConfigError, match="first goes through layer 'norm' \\(BatchNorm2d\\)"):
        adapt_input_conv(snn, 2, "mean")


def test_event_calibration_matches_static_calibration_on_repeated_frames():
    """Events whose every frame is the image, with the ANN seeing the image: the same thresholds
    as calibrating on the static image (the ANN/SNN batch pairing and chunking are right)."""
    torch.manual_seed(0)
    ann = SecondDeclaredFirst(in_channels=1)
    images = [torch.rand(5, 1, 8, 8), torch.rand(3, 1, 8, 8)]
    static_snn, graph, _ = spikify_with_graph(ann, "lif", T=3, calibrate=False)
    static = calibrate_thresholds(static_snn, graph, images)
    event_snn, graph, _ = spikify_with_graph(ann, "lif", T=3, calibrate=False)
    frames = [x.unsqueeze(0).expand(3, *x.shape).contiguous() for x in images]  # [T, B, 1, H, W]
    from_events = calibrate_thresholds(event_snn, graph, frames, ann_batches=images)
    assert static.keys() == from_events.keys() and len(static) == 2
    for key in static:
        assert from_events[key] == pytest.approx(static[key], rel=1e-5)
        assert static[key] != pytest.approx(NeuronConfig().threshold)  # calibrated, not the neuron's own
