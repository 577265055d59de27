"""Firing rates, SOPs and MACs equal hand computations on a tiny network with known spikes."""
import itertools

import pytest
import torch
from torch import nn

import spikebridge as sb
from spikebridge.analysis.metrics import ENERGY_PER_AC_PJ, ENERGY_PER_MAC_PJ, fanout_map, measure_activity
from spikebridge.layers import TimeFolded, set_time_steps


class KnownSpikes(nn.Module):
    """events [T, B, 1, 4, 4] -> 1x1 conv (weight 1: analog input) -> LIF (decay 0, threshold 0.5:
    spikes exactly where the input > 0.5) -> 3x3 conv stride 2 pad 1 (weights 1, 2 channels)
    -> LIF (spikes where >= 1 input spike) -> flatten -> linear 8 -> 3."""

    input_ndim = 4

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 1, 1, bias=False)
        self.act1 = TimeFolded(sb.LIF(decay=0.0, threshold=0.5))
        self.conv2 = nn.Conv2d(1, 2, 3, stride=2, padding=1, bias=False)
        self.act2 = TimeFolded(sb.LIF(decay=0.0, threshold=0.5))
        self.fc = nn.Linear(8, 3)
        nn.init.ones_(self.conv1.weight)
        nn.init.ones_(self.conv2.weight)
        self.T = 2

    def forward(self, x):
        steps, batch = x.shape[:2]
        set_time_steps([self.act1, self.act2], steps)
        h = self.act2(self.conv2(self.act1(self.conv1(x.flatten(0, 1)))))
        return self.fc(h.flatten(1)).view(steps, batch, -1).mean(0)


def test_sops_equal_a_hand_computation():
    x = torch.zeros(2, 1, 1, 4, 4)
    x[0, 0, 0, 1, 1] = 1.0  # t=0: spikes at (1,1) and (3,0)
    x[0, 0, 0, 3, 0] = 1.0
    x[1, 0, 0, 0, 0] = 1.0  # t=1: spike at (0,0)
    x[1, 0, 0, 2, 2] = 0.4  # below threshold: analog input, but no spike
    report = measure_activity(KnownSpikes(), [x])
    assert report.samples == 1 and report.time_steps == 2
    # conv2 (3x3, stride 2, pad 1, 4x4 -> 2x2): input row r is read by output rows {0} for r=0,
    # {0,1} for r=1, {1} for r=2,3 (same for columns), x 2 output channels
    rows = {0: 1, 1: 2, 2: 1, 3: 1}
    fan = lambda r, c: rows[r] * rows[c] * 2  # noqa: E731
    conv2_sops = fan(1, 1) + fan(3, 0) + fan(0, 0)
    assert conv2_sops == 8 + 2 + 2
    # act2 spikes wherever conv2's output is >= 1: t=0 all 4 positions x 2 channels, t=1 only (0,0) x 2
    fc_sops = (8 + 2) * 3
    by_name = {s.name: s for s in report.synaptic_layers}
    assert by_name["conv1"].analog_input and by_name["conv1"].macs_per_sample == 16 * 2 and by_name["conv1"].sops_per_sample == 0
    assert by_name["conv2"].sops_per_sample == conv2_sops and not by_name["conv2"].analog_input
    assert by_name["conv2"].input_events_per_sample == 3
    assert by_name["fc"].sops_per_sample == fc_sops
    assert report.sops == conv2_sops + fc_sops
    # ANN MACs: conv1 16, conv2 2 channels x (4 + 6 + 6 + 9 taps inside the image), fc 8 x 3
    assert by_name["conv2"].macs_per_frame == 2 * (4 + 6 + 6 + 9)
    assert report.ann_macs == 16 + 50 + 24
    rates = {n.name: n.firing_rate for n in report.neuron_layers}
    assert rates == {"act1": pytest.approx(3 / 32), "act2": pytest.approx(10 / 16)}
    energy = report.energy()
    assert energy["snn_synaptic_uj"] == pytest.approx(((12 + 30) * ENERGY_PER_AC_PJ + 32 * ENERGY_PER_MAC_PJ) * 1e-6)
    assert energy["ann_uj"] == pytest.approx(90 * ENERGY_PER_MAC_PJ * 1e-6)
    ops = report.operation_table()
    assert ops["ann"]["mult_G"] == pytest.approx(90e-9)
    # adds: SOPs + analog MACs + neuron updates (24 neurons x 2 steps); mults: analog MACs (decay 0: no leak multiply)
    assert ops["snn"]["add_G"] == pytest.approx((42 + 32 + 48) * 1e-9)
    assert ops["snn"]["mult_G"] == pytest.approx(32e-9)
    assert "| conv2 | Conv2d | events |" in report.to_markdown()



def test_analog_output_neuron_feeds_macs_not_sops():
    """A neuron whose registry entry declares analog output (LIAF): the layer it feeds does MACs."""
    model = KnownSpikes()
    model.act1 = TimeFolded(sb.LIAF(decay=0.0, threshold=0.5))
    x = torch.zeros(2, 1, 1, 4, 4)
    x[0, 0, 0, 1, 1] = 1.0
    report = measure_activity(model, [x])
    by_name = {s.name: s for s in report.synaptic_layers}
    assert by_name["conv2"].analog_input and by_name["conv2"].sops_per_sample == 0
    assert by_name["conv2"].macs_per_sample == 2 * 50  # 2 frames x 50 taps
    assert {n.name: n.analog for n in report.neuron_layers} == {"act1": True, "act2": False}

