"""Fidelity to the paper's code (arXiv:2203.01158): the video CRNN's linear last FC, BN momentum and
RGB frames; the sharpened ReLU's automatic schedule; the ANN checkpoint's momentum buffers in the
fine-tune; the Gaussian surrogate's centre on every backend."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import spikebridge as sb
from spikebridge.config import PipelineConfig, load_config
from spikebridge.data.video import rgb_frame_indices
from spikebridge.errors import ConfigError
from spikebridge.neurons import NeuronConfig, SharpenedReLU, multistep_fused, multistep_reference
from spikebridge.pipelines.ann import ann_neuron
from spikebridge.surrogate import GAUSSIAN_CENTER, get_surrogate

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CRNN = dict(input_size=(40, 54), channels=(4, 8, 8, 8), fc_sizes=(32, 16), lstm_hidden=16)


# ------------------------------------------------------------------------------------------------
# the video CRNN
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("neuron", ["lif", "liaf"])
def test_snn_crnn_lstm_reads_an_analog_embedding(neuron):
    torch.manual_seed(0)
    model = sb.create_model("crnn", num_classes=4, neuron=neuron, in_channels=2, **TINY_CRNN).eval()
    seen = []
    model.lstm.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach()))
    with torch.no_grad():
        model((torch.rand(5, 3, 2, 40, 54) < 0.3).float())  # random event frames [T, B, 2, H, W]
    lstm_input = seen[0]
    assert lstm_input.shape == (5, 3, 16)
    assert lstm_input.abs().sum() > 0  # nonzero ...
    assert not set(lstm_input.unique().tolist()) <= {0.0, 1.0}  # ... and analog, not spikes
    assert not hasattr(model.encoder, "fc_act2") and hasattr(model.encoder, "fc_act1")


def test_crnn_batchnorm_momentum_is_the_references():
    model = sb.create_model("crnn", num_classes=4, neuron="lif", in_channels=2, **TINY_CRNN)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 4 and all(bn.momentum == 0.01 for bn in bns)


def test_rgb_frames_are_the_raw_first_frames():
    assert rgb_frame_indices(120, 15).tolist() == list(range(15))  # the reference: raw frames 1..15
    assert rgb_frame_indices(10, 15).tolist() == list(range(10)) + [9] * 5  # a short clip repeats its last
    even = rgb_frame_indices(301, 15, "even")  # the option: the frames the event frames 1..15 come from
    assert even.tolist() == [10 * i for i in range(15)]
    with pytest.raises(ConfigError):
        rgb_frame_indices(30, 15, "middle")


# ------------------------------------------------------------------------------------------------
# the sharpened ReLU's automatic schedule
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", [1, 5, 20, 100])
def test_automatic_schedule_ends_at_the_papers_bounds(epochs):
    cfg = load_config(PipelineConfig, None, {"ann.epochs": epochs})
    assert cfg.neuron.sharpen_epochs == 0  # automatic
    act = ann_neuron(cfg).build()
    assert isinstance(act, SharpenedReLU)
    act.set_epoch(epochs - 1)  # the last ANN epoch (0-based, as the trainer sets it)
    lo, hi = act.bounds()
    # the paper: lo = min(e/200, 0.49), hi = 1 - e/200 at its last epoch e = 99
    assert lo == pytest.approx(min(99 / 200, 0.49), abs=1e-12) and hi == pytest.approx(1 - 99 / 200, abs=1e-12)
    if epochs > 1:
        act.set_epoch(0)
        assert act.bounds() == (0.0, 1.0)  # starts as a clipped ReLU
        x = torch.tensor([0.3, 0.7])
        act.set_epoch(epochs - 1)
        assert act(x).tolist() == [0.0, 1.0]  # ends as a step at the threshold


def test_explicit_100_epochs_is_the_papers_formula():
    act = SharpenedReLU(threshold=0.5, sharpen_epochs=100)
    for epoch in (0, 1, 37, 50, 98, 99):
        act.set_epoch(epoch)
        lo, hi = act.bounds()
        assert lo == pytest.approx(min(epoch / 200, 0.49), abs=1e-12)
        assert hi == pytest.approx(1 - epoch / 200, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# --ann CKPT carries the ANN optimizer's momentum into the fine-tune
# ------------------------------------------------------------------------------------------------
def test_checkpoint_ann_momentum_seeds_the_first_finetune_step(tmp_path):
    """``finetune --ann CKPT`` with bridge.transfer_optimizer: the SNN's first SGD step is
    p - lr * (momentum * buffer + grad), the buffers being those the checkpoint stored."""
    from spikebridge import cli
    from spikebridge.data.datasets import open_dataset
    from spikebridge.data.loading import iterate_batches
    from spikebridge.pipelines.ann import AnnSource, RegistryFamily, load_ann
    from spikebridge.pipelines.context import RunContext
    from spikebridge.train.checkpoint import load_checkpoint

    sgd = {"optimizer": "sgd", "momentum": 0.9, "schedule": "constant", "epochs": 1, "batch_size": 32}
    values = {"model.name": "cnn", "run.progress": False, "bridge.transfer_optimizer": True,
              "bridge.recalibrate_bn": False, "bridge.match_rates": False, "data.max_shift": 0,
              "data.limit_train": 32, "data.limit_test": 32, **{f"ann.{k}": v for k, v in sgd.items()}, "ann.lr": 0.05,
              **{f"finetune.{k}": v for k, v in sgd.items()}, "finetune.lr": 0.01}
    cfg = load_config(PipelineConfig, None, {**values, "run.out": str(tmp_path / "pre")})
    bundle = open_dataset("mnist5k", max_shift=0, limit_train=32, limit_test=32)  # one batch: one step
    ctx, family = RunContext.from_config(cfg), RegistryFamily()
    family.pretrain(ctx, cfg, bundle)
    ckpt = tmp_path / "pre" / "ann" / "checkpoints" / "last.json"

    loaded = load_ann(AnnSource(checkpoint=str(ckpt)))
    names = [n for n, _ in loaded.model.named_parameters()]
    buffers = loaded.optimizer_state
    assert sorted(buffers) == sorted(names) and all(buffers[n]["momentum_buffer"].abs().sum() > 0 for n in names)

    # the SNN the run bridges (seeded: the same one), its gradient on the single batch
    snn = family.to_snn(ctx, cfg, loaded.model, bundle, same_data=True).snn
    before = {n: p.detach().clone() for n, p in snn.named_parameters()}
    x, y = next(iterate_batches(bundle, bundle.train, 32, train=False))
    snn.train()
    F.cross_entropy(snn(x), y).backward()
    grads = {n: p.grad.detach().clone() for n, p in snn.named_parameters()}

    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    out = tmp_path / "ft"
    assert cli.main(["finetune", "--ann", str(ckpt), "--data", "mnist5k", "--out", str(out), "--no-progress",
                     "--device", "cpu", *sets]) == 0
    after = load_checkpoint(out / "snn_finetuned" / "checkpoints" / "last.json").model_state
    for n in names:
        expected = before[n] - 0.01 * (0.9 * buffers[n]["momentum_buffer"] + grads[n])
        torch.testing.assert_close(after[n], expected, rtol=1e-5, atol=1e-6, msg=n)
    fresh = before["fc.weight"] - 0.01 * grads["fc.weight"]  # what a fresh optimizer would have done
    assert (after["fc.weight"] - fresh).abs().max() > 1e-4

    # Adam moments cannot seed SGD: refused by the plan, before anything is written
    adam = ["--set", "finetune.optimizer=adam"]
    assert cli.main(["finetune", "--ann", str(ckpt), "--data", "mnist5k", "--out", str(tmp_path / "bad"),
                     "--plan", *sets, *adam]) == 2
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------
# the Gaussian surrogate's centre
# ------------------------------------------------------------------------------------------------
def test_gaussian_centre_defaults_to_the_papers_07():
    assert GAUSSIAN_CENTER == 0.7
    lif = sb.LIF(threshold=0.5, surrogate="gaussian", backend="reference")
    u = torch.tensor([[0.3, 0.5, 0.7, 0.9]], requires_grad=True)  # one step: the membrane is the input
    lif(u).sum().backward()
    expected = 0.3989422804 * torch.exp(-0.5 * (u.detach() - 0.7) ** 2)  # the authors' DVS code
    torch.testing.assert_close(u.grad, expected)
    assert u.grad[0, 2] == u.grad.max()  # the peak is at u = 0.7, not at the threshold
    on_threshold = get_surrogate("gaussian", center=0.5)
    assert on_threshold.shift(0.5) == 0.0 and get_surrogate("gaussian").shift(0.5) == pytest.approx(0.2)
    with pytest.raises(ConfigError):
        get_surrogate("rect", center=0.7)  # only the Gaussian has a centre
    with pytest.raises(ConfigError):
        get_surrogate("gaussian", center=math.nan)


@pytest.mark.parametrize("center", [None, 0.5, 0.9])
@pytest.mark.parametrize("learnable", [False, True])
def test_gaussian_centre_is_the_same_on_every_backend(center, learnable):
    from spikebridge.kernels import triton_lif

    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: Triton's interpreter (tests/conftest.py)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, 37, generator=gen) * 0.8 + 0.3
    weight = torch.randn(x.shape, generator=gen)
    sg = get_surrogate("gaussian", sigma=0.7, center=center)
    results = []
    for op, dev in ((multistep_reference, "cpu"), (multistep_fused, "cpu"), (triton_lif.multistep_triton, device)):
        xi = x.to(dev).requires_grad_(True)
        logit = torch.tensor(0.5, device=dev, requires_grad=True)
        decay = torch.sigmoid(logit) if learnable else 0.25
        y = op(xi, decay, 0.6, sg, None)
        grads = torch.autograd.grad((y * weight.to(dev)).sum(), [xi, logit] if learnable else [xi])
        results.append((y.detach().cpu(), [g.cpu() for g in grads]))
    ref_y, ref_grads = results[0]
    for y, grads in results[1:]:
        assert torch.equal(y, ref_y)
        for g, g_ref in zip(grads, ref_grads):
            torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)
    # the centre moves the gradient: it differs from the Gaussian centred on the threshold (0.6)
    if not learnable:
        xi = x.clone().requires_grad_(True)
        y = multistep_reference(xi, 0.25, 0.6, get_surrogate("gaussian", sigma=0.7, center=0.6))
        (on_threshold,) = torch.autograd.grad((y * weight).sum(), [xi])
        assert (on_threshold - ref_grads[0]).abs().max() > 1e-3


def test_neuron_config_surrogate_centre_reaches_the_neuron():
    config = NeuronConfig(kind="lif", surrogate="gaussian")
    lif = config.build()
    assert lif.surrogate.shift(lif.threshold) == pytest.approx(GAUSSIAN_CENTER - lif.threshold)
