"""Models: one definition for ANN and SNN, parametrised over the registry."""
import pytest
import torch

import spikebridge as sb
from spikebridge.errors import ConfigError

SMALL_INPUT = {"cnn": 28}


@pytest.mark.parametrize("name", sb.list_models(sequence=False))  # sequence models: test_crnn.py
def test_ann_and_snn_share_every_key_and_run(name):
    size = SMALL_INPUT.get(name, 32)
    ann = sb.create_model(name, num_classes=7, neuron="relu", in_channels=3)
    snn = sb.create_model(name, num_classes=7, neuron="lif", T=2, in_channels=3)
    assert list(ann.state_dict()) == list(snn.state_dict())
    # round trip with zero missing / unexpected keys
    result = snn.load_state_dict(ann.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, size, size)
    out = snn(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in snn.parameters())
    events = torch.rand(3, 2, 3, size, size)
    assert snn(events).shape == (2, 7)
    assert ann(x).shape == (2, 7)
    with torch.no_grad():  # an empty batch (the last shard of a split) gives no rows; it was a reshape error
        assert snn(x[:0]).shape == snn(events[:, :0]).shape == ann.eval()(x[:0]).shape == (0, 7)


def test_static_input_is_repeated_over_time():
    """Direct encoding: T identical frames of events equal the static input."""
    torch.manual_seed(0)
    snn = sb.create_model("cnn", neuron="lif", T=4, in_channels=1).eval()
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(snn(x), snn(x.unsqueeze(0).expand(4, -1, -1, -1, -1)))


def test_readout_is_mean_over_time():
    snn = sb.create_model("cnn", neuron="lif", T=1, in_channels=1).eval()
    frames = torch.rand(3, 2, 1, 28, 28)
    per_step = torch.stack([snn(frames[t : t + 1]) for t in range(3)])
    torch.testing.assert_close(snn(frames), per_step.mean(0), atol=1e-5, rtol=1e-5)


def test_snn_bn_initialised_to_threshold():
    snn = sb.create_model("resnet18", neuron=sb.NeuronConfig("lif", threshold=0.7), T=2)
    assert torch.all(snn.bn1.weight == 0.7) and torch.all(snn.layer1[0].bn2.bias == 0)
    ann = sb.create_model("resnet18", neuron="relu")
    assert torch.all(ann.bn1.weight == 1.0)


def test_paper_resnet_layout():
    """arXiv:2203.01158: no max-pool, stride 2 at every stage: 224 -> 112 -> 56 -> 28 -> 14 -> 7."""
    snn = sb.create_model("resnet18", num_classes=10, neuron="lif", T=1)
    sizes = []
    hooks = [getattr(snn, f"layer{i}").register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for i in range(1, 5)]
    with torch.no_grad():
        snn(torch.randn(1, 3, 224, 224))
    for h in hooks:
        h.remove()
    assert sizes == [56, 28, 14, 7]
    assert isinstance(snn.maxpool, torch.nn.Identity)


def test_torchvision_layout_keys_and_sizes():
    """Parameter counts and key names of torchvision's resnet18/34/50 (1000 classes)."""
    expected = {"resnet18_tv": (122, 11_689_512), "resnet34_tv": (218, 21_797_672), "resnet50_tv": (320, 25_557_032)}
    for name, (keys, params) in expected.items():
        model = sb.create_model(name, num_classes=1000, neuron="relu")
        assert len(model.state_dict()) == keys
        assert sum(p.numel() for p in model.parameters()) == params
    model = sb.create_model("resnet18_tv", num_classes=1000, neuron="relu")
    names = set(model.state_dict())
    for key in ["conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight", "fc.bias"]:
        assert key in names


def test_learnable_decay_adds_parameters_only_to_snn():
    snn = sb.create_model("cnn", neuron=sb.NeuronConfig("liaf", learnable_decay=True), T=2, in_channels=1)
    extra = [k for k in snn.state_dict() if "decay_logit" in k]
    assert len(extra) == 3


def test_model_errors():
    with pytest.raises(ConfigError, match="unknown model"):
        sb.create_model("resnet19")
    with pytest.raises(ConfigError, match="T"):
        sb.create_model("cnn", T=0)
    with pytest.raises(ConfigError):
        sb.create_model("cnn", neuron="tanh")
    with pytest.raises(ConfigError, match="expects input"):
        sb.create_model("cnn", in_channels=1)(torch.randn(28, 28))


def test_integer_and_other_float_inputs_are_taken_in_the_models_dtype():
    """Tonic's ``ToFrame`` gives int16 event counts: models and neurons read them as the same
    numbers in float (it was a dtype error from the first convolution)."""
    model = sb.create_model("cnn", neuron="lif", T=4, in_channels=2).eval()
    counts = torch.randint(0, 3, (4, 2, 2, 28, 28), dtype=torch.int16)
    assert torch.equal(model(counts), model(counts.float()))
    assert torch.equal(sb.LIF()(torch.ones(3, 2, dtype=torch.long)), sb.LIF()(torch.ones(3, 2)))
    # float64, half and bool inputs too, in the parameters' dtype (a raw "expected scalar type
    # Double but found Float"); a .half() model takes float32 input
    x = torch.rand(2, 2, 28, 28)
    for other in (x.double(), x.half(), x > 0.5):
        assert torch.equal(model(other), model(other.float()))
    assert model.half()(x).dtype == torch.half
