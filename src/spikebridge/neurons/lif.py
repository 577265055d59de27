"""Leaky integrate-and-fire (LIF): the paper's SNN neuron, spikes out (arXiv:2203.01158)."""
from __future__ import annotations

import torch

from .multistep import MultiStepNeuron, multistep_kwargs
from .registry import NeuronSpec, register_neuron


class LIF(MultiStepNeuron):
    """Leaky integrate-and-fire neuron: ``[T, B, ...]`` input currents -> ``[T, B, ...]`` spikes
    (``u[t] = decay u[t-1] (1 - s[t-1]) + x[t]``, ``s[t] = u[t] > threshold``; arguments in
    :class:`~spikebridge.neurons.multistep.MultiStepNeuron`)."""

    neuron_name = "lif"


def lif_nir(neuron: LIF, gain: float, dt: float) -> dict:
    """NIR's LIF (``nir.IF`` when ``decay = 1``) as importers step it, one forward-Euler step of ``dt`` per
    time step; the input gain divides the threshold (the derivation: :mod:`spikebridge.export`)."""
    decay = float(torch.as_tensor(neuron.decay).detach())
    threshold = float(neuron.threshold) / gain
    if decay >= 1.0:
        return {"type": "IF", "r": 1.0 / dt, "v_threshold": threshold, "v_reset": 0.0}
    tau = dt / (1.0 - decay)
    return {"type": "LIF", "tau": tau, "r": tau / dt, "v_leak": 0.0, "v_threshold": threshold, "v_reset": 0.0}


register_neuron(NeuronSpec(
    name="lif", build=lambda config: LIF(**multistep_kwargs(config)), spiking=True,
    backends=("reference", "fused", "triton"), nir=lif_nir,
))
