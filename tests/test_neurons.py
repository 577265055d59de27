"""Neurons: the paper's equations, fused == reference (forward bit-exact, gradients 1e-6)."""
import pytest
import torch

import spikebridge as sb
from spikebridge.errors import ConfigError
from spikebridge.neurons import SharpenedReLU, multistep_fused, multistep_reference
from spikebridge.surrogate import SURROGATE_NAMES, get_surrogate


def paper_lif(x, decay=0.25, threshold=0.5):
    """the paper's (arXiv:2203.01158) equations written out with plain Python floats (no torch ops on tensors)."""
    T = x.shape[0]
    flat = x.reshape(T, -1).tolist()
    out = []
    u = [0.0] * len(flat[0])
    s = [0.0] * len(flat[0])
    for t in range(T):
        if t == 0:
            u = list(flat[0])
        else:
            u = [torch.tensor(decay * ui, dtype=torch.float32).item() * (1 - si) for ui, si in zip(u, s)]
            u = [torch.tensor(ui, dtype=torch.float32).add(torch.tensor(xi, dtype=torch.float32)).item() for ui, xi in zip(u, flat[t])]
        s = [1.0 if ui > threshold else 0.0 for ui in u]
        out.append(s)
    return torch.tensor(out).reshape(x.shape)


def test_lif_matches_paper_equations_bit_exact():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 17) * 0.7 + 0.3
    lif = sb.LIF(decay=0.25, threshold=0.5, surrogate="rect")
    expected = paper_lif(x)
    assert torch.equal(lif(x), expected)
    assert torch.equal(sb.LIF(backend="reference")(x), expected)


def test_lif_hand_example():
    # one neuron, constant input 0.45: u = 0.45, 0.5625 (spike), reset -> 0.45, 0.5625 (spike)
    x = torch.full((4, 1), 0.45)
    assert sb.LIF()(x).flatten().tolist() == [0.0, 1.0, 0.0, 1.0]
    # input exactly at threshold does not fire (strict >)
    assert sb.LIF()(torch.full((1, 1), 0.5)).item() == 0.0


def test_stateless_between_calls():
    lif = sb.LIF()
    x = torch.rand(4, 2, 5)
    first = lif(x)
    lif(torch.rand(4, 2, 5) * 5)
    assert torch.equal(lif(x), first)


@pytest.mark.parametrize("surrogate", SURROGATE_NAMES)
@pytest.mark.parametrize("T", [1, 4, 8])
@pytest.mark.parametrize("kind", ["lif", "liaf"])
@pytest.mark.parametrize("learnable", [False, True])
def test_fused_equals_reference(surrogate, T, kind, learnable):
    gen = torch.Generator().manual_seed(T * 31 + len(surrogate))
    shape = (T, int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen)), 3)
    x = (torch.randn(shape, generator=gen) * 0.8 + 0.3).requires_grad_()
    slope = 0.2 if kind == "liaf" else None
    logit = torch.tensor(0.5, requires_grad=True)
    sg = get_surrogate(surrogate)
    grads = []
    outs = []
    for op in (multistep_reference, multistep_fused):
        decay = torch.sigmoid(logit) if learnable else 0.25
        y = op(x, decay, 0.5, sg, slope)
        weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        inputs = [x, logit] if learnable else [x]
        g = torch.autograd.grad((y * weight).sum(), inputs, allow_unused=True)
        outs.append(y.detach())
        grads.append([torch.zeros(()) if gi is None else gi for gi in g])
    assert torch.equal(outs[0], outs[1])
    for g_ref, g_fused in zip(*grads):
        torch.testing.assert_close(g_fused, g_ref, atol=1e-6, rtol=0)


def test_fused_saves_uint8_code_for_rect():
    x = torch.randn(4, 8, requires_grad=True)
    y = multistep_fused(x, 0.25, 0.5, get_surrogate("rect"))
    saved = y.grad_fn.saved_tensors
    assert saved[0].dtype == torch.uint8 and saved[0].shape == x.shape


def test_surrogate_shapes():
    x = torch.tensor([-0.6, -0.4, 0.0, 0.4, 0.6])
    assert get_surrogate("rect").grad(x).tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    gauss = get_surrogate("gaussian").grad(torch.tensor([0.0]))
    assert abs(gauss.item() - 0.3989) < 1e-4
    tri = get_surrogate("triangle").grad(torch.tensor([0.0, 0.5, 1.0]))
    assert tri.tolist() == [1.0, 0.5, 0.0]


def test_learnable_decay_trains():
    lif = sb.LIAF(learnable_decay=True)
    assert abs(float(lif.decay.detach()) - torch.sigmoid(torch.tensor(0.5)).item()) < 1e-7
    x = torch.rand(4, 3, 5)
    lif(x).sum().backward()
    assert lif.decay_logit.grad is not None and lif.decay_logit.grad.abs() > 0


def test_liaf_output_is_leaky_relu_of_membrane():
    x = torch.tensor([[0.3], [-0.4], [0.9]])
    y = sb.LIAF(decay=0.25)(x)
    # u0 = 0.3 (no spike); u1 = 0.075 - 0.4 = -0.325; u2 = -0.08125 + 0.9 = 0.81875
    torch.testing.assert_close(y.flatten(), torch.tensor([0.3, -0.325 * 0.2, 0.81875]))


def test_sharpened_relu_schedule_and_backward():
    act = SharpenedReLU(threshold=0.5, sharpen_epochs=100)
    assert act.bounds() == (0.0, 1.0)
    act.set_epoch(50)
    lo, hi = act.bounds()
    assert abs(lo - 0.25) < 1e-12 and abs(hi - 0.75) < 1e-12
    act.set_epoch(100)
    lo, hi = act.bounds()
    assert abs(lo - 0.49) < 1e-12 and abs(hi - 0.5) < 1e-12
    x = torch.tensor([-0.2, 0.3, 0.495, 0.7, 1.2], requires_grad=True)
    y = act(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize(
    "kwargs",
    [dict(decay=1.5), dict(decay=-0.1), dict(threshold=0.0), dict(threshold=-1.0), dict(surrogate="nope"), dict(backend="cuda-magic")],
)
def test_invalid_neuron_arguments(kwargs):
    with pytest.raises(ConfigError):
        sb.LIF(**kwargs)


def test_rejects_non_sequence_input():
    with pytest.raises(ConfigError, match="time-major"):
        sb.LIF()(torch.ones(3))
