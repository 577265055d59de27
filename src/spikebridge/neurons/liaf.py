"""Leaky integrate-and-analog-fire (LIAF): the LIF recurrence, analog output (arXiv:2203.01158)."""
from __future__ import annotations

from .multistep import MultiStepNeuron, multistep_kwargs
from .registry import NeuronSpec, check_number, register_neuron


class LIAF(MultiStepNeuron):
    """The spike only drives the reset; the output is ``leaky_relu(u, analog_slope)`` (slope 0.2
    in the paper). Same arguments as :class:`~spikebridge.neurons.LIF`, plus ``analog_slope``."""

    neuron_name = "liaf"

    def __init__(self, *args, analog_slope: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_number("analog_slope", analog_slope, 0.0, 1.0)
        self.analog_slope = float(analog_slope)

    def output_slope(self) -> float:
        return self.analog_slope


register_neuron(NeuronSpec(
    name="liaf", build=lambda config: LIAF(analog_slope=config.analog_slope, **multistep_kwargs(config)),
    spiking=True, analog_output=True, backends=("reference", "fused", "triton"),
))
