"""Time folding: the SNN path between layers is a time-major tensor folded to ``[T*B, ...]``.

Convolutions, BatchNorm, pooling and linear layers are per-frame operations, so they run unchanged
on the folded tensor (BatchNorm statistics then cover batch and time jointly, per channel, exactly
as tdBN's BatchNorm3d over ``[B, C, T, H, W]`` does, while keeping BatchNorm2d's parameter names).
Only neurons need the time axis: :class:`TimeFolded` views ``[T*B, ...]`` as ``[T, B, ...]`` around
a neuron and folds the result back.

Two memory savers for BPTT training live here too (both exact: gradients equal the plain path):

* :func:`compact_spike_storage`: a convolution saves its input for the backward, and after a LIF
  that input is a float tensor of 0/1 spikes. Inside this context (``saved_tensors_hooks``), saved
  tensors that :class:`TimeFolded` marked as binary are stored as a view of the ``uint8`` code the
  fused LIF saves anyway (its spike bit; no extra memory) or, for other neurons, as ``bool`` (1 byte
  instead of 4), and turned back into floats when the backward needs them.
* :func:`run_checkpointed`: activation checkpointing of one block (``torch.utils.checkpoint``,
  non-reentrant), with BatchNorm running statistics protected from the recomputation.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError
from .neurons.multistep import spike_code

#: Attribute set on tensors that hold only 0/1 values (a LIF's spikes), read by the pack hook.
_BINARY_MARK = "_spikebridge_binary"
#: Attribute holding the compact form of a marked tensor once a layer saved it.
_PACKED_ATTR = "_spikebridge_packed"
#: Attribute holding a ``uint8`` tensor whose bit 1 equals a marked tensor (a fused LIF's code).
_CODE_ATTR = "_spikebridge_code"


class TimeFolded(nn.Module):
    """Apply a sequence module (``[T, B, ...] -> [T, B, ...]``) to a folded ``[T*B, ...]`` tensor.

    ``time_steps`` is set by the model for each forward (:func:`set_time_steps`).
    """

    def __init__(self, neuron: nn.Module, time_steps: int = 1) -> None:
        super().__init__()
        self.neuron = neuron
        self.time_steps = time_steps

    def forward(self, x):
        steps = self.time_steps
        if x.shape[0] % steps:
            raise ConfigError(f"folded batch of {x.shape[0]} is not a multiple of T={steps}")
        sequence = self.neuron(x.unflatten(0, (steps, -1)))
        out = sequence.flatten(0, 1)
        if getattr(self.neuron, "binary_output", False):
            if getattr(_compact_state, "depth", 0) and torch.is_grad_enabled():
                out = out.as_subclass(_Spikes)  # convolutions of it take the lean backward
            code = spike_code(sequence)
            mark_binary(out, code.flatten(0, 1) if code is not None else None)
        return out

    def extra_repr(self) -> str:
        return f"T={self.time_steps}"


def as_input_of(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s floating parameters: integer input (uint8 images, Tonic's
    int16 event counts), bool, float64 or half given to a float32 net (or float32 to a ``.half()``
    one) is converted, as torch's layers would refuse the mix."""
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.get_default_dtype())
    return x if x.dtype == dtype else x.to(dtype)


def fold_time(x: torch.Tensor, input_ndim: int, T: int, what: str) -> tuple[torch.Tensor, int, int]:
    """Static ``[B, ...]`` (``input_ndim`` dims, repeated over ``T`` steps) or events ``[T, B, ...]``
    -> (``[T*B, ...]``, T, B); ConfigError naming ``what`` for other shapes."""
    if x.dim() == input_ndim + 1:
        return x.flatten(0, 1), x.shape[0], x.shape[1]
    if x.dim() == input_ndim:
        return x.unsqueeze(0).expand(T, *x.shape).flatten(0, 1), T, x.shape[0]
    raise ConfigError(f"{what} expects input with {input_ndim} dims [B, ...] or {input_ndim + 1} dims "
                      f"[T, B, ...] (events), got shape {tuple(x.shape)}")


def set_time_steps(modules: list[nn.Module], steps: int) -> None:
    for module in modules:
        module.time_steps = steps


