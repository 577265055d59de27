"""NIR export: the file reads back with the same node types, shapes and parameters, and a small
discrete-time simulation of the NIR graph (forward Euler, as NIR importers run it) reproduces the
SNN's output. snnTorch's importer is checked in test_nir_interop.py."""
import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikebridge as sb
from spikebridge.errors import ConfigError
from spikebridge.export import export_nir, neuron_parameters
from spikebridge.spikify import spikify


def simulate(graph, frames: np.ndarray) -> np.ndarray:
    """Run a NIR graph step by step (one forward-Euler step of the graph's ``dt`` for LIF/IF),
    ``frames [T, ...]``; returns the output at every step. A node's input is the sum over its
    incoming edges."""
    dt = float(graph.metadata["dt"])
    preds = {name: [s for s, d in graph.edges if d == name] for name in graph.nodes}
    order, done = [], set()
    while len(order) < len(graph.nodes):
        for name in graph.nodes:
            if name not in done and all(p in done for p in preds[name]):
                order.append(name)
                done.add(name)
    state, outputs = {}, []
    for frame in frames:
        values = {}
        for name in order:
            node = graph.nodes[name]
            x = frame if isinstance(node, nir.Input) else sum(values[p] for p in preds[name])
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
            if isinstance(node, nir.Conv2d):
                y = F.conv2d(t[None], torch.as_tensor(node.weight, dtype=torch.float64), torch.as_tensor(node.bias, dtype=torch.float64),
                             tuple(node.stride), tuple(node.padding), tuple(node.dilation), node.groups)[0]
            elif isinstance(node, nir.Affine):
                y = torch.as_tensor(node.weight, dtype=torch.float64) @ t + torch.as_tensor(node.bias, dtype=torch.float64)
            elif isinstance(node, nir.Linear):
                y = torch.as_tensor(node.weight, dtype=torch.float64) @ t
            elif isinstance(node, nir.Flatten):
                y = t.reshape(-1)
            elif isinstance(node, nir.AvgPool2d):
                y = F.avg_pool2d(t[None], tuple(node.kernel_size), tuple(node.stride), tuple(node.padding))[0]
            elif isinstance(node, nir.Scale):
                y = t * torch.as_tensor(node.scale, dtype=torch.float64)
            elif isinstance(node, (nir.LIF, nir.IF)):
                v = state.get(name, torch.zeros_like(t))
                r = torch.as_tensor(node.r, dtype=torch.float64)
                if isinstance(node, nir.LIF):
                    tau = torch.as_tensor(node.tau, dtype=torch.float64)
                    v = v + dt / tau * (torch.as_tensor(node.v_leak, dtype=torch.float64) - v) + dt * r / tau * t
                else:
                    v = v + dt * r * t
                spike = (v > torch.as_tensor(node.v_threshold, dtype=torch.float64)).double()
                state[name] = torch.where(spike > 0, torch.as_tensor(node.v_reset, dtype=torch.float64), v)
                y = spike
            else:  # Input, Output
                y = t
            values[name] = y
            if isinstance(node, nir.Output):
                outputs.append(y.numpy())
    return np.stack(outputs)


def _registry_snn():
    torch.manual_seed(0)
    snn = sb.create_model("cnn", neuron=sb.NeuronConfig(kind="lif", decay=0.5, threshold=0.3), T=3, in_channels=1)
    snn.train()
    with torch.no_grad():
        snn(torch.randn(16, 1, 16, 16))  # non-trivial BN statistics
        for m in snn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.3)
    return snn.eval()


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = self.relu(self.stem(x))
        h = self.relu(self.conv(h) + h)
        h = self.pool(h)
        return self.fc(h.view(h.size(0), -1))


