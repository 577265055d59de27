"""Surrogate gradients: a Heaviside step forward, a smooth stand-in for its derivative backward.

Every surrogate is a function of ``x = u - threshold`` (the membrane potential's distance to the
threshold). The forward is always ``x > 0``; only ``grad(x)`` differs:

=========  ==========================================================  ===========
name       dS/du                                                        parameter
=========  ==========================================================  ===========
rect       1/width where |x| < width/2, else 0 (the paper's default)     width = 1
gaussian   exp(-(x - c)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)            sigma = 1, center
sigmoid    alpha * sig(alpha x) * (1 - sig(alpha x))                      alpha = 4
atan       (alpha / 2) / (1 + (pi/2 * alpha * x)^2)                       alpha = 2
triangle   max(0, 1 - |x|/width) / width                                  width = 1
=========  ==========================================================  ===========

The paper's rectangle (``|u - threshold| < 0.5`` gives 1) is ``rect`` with width 1. The Gaussian
is the variant of the authors' DVS code (arXiv:2203.01158), ``0.3989 * exp(-0.5 (u - 0.7)^2)``:
sigma 1, its peak at the membrane potential ``u = center`` (default :data:`GAUSSIAN_CENTER`, 0.7,
whatever the threshold), so ``c = center - threshold`` (:meth:`Surrogate.shift`; 0.2 at the
threshold 0.5). ``center=threshold`` centres it on the threshold. Only the Gaussian has a centre.
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
    center: float | None = None  # gaussian: membrane potential of the peak (None: GAUSSIAN_CENTER)

    def __post_init__(self) -> None:
        if self.name not in SURROGATE_NAMES:
            raise ConfigError(
                f"unknown surrogate {self.name!r}; expected one of {', '.join(SURROGATE_NAMES)}"
            )
        for field_name in ("width", "sigma", "alpha"):
            value = getattr(self, field_name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"surrogate {field_name} must be a positive number, got {value!r}")
        if self.center is not None:
            if self.name != "gaussian":
                raise ConfigError(f"only the gaussian surrogate has a centre, not {self.name!r}")
            if isinstance(self.center, bool) or not isinstance(self.center, (int, float)) \
                    or not math.isfinite(self.center):
                raise ConfigError(f"surrogate center must be a finite number, got {self.center!r:.40}")

    def shift(self, threshold: float) -> float:
        """Where the gradient peaks, in ``x = u - threshold``: ``center - threshold`` for the
        Gaussian, 0 for the others (centred on the threshold)."""
        if self.name != "gaussian":
            return 0.0
        return float(GAUSSIAN_CENTER if self.center is None else self.center) - float(threshold)

    def grad(self, x: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        """dS/du at ``x = u - threshold``; the Gaussian peaks at ``x = shift`` (a neuron passes
        :meth:`shift` of its threshold)."""
        if self.name == "rect":
            return (x.abs() < self.width / 2).to(x.dtype) / self.width
        if self.name == "gaussian":
            z = (x - shift) / self.sigma if shift else x / self.sigma
            return torch.exp(-0.5 * z ** 2) / (math.sqrt(2 * math.pi) * self.sigma)
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
#: The Gaussian's default peak: u = 0.7, as in the authors' DVS code (arXiv:2203.01158)
GAUSSIAN_CENTER = 0.7
_DEFAULT_ALPHA = {"sigmoid": 4.0, "atan": 2.0}


def get_surrogate(spec: str | Surrogate = "rect", **params: float | None) -> Surrogate:
    """Build a surrogate from a name (and optional width/sigma/alpha/center) or pass one through."""
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
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate, shift: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate, ctx.shift = surrogate, shift
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(x, ctx.shift), None, None


def heaviside(x: torch.Tensor, surrogate: Surrogate, shift: float = 0.0) -> torch.Tensor:
    """``(x > 0)`` as a float tensor whose gradient is ``surrogate.grad(x, shift)``."""
    return _HeavisideFn.apply(x, surrogate, shift)
