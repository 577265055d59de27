"""Neurons: the paper's equations, fused == reference (forward bit-exact, gradients 1e-6)."""
import os
import subprocess
import sys

import pytest
import torch

import spikebridge as sb
from spikebridge.errors import ConfigError
from spikebridge.neurons import (
    NeuronConfig,
    NeuronSpec,
    SharpenedReLU,
    check_backend_on_device,
    get_neuron_spec,
    multistep_fused,
    multistep_reference,
    neuron_names,
    register_neuron,
    run_multistep,
)
from spikebridge.surrogate import SURROGATE_NAMES, get_surrogate


def with_threshold_hits(x, threshold=0.5, exact_decay=True):
    """``x: [T, ...]`` (>= 3 neurons per step) with membranes exactly AT the threshold (which must
    not spike): neuron 0 at t=0; neuron 1 at t=1 right after a spike (the reset zeroes the leak
    term, any decay); neuron 2 at t=1 through the leak (decay 0.25: every value is exact in fp32)."""
    x = x.detach().clone()
    flat = x.view(x.shape[0], -1)
    flat[0, 0] = threshold
    if x.shape[0] > 1:
        flat[0, 1], flat[1, 1] = 0.9, threshold
        if exact_decay:
            flat[0, 2], flat[1, 2] = 0.25, threshold - 0.25 * 0.25
    return x


def assert_no_spike_at_threshold(spikes, exact_decay=True):
    flat = spikes.reshape(spikes.shape[0], -1)
    assert flat[0, 0] == 0
    if spikes.shape[0] > 1:
        assert flat[0, 1] == 1 and flat[1, 1] == 0
        if exact_decay:
            assert flat[1, 2] == 0


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


@pytest.mark.parametrize("kind", ["LIF", "LIAF"])
def test_no_time_steps_give_no_output_on_every_backend(kind):
    """T = 0 (an empty sequence): the fused path returned it; the reference raised IndexError."""
    x = torch.randn(0, 2, 5, requires_grad=True)
    for backend in ("reference", "fused"):
        out = getattr(sb, kind)(backend=backend)(x)
        out.sum().backward()
        assert out.shape == (0, 2, 5) and x.grad.shape == (0, 2, 5)


@pytest.mark.parametrize("surrogate", SURROGATE_NAMES)
@pytest.mark.parametrize("T", [1, 4, 8])
@pytest.mark.parametrize("kind", ["lif", "liaf"])
@pytest.mark.parametrize("learnable", [False, True])
def test_fused_equals_reference(surrogate, T, kind, learnable):
    gen = torch.Generator().manual_seed(T * 31 + len(surrogate))
    shape = (T, int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen)), 3)
    x = with_threshold_hits(torch.randn(shape, generator=gen) * 0.8 + 0.3, exact_decay=not learnable).requires_grad_()
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
    if kind == "lif":
        assert_no_spike_at_threshold(outs[1], exact_decay=not learnable)
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


@pytest.mark.parametrize("width", [1.0, 0.5, 0.3])
def test_sharpened_relu_equals_the_plain_formula_forward_and_gradient(width):
    """The autograd function (a bool window saved) against the formula written out with autograd:
    clip((x - lo) / (hi - lo), 0, 1) forward, grad * 1[|x - threshold| < width/2] / width back."""
    act = SharpenedReLU(threshold=0.5, sharpen_epochs=10, width=width)
    act.set_epoch(4)
    lo, hi = act.bounds()
    x = torch.cat([torch.randn(2000, dtype=torch.float64),
                   torch.tensor([0.5 - width / 2, 0.5 + width / 2, 0.5, lo, hi], dtype=torch.float64)])
    grad_out = torch.randn_like(x)
    x1 = x.clone().requires_grad_(True)
    y1 = act(x1)
    y1.backward(grad_out)
    x2 = x.clone().requires_grad_(True)
    y2 = torch.clamp((x2 - lo) / (hi - lo), 0, 1)
    window = ((x2.detach() - 0.5).abs() < width / 2).to(x.dtype) / width
    assert torch.equal(y1, y2.detach())
    assert torch.equal(x1.grad, grad_out * window)


@pytest.mark.parametrize(
    "kwargs",
    [dict(decay=1.5), dict(decay=-0.1), dict(threshold=0.0), dict(threshold=-1.0), dict(surrogate="nope"), dict(backend="cuda-magic")],
)
def test_invalid_neuron_arguments(kwargs):
    with pytest.raises(ConfigError):
        sb.LIF(**kwargs)


def test_rejects_non_sequence_and_complex_input():
    with pytest.raises(ConfigError, match="time-major"):
        sb.LIF()(torch.ones(3))
    with pytest.raises(ConfigError, match="LIAF takes real input currents, got complex64"):  # it dropped the imaginary part
        sb.LIAF()(torch.ones(3, 2, dtype=torch.cfloat))


