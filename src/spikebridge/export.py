"""Export a trained SNN as a NIR graph (Neuromorphic Intermediate Representation, the ``nir``
package) that neuromorphic toolchains load (checked against snnTorch's ``import_from_nir``).

What maps to what (one NIR graph = the network for *one time step*; the runtime feeds the input at
every step and averages the output over the T steps, as spikebridge's readout does):

==========================================  ======================================================
spikebridge                                 NIR
==========================================  ======================================================
``Conv2d`` (+ the ``BatchNorm2d`` after it)  ``nir.Conv2d``, BN folded into weight and bias
                                             (eval-mode statistics)
``Linear`` (+ the ``BatchNorm1d`` after it)  ``nir.Affine`` (``nir.Linear`` without bias or BN)
``AvgPool2d`` / divisible adaptive pool      ``nir.AvgPool2d``
other ``AdaptiveAvgPool2d``                  ``nir.Flatten`` + ``nir.Linear`` (the exact pooling
                                             matrix)
flatten / ``view(x.size(0), -1)``            ``nir.Flatten`` (over all per-sample dims:
                                             ``start_dim=0``, the batch is not a NIR dim)
residual ``a + b``                           two edges into the consumer (NIR sums its inputs)
LIF neuron                                   ``nir.LIF`` (``nir.IF`` when decay = 1); each neuron's
                                             registry entry gives its mapping (``spec.nir``)
spikify's threshold ``V``                    the LIF's ``v_threshold``, and ``V`` folded into the
                                             weights of the layers the neuron feeds (no
                                             ``nir.Scale`` left)
==========================================  ======================================================

The discrete-time LIF -> NIR's continuous LIF (``tau dv/dt = (v_leak - v) + r I``, spike when
``v > v_threshold``, then ``v = v_reset``) as NIR importers run it: one forward-Euler step of
``dt`` per time step (``dt`` is stored in the graph's metadata; default ``1e-4``, the step
snnTorch's importer and exporter assume; pass the same ``dt`` to importers that take one)::

    v[t] = v[t-1] + dt/tau (v_leak - v[t-1]) + dt r / tau I[t]

Ours is ``u[t] = decay u[t-1] (1 - s[t-1]) + x[t]``, ``s[t] = u[t] > threshold``, so
``decay = 1 - dt/tau``: ``tau = dt / (1 - decay)``, ``r = tau / dt`` (unit gain on the input),
``v_leak = 0``, ``v_threshold = threshold``, ``v_reset = 0`` (hard reset). ``decay = 1`` (no leak)
is ``nir.IF`` (``dv/dt = r I``) with ``r = 1 / dt``. A spikified net's ``ThresholdNeuron``
computes ``V * LIF(a x * theta / V)`` (``a``: the replaced activation's input scale, 1 for ReLU):
its NIR LIF fires at ``v_threshold = V / a`` (the LIF is scale-equivariant: hard reset to 0, no
leak potential; the registry mapping divides the threshold by the input gain) and ``V`` is
folded into the next ``Conv2d`` / ``Affine`` / ``Linear`` (through average pooling and flatten)
or, for a residual sum into a neuron, into that neuron's threshold and the other (convolution)
branch.

Not exportable (:class:`~spikebridge.errors.ConfigError` naming the layer): max pooling (NIR has
no such node: the registry's ``resnet*_tv`` and ``vgg*`` use it; export ``resnet18`` /
``resnet34`` / ``cnn``, which average-pool), LIAF neurons (analog output), sharpened-ReLU input
shifts, and a spikified neuron's level ``V`` that reaches the output or a sum with another neuron
of a different level (it has no layer to fold into). snnTorch 1.0's importer also needs one
threshold per layer (not ``spikify(..., per_channel_thresholds=True)``) and cannot run ``nir.IF``
(decay = 1); ``spikebridge.from_nir`` reads both.
"""
from __future__ import annotations

import operator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import ConfigError, first_line
from .layers import TimeFolded, set_time_steps
from .models import BridgeNet
from .neurons import get_neuron_spec, neuron_names, neuron_spec_of
from .spikify import LayerTracer, SpikingNet, _BridgeNetForward, _Recorder, _shape_of
from .utils import atomic_path

