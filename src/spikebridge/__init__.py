"""spikebridge: train accurate, low-latency spiking neural networks fast by starting them from a
trained ANN (Lin et al., "Rethinking Pretraining as a Bridge from ANNs to SNNs").

The public names below are imported on first use (PEP 562), so that ``import spikebridge`` and the
command line's start do not wait for PyTorch before they need it (a Ctrl-C then is handled as
any other)."""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "LIAF": "neurons", "LIF": "neurons", "NeuronConfig": "neurons", "SharpenedReLU": "neurons",
    "PipelineConfig": "config", "SpikebridgeError": "errors", "SpikingNet": "spikify", "spikify": "spikify",
    "Surrogate": "surrogate", "get_surrogate": "surrogate", "TransferReport": "bridge",
    "recalibrate_batchnorm": "bridge", "transfer": "bridge", "create_model": "models", "list_models": "models",
    "register_model": "models", "dataset_bundle": "data.loading", "from_nir": "nir_import", "load_model": "restore",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    else:  # a submodule not imported yet (spikebridge.pipelines ...)
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(types.ModuleType):
    """The package module: importing the submodule ``spikebridge.spikify`` (Python then sets it
    as the package's attribute) must not hide the public function of that name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _PUBLIC and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:  # what type checkers and IDEs see
    from .bridge import TransferReport, recalibrate_batchnorm, transfer
    from .config import PipelineConfig
    from .data.loading import dataset_bundle
    from .errors import SpikebridgeError
    from .models import create_model, list_models, register_model
    from .neurons import LIAF, LIF, NeuronConfig, SharpenedReLU
    from .nir_import import from_nir
    from .restore import load_model
    from .spikify import SpikingNet, spikify
    from .surrogate import Surrogate, get_surrogate