@pytest.mark.parametrize("kind", ["lif", "liaf"])
def test_second_order_gradients_need_the_reference_backend(kind):
    """The fused backward is first-order only: ``create_graph=True`` through it is a clear error
    (it was an obscure one about ``out=`` arguments); the reference backend gives the gradient."""
    x = (torch.randn(4, 3, 5, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.3).requires_grad_(True)
    reference = NeuronConfig(kind=kind, backend="reference", surrogate="sigmoid").build()
    (grad,) = torch.autograd.grad((reference(x) ** 2).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)
    assert second.abs().sum() > 0
    fused = NeuronConfig(kind=kind, backend="fused", surrogate="sigmoid").build()
    with pytest.raises(ConfigError, match="first-order gradients only.*backend='reference'"):
        torch.autograd.grad((fused(x) ** 2).sum(), x, create_graph=True)
    (first,) = torch.autograd.grad((fused(x) ** 2).sum(), x)  # the usual backward is unchanged
    torch.testing.assert_close(first, grad.detach(), atol=1e-6, rtol=1e-5)


# -- the registry ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", neuron_names(spiking=True))
@pytest.mark.parametrize("surrogate", ["rect", "sigmoid"])
@pytest.mark.parametrize("learnable", [False, True])
def test_every_registered_backend_matches_the_reference(name, surrogate, learnable):
    """Every spiking neuron declares a reference; each declared backend (triton through its
    interpreter on CPU, compiled on a GPU) equals it: forward bit-exact, gradients 1e-6, including
    membranes exactly at the threshold."""
    spec = get_neuron_spec(name)
    assert "reference" in spec.backends and spec.build is not None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(len(name) + 7 * len(surrogate))
    x = with_threshold_hits(torch.randn(5, 2, 3, 4, generator=gen) * 0.8 + 0.3, exact_decay=not learnable).to(device)
    weight = torch.randn(x.shape, generator=gen).to(device)
    results = {}
    for backend in spec.backends:
        config = NeuronConfig(kind=name, backend=backend, surrogate=surrogate, learnable_decay=learnable)
        check_backend_on_device(config, device)
        neuron = config.build().to(device)
        xi = x.clone().requires_grad_(True)
        y = neuron(xi)
        (y * weight).sum().backward()
        results[backend] = (y.detach(), xi.grad, neuron.decay_logit.grad if learnable else torch.zeros(()))
    ref = results["reference"]
    if not spec.analog_output:
        assert_no_spike_at_threshold(ref[0], exact_decay=not learnable)
    for backend, (y, grad_x, grad_decay) in results.items():
        assert torch.equal(y, ref[0]), backend
        torch.testing.assert_close(grad_x, ref[1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grad_decay, ref[2], atol=1e-6, rtol=1e-5)


def test_registry_lists_kinds_and_refuses_unknown_ones_at_config_time():
    assert neuron_names(spiking=True) == ["lif", "liaf"] and neuron_names(spiking=False) == ["relu", "sharpened_relu"]
    assert get_neuron_spec("liaf").analog_output and not get_neuron_spec("lif").analog_output
    with pytest.raises(ConfigError, match=r"^'lif' has no backend 'cupy'; expected one of auto, reference, fused, triton$"):
        NeuronConfig(backend="cupy")
    with pytest.raises(ConfigError, match=r"unknown neuron 'izhikevich'; expected one of lif, liaf, relu, sharpened_relu$"):
        NeuronConfig(kind="izhikevich")
    with pytest.raises(ConfigError, match="cupy"):
        sb.LIAF(backend="cupy")
    # a recipe's neuron.backend carries over to its ANN activation, where it does not apply
    assert isinstance(NeuronConfig(kind="relu", backend="fused").build(), torch.nn.ReLU)
    with pytest.raises(ConfigError, match="no backend"):
        NeuronConfig(kind="relu", backend="cupy")
    from spikebridge.config import PipelineConfig, load_config

    with pytest.raises(ConfigError, match="no backend 'cupy'"):
        load_config(PipelineConfig, None, {"neuron.backend": "cupy"})


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        register_neuron(NeuronSpec(name="lif", build=sb.LIF, spiking=True, backends=("reference",)))
    with pytest.raises(ValueError, match="reference"):
        register_neuron(NeuronSpec(name="no_reference", build=sb.LIF, spiking=True, backends=("fused",)))
    assert "no_reference" not in neuron_names()


def test_auto_picks_only_among_declared_backends():
    x = torch.randn(3, 4, requires_grad=True)
    rect = get_surrogate("rect")
    assert "MultiStep" not in type(run_multistep(x, 0.25, 0.5, rect, None, "auto", ("reference",)).grad_fn).__name__
    assert "MultiStep" in type(run_multistep(x, 0.25, 0.5, rect, None, "auto", ("reference", "fused")).grad_fn).__name__


def test_backend_on_device():
    check_backend_on_device(NeuronConfig(backend="fused"), "cpu")
    check_backend_on_device(NeuronConfig(backend="auto"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown device"):
        check_backend_on_device(NeuronConfig(backend="triton"), "gpu-please")
    # compiled Triton (no interpreter: a fresh process without TRITON_INTERPRET) refuses CPU tensors
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("from spikebridge.neurons import NeuronConfig, check_backend_on_device as check\n"
            "check(NeuronConfig(backend='triton'), 'cuda')\n"
            "try:\n    check(NeuronConfig(kind='liaf', backend='triton'), 'cpu')\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ConfigError neuron backend 'triton' needs a CUDA device, got cpu; use backend=fused or auto"
