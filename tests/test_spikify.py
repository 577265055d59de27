"""spikify: arbitrary ANNs (Sequential, functional F.relu + view, residual) become SNNs that keep the
ANN's parameter names, start close to the ANN, and fine-tune."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikebridge as sb
from spikebridge.config import TrainConfig
from spikebridge.data.loading import DataBundle
from spikebridge.data.static import TensorSplit
from spikebridge.errors import ConfigError
from spikebridge.spikify import SpikingNet, spikify
from spikebridge.train.engine import fit


def sequential_cnn():
    return nn.Sequential(
        nn.Conv2d(1, 6, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = self.fc1(x).relu()
        return F.log_softmax(self.fc2(x), dim=1)


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)  # used twice, as torchvision's BasicBlock does
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.layer1(self.relu(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


ANNS = {"sequential": sequential_cnn, "functional": FunctionalNet, "resnet": TinyResNet}


def _ann(name):
    torch.manual_seed(0)
    ann = ANNS[name]()
    x = torch.randn(64, 1, 14, 14)
    ann.train()
    with torch.no_grad():
        ann(x)  # BN running statistics
    return ann.eval(), x


@pytest.mark.parametrize("name", list(ANNS))
def test_spikify_keeps_names_runs_static_and_events_and_transfers(name):
    ann, x = _ann(name)
    snn = spikify(ann, "lif", T=3, calibration=[x[:16]])
    assert isinstance(snn, SpikingNet) and snn.spiking and snn.T == 3
    ann_keys, snn_keys = set(ann.state_dict()), set(snn.state_dict())
    assert ann_keys <= snn_keys
    assert all(k.endswith("threshold") for k in snn_keys - ann_keys)
    expected_sites = {"sequential": 2, "functional": 3, "resnet": 5}[name]
    assert len(snn.neurons) == expected_sites
    for key, value in ann.state_dict().items():
        assert torch.equal(snn.state_dict()[key], value), key
    # the bridge's transfer works on it like on registry models
    fresh = spikify(ANNS[name](), "lif", T=3)
    report = sb.transfer(ann, fresh)
    assert not report.mismatched and not report.unexpected and set(report.missing) == snn_keys - ann_keys
    snn.eval()
    out = snn(x[:4])
    assert out.shape == (4, 10)
    # static input = the same frame at every step (computed once before the first neurons)
    torch.testing.assert_close(out, snn(x[:4].unsqueeze(0).expand(3, -1, -1, -1, -1)), atol=1e-5, rtol=1e-5)
    # event input: T from the input
    assert snn(torch.rand(5, 2, 1, 14, 14)).shape == (2, 10)
    assert snn.per_step_outputs(x[:2]).shape == (3, 2, 10)


def test_thresholds_are_calibrated_so_the_snn_starts_close_to_the_ann():
    torch.manual_seed(1)
    ann = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5)).eval()
    with torch.no_grad():
        ann[0].weight.mul_(4)  # activations far above the neuron's own threshold (0.5), as in BN-free nets
    x = torch.randn(256, 20) * 3
    target = ann(x)
    calibrated = spikify(ann, sb.NeuronConfig(kind="lif", decay=0.5), T=8, calibration=[x]).eval()
    plain = spikify(ann, sb.NeuronConfig(kind="lif", decay=0.5), T=8, example_input=x[:4]).eval()
    assert calibrated.input_ndim == 2
    thresholds = calibrated.thresholds()
    assert set(thresholds) == {"1", "3"} and all(v != 0.5 for v in thresholds.values())
    error_calibrated = (calibrated(x) - target).pow(2).mean()
    error_plain = (plain(x) - target).pow(2).mean()
    assert error_calibrated < 0.6 * error_plain
    agreement = (calibrated(x).argmax(1) == target.argmax(1)).float().mean()
    assert agreement > (plain(x).argmax(1) == target.argmax(1)).float().mean()


@pytest.mark.parametrize("name", list(ANNS))
def test_each_spikified_net_fine_tunes_a_step(name):
    ann, x = _ann(name)
    snn = spikify(ann, "lif", T=2, calibration=[x[:16]])
    snn.train()
    optimizer = torch.optim.Adam(snn.parameters(), lr=1e-2)
    y = torch.randint(0, 10, (16,))
    before = {k: v.detach().clone() for k, v in snn.named_parameters()}
    loss = F.cross_entropy(snn(x[:16]), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for n, p in snn.named_parameters() if not n.endswith("threshold") or True)
    optimizer.step()
    changed = [k for k, v in snn.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.endswith("threshold") for k in changed) and len(changed) == len(before)


def test_engine_fit_trains_a_spikified_net_and_keeps_the_transfer():
    ann, _x = _ann("sequential")
    torch.manual_seed(0)
    images = (torch.rand(96, 1, 14, 14) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (96,))
    bundle = DataBundle(name="tiny", train=TensorSplit(images[:64], labels[:64]), test=TensorSplit(images[64:], labels[64:]),
                        num_classes=10, in_channels=1, image_size=14)
    snn = spikify(ann, "lif", T=2, calibration=[images[:32].float() / 255])
    result = fit(snn, bundle, TrainConfig(epochs=1, lr=1e-3, batch_size=32), name="snn", run_dir=None,
                 progress=False, evaluate_first=True)
    assert result.epochs == 1 and len(result.curve) == 2 and result.curve[0][0] == 0.0


def test_neuron_choice_and_liaf():
    ann, x = _ann("functional")
    snn = spikify(ann, sb.NeuronConfig(kind="liaf", learnable_decay=True), T=2, calibration=[x[:8]])
    assert all(isinstance(n.neuron, sb.LIAF) and n.analog for n in snn.neurons)
    assert any(k.endswith("decay_logit") for k in snn.state_dict())
    with pytest.raises(ConfigError, match="spiking neuron"):
        spikify(ann, "relu")


class WithLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.rnn = nn.LSTM(4, 4)

    def forward(self, x):
        return self.rnn(F.relu(self.fc(x)))[0]


class WithGELU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(F.relu(self.fc(x)))


class MixesBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        h = F.relu(self.fc(x))
        return h - h.mean(0)  # batch statistics at run time: mixes samples (and time when folded)


class FixedBatchView(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return F.relu(self.conv(x)).view(3, -1)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return F.relu(self.fc(x))
        return self.fc(x)


class ShapeToFactory(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):  # fx cannot give rand() the traced size
        return F.relu(self.fc(x)) * (torch.rand(x.shape[0], 1) > 0.1)


class ZerosOfShape(ShapeToFactory):
    def forward(self, x):
        return F.relu(self.fc(x)) + torch.zeros(x.shape[0], 4)


class IteratesPieces(ShapeToFactory):
    def forward(self, x):
        return torch.cat([*F.relu(self.fc(x)).chunk(2, 1)], 1)


def test_unsupported_layers_get_a_clear_error_naming_them():
    with pytest.raises(ConfigError, match=r"layer 'rnn' \(LSTM\)"):
        spikify(WithLSTM())
    with pytest.raises(ConfigError, match=r"layer 'act' \(GELU\)"):
        spikify(WithGELU())
    with pytest.raises(ConfigError, match="mean"):
        spikify(MixesBatch(), example_input=torch.randn(3, 4))
    with pytest.raises(ConfigError, match="view|fixed batch"):
        spikify(FixedBatchView(), example_input=torch.randn(3, 1, 5, 5))
    with pytest.raises(ConfigError, match="could not trace Branchy.*must not branch on tensor values"):
        spikify(Branchy())
    # it said 'must not branch on tensor values or shapes', which this forward does not do
    with pytest.raises(ConfigError, match=r"could not trace ShapeToFactory.*passes a tensor's shape.*rand_like"):
        spikify(ShapeToFactory())
    with pytest.raises(ConfigError, match=r"could not trace ZerosOfShape.*passes a tensor's shape.*new_zeros"):
        spikify(ZerosOfShape())
    with pytest.raises(ConfigError, match=r"could not trace IteratesPieces.*iterates over a tensor.*a, b = x.chunk"):
        spikify(IteratesPieces())
    with pytest.raises(ConfigError, match="no ReLU-like"):
        spikify(nn.Sequential(nn.Linear(3, 3)))


def test_registry_ann_spikifies_with_registry_names():
    ann = sb.create_model("cnn", neuron="relu", in_channels=1).eval()
    snn = spikify(ann, "lif", T=2, example_input=torch.randn(2, 1, 28, 28))
    assert set(ann.state_dict()) <= set(snn.state_dict())
    assert snn(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_per_channel_thresholds_and_rebuilding_from_a_state_dict():
    ann, x = _ann("resnet")
    snn = spikify(ann, "lif", T=2, calibration=[x[:16]], per_channel_thresholds=True)
    assert snn.state_dict()["relu.threshold"].shape == (8,)
    assert len(set(snn.state_dict()["relu.threshold"].tolist())) > 1
    rebuilt = spikify(TinyResNet(), "lif", T=2)  # as a checkpoint loader does: no calibration
    rebuilt.load_state_dict(snn.state_dict())
    snn.eval(), rebuilt.eval()
    torch.testing.assert_close(rebuilt(x[:4]), snn(x[:4]))


def test_sb_spikify_stays_the_function_whatever_was_imported_first():
    """The package loads its names on first use; importing the submodule ``spikebridge.spikify``
    first (export, pipelines and from_nir do) must not turn ``sb.spikify`` into that module."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch, spikebridge as sb\nfrom spikebridge.export import export_nir\n"
            "from spikebridge.pipelines import pipes\n"
            "net = sb.spikify(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), T=2)\n"
            "print(type(net).__name__, callable(sb.spikify))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert done.stdout.split() == ["SpikingNet", "True"], done.stderr


