"""Surrogate gradients: a Heaviside step forward, a smooth stand-in for its derivative backward.

Every surrogate is a function of ``x = u - threshold`` (the membrane potential's distance to the
threshold). The forward is always ``x > 0``; only ``grad(x)`` differs:

=========  ==========================================================  ===========
name       dS/du                                                        parameter
=========  ==========================================================  ===========
rect       1/width where |x| < width/2, else 0 (the paper's default)     width = 1
gaussian   exp(-x^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)                  sigma = 1
sigmoid    alpha * sig(alpha x) * (1 - sig(alpha x))                      alpha = 4
atan       (alpha / 2) / (1 + (pi/2 * alpha * x)^2)                       alpha = 2
triangle   max(0, 1 - |x|/width) / width                                  width = 1
=========  ==========================================================  ===========

The paper's rectangle (``|u - threshold| < 0.5`` gives 1) is ``rect`` with width 1; its DVS
variant ``0.3989 * exp(-0.5 (u - 0.7)^2)`` is ``gaussian`` with sigma 1 (centred on the threshold).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Surrogate:
    """A surrogate-gradient shape. ``grad(x)`` is dS/du evaluated at ``x = u - threshold``."""

    name: str = "rect"
    width: float = 1.0  # rect / triangle support
    sigma: float = 1.0  # gaussian
    alpha: float = 4.0  # sigmoid / atan sharpness

    def __post_init__(self) -> None:
        if self.name not in SURROGATE_NAMES:
            raise ConfigError(
                f"unknown surrogate {self.name!r}; expected one of {', '.join(SURROGATE_NAMES)}"
            )
        for field_name in ("width", "sigma", "alpha"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"surrogate {field_name} must be a positive number, got {value!r}")

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        if self.name == "rect":
            return (x.abs() < self.width / 2).to(x.dtype) / self.width
        if self.name == "gaussian":
            return torch.exp(-0.5 * (x / self.sigma) ** 2) / (math.sqrt(2 * math.pi) * self.sigma)
        if self.name == "sigmoid":
            sig = torch.sigmoid(self.alpha * x)
            return self.alpha * sig * (1 - sig)
        if self.name == "atan":
            return (self.alpha / 2) / (1 + (math.pi / 2 * self.alpha * x) ** 2)
        # triangle
        return torch.clamp(1 - x.abs() / self.width, min=0) / self.width

    @property
    def is_window(self) -> bool:
        """True when the gradient is a 0/1 mask scaled by a constant (it can be saved as a bit)."""
        return self.name == "rect"


SURROGATE_NAMES = ("rect", "gaussian", "sigmoid", "atan", "triangle")
_DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0}


def get_surrogate(spec: str | Surrogate = "rect", **params: float) -> Surrogate:
    """Build a surrogate from a name (and optional width/sigma/alpha) or pass one through."""
    if isinstance(spec, Surrogate):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"surrogate must be a name or a Surrogate, got {type(spec).__name__}")
    if "alpha" not in params and spec in _DEFAULT_ALPHA:
        params["alpha"] = _DEFAULT_ALPHA[spec]
    return Surrogate(spec, **params)


class _HeavisideFn(torch.autograd.Function):
    """Heaviside step of ``x`` with the surrogate's gradient (used by the reference loop)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x), None


def heaviside(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """``(x > 0)`` as a float tensor whose gradient is ``surrogate.grad(x)``."""
    return _HeavisideFn.apply(x, surrogate)
