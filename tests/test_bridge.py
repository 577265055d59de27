"""The bridge: transfer report, refusals, first-layer adaptation, BN re-calibration, file formats."""
import pytest
import torch
from safetensors.torch import save_file

import spikebridge as sb
from spikebridge.bridge import match_firing_rates, recalibrate_batchnorm
from spikebridge.errors import CheckpointError, TransferError
from spikebridge.train.checkpoint import save_checkpoint


def test_transfer_loads_everything_and_reports():
    ann = sb.create_model("cnn", neuron="relu", in_channels=1)
    with torch.no_grad():
        for p in ann.parameters():
            p.add_(torch.randn_like(p))
        ann.bn1.running_mean.fill_(0.3)
    snn = sb.create_model("cnn", neuron="lif", T=4, in_channels=1)
    report = sb.transfer(ann, snn)
    assert report.match_fraction == 1.0 and not report.missing and not report.unexpected
    for key, value in ann.state_dict().items():
        assert torch.equal(snn.state_dict()[key], value), key
    assert "transferred" in report.summary()


def test_transfer_report_counts_a_skipped_first_layer():
    """first_layer='skip' leaves the first conv as initialised: 19 of the SNN's 20 tensors, not "100%"."""
    ann = sb.create_model("cnn", neuron="relu", in_channels=1)
    snn = sb.create_model("cnn", neuron="lif", T=2, in_channels=2)
    report = sb.transfer(ann, snn, first_layer="skip")
    assert report.reinitialised == ["conv1.weight"] and report.total == 20 and report.match_fraction == 0.95
    assert report.summary().startswith("transferred 19 of the SNN's 20 tensors (95%), adapted 0, re-initialised 1,")
    # rounded down: 100% only when every tensor transferred
    almost = sb.TransferReport(matched=[f"t{i}" for i in range(199)], missing=["t199"])
    assert almost.match_percent == "99%" and "100%" not in almost.summary()
    assert sb.TransferReport(matched=["a", "b"]).match_percent == "100%"


def test_transfer_refuses_other_architecture():
    ann = sb.create_model("vgg11", neuron="relu")
    snn = sb.create_model("resnet18", neuron="lif", T=2)
    with pytest.raises(TransferError, match="match"):
        sb.transfer(ann, snn)


def test_transfer_reports_class_count_mismatch():
    ann = sb.create_model("cnn", num_classes=5, neuron="relu", in_channels=1)
    snn = sb.create_model("cnn", num_classes=10, neuron="lif", T=2, in_channels=1)
    report = sb.transfer(ann, snn)
    assert [k for k, _, _ in report.mismatched] == ["fc.weight", "fc.bias"]
    with pytest.raises(TransferError, match="fc.weight"):
        sb.transfer(ann, snn, strict_shapes=True)


@pytest.mark.parametrize("src_channels", [1, 3])
def test_first_layer_modes(src_channels):
    ann = sb.create_model("cnn", neuron="relu", in_channels=src_channels)
    snn = sb.create_model("cnn", neuron="lif", T=2, in_channels=2)
    w = ann.conv1.weight.detach()
    grey = w.sum(1)
    report = sb.transfer(ann, snn, first_layer="signed_polarity")
    assert report.adapted == ["conv1.weight"]
    torch.testing.assert_close(snn.conv1.weight[:, 0], grey)
    torch.testing.assert_close(snn.conv1.weight[:, 1], -grey)
    sb.transfer(ann, snn, first_layer="mean")
    torch.testing.assert_close(snn.conv1.weight[:, 1], w.mean(1))
    before = snn.conv1.weight.detach().clone()
    report = sb.transfer(ann, snn, first_layer="skip")
    assert report.reinitialised == ["conv1.weight"] and torch.equal(snn.conv1.weight, before)
    assert "conv1.weight" not in report.transferred


def test_signed_polarity_matches_grey_response_to_events():
    """ON/OFF kernels respond to an ON-minus-OFF frame as the grey kernel responds to the signed change."""
    ann = sb.create_model("cnn", neuron="relu", in_channels=3)
    snn = sb.create_model("cnn", neuron="lif", T=2, in_channels=2)
    sb.transfer(ann, snn, first_layer="signed_polarity")
    change = torch.randn(1, 1, 28, 28)
    events = torch.cat([change.clamp(min=0), (-change).clamp(min=0)], 1)
    grey_rgb = change.expand(1, 3, 28, 28)
    torch.testing.assert_close(snn.conv1(events), ann.conv1(grey_rgb), atol=1e-5, rtol=1e-5)