def test_a_spikified_net_pickles_whole():
    """``torch.save(snn)`` / pickle (multiprocessing, saving the whole model) of a spikified net:
    its generated forward functions are rebuilt on load (it failed: "Can't pickle <function
    forward>"), and the copy computes what the original does, on images and on events."""
    import io
    import pickle

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):  # F.max_pool2d (made by boolean_dispatch) could not be pickled by name
            return self.fc(F.max_pool2d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))

    torch.manual_seed(0)
    snn = sb.spikify(Net(), "lif", T=4, calibration=[torch.rand(16, 1, 8, 8)]).eval()
    buffer = io.BytesIO()
    torch.save(snn, buffer)
    buffer.seek(0)
    images, events = torch.rand(5, 1, 8, 8), torch.rand(3, 5, 1, 8, 8)
    for copy in (torch.load(buffer, weights_only=False), pickle.loads(pickle.dumps(snn))):
        assert torch.equal(copy.eval()(images), snn(images)) and torch.equal(copy(events), snn(events))


def test_a_spikified_net_takes_integer_inputs_as_float():
    """uint8 calibration images and int16 event counts (Tonic's frames) are read as float, as
    registry models read them (they failed inside the first layer: "got Byte and Float")."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    images = torch.randint(0, 4, (16, 2, 8, 8), dtype=torch.uint8)
    snn = sb.spikify(net, "lif", T=3, calibration=[images]).eval()
    events = torch.randint(0, 3, (3, 5, 2, 8, 8), dtype=torch.int16)
    assert torch.equal(snn(events), snn(events.float()))
    reference = sb.spikify(net, "lif", T=3, calibration=[images.float()]).eval()
    assert torch.equal(snn(events), reference(events.float()))
    for other in (events.double(), events.half(), events > 0):  # in the parameters' dtype (a raw dtype error)
        assert torch.equal(snn(other), snn(other.float()))


def test_spikify_unwraps_a_compiled_net():
    """``spikify(torch.compile(ann))`` said forward could not be traced (it branches on values);
    the compiled wrapper's ``_orig_mod`` is spikified, as DataParallel's ``.module`` is."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    images = torch.rand(16, 1, 8, 8)
    plain = sb.spikify(net, "lif", T=2, calibration=[images]).eval()
    compiled = sb.spikify(torch.compile(net), "lif", T=2, calibration=[images]).eval()
    assert torch.equal(compiled(images), plain(images))


