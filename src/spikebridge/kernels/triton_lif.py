"""Triton kernels for the multi-step LIF / LIAF op (``backend="triton"``).

Same math as :func:`spikebridge.neurons.multistep.multistep_fused` (``_fused_forward`` and
``_fused_backward``), in two kernel launches per training step: one forward, one backward.
The input ``x: [T, ...]`` is viewed as ``[T, N]`` with ``N = x[0].numel()``; each program owns a
``BLOCK`` of the ``N`` neurons and walks the time axis inside the kernel (``t = 0..T-1`` forward,
``t = T-1..0`` backward), keeping the membrane potential / the carried gradient in registers.

Numerics:

* The recurrence runs in fp32 whatever the input dtype (fp32, fp16, bf16); outputs and ``grad_x``
  are stored in the input dtype. For fp32 inputs the forward is bit-identical to the reference:
  ``u = decay * u * (1 - s) + x[t]`` is evaluated in the same order, with fp-fusion (FMA
  contraction) disabled, and the scalars are rounded to fp32 exactly as PyTorch does.
* Saved state (only when a gradient is needed): a ``uint8`` code per element (bit 0 spike, bit 1
  gradient window) when the gradient is a 0/1 window (rect surrogate, or LIAF) and the decay is not
  learned; otherwise the fp32 membrane potential (fp32 even for half inputs, so the backward sees
  exactly the spikes of the forward).
* The gradient of a learnable decay, ``sum_{t>=1} grad_u[t] * u[t-1] * (1 - s[t-1])``, is reduced
  per program into a partial sum and the partials are summed in torch: deterministic.

The kernels are ordinary ``@triton.jit`` functions: with ``TRITON_INTERPRET=1`` in the environment
before the process first imports Triton, they run in Triton's interpreter on CPU tensors (slow;
that is how the tests run without a GPU; see ``tests/test_triton_lif.py``).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..errors import ConfigError
from ..neurons.multistep import KEEP_CODE, KEEP_MEMBRANE, apply_multistep, triton_supports_dtype
from ..surrogate import Surrogate

BLOCK = 1024  # neurons per program (launched with _NUM_WARPS warps)
_NUM_WARPS = 4

# Surrogate shapes (a constexpr of the backward kernel); see surrogate.py for the formulas.
_SURROGATE_IDS = {"rect": 0, "gaussian": 1, "sigmoid": 2, "atan": 3, "triangle": 4}


def _surrogate_params(surrogate: Surrogate, threshold: float) -> tuple[float, float, float]:
    """``(param_a, param_b, param_c)``: the per-shape constants the backward kernel needs
    (``_local_grad``), precomputed on the host: divisions are done here (in float64, then rounded to
    fp32 by the launch) rather than in the kernel, where fp32 division may be approximate."""
    name = surrogate.name
    if name == "rect":
        return surrogate.width / 2, 1.0 / surrogate.width, 0.0
    if name == "gaussian":
        return 1.0 / surrogate.sigma, 1.0 / (math.sqrt(2 * math.pi) * surrogate.sigma), surrogate.shift(threshold)
    if name == "sigmoid":
        return surrogate.alpha, 0.0, 0.0
    if name == "atan":
        return math.pi / 2 * surrogate.alpha, surrogate.alpha / 2, 0.0
    if name == "triangle":
        return 1.0 / surrogate.width, 0.0, 0.0
    raise ConfigError(f"the triton backend has no kernel for surrogate {name!r}")


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
@triton.jit
def _lif_forward_kernel(
    x_ptr,  # [T, N] input currents (fp32 / fp16 / bf16)
    out_ptr,  # [T, N] spikes (LIF) or leaky_relu(u) (LIAF), input dtype
    saved_ptr,  # [T, N] uint8 codes or fp32 membrane; unused when SAVE == 0
    decay_ptr,  # [1] decay as a tensor; read only when DECAY_FROM_PTR
    decay,  # decay as a float; used when not DECAY_FROM_PTR
    threshold,
    window_half_width,  # LIF code: the gradient window is |u - threshold| < window_half_width
    analog_slope,  # LIAF leaky_relu slope
    T,
    N,
    DECAY_FROM_PTR: tl.constexpr,
    ANALOG: tl.constexpr,  # LIAF (output leaky_relu(u)) instead of LIF (output spikes)
    SAVE: tl.constexpr,  # KEEP_NONE, KEEP_CODE (uint8 code) or KEEP_MEMBRANE (fp32 membrane)
    BLOCK: tl.constexpr,
):
    """``u[t] = decay * u[t-1] * (1 - s[t-1]) + x[t]``, ``s[t] = u[t] > threshold`` over one block."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if DECAY_FROM_PTR:
        decay_f = tl.load(decay_ptr).to(tl.float32)
    else:
        decay_f = decay
    x_ptrs = x_ptr + offs
    out_ptrs = out_ptr + offs
    saved_ptrs = saved_ptr + offs

    spike_f = tl.zeros([BLOCK], dtype=tl.float32)
    u = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(0, T):
        x_t = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
        if t == 0:
            u = x_t  # u[0] = x[0] exactly (no 0 + x that would turn -0.0 into +0.0)
        else:
            u = decay_f * u * (1 - spike_f) + x_t
        spiked = u > threshold
        spike_f = spiked.to(tl.float32)
        if ANALOG:
            out = tl.where(u > 0, u, u * analog_slope)
        else:
            out = spike_f
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask)
        if SAVE == 1:
            if ANALOG:
                window = u > 0
            else:
                window = tl.abs(u - threshold) < window_half_width
            code = spiked.to(tl.uint8) | (window.to(tl.uint8) << 1)
            tl.store(saved_ptrs, code, mask=mask)
        elif SAVE == 2:
            tl.store(saved_ptrs, u, mask=mask)
        x_ptrs += N
        out_ptrs += N
        saved_ptrs += N


