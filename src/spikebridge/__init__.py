"""spikebridge: train accurate, low-latency spiking neural networks fast by starting them from a
trained ANN (Lin et al., "Rethinking Pretraining as a Bridge from ANNs to SNNs")."""
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

__version__ = "0.1.0"

__all__ = [
    "LIAF",
    "LIF",
    "NeuronConfig",
    "PipelineConfig",
    "SharpenedReLU",
    "SpikebridgeError",
    "SpikingNet",
    "Surrogate",
    "TransferReport",
    "create_model",
    "dataset_bundle",
    "from_nir",
    "get_surrogate",
    "list_models",
    "load_model",
    "recalibrate_batchnorm",
    "register_model",
    "spikify",
    "transfer",
]
