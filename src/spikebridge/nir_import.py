"""Load a NIR graph (made by spikebridge, snnTorch, Norse, ...) as a spikebridge SNN that trains
with BPTT: ``sb.from_nir(graph_or_path)`` -> :class:`NIRNet`.

Nodes: ``Input``, ``Output``, ``Conv2d``, ``Affine``, ``Linear``, ``AvgPool2d``, ``SumPool2d``,
``Flatten`` (``start_dim`` / ``end_dim`` over the per-sample dims, as NIR defines them), ``Scale``,
``LIF`` and ``IF``; a node with several incoming edges gets their sum. Anything else (recurrent
edges, sub-graphs, other neuron models) is refused with a :class:`~spikebridge.errors.ConfigError`
naming the node.

Neurons are read as NIR importers run them, one forward-Euler step of ``dt`` per time step (the
inverse of :mod:`spikebridge.export`): ``LIF`` -> our LIF with ``decay = 1 - dt/tau`` and input gain
``dt r / tau``; ``IF`` -> ``decay = 1``, gain ``dt r``. ``v_leak`` and ``v_reset`` must be 0 (hard
reset to zero). ``decay`` must be one value per node; thresholds and gains may differ per neuron
(a per-neuron input gain; with differing thresholds the neuron runs at threshold 1 on
``gain / v_threshold``, which spikes identically). A gain within float32 round-off of 1 is 1.
The surrogate gradient, backend and other settings come from ``neuron`` (a
:class:`~spikebridge.neurons.NeuronConfig`, default ``NeuronConfig()``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ConfigError, clip
from .export import DT, checked_dt, require_nir
from .layers import TimeFolded, fold_time, set_time_steps
from .neurons import NeuronConfig

SUPPORTED = "Input, Output, Conv2d, Affine, Linear, AvgPool2d, SumPool2d, Flatten, Scale, LIF, IF"


class GainNeuron(TimeFolded):
    """A time-folded neuron whose input is first multiplied by ``gain`` (a buffer; None: 1)."""

    def __init__(self, neuron: nn.Module, gain: np.ndarray | None) -> None:
        super().__init__(neuron)
        self.register_buffer("gain", None if gain is None else torch.as_tensor(gain, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x if self.gain is None else x * self.gain)


class Multiply(nn.Module):
    """``nir.Scale``: an elementwise product with a fixed array."""

    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.array(scale, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class NIRNet(nn.Module):
    """An SNN built from a NIR graph; runs like registry models and spikified nets.

    ``x: [B, ...]`` (``input_ndim`` dims) is repeated over ``T`` steps, events ``[T, B, ...]`` are
    folded; every node runs on the time-folded ``[T*B, ...]`` tensor in graph order (its input is the
    sum of its incoming edges) and the output is averaged over T (``per_step_outputs`` keeps it).
    ``layers[name]`` is the module of NIR node ``name`` (dots in names become ``_``).
    """

    spiking = True

    def __init__(self, layers: dict[str, nn.Module], order: list[tuple[str, list[str]]], *, T: int, input_ndim: int,
                 dt: float) -> None:
        super().__init__()
        if not (isinstance(T, int) and not isinstance(T, bool) and T >= 1):
            raise ConfigError(f"T (time steps) must be a positive integer, got {str(T)[:100]}")
        self.layers = nn.ModuleDict(layers)
        self.order = order  # [(node, its sources)], the first is the input, the last the output
        self.T, self.input_ndim, self.dt = T, input_ndim, dt
        self._neurons = [m for m in self.layers.values() if isinstance(m, TimeFolded)]

    def per_step_outputs(self, x: torch.Tensor) -> torch.Tensor:
        folded, steps, batch = fold_time(x, self.input_ndim, self.T, "this NIR network")
        set_time_steps(self._neurons, steps)
        values = {self.order[0][0]: folded}
        for name, sources in self.order[1:]:
            h = values[sources[0]]
            for source in sources[1:]:
                h = h + values[source]
            values[name] = self.layers[name](h) if name in self.layers else h
        return values[self.order[-1][0]].unflatten(0, (steps, batch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_step_outputs(x).mean(0)


def read_graph(source):
    """``source`` as a ``nir.NIRGraph``: the graph itself or a ``.nir`` file (CheckpointError when
    it is missing or unreadable)."""
    nir = require_nir("from_nir")

    if isinstance(source, nir.NIRGraph):
        return source
    if not isinstance(source, (str, Path)):
        raise ConfigError(f"from_nir takes a nir.NIRGraph or a .nir file path, not {type(source).__name__}")
    if not Path(source).is_file():
        raise CheckpointError(f"NIR file {clip(source)} does not exist")
    try:
        graph = nir.read(str(source))
    except Exception as error:  # h5py / nir raise many kinds on a corrupt file
        reason = (str(error).splitlines() or [""])[0][:100]
        raise CheckpointError(f"cannot read NIR file {clip(source)}: {type(error).__name__}: {reason}") from None
    if not isinstance(graph, nir.NIRGraph):
        raise CheckpointError(f"NIR file {clip(source)} holds a single {type(graph).__name__} node, not a graph")
    return graph


def _array(node, field: str) -> np.ndarray:
    return np.array(getattr(node, field), dtype=np.float32)  # a copy: torch wants writable arrays


def _neuron(nir, name: str, node, dt: float, template: NeuronConfig) -> nn.Module:
    """Our LIF for a NIR ``LIF`` / ``IF`` node (see the module docstring)."""
    def refuse(why: str):
        raise ConfigError(f"from_nir: {type(node).__name__} node '{name[:100]}' {why}")

    threshold = _array(node, "v_threshold").astype(np.float64)
    if np.any(_array(node, "v_reset") != 0) or (isinstance(node, nir.LIF) and np.any(_array(node, "v_leak") != 0)):
        refuse("has a nonzero v_reset or v_leak; spikebridge's LIF resets to 0 and leaks to 0")
    if isinstance(node, nir.LIF):
        tau = _array(node, "tau")
        if not np.all(tau >= np.float32(dt)):
            refuse(f"has tau < dt = {dt:g} (the Euler step would overshoot); pass the graph's dt")
        decay = np.float32(1) - np.float32(dt) / tau  # float32, as importers compute it
        gain = dt * _array(node, "r").astype(np.float64) / tau
    else:
        decay, gain = np.ones(1, np.float32), dt * _array(node, "r").astype(np.float64)
    if not np.allclose(decay, decay.flat[0], rtol=1e-6, atol=0):
        refuse("has more than one time constant; spikebridge's LIF has one decay per layer")
    if not (np.all(np.isfinite(gain)) and np.all(gain > 0) and np.all(np.isfinite(threshold)) and np.all(threshold > 0)):
        refuse("needs positive finite r and v_threshold")
    if np.allclose(threshold, threshold.flat[0], rtol=1e-6, atol=0):
        level = float(threshold.flat[0])
    else:
        level, gain = 1.0, gain / threshold
    config = dataclasses.replace(template, kind="lif", decay=float(decay.flat[0]), threshold=level)
    return GainNeuron(config.build(), None if np.allclose(gain, 1.0, rtol=1e-6, atol=0) else gain)


def _pair(value):
    """A NIR size / stride / padding (a number or a pair; Conv2d padding may also be a string) as torch takes it."""
    return value if isinstance(value, str) else tuple(int(i) for i in np.broadcast_to(np.asarray(value), (2,)))


def _pool(node, divisor: int | None) -> nn.Module:
    return nn.AvgPool2d(_pair(node.kernel_size), _pair(node.stride), _pair(node.padding), divisor_override=divisor)


def _module(nir, name: str, node, dt: float, template: NeuronConfig) -> nn.Module | None:
    """The torch module of one NIR node (None for Input / Output)."""
    if isinstance(node, (nir.Input, nir.Output)):
        return None
    if isinstance(node, (nir.Affine, nir.Linear)):
        weight = torch.as_tensor(_array(node, "weight"))
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=isinstance(node, nir.Affine))
        layer.weight.data.copy_(weight)
        if layer.bias is not None:
            layer.bias.data.copy_(torch.as_tensor(_array(node, "bias")))
        return layer
    if isinstance(node, nir.Conv2d):
        weight = torch.as_tensor(_array(node, "weight"))
        layer = nn.Conv2d(weight.shape[1] * int(node.groups), weight.shape[0], tuple(weight.shape[2:]),
                          _pair(node.stride), _pair(node.padding), _pair(node.dilation), int(node.groups))
        layer.weight.data.copy_(weight)
        layer.bias.data.copy_(torch.as_tensor(np.broadcast_to(_array(node, "bias"), (weight.shape[0],)).copy()))
        return layer
    if isinstance(node, nir.AvgPool2d):
        return _pool(node, None)
    if isinstance(node, nir.SumPool2d):
        return _pool(node, 1)
    if isinstance(node, nir.Flatten):  # NIR's dims are per sample; ours have the batch first
        end = int(node.end_dim)
        return nn.Flatten(int(node.start_dim) + 1, end + 1 if end >= 0 else end)
    if isinstance(node, nir.Scale):
        return Multiply(node.scale)
    if isinstance(node, (nir.LIF, nir.IF)):
        return _neuron(nir, name, node, dt, template)
    raise ConfigError(f"from_nir: node '{name[:100]}' is a {type(node).__name__}, which spikebridge cannot run "
                      f"(supported: {SUPPORTED})")


def from_nir(source, *, T: int | None = None, dt: float | None = None, neuron: NeuronConfig | None = None) -> NIRNet:
    """A trainable spikebridge SNN (:class:`NIRNet`) from a ``nir.NIRGraph`` or a ``.nir`` file.

    ``T``: time steps for static input (default: the graph's ``time_steps`` metadata, else 4).
    ``dt``: the time step the graph's neurons were written for (default: the graph's ``dt``
    metadata, else 1e-4, snnTorch's). ``neuron``: surrogate and backend of the neurons.
    """
    nir = require_nir("from_nir")
    graph = read_graph(source)
    metadata = graph.metadata or {}
    dt = checked_dt(float(metadata.get("dt", DT) if dt is None else dt), "from_nir: dt")
    T = int(metadata.get("time_steps", 4)) if T is None else T
    template = neuron if neuron is not None else NeuronConfig()
    kinds = {cls: [n for n, node in graph.nodes.items() if isinstance(node, cls)] for cls in (nir.Input, nir.Output)}
    if len(kinds[nir.Input]) != 1 or len(kinds[nir.Output]) != 1:
        raise ConfigError(f"from_nir: the graph needs one Input and one Output node, it has "
                          f"{len(kinds[nir.Input])} and {len(kinds[nir.Output])}")
    keys: dict[str, str] = {}  # NIR name -> module key (ModuleDict keys cannot hold dots)
    for name in graph.nodes:
        key = str(name).replace(".", "_") or "node"
        while key in keys.values():
            key += "_"
        keys[name] = key
    layers = {keys[name]: m for name, node in graph.nodes.items() if (m := _module(nir, name, node, dt, template)) is not None}
    sources: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for source, target in graph.edges:
        if source not in graph.nodes or target not in graph.nodes:
            raise ConfigError(f"from_nir: edge {str((source, target))[:100]} names a node the graph does not have")
        sources[target].append(source)
    order, done = [], set()
    pending = [kinds[nir.Input][0]] + [n for n in graph.nodes if n not in kinds[nir.Input]]
    while pending:
        ready = [n for n in pending if all(s in done for s in sources[n]) and (sources[n] or n in kinds[nir.Input])]
        if not ready:
            raise ConfigError(f"from_nir: node '{str(pending[0])[:100]}' is on a cycle or has no input "
                              "(recurrent graphs are not supported)")
        for name in ready:
            order.append((keys[name], [keys[s] for s in sources[name]]))
            done.add(name)
        pending = [n for n in pending if n not in done]
    output = keys[kinds[nir.Output][0]]
    order = [step for step in order if step[0] != output] + [step for step in order if step[0] == output]
    shape = np.asarray(graph.nodes[kinds[nir.Input][0]].input_type.get("input", ()))
    return NIRNet(layers, order, T=T, input_ndim=int(shape.size) + 1, dt=dt)


__all__ = ["NIRNet", "from_nir", "read_graph"]