@triton.jit
def _local_grad(
    saved,
    threshold,
    analog_slope,
    param_a,
    param_b,
    param_c,
    ANALOG: tl.constexpr,
    FROM_CODE: tl.constexpr,
    SURROGATE: tl.constexpr,
):
    """d(output[t]) / d(u[t]) from the saved state of step t (see ``_surrogate_params``)."""
    if FROM_CODE:
        in_window = (saved & 2) != 0
        if ANALOG:
            local = tl.where(in_window, 1.0, analog_slope)
        else:  # rect: param_b = 1 / width
            local = tl.where(in_window, param_b, 0.0)
    elif ANALOG:
        local = tl.where(saved > 0, 1.0, analog_slope)
    else:
        d = saved - threshold
        if SURROGATE == 0:  # rect
            local = tl.where(tl.abs(d) < param_a, param_b, 0.0)
        elif SURROGATE == 1:  # gaussian
            z = (d - param_c) * param_a
            local = tl.exp(-0.5 * z * z) * param_b
        elif SURROGATE == 2:  # sigmoid
            sig = tl.sigmoid(param_a * d)
            local = param_a * sig * (1 - sig)
        elif SURROGATE == 3:  # atan
            z = param_a * d
            local = param_b / (1 + z * z)
        else:  # triangle
            local = tl.maximum(1 - tl.abs(d) * param_a, 0.0) * param_a
    return local


