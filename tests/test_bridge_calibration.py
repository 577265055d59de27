"""The fast firing-rate calibration (cached chain units) equals the plain reference exactly."""
import copy

import pytest
import torch

import spikebridge as sb
from _model_reference import match_firing_rates_reference
from spikebridge.bridge import (
    TransferReport, _find_chain, _pack, _Replay, _unpack, match_firing_rates, recalibrate_batchnorm,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(name, T, in_channels=3, **kwargs):
    torch.manual_seed(0)
    ann = sb.create_model(name, neuron=sb.NeuronConfig("sharpened_relu", sharpen_epochs=4),
                          in_channels=in_channels, **kwargs)
    with torch.no_grad():  # a trained-looking ANN: BN shifts and scales away from the init
        for module in ann.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    ann.set_epoch(4)
    snn = sb.create_model(name, neuron="lif", T=T, in_channels=in_channels, **kwargs)
    sb.transfer(ann, snn)
    return ann, snn


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(ann, snn, batches, ann_batches=None, iterations=4, recalibrate_first=True):
    if recalibrate_first:  # as bridge_to_snn does with bridge.recalibrate_bn
        recalibrate_batchnorm(snn, batches)
    plain = copy.deepcopy(snn)
    before = _state(snn)
    fast_errors = match_firing_rates(ann, snn, batches, iterations=iterations, ann_batches=ann_batches,
                                     progress=False)
    plain_errors = match_firing_rates_reference(ann, plain, batches, iterations=iterations, ann_batches=ann_batches)
    assert fast_errors == plain_errors and len(fast_errors) >= 3
    fast, reference = _state(snn), _state(plain)
    for key in reference:  # biases, running statistics, counters: bit for bit
        assert torch.equal(fast[key], reference[key]), key
    moved = [k for k in reference if k.endswith(".bias") and not torch.equal(reference[k], before[k])]
    assert len(moved) >= 3  # the calibration did change biases (the test can fail)
    assert snn.training == plain.training
    return fast_errors


@pytest.mark.parametrize("recalibrate_first", [True, False])
def test_fast_calibration_equals_reference_cnn(recalibrate_first):
    ann, snn = _pair("cnn", T=4, in_channels=1)
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    _assert_same(ann, snn, batches, recalibrate_first=recalibrate_first)


def test_fast_calibration_equals_reference_cnn_events():
    """Event input [T, B, C, H, W]: T comes from the input; the ANN sees static images."""
    ann, snn = _pair("cnn", T=4, in_channels=2)
    batches = [(torch.rand(3, 4, 2, 28, 28) < 0.2).float() for _ in range(2)]
    ann_batches = [x.sum(0) for x in batches]
    _assert_same(ann, snn, batches, ann_batches=ann_batches)


@pytest.mark.parametrize("recalibrate_first", [True, False])
def test_fast_calibration_equals_reference_vgg11(recalibrate_first):
    ann, snn = _pair("vgg11", T=2)
    _assert_same(ann, snn, [torch.randn(3, 3, 16, 16) for _ in range(2)], iterations=3,
                 recalibrate_first=recalibrate_first)


@pytest.mark.slow
def test_fast_calibration_equals_reference_torchvision_vgg11():
    """torchvision's VGG: the classifier's neurons are fed by linear layers (no BatchNorm), whose
    biases the calibration shifts."""
    ann, snn = _pair("vgg11_bn_tv", T=2, num_classes=3)
    with torch.no_grad():
        for layer in (ann.classifier[0], ann.classifier[3]):
            layer.bias.uniform_(-0.3, 0.3)
    errors = _assert_same(ann, snn, [torch.randn(3, 3, 32, 32) for _ in range(2)], iterations=3)
    assert {"classifier.1", "classifier.4"} <= set(errors)


def test_fast_calibration_equals_reference_resnet18():
    ann, snn = _pair("resnet18", T=3)
    _assert_same(ann, snn, [torch.randn(2, 3, 32, 32) for _ in range(2)], iterations=3)


def test_chain_covers_the_layers_after_the_stem():
    """The units run one after another: VGG's layers after the stem's time expansion, ResNet's
    stem activation, pooling and blocks (the residual sum stays inside a block)."""
    _, vgg = _pair("vgg11", T=2)
    chain = _find_chain(vgg.eval(), torch.randn(2, 3, 16, 16))
    assert chain[0] is vgg.features[2] and chain[-3] is vgg.features[-1] and chain[-2:] == [vgg.avgpool, vgg.flatten]
    _, tv = _pair("vgg11_bn_tv", T=2, num_classes=3)  # torchvision's: the chain runs on through the classifier
    chain = _find_chain(tv.eval(), torch.randn(2, 3, 32, 32))
    assert chain[0] is tv.features[2] and chain[-8:] == [tv.avgpool, tv.flatten, *tv.classifier[:6]]
    _, resnet = _pair("resnet18", T=2)
    chain = _find_chain(resnet.eval(), torch.randn(2, 3, 32, 32))
    blocks = [b for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4) for b in layer]
    assert chain == [resnet.act1, resnet.maxpool, *blocks, resnet.avgpool]


