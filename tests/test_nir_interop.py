"""NIR both ways, checked against a real importer and exporter: spikebridge's export runs in
snnTorch 1.0 (``import_from_nir``) with the same spikes per layer and the same logits, and
``sb.from_nir`` runs spikebridge's own exports and snnTorch's exports (and trains them)."""
import nir
import numpy as np
import pytest
import snntorch
import snntorch.utils
import torch
import torch.nn.functional as F
from snntorch.export_nir import export_to_nir
from snntorch.import_nir import import_from_nir
from torch import nn

import spikebridge as sb
from spikebridge.errors import CheckpointError, ConfigError
from spikebridge.export import export_nir, to_nir
from spikebridge.layers import TimeFolded
from spikebridge.nir_import import from_nir
from spikebridge.spikify import spikify


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(self.conv(h) + h)
        return self.fc(self.pool(h).flatten(1))


def lif_cnn(decay=0.5):
    """The registry CNN with LIF neurons and non-trivial BN (folded into the NIR convolutions)."""
    torch.manual_seed(0)
    snn = sb.create_model("cnn", neuron=sb.NeuronConfig(kind="lif", decay=decay, threshold=0.3), T=4, in_channels=1)
    snn.train()
    with torch.no_grad():
        snn(torch.randn(16, 1, 16, 16))
        for m in snn.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.3)
    return snn.eval(), (1, 16, 16)


def spikified(per_channel=False):
    torch.manual_seed(0)
    snn = spikify(ResidualNet().eval(), sb.NeuronConfig(kind="lif", decay=0.25), T=4, calibration=[torch.randn(32, 1, 8, 8)],
                  per_channel_thresholds=per_channel)
    return snn.eval(), (1, 8, 8)


def spikebridge_run(model, x):
    """(mean logits, spikes per neuron layer keyed by NIR node name) of a spikebridge SNN."""
    counts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, key=n.replace(".", "_"): counts.update({key: int((o != 0).sum())}))
             for n, m in model.named_modules() if isinstance(m, TimeFolded)]
    with torch.no_grad():
        out = model(x)
    for hook in hooks:
        hook.remove()
    return out, counts


def snntorch_run(graph, x, steps):
    """The same for snnTorch's import of ``graph``, stepped T times per sample (NIR's Flatten counts
    per-sample dims, which snnTorch's torch.nn.Flatten reads as dims of an unbatched input)."""
    net = import_from_nir(graph)
    counts = {}
    for name, m in net.named_modules():
        if isinstance(m, snntorch.Leaky):
            m.register_forward_hook(lambda m, i, o, key=name: counts.update({key: counts.get(key, 0) + int(o.sum())}))
    outs = []
    with torch.no_grad():
        for sample in x:
            snntorch.utils.reset(net)
            outs.append(torch.stack([net(sample)[0] for _ in range(steps)]).mean(0))
    return torch.stack(outs), counts


@pytest.mark.parametrize("build", [lif_cnn, spikified])
def test_snntorch_runs_our_export_with_the_same_spikes_and_logits(build):
    snn, shape = build()
    graph = to_nir(snn, shape)
    assert not any(isinstance(node, nir.Scale) for node in graph.nodes.values())  # snnTorch has no Scale
    x = torch.randn(6, *shape)
    ours, our_counts = spikebridge_run(snn, x)
    theirs, their_counts = snntorch_run(graph, x, snn.T)
    assert set(our_counts) == set(their_counts) and len(our_counts) >= 2
    for layer, count in our_counts.items():
        assert count > 0.02 * x.shape[0] * snn.T * np.prod(graph.nodes[layer].v_threshold.shape), layer  # it spikes
        assert abs(their_counts[layer] - count) <= max(2, 1e-3 * count), (layer, count, their_counts[layer])
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    assert torch.equal(theirs.argmax(1), ours.argmax(1))


@pytest.mark.parametrize("build, neuron", [
    (lif_cnn, nir.LIF), (lambda: lif_cnn(decay=1.0), nir.IF), (lambda: spikified(per_channel=True), nir.LIF),
], ids=["lif", "if", "spikified_per_channel"])
def test_from_nir_round_trip_gives_the_same_spikes_and_outputs(build, neuron, tmp_path):
    snn, shape = build()
    graph = export_nir(snn, shape, tmp_path / "net.nir")
    back = from_nir(tmp_path / "net.nir")
    assert back.T == snn.T and back.dt == 1e-4
    assert {type(node) for node in graph.nodes.values()} & {nir.LIF, nir.IF} == {neuron}
    x = torch.randn(5, *shape)
    ours, our_counts = spikebridge_run(snn, x)
    again, again_counts = spikebridge_run(back, x)
    assert list(again_counts.values()) == list(our_counts.values()) and sum(our_counts.values()) > 0
    torch.testing.assert_close(again, ours, rtol=1e-5, atol=1e-6)
    events = x.unsqueeze(0).expand(snn.T, *x.shape)  # [T, B, ...] events give the same as static input
    torch.testing.assert_close(back(events), again)