@pytest.mark.parametrize("kind", ["registry", "spikified", "per_channel"])
def test_nir_round_trip_types_shapes_parameters_and_dynamics(kind, tmp_path):
    if kind == "registry":
        snn, shape = _registry_snn(), (1, 16, 16)
    else:
        torch.manual_seed(0)
        ann = ResidualNet().eval()
        snn = spikify(ann, sb.NeuronConfig(kind="lif", decay=0.25), T=4, calibration=[torch.randn(32, 1, 8, 8)],
                      per_channel_thresholds=kind == "per_channel").eval()
        shape = (1, 8, 8)
    path = tmp_path / "net.nir"
    graph = export_nir(snn, shape, path)
    back = nir.read(path)
    assert {k: type(v).__name__ for k, v in back.nodes.items()} == {k: type(v).__name__ for k, v in graph.nodes.items()}
    assert sorted(back.edges) == sorted(graph.edges)
    types = [type(v).__name__ for v in back.nodes.values()]
    for name, node in graph.nodes.items():
        for field in ("weight", "bias", "tau", "r", "v_threshold", "v_leak", "v_reset", "scale"):
            if hasattr(node, field):
                np.testing.assert_allclose(getattr(back.nodes[name], field), getattr(node, field), err_msg=f"{name}.{field}")
    assert float(back.metadata["dt"]) == 1e-4 and int(back.metadata["time_steps"]) == snn.T
    assert "Scale" not in types
    if kind == "registry":
        assert types.count("Conv2d") == 3 and types.count("LIF") == 3 and "BatchNorm" not in "".join(types)
        # BN folded: conv1's NIR weight = conv weight * gamma / sqrt(var + eps)
        bn = snn.bn1
        factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        np.testing.assert_allclose(back.nodes["conv1"].weight, snn.conv1.weight.detach().numpy() * factor[:, None, None, None], rtol=1e-5)
        lif = back.nodes["act1"]
        assert lif.tau.shape == (16, 16, 16)
        np.testing.assert_allclose(lif.tau, 1e-4 / (1 - 0.5), rtol=1e-6)  # decay = 1 - dt / tau
        np.testing.assert_allclose(lif.r, 1 / (1 - 0.5), rtol=1e-6)  # unit input gain: dt r / tau = 1
        np.testing.assert_allclose(lif.v_threshold, 0.3, rtol=1e-6)
    else:
        assert types.count("LIF") == 2
        # the residual sum is two edges into the second neuron; the first neuron's level V is folded
        # into that neuron's threshold, the conv it feeds (input columns) and the other branch (rows)
        second = [s for s, d in back.edges if d == "relu_2"]
        assert sorted(second) == ["conv", "relu"]
        level = snn.relu.effective_threshold().detach().numpy()
        level = level.reshape(-1, 1, 1) if level.ndim else level
        np.testing.assert_allclose(back.nodes["relu"].v_threshold, np.broadcast_to(level, (4, 8, 8)), rtol=1e-6)
    # the NIR graph, simulated, computes what the SNN computes (mean over T of the output)
    x = torch.randn(2, *shape)
    expected = snn(x).detach().numpy()
    for i in range(2):
        frames = np.repeat(x[i].numpy()[None], snn.T, axis=0)
        np.testing.assert_allclose(simulate(back, frames).mean(0), expected[i], rtol=1e-4, atol=1e-4)


def test_neuron_parameter_mapping_edge_cases(tmp_path):
    if_params = neuron_parameters(sb.LIF(decay=1.0, threshold=0.5), (3,))
    assert if_params["type"] == "IF" and np.allclose(if_params["r"], 1e4)  # dv/dt = r I: dt r = 1
    zero = neuron_parameters(sb.LIF(decay=0.0, threshold=0.5), (3,), dt=1.0)
    assert np.allclose(zero["tau"], 1.0) and np.allclose(zero["r"], 1.0)  # decay 0: tau = dt
    graph = export_nir(_registry_snn(), (1, 16, 16), tmp_path / "dt.nir", dt=0.5)
    assert float(nir.read(tmp_path / "dt.nir").metadata["dt"]) == 0.5
    np.testing.assert_allclose(graph.nodes["act1"].tau, 0.5 / (1 - 0.5), rtol=1e-6)
    for bad in (0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="dt must be a positive number"):
            export_nir(_registry_snn(), (1, 16, 16), tmp_path / "bad.nir", dt=bad)
    with pytest.raises(ConfigError, match="LIAF"):
        neuron_parameters(sb.LIAF(), (3,))