def test_a_liaf_layer_fires_when_its_membrane_crosses_the_threshold():
    """LIAF outputs leaky_relu(u) (nonzero almost everywhere: every layer read a firing rate of
    1.0); its spikes are its resets, u > threshold. Its membrane is the LIF's on the same input, so
    the first layer's rates agree."""
    torch.manual_seed(0)
    lif = sb.create_model("cnn", num_classes=10, neuron="lif", T=4, in_channels=1).eval()
    liaf = sb.create_model("cnn", num_classes=10, neuron="liaf", T=4, in_channels=1).eval()
    liaf.load_state_dict(lif.state_dict())
    x = 4 * torch.rand(8, 1, 28, 28)
    rates = [{n.name: n.firing_rate for n in measure_activity(m, [x]).neuron_layers} for m in (lif, liaf)]
    first = next(iter(rates[0]))
    assert rates[1][first] == pytest.approx(rates[0][first]) and 0 < rates[0][first] < 0.5
    assert all(rate < 0.9 for rate in rates[1].values()), rates[1]


def _brute_force_fanout(conv: nn.Conv2d, height: int, width: int) -> torch.Tensor:
    out_h = (height + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    out_w = (width + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
    per_group_out = conv.out_channels // conv.groups
    fan = torch.zeros(conv.in_channels, height, width)
    for oy, ox, ky, kx in itertools.product(range(out_h), range(out_w), *map(range, conv.kernel_size)):
        iy = oy * conv.stride[0] - conv.padding[0] + ky * conv.dilation[0]
        ix = ox * conv.stride[1] - conv.padding[1] + kx * conv.dilation[1]
        if 0 <= iy < height and 0 <= ix < width:
            fan[:, iy, ix] += per_group_out
    return fan


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=3, stride=2, padding=1, groups=2),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), dilation=2),
])
def test_fanout_map_matches_brute_force(kwargs):
    conv = nn.Conv2d(4, 6, **kwargs)
    torch.testing.assert_close(fanout_map(conv, (4, 7, 6)), _brute_force_fanout(conv, 7, 6))
    assert fanout_map(nn.Linear(5, 3), (5,)).sum() == 15


def test_registry_snn_report_counts_stem_once_and_events_after():
    snn = sb.create_model("cnn", neuron="lif", T=3, in_channels=1).eval()
    report = measure_activity(snn, [torch.randn(4, 1, 28, 28)])
    layers = {s.name: s for s in report.synaptic_layers}
    assert layers["conv1"].analog_input and layers["conv1"].frames_per_sample == 1
    # 3x3 taps that land inside the 28x28 image (zero padding costs nothing): 3*28 - 2 per axis
    assert layers["conv1"].macs_per_sample == layers["conv1"].macs_per_frame == (3 * 28 - 2) ** 2 * 16
    assert layers["blocks.0"].frames_per_sample == 3 and not layers["blocks.0"].analog_input
    assert len(report.neuron_layers) == 3 and all(0 <= n.firing_rate <= 1 for n in report.neuron_layers)
    # SOPs can never exceed dense MACs over all frames
    assert layers["blocks.0"].sops_per_sample <= layers["blocks.0"].macs_per_frame * 3



def test_the_cnn_readout_of_averaged_spikes_counts_as_analog():
    """The cnn's classifier reads the mean of its pooled spikes over T, once per sample: analog
    input and dense MACs (it was counted as 'events' after the last neuron: each nonzero average
    as one addition)."""
    from spikebridge.bridge import recalibrate_batchnorm

    torch.manual_seed(0)
    snn = sb.create_model("cnn", neuron="lif", T=3, in_channels=1)
    x = torch.randn(16, 1, 28, 28)
    recalibrate_batchnorm(snn, [x])  # BN statistics of spiking activity: every layer fires
    report = measure_activity(snn.eval(), [x])
    layers = {s.name: s for s in report.synaptic_layers}
    assert min(n.firing_rate for n in report.neuron_layers) > 0.01
    assert not layers["blocks.3"].analog_input and layers["blocks.3"].sops_per_sample > 0
    assert layers["fc"].analog_input and layers["fc"].frames_per_sample == 1
    assert layers["fc"].macs_per_sample == layers["fc"].macs_per_frame and layers["fc"].sops_per_sample == 0


def test_spikes_at_a_spikified_level_count_as_events():
    """A spikified neuron emits 0 or its level V (one per layer or per channel): still spikes."""
    from spikebridge.analysis.metrics import _spike_valued

    spikes = (torch.rand(6, 3, 4, 4) > 0.5).float()
    assert _spike_valued(spikes) and _spike_valued(spikes * 1.7)
    assert _spike_valued(spikes * torch.tensor([0.5, 2.0, 3.0]).view(1, 3, 1, 1))
    assert not _spike_valued(spikes.mean(0, keepdim=True).expand(2, 3, 4, 4) * 1.0 + spikes[:2] * 0.25)
    assert _spike_valued(torch.zeros(2, 3))