@triton.jit
def _lif_backward_kernel(
    grad_out_ptr,  # [T, N] incoming gradient (any supported float dtype)
    saved_ptr,  # [T, N] uint8 codes or fp32 membrane
    decay_ptr,  # [1] decay as a tensor; read only when DECAY_FROM_PTR
    grad_x_ptr,  # [T, N] outgoing gradient, input dtype
    grad_decay_ptr,  # [num_programs] fp32 partial sums of the decay gradient (when GRAD_DECAY)
    last_step_offset,  # (T - 1) * N, computed on the host (may exceed int32)
    decay,
    threshold,
    analog_slope,
    param_a,
    param_b,
    param_c,
    T,
    N,
    DECAY_FROM_PTR: tl.constexpr,
    ANALOG: tl.constexpr,
    FROM_CODE: tl.constexpr,  # saved holds uint8 codes (else the fp32 membrane)
    SURROGATE: tl.constexpr,
    GRAD_DECAY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Back-propagate through time over one block, ``t = T-1 .. 0``.

    ``grad_u[t] = grad_out[t] * local[t] + carry``, ``grad_x[t] = grad_u[t]`` and, for ``t > 0``,
    ``carry = grad_u[t] * (1 - s[t-1]) * decay`` (the reset term is detached).
    """
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    if DECAY_FROM_PTR:
        decay_f = tl.load(decay_ptr).to(tl.float32)
    else:
        decay_f = decay
    offs += last_step_offset
    grad_out_ptrs = grad_out_ptr + offs
    grad_x_ptrs = grad_x_ptr + offs
    saved_ptrs = saved_ptr + offs

    carry = tl.zeros([BLOCK], dtype=tl.float32)
    grad_decay = tl.zeros([BLOCK], dtype=tl.float32)
    current = tl.load(saved_ptrs, mask=mask, other=0)
    for step in range(0, T):
        t = T - 1 - step
        local = _local_grad(current, threshold, analog_slope, param_a, param_b, param_c, ANALOG, FROM_CODE, SURROGATE)
        grad_out = tl.load(grad_out_ptrs, mask=mask, other=0.0).to(tl.float32)
        grad_u = grad_out * local + carry
        tl.store(grad_x_ptrs, grad_u.to(grad_x_ptr.dtype.element_ty), mask=mask)
        if t > 0:
            saved_ptrs -= N
            previous = tl.load(saved_ptrs, mask=mask, other=0)
            if FROM_CODE:
                not_spiked = 1 - (previous & 1).to(tl.float32)
            else:
                not_spiked = 1 - (previous > threshold).to(tl.float32)
            carry = grad_u * not_spiked * decay_f
            if GRAD_DECAY:  # previous is the membrane u[t-1]
                grad_decay += grad_u * previous * not_spiked
            current = previous
            grad_out_ptrs -= N
            grad_x_ptrs -= N
    if GRAD_DECAY:
        tl.store(grad_decay_ptr + pid, tl.sum(grad_decay, axis=0))


# --------------------------------------------------------------------------------------------
# Launchers (the autograd Function is multistep._MultiStepFn)
# --------------------------------------------------------------------------------------------
def _decay_args(decay: float | torch.Tensor, device: torch.device) -> tuple[torch.Tensor | None, float]:
    """``(decay_tensor_or_None, decay_float)``: a tensor decay is read on the device (no sync)."""
    if isinstance(decay, torch.Tensor):
        return decay.detach().reshape(1).to(device=device, dtype=torch.float32), 0.0
    return None, float(decay)


def _forward(x, decay, threshold, surrogate, analog_slope, keep: int):
    """Launch the forward kernel on ``x: [T, ...]`` (made contiguous); returns ``(output, saved)``."""
    x = x.contiguous()
    steps, n = x.shape[0], math.prod(x.shape[1:])
    output = torch.empty_like(x)
    saved_dtype = {KEEP_CODE: torch.uint8, KEEP_MEMBRANE: torch.float32}.get(keep)
    saved = None if saved_dtype is None else torch.empty(x.shape, dtype=saved_dtype, device=x.device)
    if steps == 0 or n == 0:
        return output, saved
    decay_tensor, decay_value = _decay_args(decay, x.device)
    slope = 0.0 if analog_slope is None else float(analog_slope)
    _lif_forward_kernel[(triton.cdiv(n, BLOCK),)](
        x, output,
        saved if saved is not None else output,  # dummy pointer, never touched when SAVE == 0
        decay_tensor if decay_tensor is not None else x,  # dummy pointer when decay is a float
        decay_value, float(threshold), surrogate.width / 2, slope, steps, n,
        DECAY_FROM_PTR=decay_tensor is not None, ANALOG=analog_slope is not None, SAVE=keep, BLOCK=BLOCK,
        num_warps=_NUM_WARPS,
        enable_fp_fusion=False,  # no FMA contraction: bit-identical to PyTorch's separate ops
    )
    return output, saved


def _backward(grad_output, saved, decay, threshold, surrogate, analog_slope, from_code: bool, grad_decay: bool):
    """Launch the backward kernel; returns ``(grad_x, grad_decay_or_None)`` (decay grad in fp32)."""
    grad_output = grad_output.contiguous()
    steps, n = grad_output.shape[0], math.prod(grad_output.shape[1:])
    grad_x = torch.empty_like(grad_output)
    programs = triton.cdiv(n, BLOCK)
    partials = None
    if grad_decay:  # one fp32 partial sum per program, summed below: deterministic
        partials = torch.zeros(programs, dtype=torch.float32, device=grad_output.device)
    if steps == 0 or n == 0:
        return grad_x, (partials.sum() if grad_decay else None)
    decay_tensor, decay_value = _decay_args(decay, grad_output.device)
    param_a, param_b, param_c = _surrogate_params(surrogate, threshold)
    _lif_backward_kernel[(programs,)](
        grad_output, saved,
        decay_tensor if decay_tensor is not None else grad_x,  # dummy pointer for a float decay
        grad_x,
        partials if partials is not None else grad_x,  # dummy pointer when GRAD_DECAY is off
        (steps - 1) * n, decay_value, float(threshold), 0.0 if analog_slope is None else float(analog_slope),
        param_a, param_b, param_c, steps, n,
        DECAY_FROM_PTR=decay_tensor is not None, ANALOG=analog_slope is not None, FROM_CODE=from_code,
        SURROGATE=_SURROGATE_IDS[surrogate.name], GRAD_DECAY=grad_decay, BLOCK=BLOCK,
        num_warps=_NUM_WARPS, enable_fp_fusion=False,
    )
    return grad_x, (partials.sum() if grad_decay else None)


def uses_interpreter() -> bool:
    """True when the kernels were built by Triton's interpreter (``TRITON_INTERPRET=1`` set before
    Triton was imported): they then run on CPU tensors, slowly, and CUDA tensors go via the host."""
    return not isinstance(_lif_forward_kernel, triton.runtime.jit.JITFunction)


def multistep_triton(
    x: torch.Tensor,
    decay: float | torch.Tensor,
    threshold: float,
    surrogate: Surrogate,
    analog_slope: float | None = None,
) -> torch.Tensor:
    """The multi-step LIF (``analog_slope=None``) / LIAF op over ``x: [T, ...]`` with Triton kernels.

    Same values as :func:`spikebridge.neurons.multistep.multistep_reference` (bit-identical forward for fp32;
    fp16/bf16 inputs are computed in fp32 and stored in their own dtype). ``decay`` is a float or a
    one-element tensor (learnable: its gradient is returned). Non-contiguous inputs are copied.
    Needs CUDA tensors (or CPU tensors under ``TRITON_INTERPRET=1``, see :func:`uses_interpreter`).
    """
    if not triton_supports_dtype(x.dtype):
        raise ConfigError(
            f"the triton neuron backend supports float32, float16 and bfloat16 inputs, got {x.dtype}; "
            "use backend='fused'"
        )
    if x.dim() < 1:
        raise ConfigError("multistep_triton expects a time-major tensor [T, ...]")
    if x.device.type == "cpu" and not uses_interpreter():
        raise ConfigError("the triton neuron backend needs CUDA tensors; use backend='fused' (or 'auto') on CPU")
    if isinstance(decay, torch.Tensor) and decay.numel() != 1:
        raise ConfigError(f"decay must be a scalar tensor, got shape {tuple(decay.shape)}")
    return apply_multistep((_forward, _backward), x, decay, threshold, surrogate, analog_slope)