def test_from_nir_loads_an_snntorch_export_and_trains_it(tmp_path):
    torch.manual_seed(0)

    def leaky(n, beta, threshold):  # snnTorch 1.0 exports per-neuron tensors, and NIR's reset (to zero, at once)
        return snntorch.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), threshold), init_hidden=True,
                              reset_mechanism="zero", reset_delay=False)

    net = nn.Sequential(nn.Linear(12, 16), leaky(16, 0.8, 0.5), nn.Linear(16, 3), leaky(3, 0.9, 0.25))
    nir.write(tmp_path / "snntorch.nir", export_to_nir(net, torch.randn(12)))
    model = from_nir(tmp_path / "snntorch.nir", T=6)
    x = torch.rand(8, 12) * 2
    with torch.no_grad():  # snnTorch's own run of its net, step by step
        snntorch.utils.reset(net)
        expected = torch.stack([net(x) for _ in range(6)]).mean(0)
        got = model(x)
    assert expected.sum() > 0
    torch.testing.assert_close(got, expected)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    for _ in range(5):  # BPTT through our neurons' surrogate gradient
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x) * 5, labels)
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_from_nir_refuses_unsupported_nodes_and_unreadable_files(tmp_path):
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([3])}),
                                "lag": nir.Delay(delay=np.ones(3, dtype=np.float32)),
                                "output": nir.Output(output_type={"output": np.array([3])})},
                         edges=[("input", "lag"), ("lag", "output")])
    with pytest.raises(ConfigError, match=r"^from_nir: node 'lag' is a Delay, which spikebridge cannot run \(supported: "):
        from_nir(graph)
    leaks_to_rest = nir.LIF(tau=np.full(2, 2e-4), r=np.full(2, 2.0), v_leak=np.full(2, 0.1), v_threshold=np.ones(2))
    leaky_to_rest = nir.NIRGraph.from_list(nir.Input(input_type={"input": np.array([2])}), leaks_to_rest,
                                           nir.Output(output_type={"output": np.array([2])}))
    with pytest.raises(ConfigError, match="nonzero v_reset or v_leak"):
        from_nir(leaky_to_rest)
    garbage = tmp_path / "net.nir"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)  # an HDF5 signature and nothing behind it
    for path in (garbage, tmp_path / "missing.nir"):
        with pytest.raises(CheckpointError) as error:
            from_nir(path)
        assert "\n" not in str(error.value) and str(path.name) in str(error.value)


def test_export_cli_takes_dt_and_exits_2_on_user_errors(tmp_path, capsys):
    from dataclasses import asdict

    from spikebridge.cli import main
    from spikebridge.train.checkpoint import save_checkpoint

    neuron = sb.NeuronConfig(kind="lif")
    meta = {"model": {"name": "cnn", "num_classes": 10, "in_channels": 1, "T": 2}, "neuron": asdict(neuron)}
    ckpt = save_checkpoint(tmp_path / "ckpt", "last", sb.create_model("cnn", neuron=neuron, T=2, in_channels=1), meta)
    export = ["export", str(ckpt), "--input-shape", "1,16,16", "--out"]
    assert main([*export, str(tmp_path / "a.nir"), "--dt", "0.001"]) == 0
    assert "dt=0.001" in capsys.readouterr().out
    assert float(nir.read(tmp_path / "a.nir").metadata["dt"]) == 0.001
    assert main([*export, str(tmp_path / "b.nir"), "--dt", "-1"]) == 2
    assert "--dt must be a positive number" in capsys.readouterr().err
    tv_meta = {"model": {"name": "resnet18_tv", "num_classes": 10, "in_channels": 1, "T": 1}, "neuron": asdict(neuron)}
    tv = save_checkpoint(tmp_path / "tv", "last", sb.create_model("resnet18_tv", neuron=neuron, T=1, in_channels=1), tv_meta)
    assert main(["export", str(tv), "--input-shape", "1,32,32", "--out", str(tmp_path / "c.nir")]) == 2
    err = capsys.readouterr().err.strip()
    assert "max-pooling" in err and "resnet18" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.nir").exists() and not (tmp_path / "c.nir").exists()