def test_spikify_refuses_what_cannot_run_per_frame_in_one_line():
    """A fixed batch size in a reshape, an operation over the samples and calibration inputs that
    do not fit the network: one ConfigError naming the problem (they were a raw shape error, and
    a message that called two equal shapes different)."""
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).view(8, -1))

    class Pooled(Fixed):
        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).flatten(1)).sum(0)

    images = torch.rand(8, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"fails on a batch of 3 of shape \[3, 1, 8, 8\] at node fc .*reshapes "
                                          r"must use x\.size\(0\) / -1"):
        sb.spikify(Fixed(), "lif", T=2, calibration=[images])
    with pytest.raises(ConfigError, match=r"its output \[3\] has no batch axis \(the samples are reduced or mixed\)"):
        sb.spikify(Pooled(), "lif", T=2, calibration=[images])
    with pytest.raises(ConfigError, match=r"fails on a batch of 3 of shape \[3, 2, 8, 8\] at node conv .*the input "
                                          r"must fit the network"):
        sb.spikify(Pooled(), "lif", T=2, calibration=[torch.rand(8, 2, 8, 8)])


def test_spikify_refuses_a_net_that_mixes_samples_at_the_same_shape_or_takes_two_inputs():
    """``F.softmax(x, dim=0)``, ``x.softmax(0)``, ``F.normalize(x, dim=0)`` keep the batch's shape,
    so the shape check passed them, and the SNN's outputs depended on the batch (nn.Softmax(dim=0)
    was refused). A forward of two inputs was accepted and failed at the first call (TypeError)."""
    class Net(nn.Module):
        def __init__(self, mix):
            super().__init__()
            self.fc, self.out, self.mix = nn.Linear(8, 6), nn.Linear(6, 3), mix

        def forward(self, x):
            return self.out(self.mix(F.relu(self.fc(x))))

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x, y):
            return F.relu(self.fc(x)) + y

    x = torch.randn(6, 8)
    mixing = (lambda h: F.softmax(h, dim=0), lambda h: h.softmax(0), lambda h: F.normalize(h, dim=0),
              lambda h: h.cumsum(0), lambda h: h.flip(0))  # the last two leave the first sample as it is
    for mix in mixing:
        for calibration in ([x], [x[:1]], [x[:1].expand(4, 8)]):  # one sample, or identical ones: checked too
            with pytest.raises(ConfigError, match="a sample's output depends on the other samples in the batch"):
                sb.spikify(Net(mix), T=2, calibration=calibration)
    # per-sample operations pass, and so does noise (it differs between runs, not between batches: it was refused)
    for keep in (lambda h: F.softmax(h, dim=1), lambda h: F.normalize(h, dim=1), lambda h: h - h.mean(1, keepdim=True)):
        snn = sb.spikify(Net(keep), T=2, calibration=[x]).eval()
        with torch.no_grad():
            assert torch.allclose(snn(x)[:1], snn(x[:1]), atol=1e-6)
    for seed in range(20):  # noise or a random mask in forward: never refused (a chance equal draw was refused)
        torch.manual_seed(seed)
        for noisy in (lambda h: h + 1e-5 * torch.randn_like(h),
                      lambda h: h * (torch.rand_like(h[:, :1]) < 0.8) / 0.8, lambda h: F.dropout(h, 0.5)):
            assert sb.spikify(Net(noisy), T=2, calibration=[x[:3]])(x).shape == (6, 3)
    torch.manual_seed(0)  # nets whose ReLUs do not all stay at 0 for both samples (then nothing shows the mixing)
    for constant in (torch.zeros(1, 8), torch.full((1, 8), 0.5)):  # a second sample made from it still differs
        with pytest.raises(ConfigError, match="a sample's output depends on the other samples in the batch"):
            sb.spikify(Net(lambda h: h.flip(0)), T=2, calibration=[constant])
    class Scaled(Net):  # a constant default argument runs (it was an internal AttributeError)
        def forward(self, x, scale=2.0):
            return super().forward(x) * scale

    snn = sb.spikify(Scaled(lambda h: h), T=2, calibration=[x]).eval()
    assert snn(x).shape == (6, 3)
    with pytest.raises(ConfigError, match=r"one tensor input; TwoInputs.forward takes 2 \(x, y\)"):
        sb.spikify(TwoInputs(), T=2)
