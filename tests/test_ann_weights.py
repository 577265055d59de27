"""ANN weights from the command line: ``--ann MODEL --ann-weights W.pth|W.safetensors`` with a
registry model (a plain state dict, or one under ``state_dict`` / ``model``), for pipes / piped /
finetune / benchmark; a bare weights file as ``--ann`` gets one line saying what to give."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import spikebridge as sb
from spikebridge import cli
from spikebridge.pipelines.ann import AnnSource, RegistryFamily, load_ann
from spikebridge.restore import load_ann_weights
from spikebridge.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    """A tiny registry ANN (``cnn`` for the embedded digits) saved the ways users save weights."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1).state_dict()
    paths = {"plain": root / "plain.pth", "state_dict": root / "wrapped.pth", "model": root / "model.pt",
             "safetensors": root / "w.safetensors"}
    torch.save(state, paths["plain"])
    torch.save({"state_dict": state, "epoch": 3}, paths["state_dict"])
    torch.save({"model": state, "optimizer": {}}, paths["model"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths["safetensors"]))
    (root / "notes.pth").write_text("not weights\n")
    paths["text"] = root / "notes.pth"
    paths["pickled"] = root / "whole_model.pth"  # torch.save(model): loading it would run code
    torch.save(sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1), paths["pickled"])
    return {"state": state, **{k: str(v) for k, v in paths.items()}}


def _plan(argv, capsys) -> dict:
    assert cli.main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("kind", ["plain", "state_dict", "model", "safetensors"])
def test_registry_model_with_weights_loads_every_layout(weights, kind):
    loaded = load_ann(AnnSource(model="cnn", weights=weights[kind]))
    assert isinstance(loaded.family, RegistryFamily) and not loaded.model.spiking
    assert loaded.checkpoint_model == {"name": "cnn", "num_classes": 10, "in_channels": 1, "T": 1}
    for key, value in weights["state"].items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


@pytest.mark.parametrize("command", ["finetune", "pipes", "piped", "benchmark"])
def test_plan_shows_the_model_and_no_ann_phase(weights, command, tmp_path, capsys):
    argv = [command, "--ann", "cnn", "--ann-weights", weights["safetensors"], "--data", "mnist5k",
            "--out", str(tmp_path / "o"), "--plan"]
    if command == "piped":
        argv += ["--events", "es-mnist"]
    plan = _plan(argv, capsys)
    assert plan["ann"] == "cnn"
    assert plan["phases"] and all(p["role"] != "ann" for p in plan["phases"])  # the ANN is trained already
    assert all(p["model"] == "cnn" for p in plan["phases"])
    assert not (tmp_path / "o").exists()