def test_export_refuses_max_pooling_and_anns(tmp_path):
    ann = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    snn = spikify(ann, "lif", T=2, example_input=torch.randn(2, 1, 8, 8))
    with pytest.raises(ConfigError, match=r"layer '2' \(MaxPool2d\).*max-pooling.*resnet18"):
        export_nir(snn, (1, 8, 8), tmp_path / "x.nir")
    with pytest.raises(ConfigError, match="spiking model"):
        export_nir(sb.create_model("cnn", neuron="relu", in_channels=1), (1, 8, 8), tmp_path / "y.nir")
    assert not (tmp_path / "x.nir").exists()
    for name in ("vgg11", "vgg16", "vgg11_bn_tv", "resnet18_tv"):  # the registry's max-pooling models: the same line
        with pytest.raises(ConfigError, match=r"\(MaxPool2d\): NIR has no max-pooling node"):
            export_nir(sb.create_model(name, num_classes=3, neuron="lif", T=2), (3, 32, 32), tmp_path / "v.nir")
        assert not (tmp_path / "v.nir").exists()


def test_spikify_level_that_cannot_be_folded_is_refused_naming_the_neuron(tmp_path):
    class EndsInReLU(nn.Module):  # the last neuron's level V would reach the output
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return F.relu(self.fc(x))

    snn = spikify(EndsInReLU(), "lif", T=2, example_input=torch.randn(2, 6), input_ndim=2)
    with pytest.raises(ConfigError, match=r"level of neuron 'spike_relu' .*'output' \(Output\)") as error:
        export_nir(snn, (6,), tmp_path / "x.nir")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "x.nir").exists()


class SumBeforePool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.pool, self.fc = nn.AvgPool2d(2), nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = x + F.relu(self.conv2(x))  # two levels summed, then pooled
        return self.fc(self.pool(x).flatten(1))


def test_a_sum_of_two_levels_before_pooling_is_refused_saying_where_to_put_the_activation(tmp_path):
    """The message named the layer but gave no way out; the form that exports is relu(x + f(x))."""
    snn = spikify(SumBeforePool(), "lif", T=2, example_input=torch.randn(2, 1, 8, 8))
    with pytest.raises(ConfigError, match=r"cannot be folded into 'pool'.*put the activation after the sum"):
        export_nir(snn, (1, 8, 8), tmp_path / "x.nir")


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm1d_after_a_linear_layer_is_folded(bias, tmp_path):
    """Linear + BatchNorm1d (an MLP's hidden layer) becomes one nir.Affine, as conv + BN becomes one
    nir.Conv2d (it was refused, naming a convolution); the simulated graph computes the SNN's output."""
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.f1, self.bn, self.f2 = nn.Linear(16, 12, bias=bias), nn.BatchNorm1d(12), nn.Linear(12, 3)

        def forward(self, x):
            return self.f2(F.relu(self.bn(self.f1(x.flatten(1)))))

    torch.manual_seed(0)
    ann = MLP()
    ann.bn.running_mean.uniform_(-0.5, 0.5), ann.bn.running_var.uniform_(0.5, 2.0)
    with torch.no_grad():
        ann.bn.weight.uniform_(0.5, 1.5), ann.bn.bias.uniform_(-0.2, 0.2)
    snn = spikify(ann.eval(), "lif", T=4, calibration=[torch.rand(32, 1, 4, 4)]).eval()
    back = nir.read(export_nir(snn, (1, 4, 4), tmp_path / "mlp.nir") and tmp_path / "mlp.nir")
    assert isinstance(back.nodes["f1"], nir.Affine) and "bn" not in back.nodes
    x = torch.rand(3, 1, 4, 4)
    expected = snn(x).detach().numpy()
    for i in range(3):
        frames = np.repeat(x[i].numpy()[None], snn.T, axis=0)
        np.testing.assert_allclose(simulate(back, frames).mean(0), expected[i], rtol=1e-4, atol=1e-4)
