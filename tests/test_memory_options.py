"""Fused-path inference, compact spike storage and block checkpointing: all exact."""
import pytest
import torch
from torch import nn

import spikebridge as sb
from spikebridge.layers import TimeFolded, compact_spike_storage, is_marked_binary, mark_binary, run_checkpointed
from spikebridge.neurons import multistep_fused, multistep_reference, run_multistep, triton_supports_dtype
from spikebridge.surrogate import get_surrogate


# -- the fused op ------------------------------------------------------------------------------
@pytest.mark.parametrize("slope", [None, 0.2])
def test_fused_no_grad_saves_nothing(slope):
    x = (torch.randn(5, 3, 7) * 0.8 + 0.3).requires_grad_()
    rect = get_surrogate("rect")
    with torch.no_grad():
        y = multistep_fused(x, 0.25, 0.5, rect, slope)
    assert y.grad_fn is None and not y.requires_grad  # no autograd node: nothing saved
    with torch.inference_mode():
        z = multistep_fused(x, 0.25, 0.5, rect, slope)
    assert torch.equal(y, z)
    assert torch.equal(y, multistep_reference(x.detach(), 0.25, 0.5, rect, slope))
    assert multistep_fused(x, 0.25, 0.5, rect, slope).grad_fn is not None  # grad mode: a node


def test_fused_learnable_decay_no_grad_matches_reference():
    x = torch.randn(4, 6) + 0.3
    decay = torch.sigmoid(torch.tensor(0.5, requires_grad=True))
    with torch.no_grad():
        y = multistep_fused(x, decay, 0.5, get_surrogate("rect"), 0.2)
    assert y.grad_fn is None
    assert torch.equal(y, multistep_reference(x, decay.detach(), 0.5, get_surrogate("rect"), 0.2))


@pytest.mark.parametrize("width", [0.5, 2.0])
@pytest.mark.parametrize("slope", [None, 0.2])
def test_fused_rect_width_and_broadcast_grad(width, slope):
    """A non-default rect width (the code's scaling path) and an expanded incoming gradient."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 4, 5, generator=gen) * 0.8 + 0.3).requires_grad_()
    sg = get_surrogate("rect", width=width)
    grads, outs = [], []
    for op in (multistep_reference, multistep_fused):
        y = op(x, 0.25, 0.5, sg, slope)
        (g,) = torch.autograd.grad(y.sum(), x)  # grad_output is an expanded tensor of ones
        outs.append(y.detach())
        grads.append(g)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)


def test_fused_float64_and_dtype_dispatch():
    x = (torch.randn(4, 3, dtype=torch.float64) * 0.8 + 0.3).requires_grad_()
    y = run_multistep(x, 0.25, 0.5, get_surrogate("rect"), None, "auto")
    assert y.dtype == torch.float64
    assert torch.equal(y, multistep_reference(x, 0.25, 0.5, get_surrogate("rect")))
    assert not triton_supports_dtype(torch.float64)
    assert all(triton_supports_dtype(d) for d in (torch.float32, torch.float16, torch.bfloat16))


# -- compact spike storage -----------------------------------------------------------------------
def test_lif_output_is_marked_binary_liaf_is_not():
    x = torch.randn(3 * 2, 4) + 0.3
    assert is_marked_binary(TimeFolded(sb.LIF(), 3)(x))
    assert not is_marked_binary(TimeFolded(sb.LIAF(), 3)(x))


def test_compact_storage_keeps_bool_copy_and_restores_floats():
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    neuron = TimeFolded(sb.LIF(), 2)
    x = (torch.randn(2 * 2, 2, 5, 5) + 0.5).requires_grad_()
    with compact_spike_storage(True):
        spikes = neuron(x)
        out = conv(spikes)
        out2 = conv(spikes)  # a second layer saving the same spikes shares one bool copy
    saved = out.grad_fn._saved_input  # unpacked: a fresh float tensor equal to the spikes
    assert saved.dtype == spikes.dtype and torch.equal(saved, spikes)
    assert saved.data_ptr() != spikes.data_ptr()
    assert getattr(spikes, "_spikebridge_packed") is not None
    out.sum().backward()
    grad_compact = conv.weight.grad.clone()
    conv.weight.grad = None
    plain_spikes = neuron(x.detach())
    plain = conv(plain_spikes)  # plain storage keeps the spike tensor itself
    assert plain.grad_fn._saved_input.data_ptr() == plain_spikes.data_ptr()
    assert getattr(plain_spikes, "_spikebridge_packed", None) is None  # no bool copy made
    plain.sum().backward()
    assert torch.equal(conv.weight.grad, grad_compact)
    assert out2.grad_fn is not None


def test_unmarked_tensors_are_saved_unchanged():
    a = torch.rand(3, 4, requires_grad=True)
    b = torch.rand(3, 4)
    with compact_spike_storage(True):
        y = a * b
    assert y.grad_fn._saved_other.data_ptr() == b.data_ptr()
    mark_binary(b)
    with compact_spike_storage(False):
        z = a * b
    assert z.grad_fn._saved_other.data_ptr() == b.data_ptr()


def _train_once(name, *, compact, checkpoint, **kwargs):
    torch.manual_seed(0)
    model = sb.create_model(name, neuron="lif", T=3, num_classes=4, **kwargs)
    model.compact_spikes, model.checkpoint_blocks = compact, checkpoint
    in_channels, size = kwargs.get("in_channels", 3), 16 if name == "cnn" else 8
    x = torch.rand(2, in_channels, size, size, generator=torch.Generator().manual_seed(1))
    model(x).square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    return grads, buffers


@pytest.mark.parametrize(
    "name,kwargs,compact,checkpoint",
    [
        ("cnn", {"in_channels": 1}, True, False),
        ("cnn", {"in_channels": 1}, False, True),
        ("cnn", {"in_channels": 1}, True, True),
        ("resnet18", {}, True, True),  # both at once: blocks with a downsample sharing the spikes
    ],
)
def test_memory_options_give_identical_gradients_and_bn_stats(name, kwargs, compact, checkpoint):
    grads0, buffers0 = _train_once(name, compact=False, checkpoint=False, **kwargs)
    grads, buffers = _train_once(name, compact=compact, checkpoint=checkpoint, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads))
    # BN running statistics are updated once per step, not again by the recomputation
    assert all(torch.equal(a, b) for a, b in zip(buffers0, buffers))


def test_checkpointed_block_recomputes_and_keeps_bn_stats():
    block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), TimeFolded(sb.LIF(), 2))
    x = torch.rand(4, 2, 6, 6, requires_grad=True)
    calls = []
    block[0].register_forward_hook(lambda *a: calls.append(1))
    run_checkpointed(block, x).sum().backward()
    assert len(calls) == 2  # forward + recomputation in the backward
    assert int(block[1].num_batches_tracked) == 1
