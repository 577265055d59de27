"""Leaky integrate-and-fire (LIF): the paper's SNN neuron, spikes out (arXiv:2203.01158)."""
from __future__ import annotations

import math

import torch

from .multistep import MultiStepNeuron, multistep_kwargs
from .registry import NeuronSpec, register_neuron


class LIF(MultiStepNeuron):
    """Leaky integrate-and-fire neuron: ``[T, B, ...]`` input currents -> ``[T, B, ...]`` spikes
    (``u[t] = decay u[t-1] (1 - s[t-1]) + x[t]``, ``s[t] = u[t] > threshold``; arguments in
    :class:`~spikebridge.neurons.multistep.MultiStepNeuron`)."""

    neuron_name = "lif"


def lif_nir(neuron: LIF, gain: float, dt: float) -> dict:
    """NIR's continuous LIF (``tau dv/dt = (v_leak - v) + r I``, exact integration over ``dt``)
    for ours: ``decay = exp(-dt/tau)``, ``r = gain / (1 - decay)``, ``v_leak = 0``, hard reset to 0;
    ``decay = 1`` (no leak) is ``nir.IF`` with ``r = gain / dt``; ``decay = 0`` gives ``tau = 0``."""
    decay = float(torch.as_tensor(neuron.decay).detach())
    threshold = float(neuron.threshold)
    if decay >= 1.0:
        return {"type": "IF", "r": gain / dt, "v_threshold": threshold, "v_reset": 0.0}
    tau = 0.0 if decay <= 0.0 else -dt / math.log(decay)
    return {"type": "LIF", "tau": tau, "r": gain / (1.0 - decay), "v_leak": 0.0, "v_threshold": threshold, "v_reset": 0.0}


register_neuron(NeuronSpec(
    name="lif", build=lambda config: LIF(**multistep_kwargs(config)), spiking=True,
    backends=("reference", "fused", "triton"), nir=lif_nir,
))