def test_torchvision_named_model_takes_its_weights(tmp_path):
    """``resnet18_tv`` has torchvision's key names: a torchvision-style state dict (here 7 classes)
    loads, the classes read from ``fc.weight``."""
    state = sb.create_model("resnet18_tv", num_classes=7, neuron="relu").state_dict()
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.weight", "fc.weight"} <= set(state)
    torch.save(state, tmp_path / "tv.pth")
    loaded = load_ann(AnnSource(model="resnet18_tv", weights=str(tmp_path / "tv.pth")))
    assert loaded.checkpoint_model["num_classes"] == 7 and loaded.model.fc.out_features == 7


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_bare_weights_file_as_ann_says_what_to_give(weights, suffix, tmp_path, capsys):
    path = weights["plain"] if suffix == "pth" else weights["safetensors"]
    code = cli.main(["finetune", "--ann", path, "--data", "mnist5k", "--out", str(tmp_path / "o"), "--plan"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--ann MODEL --ann-weights" in err and "codec" not in err and "model description" not in err


@pytest.mark.parametrize("case,expected", [
    (["--ann", "cnn"], "needs --ann-weights"),
    (["--ann", "cnn", "--ann-weights", "missing.pth"], "file not found"),
    (["--ann", "cnn", "--ann-weights", "TEXT"], "not a weights file of torch.save, .safetensors or a spikebridge "
     "checkpoint (it starts with b'"),
    (["--ann", "lenet5"], "--ann 'lenet5': no such checkpoint, nor a registry model (cnn, crnn, resnet18"),
    (["--ann", "cnn", "--ann-weights", "PICKLED"], "holds a pickled Python object (spikebridge.models.cnn.SmallCNN), "
     "not only tensors, and spikebridge never runs code from a weights file; save the weights with "
     "torch.save(model.state_dict(), PATH)"),
    (["--ann", "resnet18_tv", "--ann-weights", "PLAIN"],  # another registry model's weights: named
     "these weights fit the registry model cnn, not resnet18_tv: give --ann cnn --ann-weights ..."),
    (["--ann", "resnet18_tv", "--ann-weights", "NOISE"], "the weights do not fit resnet18_tv"),  # no model's
    (["--ann", "nowhere.py:Net"], "file not found"),  # the user's class: checked when the plan is made
    (["--ann", "CLASSES:Missing"], "has no class 'Missing'; nn.Module classes there: Broken, Net"),
    (["--ann", "CLASSES:Net", "--ann-weights", "PLAIN"], "do not fit"),
    (["--ann", "RAISES:Net"], "failed: RuntimeError: 'no GPU here'"),  # the file's own code fails as it loads
    (["--ann", "CLASSES:Broken"], "Broken(**{}) raised ValueError: 'bad width'"),  # its __init__ fails
])
@pytest.mark.parametrize("plan_only", [False, True])
def test_bad_weights_get_one_line(weights, case, expected, plan_only, tmp_path, capsys):
    noise = tmp_path / "noise.pth"
    torch.save({"fc.weight": torch.zeros(10, 512), "conv1.weight": torch.zeros(8, 3, 3, 3)}, noise)
    classes = tmp_path / "net.py"
    classes.write_text("import torch.nn as nn\n\nclass Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                       "        self.fc = nn.Linear(784, 10)\n\n    def forward(self, x):\n        return self.fc(x.flatten(1))\n"
                       "\n\nclass Broken(nn.Module):\n    def __init__(self):\n        raise ValueError('bad width')\n")
    raises = tmp_path / "raises.py"
    raises.write_text("raise RuntimeError('no GPU here')\n")
    argv = [a.replace("TEXT", weights["text"]).replace("PLAIN", weights["plain"]).replace("PICKLED", weights["pickled"])
            .replace("NOISE", str(noise)).replace("CLASSES", str(classes)).replace("RAISES", str(raises)) for a in case]
    command = "pipes" if ".py:" in argv[1] else "finetune"  # pipes trains a class given without weights
    code = cli.main([command, *argv, "--data", "mnist5k", "--out", str(tmp_path / "o"), "--no-progress",
                     *(["--plan"] if plan_only else [])])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert expected in captured.err and captured.out == "", captured.err
    assert not (tmp_path / "o").exists()


def finetune_from(weights_file: str, out) -> int:
    """``finetune --ann cnn --ann-weights WEIGHTS_FILE``, one short epoch on a few digits."""
    return cli.main(["finetune", "--ann", "cnn", "--ann-weights", weights_file, "--data", "mnist5k", "--out", str(out),
                     "--no-progress", "--device", "cpu", "--T", "2", "--epochs", "1", "--set", "data.limit_train=64",
                     "--set", "data.limit_test=32", "--set", "finetune.batch_size=32", "--calibration-samples", "32"])


def finetuned(weights_file, out, capsys) -> tuple[dict, str]:
    """:func:`finetune_from`, which must succeed: its ``summary.json`` and what it printed."""
    code = finetune_from(str(weights_file), out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    return json.loads((out / "summary.json").read_text()), printed


def test_finetune_runs_from_registry_weights(weights, tmp_path):
    out = tmp_path / "ft"
    code = finetune_from(weights["state_dict"], out)
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ann"] == "cnn" and [r["name"] for r in summary["runs"]] == ["snn_finetuned"]
    assert summary["transfer"]["matched"] and (out / "snn_finetuned" / "checkpoints" / "last.json").is_file()


def test_finetune_from_weights_of_another_class_count_starts_a_new_classifier(tmp_path, capsys):
    """ImageNet weights on a 10-class dataset: every layer but the classifier transfers (as pipeD does)."""
    torch.manual_seed(0)
    torch.save(sb.create_model("cnn", num_classes=7, neuron="relu", in_channels=1).state_dict(), tmp_path / "w7.pth")
    summary, printed = finetuned(tmp_path / "w7.pth", tmp_path / "ft", capsys)
    assert summary["ann_acc"] is None and "has 7 classes, mnist5k 10" in printed and "ANN - |" in printed
    transfer = summary["transfer"]
    assert sorted(transfer["mismatched"]) == [["fc.bias", [7], [10]], ["fc.weight", [7, 1024], [10, 1024]]]
    assert transfer["matched"] == len(sb.create_model("cnn", num_classes=10).state_dict()) - 2


def test_backbone_weights_and_compiled_or_ddp_prefixes_load(tmp_path, capsys):
    """Weights without the classifier (a backbone: self-supervised or feature-extractor checkpoints)
    load as the ANN with a new readout, and the SNN's classifier starts new (they were refused as
    "not weights of the registry model"); torch.compile's ``_orig_mod.`` prefix, alone or with
    DDP's ``module.``, is dropped as ``module.`` is."""
    torch.manual_seed(0)
    state = sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1).state_dict()
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    torch.save({"model": {f"module._orig_mod.{k}": v for k, v in state.items()}}, tmp_path / "compiled.pth")
    loaded = load_ann(AnnSource(model="cnn", weights=str(tmp_path / "compiled.pth")))
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in state.items())
    # older and converted files lack BatchNorm's num_batches_tracked; PyTorch loads them (we refused)
    nobt = sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1).state_dict()  # with its _metadata
    for key in [k for k in nobt if k.endswith("num_batches_tracked")]:  # (BatchNorm version 2: torch wants them)
        del nobt[key]
    torch.save(nobt, tmp_path / "nobt.pth")
    loaded = load_ann(AnnSource(model="cnn", weights=str(tmp_path / "nobt.pth")))
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in nobt.items())
    own = sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1)  # a user class's path: load_ann_weights
    load_ann_weights(own, tmp_path / "nobt.pth")  # it was an internal error: Missing key(s) ... num_batches_tracked
    assert all(torch.equal(own.state_dict()[k], v) for k, v in nobt.items())
    headless = load_ann(AnnSource(model="cnn", weights=str(tmp_path / "backbone.pth")))
    assert headless.checkpoint_model["num_classes"] == 0
    assert all(torch.equal(headless.model.state_dict()[k], v) for k, v in backbone.items())
    summary, printed = finetuned(tmp_path / "backbone.pth", tmp_path / "ft", capsys)
    assert summary["ann_acc"] is None and "has no classifier (backbone weights), mnist5k 10 classes" in printed
    assert sorted(k for k, *_ in summary["transfer"]["mismatched"]) == ["fc.bias", "fc.weight"]
    assert summary["transfer"]["matched"] == len(backbone)


