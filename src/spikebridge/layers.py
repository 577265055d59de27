"""Time folding: the SNN path between layers is a time-major tensor folded to ``[T*B, ...]``.

Convolutions, BatchNorm, pooling and linear layers are per-frame operations, so they run unchanged
on the folded tensor (BatchNorm statistics then cover batch and time jointly, per channel, exactly
as tdBN's BatchNorm3d over ``[B, C, T, H, W]`` does, while keeping BatchNorm2d's parameter names).
Only neurons need the time axis: :class:`TimeFolded` views ``[T*B, ...]`` as ``[T, B, ...]`` around
a neuron and folds the result back.

Two memory savers for BPTT training live here too (both exact: gradients equal the plain path):

* :func:`compact_spike_storage`: a convolution saves its input for the backward, and after a LIF
  that input is a float tensor of 0/1 spikes. Inside this context (``saved_tensors_hooks``), saved
  tensors that :class:`TimeFolded` marked as binary are stored as ``bool`` (1 byte instead of 4)
  and turned back into floats when the backward needs them.
* :func:`run_checkpointed`: activation checkpointing of one block (``torch.utils.checkpoint``,
  non-reentrant), with BatchNorm running statistics protected from the recomputation.
"""
from __future__ import annotations

import contextlib
from functools import partial
from typing import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError

#: Attribute set on tensors that hold only 0/1 values (a LIF's spikes), read by the pack hook.
_BINARY_MARK = "_spikebridge_binary"
#: Attribute holding the bool copy of a marked tensor once a layer saved it.
_PACKED_ATTR = "_spikebridge_packed"


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
        out = self.neuron(x.unflatten(0, (steps, -1))).flatten(0, 1)
        if getattr(self.neuron, "binary_output", False):
            mark_binary(out)
        return out

    def extra_repr(self) -> str:
        return f"T={self.time_steps}"


def set_time_steps(modules: list[TimeFolded], steps: int) -> None:
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
def mark_binary(tensor: torch.Tensor) -> torch.Tensor:
    """Mark ``tensor`` as holding only 0 and 1 (spikes): inside :func:`compact_spike_storage`, a
    layer that saves it for the backward stores it as ``bool``. Returns ``tensor``."""
    setattr(tensor, _BINARY_MARK, True)
    return tensor


def is_marked_binary(tensor: torch.Tensor) -> bool:
    return bool(getattr(tensor, _BINARY_MARK, False))


class _PackedSpikes:
    """A saved 0/1 float tensor stored as ``bool`` (same shape and strides) plus its dtype."""

    __slots__ = ("bits", "dtype")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.bits = tensor.detach().to(torch.bool)
        self.dtype = tensor.dtype


def _pack_saved(tensor: torch.Tensor):
    if tensor.is_floating_point() and is_marked_binary(tensor):
        # one bool copy per spike tensor, shared by every layer that saves it (conv + downsample)
        packed = getattr(tensor, _PACKED_ATTR, None)
        if packed is None:
            packed = _PackedSpikes(tensor)
            setattr(tensor, _PACKED_ATTR, packed)
        return packed
    return tensor


def _unpack_saved(packed):
    if isinstance(packed, _PackedSpikes):
        return packed.bits.to(packed.dtype)
    return packed


def compact_spike_storage(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Context for a training forward: saved tensors marked binary (:func:`mark_binary`, done by
    :class:`TimeFolded` for LIF outputs) are kept as ``bool`` until the backward, where they are
    converted back to their float dtype (exactly: the values are 0 and 1). Other saved tensors are
    untouched. A no-op when ``enabled`` is false or while ``torch.compile`` traces.

    The saved float spikes are what a convolution after a LIF keeps for its weight gradient (4
    bytes per element); stored as bool they take 1, which cuts an SNN's activation memory by about
    a third (see ``benchmarks/README.md``).
    """
    if not enabled or torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_pack_saved, _unpack_saved)


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


def _checkpoint_contexts(block: nn.Module):
    return contextlib.nullcontext(), preserve_batchnorm_stats(block)


def run_checkpointed(block: Callable[[torch.Tensor], torch.Tensor] | nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` under activation checkpointing: nothing inside the block is kept for the
    backward (only its input); the backward runs the block's forward again. Non-reentrant
    ``torch.utils.checkpoint``; BatchNorm running statistics are not updated by the recomputation.
    Gradients equal the plain path's (the recomputation is deterministic on CPU)."""
    contexts = partial(_checkpoint_contexts, block) if isinstance(block, nn.Module) else None
    kwargs = {"context_fn": contexts} if contexts is not None else {}
    return checkpoint(block, x, use_reentrant=False, **kwargs)
