"""Fused-path inference, compact spike storage and block checkpointing: all exact."""
import pytest
import torch
from torch import nn

import spikebridge as sb
from spikebridge import layers
from spikebridge.config import TrainConfig
from spikebridge.data.loading import DataBundle
from spikebridge.data.static import TensorSplit
from spikebridge.layers import TimeFolded, compact_spike_storage, is_marked_binary, mark_binary, run_checkpointed
from spikebridge.neurons import multistep_fused, multistep_reference, run_multistep, triton_supports_dtype
from spikebridge.surrogate import get_surrogate
from spikebridge.train.engine import StepInBackward, fit, step_in_backward_clash, steps_in_backward
from spikebridge.train.distributed import Precision


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


@pytest.mark.parametrize("slope", [None, 0.2])
def test_fused_lif_output_carries_its_saved_code(slope):
    """A fused LIF's spikes carry the uint8 code its backward keeps (spike bit = the output), so
    compact storage can keep a view of it; LIAF's analog output and a no-grad forward carry none."""
    from spikebridge.neurons.multistep import spike_code

    x = torch.randn(4, 3, 8, requires_grad=True)
    out = multistep_fused(x, 0.25, 0.5, get_surrogate("rect"), slope)
    code = spike_code(out)
    if slope is None:
        assert code is not None and code.dtype == torch.uint8 and torch.equal((code >> 1).float(), out.detach())
    else:
        assert code is None
    with torch.no_grad():
        assert spike_code(multistep_fused(x, 0.25, 0.5, get_surrogate("rect"), slope)) is None


# -- compact spike storage -----------------------------------------------------------------------
@pytest.fixture
def lean_everywhere(monkeypatch):
    """Every spike convolution takes the lean backward (by default only those of large inputs)."""
    monkeypatch.setattr(layers, "LEAN_CONV_MIN_NUMEL", 0)


def test_lif_output_is_marked_binary_liaf_is_not():
    x = torch.randn(3 * 2, 4) + 0.3
    assert is_marked_binary(TimeFolded(sb.LIF(), 3)(x))
    assert not is_marked_binary(TimeFolded(sb.LIAF(), 3)(x))


def test_compact_storage_keeps_spike_bits_and_restores_floats():
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
    in_channels, size = kwargs.get("in_channels", 3), {"cnn": 16, "vgg11_bn_tv": 32}.get(name, 8)
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
        ("resnet18", {}, True, False),  # lean spike convolutions, a downsample sharing the spikes
        ("resnet18", {}, True, True),  # both at once: checkpointed blocks run plain convolutions
        ("vgg11", {}, False, True),  # blocks end at each activation (it checkpointed nothing)
        ("vgg11_bn_tv", {}, False, True),  # torchvision's classifier: spiking hidden layers, time-shared dropout
    ],
)
def test_memory_options_give_identical_gradients_and_bn_stats(name, kwargs, compact, checkpoint, lean_everywhere):
    grads0, buffers0 = _train_once(name, compact=False, checkpoint=False, **kwargs)
    grads, buffers = _train_once(name, compact=compact, checkpoint=checkpoint, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads))
    # BN running statistics are updated once per step, not again by the recomputation
    assert all(torch.equal(a, b) for a, b in zip(buffers0, buffers))


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vgg11", "vgg16_bn_tv"])
def test_checkpoint_blocks_recomputes_in_the_backward(name):
    """``--checkpoint-blocks`` really checkpoints every model that has blocks (it was a silent
    no-op for the VGGs): a later convolution runs again in the backward."""
    torch.manual_seed(0)
    model = sb.create_model(name, neuron="lif", T=2, num_classes=4, in_channels=1)
    model.checkpoint_blocks = True
    later = [m for m in model.modules() if isinstance(m, nn.Conv2d)][2]
    calls = []
    later.register_forward_hook(lambda *a: calls.append(1))
    model(torch.rand(2, 1, 32, 32)).sum().backward()
    assert len(calls) == 2


def test_checkpointed_block_recomputes_and_keeps_bn_stats():
    block = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), TimeFolded(sb.LIF(), 2))
    x = torch.rand(4, 2, 6, 6, requires_grad=True)
    calls = []
    block[0].register_forward_hook(lambda *a: calls.append(1))
    run_checkpointed(block, x).sum().backward()
    assert len(calls) == 2  # forward + recomputation in the backward
    assert int(block[1].num_batches_tracked) == 1


def test_fused_lif_spikes_are_saved_as_its_code_others_as_bool():
    """After a fused LIF, a layer saving the spikes keeps a view of the LIF's own uint8 code (no
    copy); after the reference loop (no code) a bool copy."""
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    x = torch.randn(3 * 2, 2, 5, 5) + 0.5
    for backend, from_code in (("fused", True), ("reference", False)):
        neuron = TimeFolded(sb.LIF(backend=backend), 3)
        with compact_spike_storage(True):
            spikes = neuron(x.clone().requires_grad_())
            conv(spikes)
        packed = getattr(spikes, "_spikebridge_packed")
        assert packed.from_code is from_code
        if from_code:  # the very tensor the LIF saved for its own backward
            node = spikes.grad_fn
            while type(node).__name__ != "_MultiStepFnBackward":  # down the views to the LIF's node
                node = node.next_functions[0][0]
            lif_saved = node.saved_tensors[0]
            assert packed.bits.dtype == lif_saved.dtype == torch.uint8
            assert packed.bits.untyped_storage().data_ptr() == lif_saved.untyped_storage().data_ptr()
        else:
            assert packed.bits.dtype == torch.bool
        assert torch.equal(packed.unpack(), spikes)