def test_transfer_report_carries_bridge_seconds():
    report = TransferReport(seconds=1.5)
    assert report.to_dict()["bridge_seconds"] == 1.5
    assert "1.5 s" in report.summary()


def test_progress_bar_shows_one_step_per_layer_and_can_be_silenced(capsys):
    ann, snn = _pair("cnn", T=2, in_channels=1)
    batches = [torch.randn(4, 1, 28, 28)]
    match_firing_rates(ann, snn, batches, iterations=1, progress=False)
    assert "matching firing rates" not in capsys.readouterr().err
    match_firing_rates(ann, snn, batches, iterations=1)
    assert "bridge: matching firing rates:   0%|          | 0/3" in capsys.readouterr().err  # 3 layers


def test_fast_calibration_equals_reference_crnn():
    """The video CRNN: the frame encoder is one unit (its flatten is no module), the LSTM reads a view."""
    ann, snn = _pair("crnn", T=3, input_size=(48, 48), fc_sizes=(32, 16), lstm_hidden=8)
    _assert_same(ann, snn, [torch.randn(3, 2, 3, 48, 48) for _ in range(2)], iterations=3)


def test_cached_spikes_are_stored_as_bool_exactly():
    _, snn = _pair("resnet18", T=2)
    spikes = snn.act1(torch.randn(4, 64, 8, 8))  # a neuron's output, marked 0/1
    packed = _pack(spikes)
    assert packed.dtype == torch.bool and torch.equal(_unpack(packed, spikes.dtype), spikes)
    current = torch.randn(4, 3)  # anything else stays as it is
    assert _pack(current) is current


def test_replay_skips_what_runs_before_the_shifted_batchnorm():
    _, snn = _pair("resnet18", T=2)
    block = snn.layer2[0].eval()  # has a downsample
    x = (torch.rand(4, 64, 8, 8) < 0.3).float()
    replay = _Replay([block], block.bn2)
    with torch.no_grad(), replay:
        first = block(x)
    assert set(replay.outputs) == {block.conv1, block.bn1, block.act1.neuron, block.conv2,
                                   block.downsample[0], block.downsample[1]}
    with torch.no_grad():
        block.bn2.bias.add_(0.5)
        expected = block(x)
        with replay:
            again = block(torch.full_like(x, float("nan")))  # the input is not read again
    assert torch.equal(again, expected) and not torch.equal(again, first)
    assert "forward" not in block.conv1.__dict__  # the modules are restored


@pytest.mark.parametrize("train, expected", [(320, 80), (128, 64), (4000, 512)])
def test_the_bridge_calibrates_on_a_quarter_of_a_small_training_split(train, expected, monkeypatch):
    """Two batches of 256 on a split of 320 calibrated on all of it: the bridge cost more than a
    fine-tune epoch (vgg11, 32 px: 32 s against 20 s). A small split gives a quarter of its samples
    (at least 64); a large one the configured batches."""
    import spikebridge.pipelines.ann as pipelines_ann
    from spikebridge.config import PipelineConfig, load_config
    from spikebridge.data.datasets import open_dataset

    seen = []
    real = pipelines_ann.recalibrate_batchnorm
    monkeypatch.setattr(pipelines_ann, "recalibrate_batchnorm",
                        lambda snn, batches, device: seen.append(sum(len(b) for b in batches)) or real(snn, batches, device))
    bundle = open_dataset("mnist5k", limit_train=train, limit_test=32)
    cfg = load_config(PipelineConfig, None, {"model.name": "cnn", "model.T": 2, "bridge.match_rates": False,
                                             "run.progress": False})
    ann = sb.create_model("cnn", num_classes=10, neuron="sharpened_relu", in_channels=1)
    pipelines_ann.bridge_to_snn(cfg, ann, bundle, "cpu", same_data=True)
    assert seen == [expected]
