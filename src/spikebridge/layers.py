"""Time folding: the SNN path between layers is a time-major tensor folded to ``[T*B, ...]``.

Convolutions, BatchNorm, pooling and linear layers are per-frame operations, so they run unchanged
on the folded tensor (BatchNorm statistics then cover batch and time jointly, per channel, exactly
as tdBN's BatchNorm3d over ``[B, C, T, H, W]`` does, while keeping BatchNorm2d's parameter names).
Only neurons need the time axis: :class:`TimeFolded` views ``[T*B, ...]`` as ``[T, B, ...]`` around
a neuron and folds the result back.
"""
from __future__ import annotations

from torch import nn

from .errors import ConfigError


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
        return self.neuron(x.unflatten(0, (steps, -1))).flatten(0, 1)

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
