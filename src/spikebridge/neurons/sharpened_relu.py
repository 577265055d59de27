"""The sharpened ReLU: the paper's ANN pretraining activation (arXiv:2203.01158), which ends as a
step at the LIF's threshold so the ANN's weights transfer to the SNN."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .registry import NeuronSpec, check_number, register_neuron


class _SharpenFn(torch.autograd.Function):
    """Keeps a bool mask of the surrogate's window for the backward (1 byte per element, not the
    float input): the same gradient, computed in one multiply."""

    @staticmethod
    def forward(ctx, x, lo, hi, threshold, width):  # type: ignore[override]
        ctx.save_for_backward((x - threshold).abs_() < width / 2)
        ctx.width = width
        return torch.clamp((x - lo) / (hi - lo), 0, 1)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        (window,) = ctx.saved_tensors
        grad = grad_out * window
        return (grad if ctx.width == 1.0 else grad / ctx.width), None, None, None, None


class SharpenedReLU(nn.Module):
    """The paper's pretraining activation: ``clip((x - lo) / (hi - lo), 0, 1)``.

    The paper (arXiv:2203.01158, Sec. 3) trains 100 epochs with ``p = epoch / 200`` (epochs
    0..99), ``lo = min(p, 0.49)``, ``hi = 1 - p``: a clipped ReLU at epoch 0, ``lo/hi = 0.49/0.505``
    (a step at 0.5) at its last epoch. ``sharpen_epochs`` compresses that schedule into ``S`` epochs:
    ``p = 0.495 * epoch / (S - 1)`` (``p = 0.495`` when ``S = 1``), so epoch ``S - 1`` ends where the
    paper's 100th epoch ends, and ``S = 100`` is the paper's ``epoch / 200`` exactly. Bounds scale
    with the threshold: ``lo = 2*threshold*min(p, 0.49)``, ``hi = 2*threshold*max(1 - p, 0.5)``.
    Its backward is the LIF's rectangle surrogate (1 where ``|x - threshold| < width/2``). The epoch
    (0-based) is set by the trainer via ``set_epoch``.
    """

    #: ``p`` at the paper's last epoch (99 / 200)
    FINAL_P = 0.495

    def __init__(self, threshold: float = 0.5, sharpen_epochs: int = 100, width: float = 1.0) -> None:
        super().__init__()
        check_number("threshold", threshold, 0.0, math.inf, low_open=True)
        if not (isinstance(sharpen_epochs, int) and sharpen_epochs > 0):
            raise ConfigError(f"sharpen_epochs must be a positive integer, got {sharpen_epochs!r}")
        self.threshold = float(threshold)
        self.sharpen_epochs = sharpen_epochs
        self.width = float(width)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def bounds(self) -> tuple[float, float]:
        steps = self.sharpen_epochs - 1
        p = self.FINAL_P * (self.epoch / steps if steps else 1.0)
        scale = 2 * self.threshold
        return scale * min(p, 0.49), scale * max(1 - p, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.bounds()
        return _SharpenFn.apply(x, lo, hi, self.threshold, self.width)

    def extra_repr(self) -> str:
        lo, hi = self.bounds()
        return f"threshold={self.threshold}, epoch={self.epoch}, lo={lo:.3f}, hi={hi:.3f}"


register_neuron(NeuronSpec(
    name="sharpened_relu", build=lambda config: SharpenedReLU(config.threshold, config.sharpen_epochs or 100), spiking=False,
))
