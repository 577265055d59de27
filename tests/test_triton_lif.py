"""The Triton multi-step LIF/LIAF kernels against the autograd reference.

Every test runs on ``cpu`` through Triton's interpreter, and on ``cuda`` (the compiled kernels)
when a GPU is present.

Why the ``cpu`` cases run in a subprocess: Triton picks interpreted vs compiled when ``@triton.jit``
*decorates* a function, reading ``TRITON_INTERPRET`` at that moment. That applies to Triton's own
library too (``tl.zeros``, ``tl.sum``, ``tl.sigmoid`` are ``@jit`` functions decorated when
``triton.language`` is first imported), so the variable must be set before anything in the process
imports Triton. Setting it at the top of this file would depend on test order and leak into the
whole session (on a GPU machine every later Triton kernel, ours and torch.compile's, would be
interpreted, and the ``cuda`` cases would test the interpreter). So in a normal run
``test_interpreter_subprocess`` re-runs this file in a fresh ``TRITON_INTERPRET=1`` pytest process;
in that process (or in any run started with ``TRITON_INTERPRET=1``) the ``cpu`` cases run directly
and the ``cuda`` ones are skipped.

Tolerances: spikes and LIAF outputs must be bit-identical; gradients agree to ``atol=1e-6`` plus
``rtol=1e-5`` (autograd and the kernel round fp32 differently by a few ulp, and the decay gradient
is a sum over ``T * N`` terms reduced in another order).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import triton  # noqa: F401  (part of the dev extra: a missing install must fail, not skip)

import spikebridge.kernels.triton_lif as triton_lif
from spikebridge.errors import ConfigError
from spikebridge.neurons import NeuronConfig, get_neuron_spec, multistep_reference, neuron_names, run_multistep
from spikebridge.neurons.multistep import KEEP_NONE
from spikebridge.surrogate import get_surrogate

# True in the TRITON_INTERPRET=1 subprocess (the kernels were built by the interpreter)
INTERPRETER = triton_lif.uses_interpreter()

# The cpu cases run the kernels through Triton's interpreter (tests/conftest.py sets
# TRITON_INTERPRET=1 when there is no GPU); on a GPU machine the cuda cases run the compiled
# kernels and test_interpreter_subprocess re-runs the cpu cases in an interpreter subprocess.
DEVICES = ["cpu"] if INTERPRETER else (["cuda"] if torch.cuda.is_available() else [])

# name -> surrogate; non-default parameters exercise the width/sigma/alpha plumbing
SURROGATES = {
    "rect": get_surrogate("rect"),
    "rect_w0.6": get_surrogate("rect", width=0.6),
    "gaussian_s0.7": get_surrogate("gaussian", sigma=0.7),
    "sigmoid": get_surrogate("sigmoid"),
    "atan_a3": get_surrogate("atan", alpha=3.0),
    "triangle_w1.5": get_surrogate("triangle", width=1.5),
}

# per-step shapes; N = prod(shape) covers 1, < BLOCK, == BLOCK and not a multiple of BLOCK (1024)
STEP_SHAPES = [(1,), (2, 37), (1024,), (3, 700), (5, 601), (2, 3, 7, 11)]

GRAD_TOL = dict(atol=1e-6, rtol=1e-5)
DECAY_GRAD_TOL = dict(atol=1e-6, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETER or not torch.cuda.is_available(), reason="needs a CUDA device (the compiled kernels)")
def test_interpreter_subprocess(request):
    """Run this file's cpu cases in a fresh process with ``TRITON_INTERPRET=1``."""
    # PYTEST_ADDOPTS is dropped: options meant for the outer run (--junitxml, -n, -k) must not apply twice
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_ADDOPTS"}
    env["TRITON_INTERPRET"] = "1"
    command = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        command, env=env, cwd=request.config.rootpath, capture_output=True, text=True, timeout=600
    )
    report = (result.stdout + result.stderr)[-20000:]
    assert result.returncode == 0, f"interpreted run failed ({' '.join(command)}):\n{report}"
    assert " passed" in result.stdout, f"nothing ran under the interpreter:\n{report}"


@pytest.fixture(params=DEVICES)
def device(request):
    """``cpu`` (interpreted in the TRITON_INTERPRET=1 run) or ``cuda`` (compiled)."""
    return request.param