def test_finetune_from_colour_weights_on_grey_images_adapts_the_first_layer(tmp_path, capsys):
    """RGB weights (a 3-channel first convolution) on the 1-channel digits: the SNN's first
    convolution is the colour kernels' mean (bridge.first_layer), every other tensor transfers."""
    torch.manual_seed(0)
    rgb = sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=3).state_dict()
    torch.save(rgb, tmp_path / "rgb.pth")
    out = tmp_path / "ft"
    summary, printed = finetuned(tmp_path / "rgb.pth", out, capsys)
    assert summary["ann_acc"] is None and "reads 3-channel images, mnist5k has 1" in printed
    first = next(k for k, v in rgb.items() if v.dim() == 4)
    assert summary["transfer"]["adapted"] == [first] and summary["transfer"]["matched"] == len(rgb) - 1
    snn = load_checkpoint(out / "snn_finetuned" / "checkpoints" / "last.json").model_state
    assert snn[first].shape == (rgb[first].shape[0], 1, *rgb[first].shape[2:])


def test_benchmark_refuses_a_decoder_transfer_across_class_counts_before_training(tmp_path, capsys):
    torch.save(sb.create_model("cnn", num_classes=7, neuron="relu", in_channels=1).state_dict(), tmp_path / "w7.pth")
    out = tmp_path / "bench"
    code = cli.main(["benchmark", "--ann", "cnn", "--ann-weights", str(tmp_path / "w7.pth"), "--data", "mnist5k",
                     "--methods", "pretrained,decoder", "--out", str(out), "--no-progress",
                     "--set", "data.limit_train=64", "--set", "data.limit_test=32"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "7 classes, mnist5k 10" in err
    assert not (out / "pretrained").exists()  # refused before the first method trained


def test_benchmark_refuses_a_decoder_across_class_counts_before_the_ann_trains(tmp_path, capsys):
    """The same when the run trains the ANN itself on --ann-data (10 digits) for 3-class events."""
    import _layouts as layouts

    events = layouts.dvs_folder(tmp_path / "dvs", per_class=3)
    out = tmp_path / "bench"
    code = cli.main(["benchmark", "--data", str(events), "--ann-data", "mnist5k", "--methods", "scratch,decoder",
                     "--out", str(out), "--no-progress", "--set", "data.limit_train=64", "--set", "data.limit_test=32",
                     "--set", "ann.epochs=1", "--set", "events.scratch.epochs=1", "--set", "events.scratch.until_plateau=0",
                     "--set", "events.scratch.batch_size=2", "--set", "events.finetune.batch_size=2"])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1 and "10 classes" in captured.err, captured.err
    assert "ann epoch" not in captured.out and not out.exists()  # before the ANN trained; nothing left behind


def test_finetune_warm_up_trains_only_the_new_classifier(tmp_path, capsys):
    """``finetune.freeze_epochs`` in pipes / finetune (it was shown by the plan and ignored): during
    the warm-up only what was not transferred as it is trains, here the new 10-class readout of
    7-class weights; with every tensor transferred there is nothing to warm up, and the run says so."""
    torch.manual_seed(0)
    ann = sb.create_model("cnn", num_classes=7, neuron="relu", in_channels=1).state_dict()
    torch.save(ann, tmp_path / "w7.pth")
    torch.save(sb.create_model("cnn", num_classes=10, neuron="relu", in_channels=1).state_dict(), tmp_path / "w10.pth")
    for weights in ("w7", "w10"):
        out = tmp_path / weights
        assert cli.main(["finetune", "--ann", "cnn", "--ann-weights", str(tmp_path / f"{weights}.pth"), "--data", "mnist5k",
                         "--out", str(out), "--no-progress", "--device", "cpu", "--T", "2", "--epochs", "1",
                         "--set", "data.limit_train=64", "--set", "data.limit_test=32", "--set", "finetune.batch_size=32",
                         "--set", "finetune.freeze_epochs=1", "--set", "finetune.precise_bn=0",
                         "--calibration-samples", "32"]) == 0
    trained = load_checkpoint(tmp_path / "w7" / "snn_finetuned" / "checkpoints" / "last.json").model_state
    assert torch.equal(trained["conv1.weight"], ann["conv1.weight"])  # frozen for the warm-up epoch
    assert trained["fc.weight"].shape == (10, 1024)
    assert "every parameter was transferred as it is, so nothing is new to warm up" in capsys.readouterr().out
