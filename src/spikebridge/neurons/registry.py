"""The neuron registry: every activation kind declares itself here once, and the config, the CLI
choices, the benchmark, export, metrics and spikify read it instead of branching on names.

A kind is one :class:`NeuronSpec` (see ``neurons/__init__.py`` for the checklist to add one);
:class:`NeuronConfig` is the user-facing choice of kind, backend and hyperparameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..surrogate import get_surrogate


@dataclass(frozen=True)
class NeuronSpec:
    """One activation kind.

    Attributes:
        name: the kind (``NeuronConfig.kind``, ``--neuron``, benchmark method modifiers).
        build: ``NeuronConfig -> nn.Module`` (time-major ``[T, B, ...]`` for spiking kinds).
        spiking: an SNN neuron (time-folded in models; spikify and the benchmark may use it).
        analog_output: a spiking neuron whose output is not 0/1 (LIAF): metrics count the layers
            it feeds as MACs, spikify rescales it, spikes are not stored as bool.
        backends: the implementations of the multi-step op it runs (``"reference"`` is the spec
            the others are tested against); ``"auto"`` picks among them. Empty for activations
            without a time loop (the backend setting does not apply to them).
        nir: ``(neuron, input_gain, dt) -> {"type": "LIF"|"IF", NIR parameters as floats}`` for
            NIR export, or None when NIR has no such node.
        bn_init_at_threshold: tdBN starts BN's weight at the threshold (spiking / step-like).
    """

    name: str
    build: Callable[["NeuronConfig"], nn.Module]
    spiking: bool
    analog_output: bool = False
    backends: tuple[str, ...] = ()
    nir: Callable[[nn.Module, float, float], dict] | None = None
    bn_init_at_threshold: bool = True


_REGISTRY: dict[str, NeuronSpec] = {}
#: The implementations of the multi-step op (``neurons/multistep.py``, ``kernels/triton_lif.py``).
KNOWN_BACKENDS = ("reference", "fused", "triton")


def register_neuron(spec: NeuronSpec) -> NeuronSpec:
    """Add ``spec`` (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"neuron {spec.name!r} is already registered")
    if set(spec.backends) - set(KNOWN_BACKENDS) or (spec.spiking and "reference" not in spec.backends):
        raise ValueError(f"neuron {spec.name!r}: backends {spec.backends} must include 'reference' and only name known ops")
    _REGISTRY[spec.name] = spec
    return spec


def neuron_names(spiking: bool | None = None) -> list[str]:
    """Registered kinds in registration order; only spiking (True) or non-spiking (False) ones."""
    return [name for name, spec in _REGISTRY.items() if spiking is None or spec.spiking == spiking]


def backend_names() -> list[str]:
    """``auto`` plus every backend some neuron declares."""
    return ["auto"] + [b for b in KNOWN_BACKENDS if any(b in spec.backends for spec in _REGISTRY.values())]


def get_neuron_spec(name: str) -> NeuronSpec:
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"unknown neuron {str(name)[:100]!r}; expected one of {', '.join(_REGISTRY)}")
    return spec


def neuron_spec_of(module: nn.Module) -> NeuronSpec | None:
    """The spec of a neuron module built from the registry (None for anything else)."""
    return _REGISTRY.get(getattr(module, "neuron_name", None))


def check_backend(name: str, backend: str) -> None:
    """ConfigError unless ``backend`` is ``auto`` or one ``name`` declares (any known backend for
    kinds without a time loop: a recipe's ``neuron.backend`` carries over to its ANN)."""
    spec = get_neuron_spec(name)
    valid = ["auto", *spec.backends] if spec.backends else backend_names()
    if backend not in valid:
        raise ConfigError(f"{name!r} has no backend {str(backend)[:100]!r}; expected one of {', '.join(valid)}")


def check_number(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"({low}, {high}{')' if math.isinf(high) else ']'}" if low_open else f"[{low}, {high}]"
        what = "a finite number" if math.isinf(high) else "a number"
        raise ConfigError(f"{name} must be {what} in {bound}, got {value!r}")


@dataclass(frozen=True)
class NeuronConfig:
    """Which activation a model is built with, and its hyperparameters.

    ``kind``: a registered name (:func:`neuron_names`): ``relu`` (ANN), ``sharpened_relu`` (ANN
    pretraining, T=1), ``lif`` or ``liaf`` (SNN). ``backend``: ``auto`` or one the kind declares.
    """

    kind: str = "lif"
    decay: float = 0.25
    threshold: float = 0.5
    surrogate: str = "rect"
    surrogate_center: float | None = None  # gaussian: the membrane potential of its peak (None: the paper's 0.7)
    learnable_decay: bool = False
    decay_logit_init: float = 0.5
    analog_slope: float = 0.2
    sharpen_epochs: int = 0  # 0 = auto: pipelines use the ANN's epochs, a bare build the paper's 100
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_backend(self.kind, self.backend)
        check_number("decay", self.decay, 0.0, 1.0)
        check_number("threshold", self.threshold, 0.0, math.inf, low_open=True)
        get_surrogate(self.surrogate, **({} if self.surrogate_center is None else {"center": self.surrogate_center}))

    @property
    def spec(self) -> NeuronSpec:
        return get_neuron_spec(self.kind)

    @property
    def spiking(self) -> bool:
        return self.spec.spiking

    @property
    def bn_weight_init(self) -> float:
        """tdBN: BN's affine weight starts at the threshold for spiking / step-like activations."""
        return self.threshold if self.spec.bn_init_at_threshold else 1.0

    def build(self) -> nn.Module:
        """A new activation module (time-major ``[T, B, ...]`` for spiking kinds)."""
        return self.spec.build(self)


def check_backend_on_device(config: NeuronConfig, device: torch.device | str) -> None:
    """ConfigError when ``config``'s backend cannot run on ``device`` (a resolved torch device):
    ``triton`` needs the triton package and CUDA tensors (CPU only under ``TRITON_INTERPRET=1``)."""
    if config.backend != "triton":
        return
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {str(device)[:100]!r}") from None
    try:
        from ..kernels import triton_lif
    except ImportError:
        raise ConfigError("neuron backend 'triton' needs the triton package (pip install triton); "
                          "use backend=fused or auto") from None
    if device.type != "cuda" and not triton_lif.uses_interpreter():
        raise ConfigError(f"neuron backend 'triton' needs a CUDA device, got {device}; use backend=fused or auto")