def _generator(*key) -> torch.Generator:
    """A generator seeded from the test case, so every case is reproducible on its own."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _inputs(gen: torch.Generator, steps: int, step_shape, device, dtype=torch.float32):
    """Currents that spike often (threshold ~0.5) and a matching random upstream gradient."""
    x = torch.randn((steps, *step_shape), generator=gen) * 0.8 + 0.3
    grad = torch.randn((steps, *step_shape), generator=gen)
    return x.to(device=device, dtype=dtype), grad.to(device=device, dtype=dtype)


def _run(fn, x, grad, decay_value, learnable, threshold, surrogate, slope, decay_dtype=None):
    """Forward + backward of ``fn``; returns ``(output, grad_x, grad_of_decay_logit_or_None)``.

    A learnable decay is ``sigmoid(logit).to(x.dtype)``, as in ``LIF(learnable_decay=True)``,
    rounded through ``decay_dtype`` first when given. Its gradient is reported as 0 where ``fn``
    left it unused (the reference at T = 1).
    """
    x = x.detach().clone().requires_grad_(True)
    logit = None
    if learnable:
        logit = torch.logit(torch.tensor(decay_value, dtype=torch.float32)).to(x.device).requires_grad_(True)
        decay = torch.sigmoid(logit).to(decay_dtype or x.dtype).to(x.dtype)
    else:
        decay = decay_value
    out = fn(x, decay, threshold, surrogate, slope)
    out.backward(grad)
    if not learnable:
        return out.detach(), x.grad, None
    return out.detach(), x.grad, (logit.grad if logit.grad is not None else torch.zeros_like(logit))


@pytest.mark.parametrize("learnable", [False, True], ids=["fixed", "learnable"])
@pytest.mark.parametrize("slope", [None, 0.2], ids=["lif", "liaf"])
@pytest.mark.parametrize("surrogate_name", list(SURROGATES))
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_matches_reference(device, steps, surrogate_name, slope, learnable):
    gen = _generator(steps, surrogate_name, slope, learnable)
    step_shape = STEP_SHAPES[int(torch.randint(len(STEP_SHAPES), (1,), generator=gen))]
    decay_value = float(torch.empty(1).uniform_(0.1, 0.9, generator=gen))
    threshold = float(torch.empty(1).uniform_(0.3, 1.0, generator=gen))
    surrogate = SURROGATES[surrogate_name]
    x, grad = _inputs(gen, steps, step_shape, device)

    args = (x, grad, decay_value, learnable, threshold, surrogate, slope)
    out, grad_x, grad_decay = _run(triton_lif.multistep_triton, *args)
    ref_out, ref_grad_x, ref_grad_decay = _run(multistep_reference, *args)

    assert torch.equal(out, ref_out)  # bit-exact: spikes, and LIAF's analog outputs
    if slope is None and out.numel() >= 100:
        assert 0 < out.mean() < 1, "the test inputs should make some neurons spike"
    torch.testing.assert_close(grad_x, ref_grad_x, **GRAD_TOL)
    if learnable:
        torch.testing.assert_close(grad_decay, ref_grad_decay, **DECAY_GRAD_TOL)
        assert (grad_decay != 0) == (steps > 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("slope", [None, 0.2], ids=["lif", "liaf"])
def test_half_inputs_compute_in_fp32(device, dtype, slope):
    """Half inputs: the recurrence runs in fp32, so the output is the fp32 reference's, cast."""
    gen = _generator("half", dtype, slope)
    x, grad = _inputs(gen, 6, (3, 345), device, dtype)
    surrogate = SURROGATES["sigmoid"]
    out, grad_x, grad_decay = _run(triton_lif.multistep_triton, x, grad, 0.4, True, 0.5, surrogate, slope)
    # the reference sees the same decay, rounded to `dtype` as LIF does, and the upcast inputs
    ref_out, ref_grad_x, ref_grad_decay = _run(
        multistep_reference, x.float(), grad.float(), 0.4, True, 0.5, surrogate, slope, decay_dtype=dtype
    )
    assert out.dtype == dtype and grad_x.dtype == dtype
    eps = torch.finfo(dtype).eps
    # Triton's interpreter casts fp32 -> bf16 by truncation (the GPU and torch round to nearest)
    out_rtol = eps if device == "cpu" and dtype == torch.bfloat16 else 0.0
    torch.testing.assert_close(out, ref_out.to(dtype), atol=0, rtol=out_rtol)
    torch.testing.assert_close(grad_x, ref_grad_x.to(dtype), atol=1e-5, rtol=2 * eps)
    torch.testing.assert_close(grad_decay, ref_grad_decay, atol=1e-4, rtol=2 * eps)


