"""Classic ANN-to-SNN conversion and accuracy-vs-T curves (one run gives every T, exactly)."""
from dataclasses import replace

import pytest
import torch
from torch import nn

import spikebridge as sb
from test_summary import assert_figure, assert_line_plot
from spikebridge.conversion import (
    IFSoftReset, accuracy_curve, conversion_accuracy_curve, convert, outputs_at_each_T, rate_code,
)
from spikebridge.data.loading import DataBundle
from spikebridge.data.static import TensorSplit
from spikebridge.spikify import spikify


def test_if_soft_reset_counts_input_exactly():
    current = torch.tensor([0.3, 0.5, 1.0, 0.0]).expand(10, 4)  # constant input over 10 steps
    spikes = IFSoftReset(threshold=1.0)(current.clone())
    # soft reset keeps the residue: spike count = floor(10 * input) (ties fire at >= threshold)
    assert spikes.sum(0).tolist() == [3.0, 5.0, 10.0, 0.0]


def test_rate_code_is_unbiased_and_signed():
    x = torch.tensor([[0.5, -1.0, 0.25, 0.0]])
    coded = rate_code(x, 4000, torch.Generator().manual_seed(0))
    assert set(coded.unique().tolist()) <= {-1.0, 0.0, 1.0}
    torch.testing.assert_close(coded.mean(0), x, atol=0.03, rtol=0)


def _bundle(n_train=64, n_test=48, size=12):
    torch.manual_seed(0)
    images = (torch.rand(n_train + n_test, 1, size, size) * 255).to(torch.uint8)
    labels = torch.randint(0, 4, (n_train + n_test,))
    return DataBundle(name="tiny", train=TensorSplit(images[:n_train], labels[:n_train]),
                      test=TensorSplit(images[n_train:], labels[n_train:]), num_classes=4, in_channels=1, image_size=size)


def _ann():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 5 * 5, 16),
                         nn.ReLU(), nn.Linear(16, 4)).eval()


def test_conversion_thresholds_are_the_activation_percentile_and_converge_to_the_ann():
    ann = _ann()
    calib = torch.randn(64, 1, 12, 12)
    snn = convert(ann, [calib], T=8, percentile=99.9)
    activation = torch.relu(ann[0](calib))
    expected = torch.quantile(activation[activation > 0].double(), 0.999).item()
    assert snn.neurons[0].threshold.item() == pytest.approx(expected, rel=1e-5)
    assert all(isinstance(n.neuron, IFSoftReset) for n in snn.neurons)
    x = torch.randn(32, 1, 12, 12)
    target = ann(x)
    errors = [(outputs_at_each_T(snn, x, 256)[t - 1] - target).abs().mean().item() for t in (4, 256)]
    assert errors[1] < 0.3 * errors[0]  # more steps, closer to the ANN


@pytest.mark.parametrize("kind", ["registry", "spikified"])
def test_one_run_gives_the_accuracy_of_separate_runs_at_each_T(kind):
    bundle = _bundle()
    if kind == "registry":
        snn = sb.create_model("cnn", num_classes=4, neuron="lif", T=2, in_channels=1).eval()
    else:
        snn = spikify(_ann(), "lif", T=2, calibration=[torch.randn(16, 1, 12, 12)]).eval()
    x = torch.randn(6, 1, 12, 12)
    together = outputs_at_each_T(snn, x, 5)
    for t in (1, 3, 5):
        snn.T = t
        torch.testing.assert_close(together[t - 1], snn(x), atol=1e-5, rtol=1e-5)
    snn.T = 2
    curve = accuracy_curve(snn, bundle, [1, 3, 5])
    assert snn.T == 2  # left as it was
    for t, acc in curve:
        snn.T = t
        logits = snn(bundle.test.images.float() / 255)
        assert acc == pytest.approx((logits.argmax(1) == bundle.test.labels).float().mean().item())


def test_conversion_curve_on_a_registry_ann_with_batchnorm():
    bundle = _bundle()
    ann = sb.create_model("cnn", num_classes=4, neuron="relu", in_channels=1)
    ann.train()
    with torch.no_grad():
        ann(torch.randn(32, 1, 12, 12))
    ann.eval()
    curve = conversion_accuracy_curve(ann, bundle, [1, 2, 16], calibration_batches=1, calibration_batch_size=32)
    assert [t for t, _ in curve] == [1, 2, 16] and all(0 <= a <= 1 for _, a in curve)
    rate = conversion_accuracy_curve(ann, bundle, [4], input_coding="rate", calibration_batches=1, calibration_batch_size=32)
    assert len(rate) == 1
    ann_pred = ann(bundle.test.images.float() / 255).argmax(1)
    converted = convert(ann, [bundle.train.images[:32].float() / 255], T=32)
    agree = (outputs_at_each_T(converted, bundle.test.images.float() / 255, 32)[-1].argmax(1) == ann_pred).float().mean()
    assert agree > 0.7


def test_conversion_vs_bridge_writes_the_figure(tmp_path):
    from spikebridge.analysis.figures import conversion_vs_bridge

    bundle = _bundle()
    ann = sb.create_model("cnn", num_classes=4, neuron="relu", in_channels=1).eval()
    snn = sb.create_model("cnn", num_classes=4, neuron="lif", T=2, in_channels=1).eval()
    sb.transfer(ann, snn)
    result = conversion_vs_bridge(ann, snn, replace(bundle), [1, 4], tmp_path, calibration_batches=1, calibration_batch_size=32)
    assert_line_plot(tmp_path / "accuracy_vs_T.png", [0, 2])  # the bridge, conversion (C1: the trained-T ring)
    assert [t for t, _ in result["bridge"]] == [1, 2, 4] and [t for t, _ in result["conversion"]] == [1, 4]
    assert result["trained_T"] == 2 and result["bridge_acc_at_trained_T"] == dict(map(tuple, result["bridge"]))[2]


def test_raster_and_event_frame_figures(tmp_path):
    from spikebridge.analysis.figures import plot_event_frames, plot_spike_raster, record_spikes

    snn = sb.create_model("cnn", num_classes=4, neuron="lif", T=3, in_channels=1).eval()
    layer, spikes = record_spikes(snn, torch.randn(2, 1, 12, 12) * 3, neurons=10)
    assert layer == "act1" and spikes.shape == (3, 10)
    liaf = sb.create_model("cnn", num_classes=4, neuron="liaf", T=3, in_channels=1).eval()
    liaf.load_state_dict(snn.state_dict())  # the same membrane: a LIAF's spikes are its resets, not its outputs
    x = torch.randn(2, 1, 12, 12) * 3
    assert torch.equal(record_spikes(liaf, x, neurons=10)[1], record_spikes(snn, x, neurons=10)[1])
    plot_spike_raster(spikes, tmp_path / "raster.png", title="raster")
    frames = (torch.rand(4, 2, 8, 8) > 0.8).float()
    plot_event_frames(frames, tmp_path / "events.png", title="events")
    assert_figure(tmp_path / "raster.png")
    assert_figure(tmp_path / "events.png")