DT = 1e-4  # one simulation step in NIR's time unit (seconds): snnTorch's fixed step
MAX_POOL_HINT = ("NIR has no max-pooling node; export a network with average pooling (the registry's "
                 "resnet18 / resnet34 / cnn, not resnet*_tv or vgg*)")


def require_nir(what: str = "NIR export"):
    """The ``nir`` package, or a ConfigError saying that ``what`` needs the extra."""
    try:
        import nir
    except ImportError:
        raise ConfigError(f"{what} needs the 'nir' package: pip install 'spikebridge[nir]'") from None
    return nir


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().astype(np.float32)


def neuron_parameters(module: nn.Module, shape: tuple[int, ...], dt: float = DT) -> dict:
    """NIR parameters of a spiking layer for a step of ``dt`` (see the module docstring):
    ``{"type": "LIF"|"IF", "tau", "r", "v_leak", "v_threshold", "v_reset", "scale"}`` as arrays of
    ``shape`` (``scale``: the output amplitude, or None). The neuron's registry entry gives the
    mapping."""
    inner = module.neuron if isinstance(module, TimeFolded) else module
    spec = neuron_spec_of(inner)
    if spec is None or spec.nir is None:
        exportable = ", ".join(n for n in neuron_names(spiking=True) if get_neuron_spec(n).nir is not None)
        output = " (analog output)" if spec is not None and spec.analog_output else ""
        raise ConfigError(
            f"NIR has no node for {type(inner).__name__} neurons{output}; export an SNN with {exportable} neurons")
    gain, scale = 1.0, None
    if hasattr(module, "effective_threshold"):  # spikify's ThresholdNeuron: V * LIF(x * theta / V)
        if module.input_shift != 0.0:
            raise ConfigError(f"NIR export: the neuron replacing {module.source} shifts its input (sharpened ReLU)")
        level = module.effective_threshold().detach().double().cpu().numpy()
        if level.ndim == 1:  # one per channel (the first per-sample dim)
            level = level.reshape(-1, *([1] * (len(shape) - 1)))
        gain = module.input_scale * module.neuron_threshold / level
        scale = np.broadcast_to(level, shape).astype(np.float32)
    params = spec.nir(inner, gain, dt)
    full = lambda v: np.broadcast_to(np.asarray(v, dtype=np.float64), shape).astype(np.float32)  # noqa: E731
    return {key: value if key == "type" else full(value) for key, value in params.items()} | {"scale": scale}


def _fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    std = torch.sqrt(bn.running_var + bn.eps)
    gamma = bn.weight if bn.affine else torch.ones_like(std)
    beta = bn.bias if bn.affine else torch.zeros_like(std)
    factor = gamma / std
    w = weight * factor.view(-1, *([1] * (weight.dim() - 1)))
    b = (bias if bias is not None else torch.zeros_like(bn.running_mean)) - bn.running_mean
    return w, b * factor + beta


