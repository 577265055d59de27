"""The shared multi-step op of the LIF-family neurons, and the module base they share.

The recurrence (arXiv:2203.01158, hard reset, detached reset term), per step t::

    u[t] = decay * u[t-1] * (1 - s[t-1]) + x[t]        (u[0] = x[0])
    s[t] = 1 if u[t] > threshold else 0

The op outputs ``s`` (``analog_slope=None``: LIF) or ``leaky_relu(u, analog_slope)`` (LIAF; ``s``
then only drives the reset). Three implementations, selected by name (no silent fallback):

* ``reference``: a plain Python loop that autograd differentiates. It is the spec.
* ``fused``: one ``torch.autograd.Function`` whose backward is written by hand. It saves only what
  the backward needs: a ``uint8`` code per element (spike, and whether the local gradient takes
  its high value) when the gradient is a 0/1 window (rect surrogate or LIAF with fixed decay),
  otherwise the membrane potential; nothing when no gradient is needed (``torch.no_grad()``).
  The tests check it equals the reference (spikes bit-exact, gradients to 1e-6).
* ``triton``: fused GPU kernels (``spikebridge/kernels/triton_lif.py``; CUDA tensors only).

``auto`` picks, among the backends a neuron declares, triton for CUDA tensors of a dtype its
kernels take (float32/16, bfloat16) when Triton is installed, else fused, else reference.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..surrogate import Surrogate, get_surrogate, heaviside
from .registry import check_backend, check_number, get_neuron_spec


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
    if x.shape[0] == 0:  # no time steps: no output (as the fused and Triton paths)
        return x * 0
    outputs = []
    u = x[0]
    spike = None
    for t in range(x.shape[0]):
        if t > 0:
            u = decay * u * (1 - spike.detach()) + x[t]
        spike = heaviside(u - threshold, surrogate, surrogate.shift(threshold))
        outputs.append(spike if analog_slope is None else F.leaky_relu(u, analog_slope))
    return torch.stack(outputs)


# --------------------------------------------------------------------------------------------
# The fused op: same forward, hand-written backward, minimal saved state.
#
# Every step of both loops is a handful of whole-tensor ops on ``[B, ...]`` (no per-element Python
# work) on a few reused ``[B, ...]`` buffers that stay in cache; the only ``[T, B, ...]`` tensors
# are the output, the saved state and the gradient.
# --------------------------------------------------------------------------------------------
#: Saved-code bits (one ``uint8`` per element): bit 1 = the neuron spiked at this step; bit 0 = the
#: local gradient takes its *high* value there (LIF: inside the rect window ``|u - threshold| <
#: width / 2``, gradient ``1 / width``; LIAF: ``u > 0``, gradient 1; else 0 / ``analog_slope``).
_CODE_SPIKE = 2
_CODE_HIGH = 1

#: What a forward keeps for the backward (the fused op's and the Triton kernels' ``keep``).
KEEP_NONE, KEEP_CODE, KEEP_MEMBRANE = 0, 1, 2
#: Attribute of a fused LIF's output holding its saved ``uint8`` code (see :func:`spike_code`).
_CODE_ATTR = "_spikebridge_spike_code"


def spike_code(output: torch.Tensor) -> torch.Tensor | None:
    """The ``uint8`` code a fused LIF (spike output) saved for its backward, or None. ``code >> 1``
    equals the spikes: a layer that saves the spikes can keep a view of this code, which the LIF keeps
    until its own backward anyway (see ``layers.compact_spike_storage``)."""
    return getattr(output, _CODE_ATTR, None)


def _fused_forward(x, decay, threshold, surrogate, analog_slope, keep: int):
    """Forward of the fused op over ``x: [T, ...]``; returns ``(output, saved)``.

    ``keep``: ``KEEP_NONE`` (inference: nothing saved), ``KEEP_CODE`` (``uint8 [T, ...]``, see
    ``_CODE_SPIKE`` / ``_CODE_HIGH``) or ``KEEP_MEMBRANE`` (``u: [T, ...]`` in x's dtype).

    Per step ``t > 0``: ``u = (decay * u) * (1 - s[t-1]) + x[t]``, rounded op by op in the
    reference's order (so spikes and LIAF outputs are bit-identical to the reference's); the
    membrane lives in one ``[B, ...]`` buffer. Masks are 0/1 floats: on CPU a multiply is several
    times faster than ``where`` / ``masked_fill`` on a bool mask.
    """
    output = torch.empty_like(x)
    saved = None
    if keep == KEEP_CODE:
        saved = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    elif keep == KEEP_MEMBRANE:
        saved = torch.empty_like(x)
    if x.shape[0] == 0:
        return output, saved
    u = x[0].clone()  # u[0] = x[0] exactly
    not_spiked = torch.empty_like(u)
    scratch = torch.empty_like(u) if keep == KEEP_CODE else None
    spike_liaf = torch.empty_like(u) if (keep == KEEP_CODE and analog_slope is not None) else None
    half_width = surrogate.width / 2
    for t in range(x.shape[0]):
        if t > 0:
            torch.le(u, threshold, out=not_spiked)  # 1 - s[t-1]
            u.mul_(decay)
            u.mul_(not_spiked)  # hard reset (detached)
            u.add_(x[t])
        if analog_slope is None:
            spike = torch.gt(u, threshold, out=output[t])
        else:
            output[t].copy_(u)
            F.leaky_relu_(output[t], analog_slope)
            spike = torch.gt(u, threshold, out=spike_liaf) if spike_liaf is not None else None
        if keep == KEEP_MEMBRANE:
            saved[t].copy_(u)
        elif keep == KEEP_CODE:
            if analog_slope is None:  # high: |u - threshold| < width / 2, rounded as rect's grad
                torch.sub(u, threshold, out=scratch)
                scratch.abs_()
                torch.lt(scratch, half_width, out=scratch)
            else:  # high: u > 0
                torch.gt(u, 0, out=scratch)
            scratch.add_(spike, alpha=_CODE_SPIKE)
            saved[t].copy_(scratch)  # 0..3 as uint8
    if keep == KEEP_CODE and analog_slope is None:
        setattr(output, _CODE_ATTR, saved)  # its spike bit is the output: see spike_code
    return output, saved


def _fused_backward(grad_output, saved, decay, threshold, surrogate, analog_slope, from_code: bool, want_decay_grad: bool):
    """Back-propagation through time for the fused op; returns ``(grad_x, grad_decay_or_None)``.

    ``grad_u[t] = grad_output[t] * local[t] + carry[t]`` with ``carry[t] = (grad_u[t+1] *
    (1 - s[t])) * decay`` (the reset is detached); ``grad_x = grad_u``. From the uint8 code the
    sweep runs step by step on ``[B, ...]`` buffers; from the membrane (smooth surrogates, learnable
    decay) the surrogate is applied to all steps at once, then the carries are added in place.
    """
    dtype = grad_output.dtype
    steps = grad_output.shape[0]
    grad = torch.empty(grad_output.shape, dtype=dtype, device=grad_output.device)
    if steps == 0:
        return grad, (torch.zeros((), dtype=dtype, device=grad.device) if want_decay_grad else None)
    carry = torch.empty_like(grad[0])
    mask = torch.empty_like(grad[0])
    if from_code:
        bits = torch.empty_like(saved[0])
        for t in range(steps - 1, -1, -1):
            torch.bitwise_and(saved[t], _CODE_HIGH, out=bits)
            mask.copy_(bits)  # local gradient: 1 (high) / 0 (low)
            if analog_slope is not None:
                mask.clamp_min_(analog_slope)  # LIAF: 1 / slope (exact for 0 <= slope <= 1)
            elif surrogate.width != 1.0:
                mask.div_(surrogate.width)
            torch.mul(grad_output[t], mask, out=grad[t])
            if t < steps - 1:
                grad[t].add_(carry)
            if t > 0:
                torch.bitwise_right_shift(saved[t - 1], 1, out=bits)
                bits.bitwise_xor_(1)  # 1 - s[t-1]
                mask.copy_(bits)
                torch.mul(grad[t], mask, out=carry)
                carry.mul_(decay)
        return grad, None
    membrane = saved
    not_spiked = torch.logical_not(membrane > threshold).view(torch.uint8)
    if analog_slope is None:
        grad.copy_(surrogate.grad(membrane - threshold, surrogate.shift(threshold)))
    else:
        torch.gt(membrane, 0, out=grad)
        grad.clamp_min_(analog_slope)
    grad.mul_(grad_output)
    grad_decay = torch.zeros((), dtype=dtype, device=grad.device) if want_decay_grad else None
    for t in range(steps - 1, 0, -1):  # grad[t] holds the final grad_u[t] here
        mask.copy_(not_spiked[t - 1])
        torch.mul(grad[t], mask, out=carry)
        if grad_decay is not None:  # d u[t] / d decay = u[t-1] * (1 - s[t-1])
            grad_decay = grad_decay + (carry * membrane[t - 1]).sum()
        carry.mul_(decay)
        grad[t - 1].add_(carry)
    return grad, grad_decay


class _MultiStepFn(torch.autograd.Function):
    """The multi-step op with a hand-written backward. ``ops``: ``(forward, backward)``, the fused
    op's (``_fused_forward``, ``_fused_backward``) or the Triton kernels' (same arguments)."""

    @staticmethod
    def forward(ctx, x, decay, threshold, surrogate, analog_slope, ops):  # type: ignore[override]
        decay_is_tensor = isinstance(decay, torch.Tensor)
        ctx.decay_value = decay.detach() if decay_is_tensor else decay
        # a 0/1 gradient window fits in one bit; a learnable decay or a smooth surrogate needs the
        # membrane potential
        window_grad = analog_slope is not None or surrogate.is_window
        keep = KEEP_MEMBRANE if ctx.needs_input_grad[1] or not window_grad else KEEP_CODE
        output, saved = ops[0](x, ctx.decay_value, threshold, surrogate, analog_slope, keep)
        ctx.save_for_backward(saved, decay if decay_is_tensor else None)
        ctx.backward_op, ctx.from_code = ops[1], keep == KEEP_CODE
        ctx.threshold, ctx.surrogate, ctx.analog_slope = threshold, surrogate, analog_slope
        return output

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        if torch.is_grad_enabled():  # create_graph=True: the hand-written backward is not differentiable
            raise ConfigError("the fused and triton neuron backends give first-order gradients only (a gradient was "
                              "asked with create_graph=True); use backend='reference' for higher-order gradients")
        saved, decay = ctx.saved_tensors
        grad_x, grad_decay = ctx.backward_op(grad_output, saved, ctx.decay_value, ctx.threshold, ctx.surrogate,
                                             ctx.analog_slope, ctx.from_code, ctx.needs_input_grad[1])
        if grad_decay is not None:
            grad_decay = grad_decay.to(device=decay.device, dtype=decay.dtype).reshape(decay.shape)
        return grad_x, grad_decay, None, None, None, None


def apply_multistep(ops, x, decay, threshold, surrogate, analog_slope) -> torch.Tensor:
    """The op ``ops`` (see :class:`_MultiStepFn`) over ``x: [T, ...]``. When no gradient is needed
    (``torch.no_grad()`` / ``torch.inference_mode()``, or neither ``x`` nor ``decay`` requires grad)
    one forward that saves nothing, and no autograd node."""
    decay_grad = isinstance(decay, torch.Tensor) and decay.requires_grad
    if torch.is_grad_enabled() and (x.requires_grad or decay_grad):
        return _MultiStepFn.apply(x, decay, threshold, surrogate, analog_slope, ops)
    decay_value = decay.detach() if isinstance(decay, torch.Tensor) else decay
    return ops[0](x, decay_value, threshold, surrogate, analog_slope, KEEP_NONE)[0]


def multistep_fused(
    x: torch.Tensor,
    decay: float | torch.Tensor,
    threshold: float,
    surrogate: Surrogate,
    analog_slope: float | None = None,
) -> torch.Tensor:
    """Same values as :func:`multistep_reference`, with a hand-written, memory-light backward:
    one ``uint8`` per element saved (membrane potentials only for smooth surrogates or a learnable
    decay), nothing when no gradient is needed (:func:`apply_multistep`)."""
    return apply_multistep((_fused_forward, _fused_backward), x, decay, threshold, surrogate, analog_slope)


def triton_supports_dtype(dtype: torch.dtype) -> bool:
    """Whether the Triton kernels take inputs of ``dtype`` (float64 does not: it runs fused)."""
    return dtype in (torch.float32, torch.float16, torch.bfloat16)


def _triton_available(x: torch.Tensor) -> bool:
    """``backend="auto"`` picks Triton for CUDA tensors of a dtype its kernels support."""
    if not x.is_cuda or not triton_supports_dtype(x.dtype):
        return False
    try:
        from ..kernels import triton_lif  # noqa: F401
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
    declared: tuple[str, ...] = ("reference", "fused", "triton"),
) -> torch.Tensor:
    """Dispatch the multi-step neuron op to the named backend (no silent fallback but ``auto``,
    which picks among the ``declared`` backends of the neuron)."""
    if backend == "auto":
        fast = "fused" if "fused" in declared else "reference"
        backend = "triton" if "triton" in declared and _triton_available(x) else fast
    if backend == "reference":
        return multistep_reference(x, decay, threshold, surrogate, analog_slope)
    if backend == "fused":
        return multistep_fused(x, decay, threshold, surrogate, analog_slope)
    if backend == "triton":
        from ..kernels.triton_lif import multistep_triton

        return multistep_triton(x, decay, threshold, surrogate, analog_slope)
    raise ConfigError(f"unknown neuron backend {str(backend)[:100]!r}; expected one of {', '.join(('auto', *declared))}")


# --------------------------------------------------------------------------------------------
# The module base of the neurons that run this op (LIF, LIAF)
# --------------------------------------------------------------------------------------------
class MultiStepNeuron(nn.Module):
    """``[T, B, ...]`` input currents -> ``[T, B, ...]`` outputs through the multi-step op.

    Subclasses set ``neuron_name`` (their registry entry, which declares the backends) and
    :meth:`output_slope` (None: spikes; a float: LIAF's ``leaky_relu`` slope).

    Args:
        decay: membrane leak per step (0.25 in the paper's ImageNet nets). Ignored when
            ``learnable_decay``: then the decay is ``sigmoid(d)`` with ``d`` a parameter starting at
            ``decay_logit_init`` (0.5, as in the paper's ES-ImageNet nets).
        threshold: firing threshold (0.5).
        surrogate: name (``rect``, ``gaussian``, ``sigmoid``, ``atan``, ``triangle``) or a
            :class:`~spikebridge.surrogate.Surrogate`. The Gaussian peaks at ``u = 0.7`` (the
            authors' DVS code) unless given another centre: ``get_surrogate("gaussian", center=c)``
            (``c = threshold`` centres it on the threshold).
        backend: ``auto`` or one the neuron declares (``reference`` | ``fused`` | ``triton``).
    """

    neuron_name: str = ""

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
        check_number("decay", decay, 0.0, 1.0)
        check_number("threshold", threshold, 0.0, math.inf, low_open=True)
        check_backend(self.neuron_name, backend)
        self.threshold = float(threshold)
        self.surrogate = get_surrogate(surrogate)
        self.backend = backend
        self.learnable_decay = learnable_decay
        self.fixed_decay = float(decay)
        if learnable_decay:
            self.decay_logit = nn.Parameter(torch.tensor(float(decay_logit_init)))

    def output_slope(self) -> float | None:
        return None

    @property
    def binary_output(self) -> bool:
        """True when the output holds only 0 and 1 (spikes; not an analog output)."""
        return not get_neuron_spec(self.neuron_name).analog_output

    @property
    def decay(self) -> float | torch.Tensor:
        return torch.sigmoid(self.decay_logit) if self.learnable_decay else self.fixed_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ConfigError(f"{type(self).__name__} expects a time-major tensor [T, B, ...], got shape {tuple(x.shape)}")
        if x.is_complex():
            raise ConfigError(f"{type(self).__name__} takes real input currents, got {str(x.dtype).removeprefix('torch.')}")
        if not x.is_floating_point():  # counts (Tonic's int16 frames), bools: membrane potentials are real
            x = x.to(torch.get_default_dtype())
        decay = self.decay
        if isinstance(decay, torch.Tensor):
            decay = decay.to(x.dtype)
        declared = get_neuron_spec(self.neuron_name).backends
        return run_multistep(x, decay, self.threshold, self.surrogate, self.output_slope(), self.backend, declared)

    def extra_repr(self) -> str:
        decay = "learnable" if self.learnable_decay else self.fixed_decay
        surrogate = self.surrogate.name
        if surrogate == "gaussian":
            surrogate += f"@{self.surrogate.shift(self.threshold) + self.threshold:g}"
        return f"decay={decay}, threshold={self.threshold}, surrogate={surrogate}, backend={self.backend}"


def multistep_kwargs(config) -> dict:
    """The :class:`MultiStepNeuron` arguments of a :class:`~spikebridge.neurons.NeuronConfig`."""
    center = config.surrogate_center  # the Gaussian's peak (None: the paper's u = 0.7)
    surrogate = get_surrogate(config.surrogate, center=center) if center is not None else config.surrogate
    return dict(decay=config.decay, threshold=config.threshold, surrogate=surrogate,
                learnable_decay=config.learnable_decay, decay_logit_init=config.decay_logit_init, backend=config.backend)