def init_batchnorm(model: nn.Module, weight: float) -> None:
    """tdBN initialisation: every BatchNorm's affine weight = ``weight`` (the threshold), bias 0."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            nn.init.constant_(module.weight, weight)
            nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------------------------
# Compact storage of spikes saved for the backward
# --------------------------------------------------------------------------------------------
def mark_binary(tensor: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
    """Mark ``tensor`` as holding only 0 and 1 (spikes): inside :func:`compact_spike_storage`, a
    layer that saves it for the backward stores it as ``bool``, or as ``code`` when given: a
    ``uint8`` tensor of the same shape with ``code >> 1 == tensor`` (the code a fused LIF saves for
    its own backward), used only when both are contiguous. Returns ``tensor``."""
    setattr(tensor, _BINARY_MARK, True)
    if code is not None and code.shape == tensor.shape and code.is_contiguous() and tensor.is_contiguous():
        setattr(tensor, _CODE_ATTR, code)
    return tensor


def is_marked_binary(tensor: torch.Tensor) -> bool:
    return bool(getattr(tensor, _BINARY_MARK, False))


class _PackedSpikes:
    """A saved 0/1 float tensor kept as the spike bit of its neuron's ``uint8`` code (a view: no
    copy) or else as a ``bool`` copy (same shape and strides), plus its dtype."""

    __slots__ = ("bits", "from_code", "dtype")

    def __init__(self, tensor: torch.Tensor) -> None:
        code = getattr(tensor, _CODE_ATTR, None)
        self.from_code = code is not None
        self.bits = code if code is not None else tensor.detach().to(torch.bool)
        self.dtype = tensor.dtype

    def unpack(self) -> torch.Tensor:
        return (torch.bitwise_right_shift(self.bits, 1) if self.from_code else self.bits).to(self.dtype)


def _pack_saved(tensor: torch.Tensor):
    if tensor.is_floating_point() and is_marked_binary(tensor):
        # one compact form per spike tensor, shared by every layer that saves it (conv + downsample)
        packed = getattr(tensor, _PACKED_ATTR, None)
        if packed is None:
            packed = _PackedSpikes(tensor)
            setattr(tensor, _PACKED_ATTR, packed)
        return packed
    return tensor


def _unpack_saved(packed):
    return packed.unpack() if isinstance(packed, _PackedSpikes) else packed


# --------------------------------------------------------------------------------------------
# Convolutions of spikes: the float spikes are dropped before the input gradient is built (CPU)
# --------------------------------------------------------------------------------------------
_plain_convolutions = threading.local()  # .on: inside a checkpointed block (recomputed plainly)
#: Spike tensors with fewer elements keep the plain convolution backward: their buffers are small
#: next to the step's peak (reached at the largest activations), and on small maps oneDNN's
#: transposed convolution is slower than its backward-data call (a few per cent of a step in all).
LEAN_CONV_MIN_NUMEL = 1 << 20


class _SpikeConv2d(torch.autograd.Function):
    """``F.conv2d`` of a marked spike tensor (CPU): the same values and the same gradients, bit for
    bit, with a smaller backward peak.

    The plain backward turns the saved spikes back into floats and keeps them while it builds both
    gradients; building the input gradient holds three input-sized buffers on CPU (oneDNN's
    result, a dense copy of it and a contiguous clone). Here the weight gradient comes first (the
    same ``convolution_backward`` kernel; the float spikes are needed only for it), the float
    spikes are dropped, and the input gradient is ``conv_transpose2d`` of the output gradient:
    oneDNN computes a transposed convolution with its convolution backward-data kernel, so the values
    are identical (``tests/test_memory_options.py`` checks it), and it needs no input tensor at all
    (``convolution_backward`` would want one of full size even when computing only this gradient).
    Saved tensors go through :func:`compact_spike_storage`'s hooks like any other.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        with torch._C.DisableTorchFunctionSubclass():
            return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):  # type: ignore[override]
        x, weight = ctx.saved_tensors  # x: the spikes, back in their float dtype
        stride, padding = ctx.stride, ctx.padding
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = None
        if want_w or want_b:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_output, x, weight, [weight.shape[0]] if ctx.has_bias else None, stride, padding, [1, 1],
                False, [0, 0], 1, [False, want_w, want_b])
        size = x.shape[-2:]
        del x  # the float spikes go before the input gradient is built
        if want_x:  # the output_padding for which the transposed convolution gives back x's size
            extra = [size[i] - ((grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + weight.shape[2 + i])
                     for i in range(2)]
            grad_x = F.conv_transpose2d(grad_output, weight, None, stride, padding, extra)
        return grad_x, grad_w, grad_b, None, None


def _lean_conv(args: tuple) -> tuple | None:
    """``(x, weight, bias, stride, padding)`` when a ``conv2d`` call takes the lean path, else None:
    a marked float32 spike tensor of at least ``LEAN_CONV_MIN_NUMEL`` elements on CPU (oneDNN),
    plain 2-d convolution (no groups, no dilation)."""
    x, weight, bias, stride, padding, dilation, groups = (*args, None, 1, 0, 1, 1)[:7]
    pair = torch.nn.modules.utils._pair
    if not (isinstance(x, torch.Tensor) and is_marked_binary(x) and x.dim() == 4 and x.dtype == torch.float32
            and x.numel() >= LEAN_CONV_MIN_NUMEL
            and x.device.type == "cpu" and isinstance(weight, torch.Tensor) and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and not isinstance(padding, str) and groups == 1
            and pair(dilation) == (1, 1) and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and torch.is_grad_enabled() and not getattr(_plain_convolutions, "on", False)):
        return None
    return x, weight, bias, pair(stride), pair(padding)


class _Spikes(torch.Tensor):
    """A LIF's output during a compact training forward (:func:`compact_spike_storage`): ``conv2d``
    of it takes :class:`_SpikeConv2d` (see :func:`_lean_conv`); every other op runs as on a plain
    tensor and returns plain tensors (only the ops that read the spikes pay this dispatch)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.conv2d and not kwargs:
            lean = _lean_conv(args)
            if lean is not None:
                return _SpikeConv2d.apply(*lean)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


_compact_state = threading.local()  # .depth: how many compact_spike_storage contexts are open


@contextlib.contextmanager
def _compact_context() -> Iterator[None]:
    _compact_state.depth = getattr(_compact_state, "depth", 0) + 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(_pack_saved, _unpack_saved):
            yield
    finally:
        _compact_state.depth -= 1


def compact_spike_storage(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Context for a training forward: saved tensors marked binary (:func:`mark_binary`, done by
    :class:`TimeFolded` for LIF outputs) are kept as the fused LIF's saved code (its spike bit) or
    as ``bool`` until the backward, where they are converted back to their float dtype (exactly:
    the values are 0 and 1). Other saved tensors are untouched. A no-op when ``enabled`` is false
    or while ``torch.compile`` traces.

    The saved float spikes are what a convolution after a LIF keeps for its weight gradient (4
    bytes per element); kept as the LIF's code they cost nothing more (the LIF keeps that code for
    its own backward), as bool 1 byte (see ``benchmarks/README.md``).
    """
    if not enabled or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return _compact_context()


# --------------------------------------------------------------------------------------------
# Activation checkpointing of blocks
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def preserve_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running statistics in ``module`` on exit (used around the
    recomputation of a checkpointed block, so the statistics are updated once per step, not twice)."""
    saved = [
        (buffer, buffer.detach().clone())
        for bn in module.modules()
        if isinstance(bn, nn.modules.batchnorm._BatchNorm)
        for buffer in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
        if buffer is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def run_checkpointed(block: Callable[[torch.Tensor], torch.Tensor] | nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` under activation checkpointing: nothing inside the block is kept for the
    backward (only its input); the backward runs the block's forward again. Non-reentrant
    ``torch.utils.checkpoint``; BatchNorm running statistics are not updated by the recomputation.
    Gradients equal the plain path's (the recomputation is deterministic on CPU)."""
    kwargs = {}
    if isinstance(block, nn.Module):
        kwargs["context_fn"] = lambda: (contextlib.nullcontext(), preserve_batchnorm_stats(block))
    previous = getattr(_plain_convolutions, "on", False)
    _plain_convolutions.on = True  # the recomputation runs outside compact_spike_storage: match it
    try:
        return checkpoint(block, x, use_reentrant=False, **kwargs)
    finally:
        _plain_convolutions.on = previous