def _adaptive_pool_matrix(channels: int, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """The ``[C*oh*ow, C*ih*iw]`` matrix of ``adaptive_avg_pool2d`` (exact, by probing)."""
    ih, iw = in_hw
    eye = torch.eye(ih * iw, dtype=torch.float64).view(ih * iw, 1, ih, iw)
    per_channel = F.adaptive_avg_pool2d(eye, out_hw).view(ih * iw, -1).T  # [oh*ow, ih*iw]
    return np.kron(np.eye(channels), per_channel.numpy()).astype(np.float32)


class _Builder:
    def __init__(self, nir) -> None:
        self.nir = nir
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []
        self.counts: dict[str, int] = {}

    def name(self, base: str) -> str:
        base = base.replace(".", "_") or "node"
        count = self.counts.get(base, 0)
        self.counts[base] = count + 1
        return base if count == 0 else f"{base}_{count}"

    def add(self, base: str, node, sources: list[str]) -> list[str]:
        name = self.name(base)
        self.nodes[name] = node
        for source in sources:
            self.edges.append((source, name))
        return [name]


#: what a layer (by type) or a function / method call (by target) is to the export
_MODULE_KINDS = (
    (nn.Conv2d, "conv"), (nn.modules.batchnorm._BatchNorm, "batchnorm"), (nn.Linear, "linear"),
    (TimeFolded, "neuron"), ((nn.AvgPool2d, nn.AdaptiveAvgPool2d), "avgpool"), (nn.Flatten, "flatten"),
    ((nn.Identity, nn.modules.dropout._DropoutNd), "same"), (nn.modules.pooling._MaxPoolNd, "maxpool"),
)
_CALL_KINDS = {
    operator.add: "add", torch.add: "add", operator.iadd: "add", "add": "add", "add_": "add", "__add__": "add",
    torch.flatten: "flatten", "flatten": "flatten", "view": "flatten", "reshape": "flatten", torch.reshape: "flatten",
    F.dropout: "same", "contiguous": "same", "clone": "same", F.max_pool2d: "maxpool",
    F.avg_pool2d: "functional_pool", F.adaptive_avg_pool2d: "functional_pool",
}


def _trace_snn(model: nn.Module) -> tuple[nn.Module, fx.Graph]:
    """(module whose attributes the graph reads, the fx graph of one time step)."""
    if isinstance(model, SpikingNet):
        return model, model.graph
    if isinstance(model, BridgeNet):
        recurrent = next((name for name, m in model.named_modules() if isinstance(m, nn.RNNBase)), None)
        if recurrent is not None:
            raise ConfigError(f"NIR export: {type(model).__name__}'s '{recurrent}' ({type(model.get_submodule(recurrent)).__name__}) "
                              "has no NIR node; evaluate or load_model runs it in PyTorch")
        root = _BridgeNetForward(model)
        return root, LayerTracer((TimeFolded,)).trace(root)
    raise ConfigError(f"NIR export supports registry SNNs and spikified nets, not {type(model).__name__}")


def _dims(shape) -> str:
    return ",".join(str(v) for v in shape)


def _check_input_shape(root: nn.Module, graph: fx.Graph, input_shape: tuple[int, ...]) -> None:
    """Refuse (ConfigError naming both) an ``input_shape`` other than the ``C,H,W`` that the
    ``nn.Conv2d`` reading the traced ``graph``'s input takes (``C`` = its in_channels)."""
    x = next((n for n in graph.nodes if n.op == "placeholder"), None)
    name = next((n.target for n in (x.users if x is not None else ()) if n.op == "call_module"), None)
    first = root.get_submodule(name) if name is not None else None
    if isinstance(first, nn.Conv2d) and (len(input_shape) != 3 or input_shape[0] != first.in_channels):
        raise ConfigError(f"NIR export: input shape {_dims(input_shape)} does not fit the model, which takes "
                          f"{first.in_channels},H,W (its first layer '{name}' reads {first.in_channels} channel(s))")


def checked_dt(dt, name: str = "NIR export: dt") -> float:
    """``dt`` as a float: a positive, finite number of seconds per step, else a ConfigError naming ``name``."""
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not 0 < dt < float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds per step, got {str(dt)[:100]}")
    return float(dt)


@torch.no_grad()
def to_nir(model: nn.Module, input_shape: tuple[int, ...], dt: float = DT, metadata: dict | None = None):
    """The SNN ``model`` as a ``nir.NIRGraph`` for inputs of per-sample shape ``input_shape``
    (e.g. ``(1, 28, 28)``), one time step = ``dt``; see the module docstring for the mapping.
    ``metadata``: more entries for the graph's metadata (``export`` adds the input normalisation)."""
    nir = require_nir()
    dt = checked_dt(dt)
    model = getattr(model, "module", model)
    if not getattr(model, "spiking", False):
        raise ConfigError("NIR export needs a spiking model (a fine-tuned SNN checkpoint), not an ANN")
    was_training = model.training
    model.eval()
    root, graph = _trace_snn(model)
    neurons = [m for m in model.modules() if isinstance(m, TimeFolded)]
    set_time_steps(neurons, 1)
    copied = fx.Graph()  # per-node output shapes (with the batch) of one frame
    copied.output(copied.graph_copy(graph, {}))
    shapes = _Recorder(fx.GraphModule(root, copied), _shape_of)
    try:
        _check_input_shape(root, graph, input_shape)
        shapes.run(torch.zeros((1, *input_shape)))
    except ConfigError:
        raise
    except (RuntimeError, ValueError, IndexError) as exc:  # the shape does not fit a layer
        raise ConfigError(f"NIR export: input shape {_dims(input_shape)} does not fit the model "
                          f"({first_line(exc)[:200]})") from None
    finally:
        model.train(was_training)
    modules = dict(root.named_modules())
    builder = _Builder(nir)
    sources: dict[str, list[str]] = {}  # fx node -> NIR nodes whose outputs sum to its value
    pending_fold: dict[str, tuple] = {}  # conv / linear node -> (nir name, module) for BN folding
    flat_in_nir: set[str] = set()  # fx values that are already flat vectors in the NIR graph

    def per_sample(node) -> tuple[int, ...]:
        return tuple(shapes.values[node.name][1:])

    for node in graph.nodes:
        if node.op == "placeholder":
            sources[node.name] = builder.add("input", nir.Input(input_type={"input": np.array(input_shape)}), [])
            continue
        if node.op == "output":
            value = node.args[0]
            builder.add("output", nir.Output(output_type={"output": np.array(per_sample(value))}), sources[value.name])
            continue
        if node.op == "get_attr":
            raise ConfigError(f"NIR export does not support tensors read in forward ({node.target})")
        tensor_args = [a for a in node.all_input_nodes if a.name in sources]
        module = modules[node.target] if node.op == "call_module" else None
        if module is not None:
            where, base = f"layer '{node.target}' ({type(module).__name__})", node.target
            kind = next((kind for types, kind in _MODULE_KINDS if isinstance(module, types)), None)
        elif not tensor_args or shapes.values.get(node.name) is None:
            continue  # sizes, shapes: not part of the NIR graph
        else:
            where, base = f"{getattr(node.target, '__name__', str(node.target))}() (node {node.name})", node.name
            kind = _CALL_KINDS.get(node.target)
        source = node.args[0] if module is not None else tensor_args[0]
        inputs = sources[source.name]
        if kind == "same":
            sources[node.name] = inputs
        elif kind == "conv":
            if module.padding_mode != "zeros":
                raise ConfigError(f"NIR export: {where} uses padding_mode={module.padding_mode!r}")
            bias = module.bias if module.bias is not None else torch.zeros(module.out_channels)
            conv = nir.Conv2d(
                input_shape=tuple(per_sample(source)[1:]), weight=_np(module.weight),
                stride=tuple(module.stride), padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
                dilation=tuple(module.dilation), groups=module.groups, bias=_np(bias),
            )
            sources[node.name] = builder.add(base, conv, inputs)
            pending_fold[node.name] = (sources[node.name][0], module)
        elif kind == "batchnorm":
            if source.name not in pending_fold or len(source.users) != 1:
                raise ConfigError(f"NIR export: {where} does not directly follow a convolution or linear layer, so "
                                  "it cannot be folded")
            nir_name, layer_module = pending_fold.pop(source.name)
            weight, bias = _fold_batchnorm(layer_module.weight, layer_module.bias, module)
            if isinstance(layer_module, nn.Linear):
                builder.nodes[nir_name] = nir.Affine(weight=_np(weight), bias=_np(bias))
            else:
                builder.nodes[nir_name].weight = _np(weight)
                builder.nodes[nir_name].bias = _np(bias)
            sources[node.name] = inputs
        elif kind == "linear":
            weight = _np(module.weight)
            layer = nir.Linear(weight=weight) if module.bias is None else nir.Affine(weight=weight, bias=_np(module.bias))
            sources[node.name] = builder.add(base, layer, inputs)
            pending_fold[node.name] = (sources[node.name][0], module)
        elif kind == "neuron":
            params = neuron_parameters(module, per_sample(node), dt)
            cls, scale = nir.IF if params.pop("type") == "IF" else nir.LIF, params.pop("scale")
            names = builder.add(base, cls(**params), inputs)
            if scale is not None:
                names = builder.add(f"{base}.scale", nir.Scale(scale=scale), names)
            sources[node.name] = names
        elif kind == "avgpool":
            sources[node.name] = _avg_pool(builder, nir, base, module, per_sample(source), per_sample(node), inputs)
            if isinstance(builder.nodes[sources[node.name][0]], nir.Linear):
                flat_in_nir.add(node.name)  # pooled by a matrix: already flat in the NIR graph
        elif kind == "flatten":
            if source.name in flat_in_nir and len(per_sample(node)) == 1:
                sources[node.name] = inputs
            else:
                sources[node.name] = _flatten(builder, nir, base, per_sample(source), per_sample(node), inputs)
        elif kind == "add":
            if len(tensor_args) != 2 or any(not isinstance(a, fx.Node) for a in node.args[:2]) or node.kwargs.get("alpha", 1) != 1:
                raise ConfigError(f"NIR export supports residual sums of two tensors, not {where}")
            sources[node.name] = sources[node.args[0].name] + sources[node.args[1].name]
        elif kind == "maxpool":
            raise ConfigError(f"NIR export: {where}: {MAX_POOL_HINT}")
        elif kind == "functional_pool":
            raise ConfigError(f"NIR export: use nn.AvgPool2d modules instead of {where}")
        else:
            raise ConfigError(f"NIR export does not support {where}")
    _fold_scales(nir, builder.nodes, builder.edges)
    return nir.NIRGraph(nodes=builder.nodes, edges=builder.edges, metadata={
        "dt": float(dt), "time_steps": int(getattr(model, "T", 1)),
        "readout": "feed the input at every step; the prediction is the output averaged over the steps",
        "exported_by": "spikebridge", **(metadata or {}),
    })


def _fold_scales(nir, nodes: dict, edges: list) -> None:
    """Remove every ``nir.Scale`` (a spikified neuron's output level ``V``) by folding it into the
    layers it feeds (see the module docstring); ConfigError naming the layer where it cannot."""
    for name in [n for n, node in nodes.items() if isinstance(node, nir.Scale)]:
        (neuron,) = [s for s, d in edges if d == name]
        scale = np.asarray(nodes.pop(name).scale, dtype=np.float64)
        consumers = [d for s, d in edges if s == name]
        edges[:] = [(s, d) for s, d in edges if name not in (s, d)] + [(neuron, d) for d in consumers]
        for consumer in consumers:
            _fold_scale(nir, nodes, edges, scale, consumer, neuron, neuron)


def _fold_scale(nir, nodes: dict, edges: list, scale: np.ndarray, name: str, via: str, neuron: str) -> None:
    """Fold ``scale`` (per-sample shape) on the input that node ``name`` gets from node ``via`` into
    its parameters (``neuron``: the spikified neuron it comes from, for messages)."""
    node = nodes[name]
    inputs = [s for s, d in edges if d == name]

    def refuse(why: str):
        raise ConfigError(f"NIR export: the output level of neuron '{neuron}' (spikify) cannot be folded into "
                          f"'{name}' ({type(node).__name__}): {why}")

    def per_channel(values: np.ndarray) -> np.ndarray:  # [C, ...] constant over each channel -> [C]
        flat = values.reshape(values.shape[0], -1) if values.ndim == 3 else None
        if flat is None or not np.allclose(flat, flat[:, :1], rtol=1e-6, atol=0):
            refuse("the level is not one value per channel")
        return flat[:, 0]

    def f32(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32)

    if isinstance(node, (nir.LIF, nir.IF)):  # a residual sum into a neuron: work in units of the level
        others = [s for s in inputs if s != via]
        for other in others:
            layer = nodes[other]
            if not isinstance(layer, (nir.Conv2d, nir.Affine, nir.Linear)) or [d for s, d in edges if s == other] != [name]:
                refuse(f"its other input '{other}' is not a layer that only feeds it")
        level = np.broadcast_to(scale, np.shape(node.v_threshold))
        for other in others:  # that branch's output / level: rows of its weight (and bias)
            layer = nodes[other]
            rows = per_channel(level) if isinstance(layer, nir.Conv2d) else level.reshape(-1)
            layer.weight = f32(layer.weight / rows.reshape(-1, *([1] * (layer.weight.ndim - 1))))
            if getattr(layer, "bias", None) is not None:
                layer.bias = f32(layer.bias / rows)
        node.v_threshold = f32(node.v_threshold / level)  # v_leak = v_reset = 0: the state scales too
        return
    if len(inputs) != 1:
        refuse("it also sums other inputs (a sum such as x + relu(f(x)) feeding a pooling, convolution or linear "
               "layer has no single level there; put the activation after the sum, relu(x + f(x)), as in ResNet's "
               "blocks)")
    if isinstance(node, nir.Conv2d):
        channels = per_channel(scale)
        out_channels, per_group = node.weight.shape[:2]
        groups = channels.size // per_group
        factor = channels.reshape(groups, per_group)[np.arange(out_channels) // (out_channels // groups)]
        node.weight = f32(node.weight * factor[:, :, None, None])
    elif isinstance(node, (nir.Affine, nir.Linear)):
        if scale.size != node.weight.shape[1]:
            refuse("its input is not flat")
        node.weight = f32(node.weight * scale.reshape(1, -1))
    elif isinstance(node, (nir.AvgPool2d, nir.Flatten)):  # linear per channel: fold into what follows
        if isinstance(node, nir.Flatten):
            scale = np.broadcast_to(scale, tuple(node.input_type["input"])).reshape(-1)
        else:
            scale = per_channel(scale)[:, None, None]
        for consumer in [d for s, d in edges if s == name]:
            _fold_scale(nir, nodes, edges, scale, consumer, name, neuron)
    elif isinstance(node, nir.Output):
        refuse("the network's output would carry it; end the network with a Linear or Conv2d layer")
    else:
        refuse("only Conv2d / Linear layers, average pooling, flatten and neurons can take it")


def _flatten(builder, nir, base, in_shape, out_shape, inputs):
    if len(out_shape) == 1 and int(np.prod(in_shape)) == out_shape[0]:
        if len(in_shape) == 1:
            return inputs  # already flat
        return builder.add(base, nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1), inputs)
    raise ConfigError(f"NIR export supports reshapes that flatten each sample, not {list(in_shape)} -> {list(out_shape)}")


def _avg_pool(builder, nir, base, module, in_shape, out_shape, inputs):
    channels, ih, iw = in_shape
    _, oh, ow = out_shape
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad and module.padding:
            raise ConfigError(f"NIR export: layer '{base}' (AvgPool2d) uses ceil_mode/count_include_pad options NIR lacks")
        pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
        return builder.add(base, nir.AvgPool2d(kernel_size=pair(module.kernel_size), stride=pair(module.stride),
                                                padding=pair(module.padding)), inputs)
    if ih % oh == 0 and iw % ow == 0:
        kernel = np.array((ih // oh, iw // ow))
        return builder.add(base, nir.AvgPool2d(kernel_size=kernel, stride=kernel, padding=np.array((0, 0))), inputs)
    flat = builder.add(f"{base}.flatten", nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=0, end_dim=-1), inputs)
    return builder.add(base, nir.Linear(weight=_adaptive_pool_matrix(channels, (ih, iw), (oh, ow))), flat)


def export_nir(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, dt: float = DT,
               metadata: dict | None = None):
    """Write ``model`` as a NIR file (HDF5) at ``path`` (atomically), one time step = ``dt``;
    returns the graph."""
    nir = require_nir()
    graph = to_nir(model, tuple(int(v) for v in input_shape), dt, metadata)
    with atomic_path(path) as tmp:
        nir.write(str(tmp), graph)
    return graph


__all__ = ["DT", "export_nir", "neuron_parameters", "to_nir"]
