"""ReLU: the plain ANN activation (no time loop; BN weights start at 1, not at the threshold)."""
from torch import nn

from .registry import NeuronSpec, register_neuron

register_neuron(NeuronSpec(name="relu", build=lambda config: nn.ReLU(), spiking=False, bn_init_at_threshold=False))
