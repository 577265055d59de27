"""Neurons: the spiking LIF and LIAF, the ANN activations ReLU and sharpened ReLU, and their registry.

All spiking neurons are *stateless* modules: the whole time-major sequence ``[T, B, ...]`` goes in
and the whole sequence comes out; the membrane potential lives only inside the call. There is
nothing to reset between batches.

Add a neuron:

1. one module here (``my_neuron.py``) with its ``nn.Module`` (a :class:`MultiStepNeuron` subclass
   when it runs the LIF recurrence; else its own reference loop) and a ``neuron_name``;
2. ``register_neuron(NeuronSpec(...))`` in that module: name, factory, ``spiking``,
   ``analog_output``, the ``backends`` it runs (``reference`` first), its ``nir`` mapping or None;
3. import the module below (registration order = the order of ``--neuron`` choices);
4. tests: ``tests/test_neurons.py`` checks every registered backend against the reference.
"""
from .registry import (
    NeuronConfig,
    NeuronSpec,
    backend_names,
    check_backend,
    check_backend_on_device,
    get_neuron_spec,
    neuron_names,
    neuron_spec_of,
    register_neuron,
)
from .multistep import MultiStepNeuron, multistep_fused, multistep_reference, run_multistep, triton_supports_dtype
from .lif import LIF
from .liaf import LIAF
from . import relu as _relu  # noqa: F401  (registers "relu")
from .sharpened_relu import SharpenedReLU

__all__ = [
    "LIAF", "LIF", "MultiStepNeuron", "NeuronConfig", "NeuronSpec", "SharpenedReLU", "backend_names", "check_backend",
    "check_backend_on_device", "get_neuron_spec", "multistep_fused", "multistep_reference", "neuron_names",
    "neuron_spec_of", "register_neuron", "run_multistep", "triton_supports_dtype",
]