@pytest.mark.parametrize("kernel,stride,padding,size,bias", [
    (3, 2, 1, 9, False),  # odd size, stride 2: the transposed convolution needs an output padding
    (1, 2, 0, 8, False),  # a downsample
    (3, 1, 1, 7, True),
    (5, 3, 2, 11, True),
])
def test_lean_spike_convolution_equals_plain(kernel, stride, padding, size, bias, lean_everywhere):
    """Convolutions of spikes inside compact_spike_storage take the lean backward (weight gradient
    first, input gradient by a transposed convolution); values and gradients are bit-identical."""
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    conv = nn.Conv2d(6, 5, kernel, stride=stride, padding=padding, bias=bias)
    x = torch.randn(4 * 3, 6, size, size, generator=gen) + 0.4
    results = []
    for compact in (False, True):
        conv.zero_grad(set_to_none=True)
        inp = x.clone().requires_grad_()
        with compact_spike_storage(compact):
            spikes = TimeFolded(sb.LIF(), 4)(inp)
            out = conv(spikes)
        assert (type(out.grad_fn).__name__ == "_SpikeConv2dBackward") is compact
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(5)))
        results.append([out.detach(), inp.grad, conv.weight.grad] + ([conv.bias.grad] if bias else []))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def _step_run(make_optimizer, in_backward, steps=3):
    torch.manual_seed(0)
    model = sb.create_model("cnn", neuron="lif", T=2, num_classes=4, in_channels=1)
    optimizer = make_optimizer(model.parameters())
    hooks = StepInBackward(optimizer) if in_backward else None
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.rand(3, 1, 16, 16, generator=gen), torch.randint(0, 4, (3,), generator=gen)
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if in_backward:
            assert all(p.grad is None for p in model.parameters())  # stepped and freed in the backward
        optimizer.step()  # a no-op after the backward hooks: no gradient left
    if hooks is not None:
        hooks.remove()
    state = [v for p in model.parameters() for v in optimizer.state[p].values() if isinstance(v, torch.Tensor)]
    return [p.detach().clone() for p in model.parameters()], state


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda ps: torch.optim.Adam(ps, lr=1e-3, weight_decay=1e-4),
    lambda ps: torch.optim.AdamW(ps, lr=1e-3),
])
def test_step_in_backward_equals_step_after_backward(make_optimizer):
    params0, state0 = _step_run(make_optimizer, in_backward=False)
    params1, state1 = _step_run(make_optimizer, in_backward=True)
    assert all(torch.equal(a, b) for a, b in zip(params0, params1))
    assert len(state0) == len(state1) and all(torch.equal(a, b) for a, b in zip(state0, state1))


def _bundle(n=48, size=16):
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(n, 1, size, size, generator=gen) * 255).to(torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=gen)
    half = n // 2
    return DataBundle(name="tiny", train=TensorSplit(images[:half], labels[:half]),
                      test=TensorSplit(images[half:], labels[half:]), num_classes=4, in_channels=1, image_size=size)


def test_engine_step_in_backward_trains_identically_and_falls_back_where_it_cannot():
    results = []
    for in_backward in (False, True):
        cfg = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, batch_size=8, schedule="constant",
                          step_in_backward=in_backward)
        torch.manual_seed(0)
        model = sb.create_model("cnn", neuron="lif", T=2, num_classes=4, in_channels=1)
        result = fit(model, _bundle(), cfg, name="tiny", run_dir=None, progress=False)
        results.append(([p.detach().clone() for p in model.parameters()], result.history[-1]["train_loss"]))
        assert all(not p._post_accumulate_grad_hooks for p in model.parameters())  # hooks removed after the epoch
    assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[1][0]))
    assert results[0][1] == results[1][1]
    # what needs every gradient at once steps after the backward (the default is on)
    cpu = Precision("off", torch.device("cpu"))
    assert TrainConfig().step_in_backward and steps_in_backward(TrainConfig(), cpu, 1)
    assert "grad_clip" in step_in_backward_clash(TrainConfig(grad_clip=1.0), cpu, 1)
    assert not steps_in_backward(TrainConfig(grad_clip=1.0), cpu, 1)
    assert "DDP" in step_in_backward_clash(TrainConfig(), cpu, 2) and not steps_in_backward(TrainConfig(), cpu, 2)
    assert not steps_in_backward(TrainConfig(step_in_backward=False), cpu, 1)


def test_spike_subclass_only_in_compact_training_forward(lean_everywhere):
    """Inside compact_spike_storage (grad mode) a LIF's output is the conv-routing subclass; every
    other op on it returns a plain tensor, and outside the context or under no_grad nothing changes."""
    neuron = TimeFolded(sb.LIF(), 2)
    x = torch.randn(2 * 3, 4, 6, 6, requires_grad=True)
    with compact_spike_storage(True):
        spikes = neuron(x)
        assert type(spikes) is not torch.Tensor and isinstance(spikes, torch.Tensor)
        assert type(spikes + spikes) is torch.Tensor and type(spikes.flatten(1)) is torch.Tensor
        with torch.no_grad():
            assert type(neuron(x)) is torch.Tensor
    assert type(neuron(x)) is torch.Tensor