def test_non_contiguous_input(device):
    gen = _generator("non-contiguous")
    base, grad = _inputs(gen, 5, (3, 40, 7), device)  # [T, B, C, W]
    x = base.permute(0, 3, 2, 1)  # [T, W, C, B], not contiguous
    assert not x.is_contiguous()
    grad = grad.permute(0, 3, 2, 1)
    surrogate = SURROGATES["triangle_w1.5"]
    out, grad_x, grad_decay = _run(triton_lif.multistep_triton, x, grad, 0.3, True, 0.5, surrogate, None)
    ref_out, ref_grad_x, ref_grad_decay = _run(multistep_reference, x, grad, 0.3, True, 0.5, surrogate, None)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad_x, ref_grad_x, **GRAD_TOL)
    torch.testing.assert_close(grad_decay, ref_grad_decay, **DECAY_GRAD_TOL)


def _saved_tensors(fn, x, decay, surrogate, slope):
    """The tensors autograd keeps for the backward of ``fn`` (via saved-tensor hooks)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x, decay, 0.5, surrogate, slope)
    return saved


@pytest.mark.parametrize(
    "surrogate_name, slope, learnable, expected",
    [
        ("rect", None, False, torch.uint8),  # 0/1 window: one code byte per element
        ("sigmoid", 0.2, False, torch.uint8),  # LIAF: the window is u > 0
        ("sigmoid", None, False, torch.float32),  # smooth surrogate: the membrane
        ("rect", None, True, torch.float32),  # learnable decay needs u[t-1]
    ],
)
def test_saves_minimal_state(device, surrogate_name, slope, learnable, expected):
    x = torch.randn(4, 2, 50, device=device, dtype=torch.float16, requires_grad=True)
    decay = torch.sigmoid(torch.tensor(0.5, device=device, requires_grad=True)) if learnable else 0.25
    saved = _saved_tensors(triton_lif.multistep_triton, x, decay, SURROGATES[surrogate_name], slope)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].dtype == expected
    assert sum(t.numel() for t in saved) <= x.numel() + 1  # at most the decay besides


@pytest.mark.parametrize("slope", [None, 0.2], ids=["lif", "liaf"])
def test_frozen_tensor_decay(device, slope):
    """A decay tensor that needs no gradient reads from device memory and keeps the uint8 code."""
    gen = _generator("frozen", slope)
    x, grad = _inputs(gen, 5, (2, 300), device)
    decay = torch.tensor(0.37, device=device)
    surrogate = SURROGATES["rect_w0.6"]
    saved = _saved_tensors(triton_lif.multistep_triton, x.requires_grad_(True), decay, surrogate, slope)
    assert [t.dtype for t in saved if t.numel() == x.numel()] == [torch.uint8]
    out, grad_x, _ = _run(triton_lif.multistep_triton, x, grad, decay, False, 0.5, surrogate, slope)
    ref_out, ref_grad_x, _ = _run(multistep_reference, x, grad, decay, False, 0.5, surrogate, slope)
    assert torch.equal(out, ref_out)
    torch.testing.assert_close(grad_x, ref_grad_x, **GRAD_TOL)


def test_saves_nothing_without_grad(device, monkeypatch):
    kept = []
    launch = triton_lif._forward
    monkeypatch.setattr(triton_lif, "_forward", lambda *args: kept.append(args[-1]) or launch(*args))
    x = torch.randn(4, 2, 50, device=device)
    logit = torch.tensor(0.5, device=device, requires_grad=True)
    out = triton_lif.multistep_triton(x, 0.25, 0.5, SURROGATES["sigmoid"], None)
    assert out.grad_fn is None
    with torch.no_grad():
        out = triton_lif.multistep_triton(x.requires_grad_(True), torch.sigmoid(logit), 0.5, SURROGATES["rect"], None)
    assert out.grad_fn is None
    assert kept == [KEEP_NONE, KEEP_NONE]


def test_only_decay_requires_grad(device):
    gen = _generator("decay-only")
    x, grad = _inputs(gen, 4, (300,), device)
    logit = torch.tensor(0.3, device=device, requires_grad=True)
    out = triton_lif.multistep_triton(x, torch.sigmoid(logit), 0.5, SURROGATES["atan_a3"], None)
    out.backward(grad)
    ref_logit = torch.tensor(0.3, device=device, requires_grad=True)
    multistep_reference(x, torch.sigmoid(ref_logit), 0.5, SURROGATES["atan_a3"]).backward(grad)
    torch.testing.assert_close(logit.grad, ref_logit.grad, **DECAY_GRAD_TOL)


def test_decay_grad_is_deterministic(device):
    """Per-program partial sums reduced by torch, no atomics: bitwise-repeatable gradients."""
    gen = _generator("deterministic")
    x, grad = _inputs(gen, 8, (3, 1000), device)
    args = (x, grad, 0.5, True, 0.5, SURROGATES["gaussian_s0.7"], None)
    runs = [_run(triton_lif.multistep_triton, *args) for _ in range(2)]
    assert torch.equal(runs[0][2], runs[1][2]) and torch.equal(runs[0][1], runs[1][1])


def test_empty_input(device):
    x = torch.empty(3, 0, 4, device=device, requires_grad=True)
    logit = torch.tensor(0.0, device=device, requires_grad=True)
    out = triton_lif.multistep_triton(x, torch.sigmoid(logit), 0.5, SURROGATES["rect"], None)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape and logit.grad == 0


def test_rejects_float64(device):
    x = torch.randn(2, 3, device=device, dtype=torch.float64)
    with pytest.raises(ConfigError, match="float64"):
        triton_lif.multistep_triton(x, 0.25, 0.5, SURROGATES["rect"], None)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETER or not torch.cuda.is_available(), reason="needs a CUDA device (the compiled kernels)")
def test_compiled_module_refuses_cpu_tensors():
    with pytest.raises(ConfigError, match="CUDA"):
        run_multistep(torch.randn(2, 3), 0.25, 0.5, SURROGATES["rect"], None, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETER or not torch.cuda.is_available(), reason="needs a CUDA device (the compiled kernels)")
def test_auto_backend_uses_triton_on_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(triton_lif, "multistep_triton", lambda *a: calls.append(a) or a[0])
    run_multistep(torch.randn(2, 3, device="cuda"), 0.25, 0.5, SURROGATES["rect"], None, backend="auto")
    assert len(calls) == 1


@pytest.mark.parametrize("slope", [None, 0.2], ids=["lif", "liaf"])
@pytest.mark.parametrize("learnable", [False, True], ids=["fixed", "learnable"])
def test_membrane_at_threshold_does_not_spike(device, slope, learnable):
    """u == threshold exactly (at t=0; right after a spike; through the leak with decay 0.25, exact
    in fp32) must not spike, as in the reference; gradients agree there too (rect window edge)."""
    x, grad = _inputs(_generator("at-threshold", slope, learnable), 4, (3, 700), device)
    x[0, :, :100] = 0.5  # u[0] == threshold
    x[0, :, 100:200], x[1, :, 100:200] = 0.9, 0.5  # spike, reset, then u[1] == threshold
    x[0, :, 200:300], x[1, :, 200:300] = 0.25, 0.4375  # u[1] = 0.25 * 0.25 + 0.4375 == threshold
    args = (x, grad, 0.25, learnable, 0.5, SURROGATES["rect"], slope)
    out, grad_x, grad_decay = _run(triton_lif.multistep_triton, *args)
    ref_out, ref_grad_x, ref_grad_decay = _run(multistep_reference, *args)
    assert torch.equal(out, ref_out)
    if slope is None:
        leak_end = 200 if learnable else 300  # a learned decay of sigmoid(logit(0.25)) need not be exactly 0.25
        assert not out[0, :, :100].any() and out[0, :, 100:200].all() and not out[1, :, 100:leak_end].any()
    torch.testing.assert_close(grad_x, ref_grad_x, **GRAD_TOL)
    if learnable:
        torch.testing.assert_close(grad_decay, ref_grad_decay, **DECAY_GRAD_TOL)


@pytest.mark.parametrize("kind", [n for n in neuron_names(spiking=True) if "triton" in get_neuron_spec(n).backends])
def test_neuron_module_with_triton_backend(device, kind):
    """End to end through ``NeuronConfig.build()`` / ``run_multistep``: learnable decay, gaussian."""
    config = dict(kind=kind, surrogate="gaussian", learnable_decay=True, decay_logit_init=0.2, threshold=0.4)
    triton_neuron = NeuronConfig(backend="triton", **config).build().to(device)
    reference_neuron = NeuronConfig(backend="reference", **config).build().to(device)
    x, grad = _inputs(_generator("module", kind), 6, (4, 3, 5, 5), device)
    outputs = []
    for neuron in (triton_neuron, reference_neuron):
        xi = x.clone().requires_grad_(True)
        out = neuron(xi)
        out.backward(grad)
        outputs.append((out, xi.grad, neuron.decay_logit.grad))
    assert torch.equal(outputs[0][0], outputs[1][0])
    torch.testing.assert_close(outputs[0][1], outputs[1][1], **GRAD_TOL)
    torch.testing.assert_close(outputs[0][2], outputs[1][2], **DECAY_GRAD_TOL)

