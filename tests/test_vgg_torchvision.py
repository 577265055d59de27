"""torchvision's VGG with BatchNorm (``vgg11_bn_tv`` / ``vgg16_bn_tv``): torchvision's weight files
load and compute what torchvision's model computes; the SNN's classifier neurons are calibrated
by the bridge; dropout masks are shared over time; a model that cannot read the data's frames is
refused before any training."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import spikebridge as sb
from _layouts import image_folders
from spikebridge import cli
from spikebridge.errors import CheckpointError
from spikebridge.export import export_nir
from spikebridge.models.vgg import TimeSharedDropout
from spikebridge.pipelines.ann import AnnSource, load_ann

pytestmark = pytest.mark.usefixtures("one_thread")


def torchvision_vgg_bn(stages: list, num_classes: int) -> nn.Module:
    """VGG as torchvision defines it (``torchvision.models.vgg``, ``batch_norm=True``): written out
    here because torchvision does not install beside this CPU torch."""
    layers, channels = [], 3
    for item in stages:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
                                     nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=0.5),
                                     nn.Linear(4096, num_classes))
    model.forward = lambda x: model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))
    return model


@pytest.mark.parametrize("name,params", [("vgg11_bn_tv", 132_868_840), ("vgg16_bn_tv", 138_365_992)])
def test_keys_shapes_and_size_are_torchvisions(name, params):
    """torchvision's documented parameter counts (1000 classes), and every key and shape."""
    stages = sb.models.vgg.VGG_STAGES[name.split("_")[0]]
    with torch.device("meta"):
        ours = sb.create_model(name, num_classes=1000, neuron="relu")
        theirs = torchvision_vgg_bn(stages, 1000)
    assert sum(p.numel() for p in ours.parameters()) == params
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert ours.readout_name == "classifier.6" and ours.fc is ours.classifier[6]


def test_torchvision_weight_file_loads_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    theirs = torchvision_vgg_bn(sb.models.vgg.VGG_STAGES["vgg11"], 7)
    with torch.no_grad():  # trained-looking BN statistics
        for module in theirs.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    torch.save(theirs.state_dict(), tmp_path / "vgg11_bn.pth")
    loaded = load_ann(AnnSource(model="vgg11_bn_tv", weights=str(tmp_path / "vgg11_bn.pth")))
    assert loaded.checkpoint_model["num_classes"] == 7 and loaded.checkpoint_model["in_channels"] == 3
    with pytest.raises(CheckpointError, match="these weights fit the registry model vgg11_bn_tv, not vgg11: give "
                       r"--ann vgg11_bn_tv --ann-weights \.\.\. \(\*_tv: torchvision's layout\)"):
        load_ann(AnnSource(model="vgg11", weights=str(tmp_path / "vgg11_bn.pth")))  # the CIFAR-style VGG
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model.eval()(x), theirs.eval()(x), atol=1e-5, rtol=1e-4)


def test_dropout_mask_is_shared_over_time_steps():
    dropout = TimeSharedDropout(0.5).train()
    dropout.time_steps = 3
    torch.manual_seed(0)
    out = dropout(torch.ones(3 * 4, 50)).view(3, 4, 50)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert set(out.unique().tolist()) == {0.0, 2.0} and 0.3 < (out[0] == 0).float().mean() < 0.7
    snn = sb.create_model("vgg11_bn_tv", num_classes=3, neuron="lif", T=2)
    assert sum(isinstance(m, TimeSharedDropout) for m in snn._folded) == 2  # set to the input's T at each forward
    x = torch.randn(2, 3, 32, 32)
    snn.eval()
    assert torch.equal(snn(x), snn(x))  # no dropout in eval


def test_a_model_that_cannot_read_the_frames_is_refused_before_training(tmp_path, capsys):
    """VGG's five 2x2 max-pools need 32 x 32: on 28 x 28 digits the run stops before the ANN trains."""
    code = cli.main(["pipes", "--model", "vgg11_bn_tv", "--data", "mnist5k", "--out", str(tmp_path / "o"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "model vgg11_bn_tv cannot read the 28x28 frames of 'mnist5k'" in err and "another model" in err
    assert not (tmp_path / "o").exists()
    code = cli.main(["pipes", "--data", "mnist5k", "--set", "data.image_size=32", "--out", str(tmp_path / "o"),
                     "--no-progress"])
    assert code == 2 and "mnist5k is 28 x 28: image_size=32 applies only to dataset folders" in capsys.readouterr().err


@pytest.mark.slow
def test_torchvision_weights_and_a_vgg_trained_here_bridge_on_an_image_folder(tmp_path):
    """``finetune --ann vgg11_bn_tv --ann-weights vgg11_bn.pth`` on 32 x 32 images takes every
    tensor; ``pipes --model vgg11_bn_tv`` (a sharpened-ReLU ANN trained here) has the bridge match
    the firing rates of the classifier's neurons too, through their linear layers' biases."""
    torch.manual_seed(0)
    torch.save(torchvision_vgg_bn(sb.models.vgg.VGG_STAGES["vgg11"], 3).state_dict(), tmp_path / "vgg11_bn.pth")
    data = str(image_folders(tmp_path / "data", size=(32, 32), classes=3, train_per_class=4))
    quick = ["--no-progress", "--set", "model.T=2", "--set", "finetune.epochs=1", "--set", "finetune.batch_size=4",
             "--set", "bridge.calibration_batches=1"]
    assert cli.main(["finetune", "--ann", "vgg11_bn_tv", "--ann-weights", str(tmp_path / "vgg11_bn.pth"),
                     "--data", data, "--out", str(tmp_path / "ft"), *quick]) == 0
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["transfer"]["match_fraction"] == 1.0
    assert cli.main(["pipes", "--model", "vgg11_bn_tv", "--data", data, "--out", str(tmp_path / "ps"), *quick,
                     "--set", "ann.epochs=1", "--set", "ann.batch_size=4"]) == 0
    errors = json.loads((tmp_path / "ps" / "summary.json").read_text())["transfer"]["rate_errors"]
    assert {"classifier.1", "classifier.4"} <= set(errors) and len(errors) == 10


def test_spikify_and_nir_export_read_the_torchvision_readout(tmp_path):
    """spikify traces the model through its readout (``classifier.6``); NIR export says why it
    cannot export it (max pooling), in one line."""
    torch.manual_seed(0)
    ann = sb.create_model("vgg11_bn_tv", num_classes=3, neuron="relu").eval()
    snn = sb.spikify(ann, "lif", 2, [torch.randn(4, 3, 32, 32)]).eval()
    assert snn(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(sb.SpikebridgeError, match="layer 'features.3' \\(MaxPool2d\\): NIR has no max-pooling node"):
        export_nir(sb.create_model("vgg11_bn_tv", num_classes=3, neuron="lif", T=2), (3, 32, 32), tmp_path / "x.nir")
