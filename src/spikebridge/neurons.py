"""Spiking neurons (LIF, LIAF) and the sharpened-ReLU pretraining activation.

All neurons are *stateless* modules: the whole time-major sequence ``[T, B, ...]`` goes in and the
whole sequence comes out; the membrane potential lives only inside the call. There is nothing to
reset between batches.

The LIF equations (PAPER.md, hard reset, detached reset term), per step t::

    u[t] = decay * u[t-1] * (1 - s[t-1]) + x[t]        (u[0] = x[0])
    s[t] = 1 if u[t] > threshold else 0

LIF outputs ``s``; LIAF outputs ``leaky_relu(u, slope)`` and uses ``s`` only for the reset.

Two implementations of the multi-step op are kept side by side:

* ``backend="reference"``: a plain Python loop that autograd differentiates. It is the spec.
* ``backend="fused"``: one ``torch.autograd.Function`` whose backward is written by hand. It saves
  only what the backward needs: a ``uint8`` code per element (bit 0 spike, bit 1 gradient window)
  when the gradient is a 0/1 window (rect surrogate or LIAF with fixed decay), otherwise the
  membrane potential. The tests check it equals the reference (spikes bit-exact, gradients to 1e-6).
* ``backend="triton"``: a fused GPU kernel (CUDA tensors only), tested against the reference.

``backend="auto"`` picks triton for CUDA tensors when Triton is installed, else fused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .surrogate import Surrogate, get_surrogate, heaviside

NEURON_KINDS = ("lif", "liaf", "relu", "sharpened_relu")
BACKENDS = ("auto", "reference", "fused", "triton")


def _check_number(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ConfigError(f"{name} must be a number in {bound}, got {value!r}")


# --------------------------------------------------------------------------------------------
# The reference: a plain loop, differentiated by autograd.
# --------------------------------------------------------------------------------------------
def multistep_reference(
    x: torch.Tensor,
    decay: float | torch.Tensor,
    threshold: float,
    surrogate: Surrogate,
    analog_slope: float | None = None,
) -> torch.Tensor:
    """The LIF (``analog_slope=None``) / LIAF recurrence over ``x: [T, B, ...]``, literally."""
    outputs = []
    u = x[0]
    spike = None
    for t in range(x.shape[0]):
        if t > 0:
            u = decay * u * (1 - spike.detach()) + x[t]
        spike = heaviside(u - threshold, surrogate)
        outputs.append(spike if analog_slope is None else F.leaky_relu(u, analog_slope))
    return torch.stack(outputs)


# --------------------------------------------------------------------------------------------
# The fused op: same forward, hand-written backward, minimal saved state.
# --------------------------------------------------------------------------------------------
_SPIKE_BIT = 1
_WINDOW_BIT = 2


def _forward_loop(x, decay, threshold, surrogate, analog_slope, keep: str):
    """Run the recurrence over ``x: [T, ...]``.

    ``keep`` says what to save for the backward: ``"none"`` (inference), ``"code"`` (uint8 per
    element: bit 0 spike, bit 1 gradient window) or ``"membrane"`` (the potential ``u``).
    Returns ``(output, saved)``.
    """
    output = torch.empty_like(x)
    saved = None
    if keep == "code":
        saved = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    elif keep == "membrane":
        saved = torch.empty_like(x)
    u = x[0]
    spike_f = None
    for t in range(x.shape[0]):
        if t > 0:
            u = decay * u * (1 - spike_f) + x[t]
        spike = u > threshold
        spike_f = spike.to(x.dtype)
        output[t] = spike_f if analog_slope is None else F.leaky_relu(u, analog_slope)
        if keep == "membrane":
            saved[t] = u
        elif keep == "code":
            window = (u > 0) if analog_slope is not None else (u - threshold).abs() < surrogate.width / 2
            saved[t] = spike.to(torch.uint8) | (window.to(torch.uint8) << 1)
    return output, saved


class _MultiStepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, decay, threshold, surrogate, analog_slope):  # type: ignore[override]
        decay_is_tensor = isinstance(decay, torch.Tensor)
        decay_value = decay.detach() if decay_is_tensor else decay
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        learnable = decay_is_tensor and ctx.needs_input_grad[1]
        # a 0/1 gradient window fits in one bit; otherwise keep the membrane potential
        window_grad = analog_slope is not None or surrogate.is_window
        if not needs_grad:
            keep = "none"
        elif learnable or not window_grad:
            keep = "membrane"
        else:
            keep = "code"
        output, saved = _forward_loop(x, decay_value, threshold, surrogate, analog_slope, keep)
        if needs_grad:
            ctx.save_for_backward(saved, decay if decay_is_tensor else None)
            ctx.keep, ctx.decay_value, ctx.dtype = keep, decay_value, x.dtype
            ctx.threshold, ctx.surrogate, ctx.analog_slope = threshold, surrogate, analog_slope
        return output

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        saved, decay_tensor = ctx.saved_tensors
        decay, dtype, code = ctx.decay_value, ctx.dtype, ctx.keep == "code"
        grad_x = torch.empty_like(grad_output)
        grad_decay = None
        if ctx.needs_input_grad[1]:
            grad_decay = torch.zeros((), dtype=dtype, device=grad_output.device)

        def spike_at(t: int) -> torch.Tensor:
            if code:
                return (saved[t] & _SPIKE_BIT).to(dtype)
            return (saved[t] > ctx.threshold).to(dtype)

        carry = None
        for t in range(grad_output.shape[0] - 1, -1, -1):
            if code:
                local = (saved[t] >= _WINDOW_BIT).to(dtype)
                if ctx.analog_slope is not None:
                    local = local + (1 - local) * ctx.analog_slope
                elif ctx.surrogate.width != 1.0:
                    local = local / ctx.surrogate.width
            elif ctx.analog_slope is not None:
                local = torch.where(saved[t] > 0, 1.0, ctx.analog_slope).to(dtype)
            else:
                local = ctx.surrogate.grad(saved[t] - ctx.threshold)
            grad_u = grad_output[t] * local
            if carry is not None:
                grad_u = grad_u + carry
            grad_x[t] = grad_u
            if t > 0:
                not_spiked = 1 - spike_at(t - 1)
                carry = grad_u * not_spiked * decay
                if grad_decay is not None:
                    grad_decay = grad_decay + (grad_u * saved[t - 1] * not_spiked).sum()
        if grad_decay is not None:
            grad_decay = grad_decay.reshape(decay_tensor.shape)
        return grad_x, grad_decay, None, None, None


def multistep_fused(
    x: torch.Tensor,
    decay: float | torch.Tensor,
    threshold: float,
    surrogate: Surrogate,
    analog_slope: float | None = None,
) -> torch.Tensor:
    """Same values as :func:`multistep_reference`, with a hand-written, memory-light backward."""
    return _MultiStepFn.apply(x, decay, threshold, surrogate, analog_slope)


def _triton_available(x: torch.Tensor) -> bool:
    if not x.is_cuda:
        return False
    try:
        from .kernels import triton_lif  # noqa: F401
    except ImportError:
        return False
    return True


def run_multistep(
    x: torch.Tensor,
    decay: float | torch.Tensor,
    threshold: float,
    surrogate: Surrogate,
    analog_slope: float | None,
    backend: str,
) -> torch.Tensor:
    """Dispatch the multi-step neuron op to the named backend (no silent fallback but ``auto``)."""
    if backend == "auto":
        backend = "triton" if _triton_available(x) else "fused"
    if backend == "reference":
        return multistep_reference(x, decay, threshold, surrogate, analog_slope)
    if backend == "fused":
        return multistep_fused(x, decay, threshold, surrogate, analog_slope)
    if backend == "triton":
        from .kernels.triton_lif import multistep_triton

        return multistep_triton(x, decay, threshold, surrogate, analog_slope)
    raise ConfigError(f"unknown neuron backend {backend!r}; expected one of {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------
class LIF(nn.Module):
    """Leaky integrate-and-fire neuron: ``[T, B, ...]`` input currents -> ``[T, B, ...]`` spikes.

    Args:
        decay: membrane leak per step (0.25 in the paper's ImageNet nets). Ignored when
            ``learnable_decay``: then the decay is ``sigmoid(d)`` with ``d`` a parameter starting at
            ``decay_logit_init`` (0.5, as in the paper's ES-ImageNet nets).
        threshold: firing threshold (0.5).
        surrogate: name (``rect``, ``gaussian``, ``sigmoid``, ``atan``, ``triangle``) or a
            :class:`~spikebridge.surrogate.Surrogate`.
        backend: ``auto`` | ``reference`` | ``fused`` | ``triton``.
    """

    analog_slope: float | None = None

    def __init__(
        self,
        decay: float = 0.25,
        threshold: float = 0.5,
        surrogate: str | Surrogate = "rect",
        learnable_decay: bool = False,
        decay_logit_init: float = 0.5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_number("decay", decay, 0.0, 1.0)
        _check_number("threshold", threshold, 0.0, math.inf, low_open=True)
        if backend not in BACKENDS:
            raise ConfigError(f"unknown neuron backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        self.threshold = float(threshold)
        self.surrogate = get_surrogate(surrogate)
        self.backend = backend
        self.learnable_decay = learnable_decay
        self.fixed_decay = float(decay)
        if learnable_decay:
            self.decay_logit = nn.Parameter(torch.tensor(float(decay_logit_init)))

    @property
    def decay(self) -> float | torch.Tensor:
        return torch.sigmoid(self.decay_logit) if self.learnable_decay else self.fixed_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ConfigError(f"{type(self).__name__} expects a time-major tensor [T, B, ...], got shape {tuple(x.shape)}")
        decay = self.decay
        if isinstance(decay, torch.Tensor):
            decay = decay.to(x.dtype)
        return run_multistep(x, decay, self.threshold, self.surrogate, self.analog_slope, self.backend)

    def extra_repr(self) -> str:
        decay = "learnable" if self.learnable_decay else self.fixed_decay
        return f"decay={decay}, threshold={self.threshold}, surrogate={self.surrogate.name}, backend={self.backend}"


class LIAF(LIF):
    """Leaky integrate-and-analog-fire: the spike only drives the reset; the output is
    ``leaky_relu(u, analog_slope)`` (slope 0.2 in the paper)."""

    def __init__(self, *args, analog_slope: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _check_number("analog_slope", analog_slope, 0.0, 1.0)
        self.analog_slope = float(analog_slope)


class _SharpenFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, threshold, width):  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.threshold, ctx.width = threshold, width
        return torch.clamp((x - lo) / (hi - lo), 0, 1)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        window = ((x - ctx.threshold).abs() < ctx.width / 2).to(grad_out.dtype) / ctx.width
        return grad_out * window, None, None, None, None


class SharpenedReLU(nn.Module):
    """The paper's pretraining activation: ``clip((x - lo) / (hi - lo), 0, 1)``.

    With ``p = epoch / (2 * sharpen_epochs)`` (the paper: ``epoch / 200`` over 100 epochs),
    ``lo = 2*threshold*min(p, 0.49)`` and ``hi = 2*threshold*(1 - p)``: it starts as a clipped ReLU
    and ends as a step at the threshold. Its backward is the LIF's rectangle surrogate
    (1 where ``|x - threshold| < width/2``). The epoch is set by the trainer via ``set_epoch``.
    """

    def __init__(self, threshold: float = 0.5, sharpen_epochs: int = 100, width: float = 1.0) -> None:
        super().__init__()
        _check_number("threshold", threshold, 0.0, math.inf, low_open=True)
        if not (isinstance(sharpen_epochs, int) and sharpen_epochs > 0):
            raise ConfigError(f"sharpen_epochs must be a positive integer, got {sharpen_epochs!r}")
        self.threshold = float(threshold)
        self.sharpen_epochs = sharpen_epochs
        self.width = float(width)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def bounds(self) -> tuple[float, float]:
        p = self.epoch / (2 * self.sharpen_epochs)
        scale = 2 * self.threshold
        return scale * min(p, 0.49), scale * max(1 - p, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds()
        return _SharpenFn.apply(x, lo, hi, self.threshold, self.width)

    def extra_repr(self) -> str:
        lo, hi = self.bounds()
        return f"threshold={self.threshold}, epoch={self.epoch}, lo={lo:.3f}, hi={hi:.3f}"


@dataclass(frozen=True)
class NeuronConfig:
    """Which activation a model is built with, and its hyperparameters.

    ``kind`` is ``relu`` (ANN), ``sharpened_relu`` (ANN pretraining, T=1), ``lif`` or ``liaf`` (SNN).
    """

    kind: str = "lif"
    decay: float = 0.25
    threshold: float = 0.5
    surrogate: str = "rect"
    learnable_decay: bool = False
    decay_logit_init: float = 0.5
    analog_slope: float = 0.2
    sharpen_epochs: int = 100
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in NEURON_KINDS:
            raise ConfigError(f"unknown neuron {self.kind!r}; expected one of {', '.join(NEURON_KINDS)}")
        _check_number("decay", self.decay, 0.0, 1.0)
        _check_number("threshold", self.threshold, 0.0, math.inf, low_open=True)
        get_surrogate(self.surrogate)

    @property
    def spiking(self) -> bool:
        return self.kind in ("lif", "liaf")

    @property
    def bn_weight_init(self) -> float:
        """tdBN: BN's affine weight starts at the threshold for spiking / step-like activations."""
        return 1.0 if self.kind == "relu" else self.threshold

    def build(self) -> nn.Module:
        """A new activation module (time-major ``[T, B, ...]`` for spiking kinds)."""
        if self.kind == "relu":
            return nn.ReLU()
        if self.kind == "sharpened_relu":
            return SharpenedReLU(self.threshold, self.sharpen_epochs)
        common = dict(
            decay=self.decay,
            threshold=self.threshold,
            surrogate=self.surrogate,
            learnable_decay=self.learnable_decay,
            decay_logit_init=self.decay_logit_init,
            backend=self.backend,
        )
        if self.kind == "liaf":
            return LIAF(analog_slope=self.analog_slope, **common)
        return LIF(**common)