def test_state_dict_files(tmp_path):
    ann = sb.create_model("resnet18_tv", num_classes=10, neuron="relu")
    state = {f"module.{k}": v for k, v in ann.state_dict().items()}  # as saved from DDP
    torch.save(state, tmp_path / "w.pth")
    save_file({k: v.contiguous() for k, v in ann.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        snn = sb.create_model("resnet18_tv", num_classes=10, neuron="lif", T=2)
        report = sb.transfer(tmp_path / name, snn)
        assert report.match_fraction == 1.0
        assert torch.equal(snn.fc.weight, ann.fc.weight)
    # a spikebridge checkpoint's tensors read as they are: the model's under "model.", beside the optimizer's
    raw = {**{f"model.{k}": v for k, v in ann.state_dict().items()}, "optim.state.0.exp_avg": torch.zeros(3)}
    snn = sb.create_model("resnet18_tv", num_classes=10, neuron="lif", T=2)
    assert sb.transfer(raw, snn).match_fraction == 1.0 and torch.equal(snn.fc.weight, ann.fc.weight)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pth"):
        sb.transfer(tmp_path / "bad.pth", sb.create_model("cnn"))
    with pytest.raises(CheckpointError, match="not found"):
        sb.transfer(tmp_path / "missing.pth", sb.create_model("cnn"))
    # a run's phase folder, as the CLI's --ann takes it (it said "expected one checkpoint .json in the folder")
    save_checkpoint(tmp_path / "run" / "ann" / "checkpoints", "last", ann, {"model": {"name": "resnet18_tv"}}, epoch=1)
    snn = sb.create_model("resnet18_tv", num_classes=10, neuron="lif", T=2)
    assert sb.transfer(tmp_path / "run" / "ann", snn).match_fraction == 1.0 and torch.equal(snn.fc.weight, ann.fc.weight)
    # the run folder, holding the ANN and an SNN phase: its ANN, as --ann RUN (it said "found none")
    other = sb.create_model("resnet18_tv", num_classes=10, neuron="lif", T=2)
    save_checkpoint(tmp_path / "run" / "snn_pretrained" / "checkpoints", "last", other,
                    {"model": {"name": "resnet18_tv"}, "neuron": {"kind": "lif"}}, epoch=1)
    snn = sb.create_model("resnet18_tv", num_classes=10, neuron="lif", T=2)
    assert sb.transfer(tmp_path / "run", snn).match_fraction == 1.0 and torch.equal(snn.fc.weight, ann.fc.weight)


def test_recalibrate_batchnorm_matches_spiking_statistics():
    torch.manual_seed(0)
    snn = sb.create_model("cnn", neuron="lif", T=4, in_channels=1).eval()
    batch = torch.randn(64, 1, 28, 28)
    captured = {}
    snn.blocks[1].register_forward_hook(lambda m, i, o: captured.setdefault("x", i[0].detach()))
    n = recalibrate_batchnorm(snn, [batch])
    assert n == 3 and not snn.training
    x = captured["x"]
    torch.testing.assert_close(snn.blocks[1].running_mean, x.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(snn.blocks[1].running_var, x.var((0, 2, 3), unbiased=True), atol=1e-5, rtol=1e-4)
    assert snn.blocks[1].momentum == 0.1


def test_match_firing_rates_moves_rates_to_the_ann():
    torch.manual_seed(0)
    ann = sb.create_model("cnn", neuron=sb.NeuronConfig("sharpened_relu", sharpen_epochs=4), in_channels=1)
    ann.set_epoch(4)  # step-like, as at the end of the paper's pretraining
    snn = sb.create_model("cnn", neuron="lif", T=4, in_channels=1)
    sb.transfer(ann, snn)
    batches = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    recalibrate_batchnorm(ann, batches)
    recalibrate_batchnorm(snn, batches)
    ann.eval()

    def rates(model, name):
        seen = []
        module = dict(model.named_modules())[name]
        hook = module.register_forward_hook(lambda m, i, o: seen.append(o.transpose(0, 1).flatten(1).mean(1)))
        with torch.no_grad():
            for b in batches:
                model.eval()(b)
        hook.remove()
        return torch.stack(seen).mean(0)

    before = (rates(snn, "blocks.2") - rates(ann, "blocks.2")).abs().mean()
    errors = match_firing_rates(ann, snn, batches, iterations=10, progress=False)
    after = (rates(snn, "blocks.2") - rates(ann, "blocks.2")).abs().mean()
    assert set(errors) == {"act1", "blocks.2", "blocks.5"}
    assert after < before / 2 and after < 0.02


def test_recalibrate_batchnorm_takes_loader_pairs_and_a_failure_keeps_the_statistics():
    model = sb.create_model("cnn", neuron="lif", T=2, in_channels=1)
    images = torch.rand(32, 1, 28, 28)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.zeros(32).long()), batch_size=16)
    assert sb.recalibrate_batchnorm(model, loader) == 3  # (inputs, labels) pairs, as a DataLoader gives
    from_pairs = model.bn1.running_var.clone()
    sb.recalibrate_batchnorm(model, [images[:16], images[16:]])
    torch.testing.assert_close(model.bn1.running_var, from_pairs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad, message in (([images[:16], "not a batch"], "batches must be tensors or"), ([], "got no batches")):
        with pytest.raises(TransferError, match=message):
            sb.recalibrate_batchnorm(model, bad)
        for key, value in model.state_dict().items():  # the statistics are as they were, not reset
            assert torch.equal(value, before[key]), key


def test_transfer_takes_a_training_scripts_checkpoint_dict_in_memory_as_from_a_file(tmp_path):
    ann = sb.create_model("cnn", neuron="relu", in_channels=1)
    wrapped = {"state_dict": ann.state_dict(), "epoch": 3}
    torch.save(wrapped, tmp_path / "wrapped.pth")
    for source in (wrapped, tmp_path / "wrapped.pth"):
        assert sb.transfer(source, sb.create_model("cnn", neuron="lif", in_channels=1)).match_fraction == 1.0
    with pytest.raises(TransferError, match=r"the source: expected a state dict of tensors \(not tensors: net\); give "
                                           r"the state dict itself, or one under state_dict"):
        sb.transfer({"net": ann.state_dict()}, sb.create_model("cnn", neuron="lif", in_channels=1))


def test_transfer_adapts_colour_weights_to_grey_by_default_as_the_config_does():
    rgb = sb.create_model("cnn", neuron="relu", in_channels=3)
    grey = sb.create_model("cnn", neuron="lif", T=2, in_channels=1)
    report = sb.transfer(rgb, grey)  # first_layer="mean", bridge.first_layer's default
    assert report.adapted == ["conv1.weight"] and report.match_fraction == 1.0
    torch.testing.assert_close(grey.conv1.weight, rgb.conv1.weight.mean(1, keepdim=True))
