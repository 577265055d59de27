"""The sharpened ReLU: the paper's ANN pretraining activation (arXiv:2203.01158), which ends as a
step at the LIF's threshold so the ANN's weights transfer to the SNN."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .registry import NeuronSpec, check_number, register_neuron


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
        p = self.epoch / (2 * self.sharpen_epochs)
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
