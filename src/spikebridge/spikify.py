"""Bring your own ANN: turn an arbitrary PyTorch network into an SNN without rewriting it.

``spikify(ann, neuron="lif", T=4, calibration=batches)`` returns a :class:`SpikingNet`:

* The ANN's ``forward`` is traced with ``torch.fx``. Every per-frame operation (conv, linear, BN,
  pooling, flatten, dropout, residual adds, ``x.view(x.size(0), -1)``, ...) runs unchanged on the
  time-folded tensor ``[T*B, ...]``: the batch axis simply becomes ``T*B`` (so ``x.size(0)`` is
  ``T*B`` and reshapes stay right).
* Every ReLU-like activation, as a module (``nn.ReLU``, ``nn.ReLU6``, ``nn.LeakyReLU``, the
  sharpened ReLU) or as a call (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.relu6``,
  ``F.leaky_relu``), becomes a :class:`ThresholdNeuron`: the chosen spiking neuron, unfolded to
  ``[T, B, ...]`` around the call, with its own per-layer threshold (one neuron per *call site*,
  so a ``self.relu`` used twice gets two).
* Input: static ``[B, ...]`` is direct-encoded (every step sees the image): the part of the
  graph before the first neurons runs once per image and :class:`TimeExpand` repeats its values
  over the ``T`` steps where neurons read them (as registry models compute their stem once);
  events ``[T, B, ...]`` are folded. Readout: the mean over T of the network's output ``[T*B, K]``.
* The SNN's parameters keep the ANN's names (``conv1.weight`` stays ``conv1.weight``), so
  :func:`spikebridge.transfer` and :func:`spikebridge.train.engine.fit` work on it as on registry
  models. The only new tensors are SNN-only: ``<site>.threshold`` (and a neuron's learnable decay).

Threshold-aware initialisation (how the spikified net starts near the ANN)
--------------------------------------------------------------------------
A :class:`ThresholdNeuron` with threshold ``V`` computes ``V * N(x * theta / V)`` where ``N`` is the
configured neuron (threshold ``theta``): the neuron fires when the membrane, in the ANN's units,
passes ``V``, and each spike stands for the value ``V``. Because the LIF is scale-equivariant, this
is *exactly* data-based weight normalisation (Diehl et al. 2015; Rueckauer et al. 2017) with the
scale kept beside the weights instead of folded into them: the ANN's weights load unchanged (the
transfer stays a ``load_state_dict``), it works for any topology (residual sums of branches with
different scales need no bookkeeping) and the NIR export folds ``V`` into the graph.

``V`` is chosen per layer on a few calibration batches, layer after layer in graph order
(:func:`calibrate_thresholds`): for each site the SNN (earlier sites already calibrated) gives the
neuron's input current, the ANN gives the activation it should reproduce, and ``V`` is the
candidate (percentiles of the ANN activation, then a golden-section refinement) that minimises the
mean squared error between the ANN activation and the SNN's time-averaged output (one threshold per
layer by default, one per channel with ``per_channel_thresholds=True``). Thresholds are
``nn.Parameter`` s and keep training during fine-tuning (``benchmarks/byo_ann_mnist.py`` measures
the accuracy right after spikify and after fine-tuning).

Layers with no per-frame or spiking meaning (LSTM/GRU, attention, GELU/SiLU/Tanh/Sigmoid, ops that
move the batch axis) raise :class:`~spikebridge.errors.ConfigError` naming the layer.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .bridge import FIRST_LAYER_MODES, _adapt_first_layer, _run_to, batch_inputs
from .errors import ConfigError, first_line
from .layers import TimeFolded, as_input_of, fold_time, set_time_steps
from .models import BridgeNet
from .models.registry import as_neuron_config
from .neurons import NeuronConfig, SharpenedReLU, neuron_names

# ReLU-like activations that become spiking neurons
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, SharpenedReLU)
ACTIVATION_FUNCTIONS: tuple[Callable, ...] = (
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.leaky_relu_,
)
ACTIVATION_METHODS = ("relu", "relu_")

# Leaf modules that act on each frame independently (safe on [T*B, ...])
PER_FRAME_MODULES: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.Linear, nn.Bilinear, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.dropout._DropoutNd, nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.modules.padding.ZeroPad2d, nn.Upsample, nn.PixelShuffle,
    nn.ChannelShuffle if hasattr(nn, "ChannelShuffle") else nn.Identity,
)
# Per-frame only when they do not act along dim 0 (checked by their ``dim``)
DIM_MODULES: tuple[type[nn.Module], ...] = (nn.Softmax, nn.LogSoftmax)


# ------------------------------------------------------------------------------------------------
# The spiking activation that replaces a ReLU
# ------------------------------------------------------------------------------------------------
class ThresholdNeuron(TimeFolded):
    """A spiking neuron with a per-layer threshold ``V`` in the ANN's units, on folded tensors.

    ``forward(x: [T*B, ...]) -> [T*B, ...]``: ``V * N((a * x + b) * theta / V)`` where ``N`` is the
    configured neuron (threshold ``theta``, applied time-major ``[T, B, ...]``), and ``(a, b)`` is
    the input affine of the replaced activation (``(1, 0)`` for ReLU; the sharpened ReLU's
    ``(1/(hi-lo), -lo/(hi-lo))``). A LIF's output is ``V`` per spike, 0 otherwise; a LIAF's analog
    output is rescaled to the same units (``V / theta * N(...)``).

    The threshold is an ``nn.Parameter`` (one per layer) so fine-tuning adjusts it.
    """

    def __init__(
        self,
        neuron: nn.Module,
        neuron_threshold: float,
        *,
        threshold: float = 1.0,
        input_scale: float = 1.0,
        input_shift: float = 0.0,
        analog: bool = False,
        source: str = "",
        time_steps: int = 1,
    ) -> None:
        super().__init__(neuron, time_steps)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.neuron_threshold = float(neuron_threshold)
        self.input_scale = float(input_scale)
        self.input_shift = float(input_shift)
        self.analog = analog
        self.source = source  # what it replaced, for reports ("relu1 (ReLU)", "F.relu in forward")

    def effective_threshold(self) -> torch.Tensor:
        return self.threshold.clamp(min=1e-6)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # one threshold per layer or per channel: take the stored shape
        stored = state_dict.get(prefix + "threshold")
        if stored is not None and stored.shape != self.threshold.shape:
            self.threshold = nn.Parameter(torch.empty(stored.shape, dtype=self.threshold.dtype, device=self.threshold.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = self.effective_threshold().to(x.dtype)
        if level.dim() == 1:  # one per channel (dim 1 of [T*B, C, ...])
            level = level.view(1, -1, *([1] * (x.dim() - 2)))
        if self.input_scale != 1.0 or self.input_shift != 0.0:
            x = x * self.input_scale + self.input_shift
        out = super().forward(x * (self.neuron_threshold / level))
        if self.analog:
            return out * (level / self.neuron_threshold)
        return out * level

    def extra_repr(self) -> str:
        level = self.threshold.detach()
        text = f"{float(level):.4g}" if level.numel() == 1 else f"{level.numel()} per channel, mean {float(level.mean()):.4g}"
        return f"T={self.time_steps}, threshold={text}, source={self.source!r}"


class TimeExpand(nn.Module):
    """``[B, ...] -> [T*B, ...]``: repeats a time-invariant value over the ``steps`` time steps
    (inserted where the static-input prefix of a spikified net meets its first neurons)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):  # a constant (forward(x, scale=2.0)): the same at every step
            return x
        return x.unsqueeze(0).expand(self.steps, *x.shape).flatten(0, 1)


TIME_EXPAND_NAME = "spike_time_expand"
_SHAPE_METHODS = ("size", "dim", "numel")


def _is_shape_like(node: fx.Node, known: set[fx.Node]) -> bool:
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and len(node.args) > 1 and node.args[1] == "shape":
        return True
    if node.op == "call_function" and node.all_input_nodes and all(a in known for a in node.all_input_nodes):
        return True  # arithmetic / indexing on sizes
    return False


def _input_dependent(graph: fx.Graph) -> set[fx.Node]:
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(arg in dependent for arg in node.all_input_nodes):
            dependent.add(node)
    return dependent


#: calls that draw random numbers (what depends on them differs from run to run, batch or not)
_RANDOM_FUNCTIONS = {torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint, torch.randint_like,
                     torch.randperm, torch.bernoulli, torch.normal, torch.multinomial, torch.dropout, F.dropout,
                     F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}
_RANDOM_METHODS = {"bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_", "geometric_",
                   "cauchy_", "log_normal_", "multinomial"}


def _random_dependent(graph: fx.Graph) -> set[fx.Node]:
    """The nodes that draw random numbers (:data:`_RANDOM_FUNCTIONS`, :data:`_RANDOM_METHODS`)
    and those that depend on them."""
    found: set[fx.Node] = set()
    for node in graph.nodes:
        drawn = (node.op == "call_function" and node.target in _RANDOM_FUNCTIONS) or (
            node.op == "call_method" and node.target in _RANDOM_METHODS)
        if drawn or any(arg in found for arg in node.all_input_nodes):
            found.add(node)
    return found


def static_input_graph(graph: fx.Graph, modules: dict[str, nn.Module]) -> fx.Graph | None:
    """A copy of the folded graph for static input ``[B, ...]``: the part before the first neurons
    runs once per image and :class:`TimeExpand` repeats its values over T where neurons (or
    anything after them) read them, exactly as registry models compute their stem once. None when
    a size taken in that prefix is used after it (it would be B, not T*B)."""
    new = fx.Graph()
    new.output(new.graph_copy(graph, {}))
    input_dependent = _input_dependent(new)
    dynamic: set[fx.Node] = set()  # neurons and what they feed
    shape_like: set[fx.Node] = set()
    expanded: dict[fx.Node, fx.Node] = {}
    for node in list(new.nodes):
        if (node.op == "call_module" and isinstance(modules.get(node.target), ThresholdNeuron)) or any(
            a in dynamic for a in node.all_input_nodes
        ):
            dynamic.add(node)
        elif node in input_dependent and _is_shape_like(node, shape_like):
            shape_like.add(node)
        if node not in dynamic and node.op != "output":
            continue
        for arg in list(node.all_input_nodes):
            if arg in dynamic or arg not in input_dependent:
                continue
            if arg in shape_like:
                return None
            if arg not in expanded:
                with new.inserting_after(arg):
                    expanded[arg] = new.call_module(TIME_EXPAND_NAME, (arg,))
            node.replace_input_with(arg, expanded[arg])
    new.lint()
    return new


def _adopt(module: nn.Module, source: nn.Module) -> None:
    """Register ``source``'s children, and its own parameters and buffers, on ``module`` by name."""
    for name, child in source.named_children():
        module.add_module(name, child)
    for name, param in source.named_parameters(recurse=False):
        module.register_parameter(name, param)
    for name, buffer in source.named_buffers(recurse=False):
        module.register_buffer(name, buffer)


# ------------------------------------------------------------------------------------------------
# The spiking network
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _FunctionName:
    """A function of a pickled graph by its module and name (see ``SpikingNet.__getstate__``)."""

    module: str
    name: str

    def resolve(self) -> Callable:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args, **kwargs):  # fx takes only callables as a node's function
        return self.resolve()(*args, **kwargs)


def _with_targets(graph: fx.Graph, convert: Callable) -> fx.Graph:
    """A copy of ``graph`` whose functions are ``convert(function)`` (a new graph: fx indexes
    nodes by their targets)."""
    copy_ = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        target = convert(node.target) if node.op == "call_function" else node.target
        env[node] = copy_.create_node(node.op, target, fx.map_arg(node.args, env.__getitem__),
                                      fx.map_arg(node.kwargs, env.__getitem__), node.name, node.type)
        env[node].meta = dict(node.meta)
    return copy_


class SpikingNet(nn.Module):
    """An SNN made from an ANN by :func:`spikify` (see the module docstring).

    Holds the ANN's submodules under their own names (plus the neurons), runs the traced forward on
    time-folded tensors, and handles time like registry models do:

    * ``x: [B, ...]`` (``input_ndim`` dims): repeated over ``self.T`` steps -> ``[T*B, ...]``;
    * ``x: [T, B, ...]`` (one more dim): folded, T from the input;
    * output: the traced forward's ``[T*B, ...]`` viewed as ``[T, B, ...]`` and averaged over T.

    ``per_step_outputs(x)`` returns the ``[T, B, ...]`` outputs before the average.
    """

    spiking = True

    def __init__(
        self,
        graph_module: fx.GraphModule,
        neurons: list[ThresholdNeuron],
        *,
        neuron_config: NeuronConfig,
        T: int,
        input_ndim: int,
    ) -> None:
        super().__init__()
        _adopt(self, graph_module)
        # constants that fx keeps on the root (e.g. _tensor_constant0) and plain attributes
        for node in graph_module.graph.nodes:
            if node.op == "get_attr":
                atom = node.target.split(".")[0]
                if not hasattr(self, atom):
                    setattr(self, atom, getattr(graph_module, atom))
        # the generated code reads attributes of ``self``: it runs unchanged on this module
        self._graph_forward = type(graph_module).forward
        self._code = graph_module.code
        self.graph = graph_module.graph  # the traced forward (NIR export walks it)
        # static input: the prefix before the first neurons runs once per image (see static_input_graph)
        self._static_forward = None
        static = static_input_graph(graph_module.graph, dict(graph_module.named_modules()))
        if static is not None:
            if not hasattr(self, TIME_EXPAND_NAME):
                self.add_module(TIME_EXPAND_NAME, TimeExpand())
            graph_module.add_submodule(TIME_EXPAND_NAME, getattr(self, TIME_EXPAND_NAME))
            self._static_forward = type(fx.GraphModule(graph_module, static)).forward
        self._neurons = list(neurons)
        self.neuron_config = neuron_config
        self.input_ndim = int(input_ndim)
        if not (isinstance(T, int) and T >= 1):
            raise ConfigError(f"T (time steps) must be a positive integer, got {T!r}")
        self.T = T

    def __getstate__(self) -> dict:
        """Pickling (``torch.save(model)``, multiprocessing): the generated forward functions are
        left out and rebuilt from ``self.graph`` when loaded; a function the graph calls that pickle
        cannot name (``F.max_pool2d`` is made by ``boolean_dispatch``) goes by its module and name."""
        state = dict(self.__dict__)
        state["_graph_forward"] = state["_static_forward"] = None
        state["graph"] = _with_targets(self.graph, lambda f: _FunctionName(f.__module__, f.__name__)
                                       if "<locals>" in getattr(f, "__qualname__", "") else f)
        return state

    def __setstate__(self, state: dict) -> None:
        state["graph"] = _with_targets(state["graph"], lambda f: f.resolve() if isinstance(f, _FunctionName) else f)
        self.__dict__.update(state)
        root = fx.GraphModule(self, self.graph)
        self._graph_forward = type(root).forward
        static = static_input_graph(self.graph, dict(root.named_modules()))
        if static is not None:
            root.add_submodule(TIME_EXPAND_NAME, getattr(self, TIME_EXPAND_NAME))
            self._static_forward = type(fx.GraphModule(root, static)).forward

    @property
    def neurons(self) -> list[ThresholdNeuron]:
        return list(self._neurons)

    @property
    def code(self) -> str:
        """The traced forward's Python source (what runs on ``[T*B, ...]``)."""
        return self._code

    def per_step_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output at every step, ``[T, B, ...]`` (the forward averages it over T).
        Integer input (Tonic's int16 event counts) is taken as float, any input in the parameters'
        dtype, as registry models take it (:func:`~spikebridge.layers.as_input_of`)."""
        x = as_input_of(x, self)
        if x.dim() == self.input_ndim and self._static_forward is not None:
            steps, batch = self.T, x.shape[0]
            getattr(self, TIME_EXPAND_NAME).steps = steps
            forward = self._static_forward
        else:
            x, steps, batch = fold_time(x, self.input_ndim, self.T, "this spikified network")
            forward = self._graph_forward
        set_time_steps(self._neurons, steps)
        out = forward(self, x)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"spikify supports networks that return one tensor, got {type(out).__name__}")
        return out.unflatten(0, (steps, batch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.per_step_outputs(x).mean(0)

    def thresholds(self) -> dict[str, float]:
        """Each neuron site's threshold in the ANN's activation units (the mean when per channel)."""
        names = {id(m): n for n, m in self.named_modules()}
        return {names[id(m)]: float(m.threshold.detach().mean()) for m in self._neurons}


# ------------------------------------------------------------------------------------------------
# Tracing helpers
# ------------------------------------------------------------------------------------------------
def _as_neuron_config(neuron: str | NeuronConfig) -> NeuronConfig:
    config = as_neuron_config(neuron)
    if not config.spiking:
        raise ConfigError(f"spikify needs a spiking neuron ({', '.join(neuron_names(spiking=True))}), got {config.kind!r}")
    return config


class _BridgeNetForward(nn.Module):
    """A registry model's ANN path (``fc(forward_features(forward_stem(x)))``) as a traceable
    module with the model's own child names (its T-handling ``forward`` is not traceable)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        vars(self)["_model_type"] = type(model)
        _adopt(self, model)
        for name, value in vars(model).items():  # plain attributes (T, neuron_config, ...)
            if not name.startswith("_") and name not in vars(self):
                vars(self)[name] = value

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            # the model class's methods and class attributes (run_block, checkpoint_blocks, ...)
            model_type = vars(self).get("_model_type")
            if model_type is None:
                raise
            attr = getattr(model_type, name)
            return attr.__get__(self, type(self)) if hasattr(attr, "__get__") else attr  # methods, properties

    def forward(self, x):
        stem = self._model_type.forward_stem(self, x)
        return self.fc(self._model_type.forward_features(self, stem))


def _traceable(ann: nn.Module) -> nn.Module:
    if isinstance(ann, BridgeNet):
        if ann.spiking:
            raise ConfigError("spikify expects an ANN; this registry model is already spiking")
        return _BridgeNetForward(ann)
    return ann


class LayerTracer(fx.Tracer):
    """A torch.fx tracer that keeps ``leaf_types`` (and torch's own layers) as single call nodes."""

    def __init__(self, leaf_types: tuple[type, ...] = ()) -> None:
        super().__init__()
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, qualname)

    def path_of_module(self, mod: nn.Module) -> str:
        try:
            return super().path_of_module(mod)
        except NameError:
            # a container built on the fly (e.g. a Sequential slice): traced through, its
            # registered children keep their own names; a leaf layer must be registered
            if self.is_leaf_module(mod, ""):
                raise
            return f"_unregistered_{type(mod).__name__}"


def _trace(ann: nn.Module) -> fx.GraphModule:
    tracer = LayerTracer(ACTIVATION_MODULES)
    try:
        graph = tracer.trace(ann)
    except Exception as exc:  # fx raises TraceError, TypeError, ... for dynamic control flow
        text = first_line(exc)
        if "cannot be iterated" in text:  # [*x.chunk(2, 1)], tuple(x.split(...)), for y in x
            why = "forward iterates over a tensor or its pieces (a fixed unpacking, a, b = x.chunk(2, 1), is traced)"
        elif "got (Proxy" in text or "positional argument" in text:  # a factory given a traced size
            why = ("forward passes a tensor's shape to a function that needs plain numbers (torch.zeros(x.shape[0], "
                   "...), torch.rand(...): x.new_zeros(x.shape[0], ...) or torch.rand_like(x) are traced)")
        else:
            why = "forward must not branch on tensor values or shapes"
        raise ConfigError(
            f"spikify could not trace {type(ann).__name__}.forward with torch.fx ({text[:200]}); {why} (move such "
            "logic out of forward, or build the model with spikebridge's registry)"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(ann).__name__)


def _describe_node(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"layer '{node.target}' ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        return f"call {getattr(node.target, '__name__', node.target)}() in forward (node {node.name})"
    return f"{node.op} {node.target} in forward (node {node.name})"


def _activation_affine(module: nn.Module | None) -> tuple[float, float]:
    """(scale, shift) applied to the input before the threshold: the sharpened ReLU's bounds."""
    if isinstance(module, SharpenedReLU):
        lo, hi = module.bounds()
        return 1.0 / (hi - lo), -lo / (hi - lo)
    return 1.0, 0.0


def _is_activation(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], ACTIVATION_MODULES)
    return (node.op == "call_function" and node.target in ACTIVATION_FUNCTIONS) or (
        node.op == "call_method" and node.target in ACTIVATION_METHODS)


_REFUSED_MODULES = (
    (nn.RNNBase, "a recurrent layer carries its own state across a sequence; it cannot run per frame"),
    (nn.RNNCellBase, "a recurrent cell carries its own state; it cannot run per frame"),
    ((nn.MultiheadAttention, nn.Transformer, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer),
     "attention has no spiking equivalent here"),
)
_REFUSED_FUNCTIONS = {
    F.gelu: "GELU", F.silu: "SiLU", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
    F.tanh: "tanh", F.elu: "ELU", F.selu: "SELU", F.mish: "Mish", F.softplus: "softplus",
    F.hardswish: "hardswish", F.scaled_dot_product_attention: "attention",
}
_REFUSED_METHODS = ("sigmoid", "tanh")


def _check_node(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    """ConfigError naming a layer or call of the traced ANN that cannot run per frame or spike."""
    if node.op != "call_module":
        refused = {"call_function": _REFUSED_FUNCTIONS, "call_method": _REFUSED_METHODS}.get(node.op, ())
        if node.target in refused:
            what = f"the {refused[node.target]} call" if node.op == "call_function" else f"x.{node.target}()"
            raise ConfigError(f"spikify cannot convert {what} in forward (node {node.name}): "
                              "only ReLU-like activations become spiking neurons")
        return
    module = modules[node.target]
    name = f"layer '{node.target}' ({type(module).__name__})"
    for kind, why in _REFUSED_MODULES:
        if isinstance(module, kind):
            raise ConfigError(f"spikify cannot convert {name}: {why}")
    if isinstance(module, ACTIVATION_MODULES) or isinstance(module, PER_FRAME_MODULES):
        return
    if isinstance(module, DIM_MODULES):
        if module.dim in (None, 0):
            raise ConfigError(f"spikify cannot convert {name}: dim={module.dim} would mix samples; set dim=1 (or -1)")
        return
    raise ConfigError(
        f"spikify cannot convert {name}: only ReLU-like activations become spiking neurons and only "
        "per-frame layers (conv, linear, norm, pooling, flatten, dropout) run time-folded"
    )



# ------------------------------------------------------------------------------------------------
# Batch-axis check: every tensor that carries the batch in the ANN must carry T*B when folded
# ------------------------------------------------------------------------------------------------
class _Recorder(fx.Interpreter):
    """Runs a traced graph and keeps ``keep(value)`` of every node named in ``names`` (None: all)."""

    def __init__(self, gm: fx.GraphModule, keep: Callable = lambda value: value,
                 names: set[str] | None = None) -> None:
        super().__init__(gm)
        self.keep, self.names = keep, names
        self.values: dict[str, object] = {}

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if self.names is None or n.name in self.names:
            self.values[n.name] = self.keep(result)
        return result


def _shape_of(value) -> tuple | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _sample_stats(value) -> torch.Tensor | None:
    """Per sample of a node's output ``[B, ...]``: the sum, absolute sum and sum of squares of its
    values (``[B, 3]``, float64): what tells one sample's output from another's at little memory."""
    if not isinstance(value, torch.Tensor) or not value.dim() or value.is_complex():
        return None
    flat = value.detach().reshape(value.shape[0], -1).double()
    return torch.nan_to_num(torch.stack([flat.sum(1), flat.abs().sum(1), (flat * flat).sum(1)], 1))


def _same_stats(alone: torch.Tensor | None, in_batch: torch.Tensor | None) -> bool:
    """Whether two :func:`_sample_stats` agree (up to the rounding of another batch size)."""
    if alone is None or in_batch is None:  # not a tensor, or not run
        return True
    if alone.shape != in_batch.shape:
        return False
    if not in_batch.numel():
        return True
    tolerance = 1e-4 * in_batch.abs() + 1e-6 * (1.0 + float(in_batch.abs().max()))
    return bool(((alone - in_batch).abs() <= tolerance).all())


@torch.no_grad()
def check_batch_axis(gm: fx.GraphModule, example: torch.Tensor, T: int = 2) -> None:
    """Run the traced ANN on ``[B, ...]`` and on the folded ``[T*B, ...]``; refuse any operation
    whose output keeps the batch at dim 0 in one case but not the other (it mixes samples or
    hard-codes the batch size), and then any whose output for a sample changes when that sample
    runs alone (it mixes samples at the same shape: ``F.softmax(x, dim=0)``, ``x.cumsum(0)``,
    ``x.flip(0)``). A single (or repeated) sample is checked beside a second one made from it
    (shifted by 1). A node that draws random numbers, or whose output differs between two runs of
    the same batch, and what it feeds are not compared."""
    if example.shape[0] == 1 or bool((example == example[:1]).all()):  # no second sample to tell apart
        example = torch.cat([example[:1], example[:1] + 1])  # another sample, whatever the first one holds
    batch = example.shape[0]
    was_training = gm.training
    gm.eval()
    try:
        plain, folded = _Recorder(gm, lambda v: (_shape_of(v), _sample_stats(v))), _Recorder(gm, _shape_of)
        for recorder, x, what in ((plain, example, f"a batch of {batch}"),
                                  (folded, example.unsqueeze(0).expand(T, *example.shape).flatten(0, 1),
                                   "a time-folded batch")):
            try:
                recorder.run(x)
            except Exception as exc:
                failing = next((n for n in gm.graph.nodes if n.name not in recorder.values), None)
                where = f" at node {failing.name} ({failing.op} {getattr(failing.target, '__name__', failing.target)})" \
                    if failing else ""
                raise ConfigError(
                    f"the network fails on {what} of shape {list(x.shape)}{where}: {str(exc).splitlines()[0][:160]}; "
                    "the input must fit the network, and reshapes must use x.size(0) / -1, not a fixed batch size"
                ) from None
        again, alone = _Recorder(gm, _sample_stats), [_Recorder(gm, _sample_stats) for _ in range(batch)]
        with contextlib.suppress(Exception):  # a net that cannot run one sample: the shape checks only
            again.run(example)
            for index, recorder in enumerate(alone):
                recorder.run(example[index:index + 1])
    finally:
        gm.train(was_training)
    dependent, random = _input_dependent(gm.graph), _random_dependent(gm.graph)
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node not in dependent or node.op in ("placeholder", "output"):
            continue
        (a, stats), b = plain.values.get(node.name, (None, None)), folded.values.get(node.name)
        if a is None or b is None:
            continue
        if len(a) >= 1 and a[0] == batch and b == (T * batch, *a[1:]):
            if stats is None or node in random or node.name not in again.values or \
                    not _same_stats(again.values[node.name], stats):
                continue  # not a tensor, random (by its calls, or by two runs that differ), or not run alone
            if all(_same_stats(recorder.values.get(node.name), stats[index:index + 1])
                   for index, recorder in enumerate(alone)):
                continue
            raise ConfigError(f"spikify cannot fold time into the batch at {_describe_node(node, modules)}: a "
                              "sample's output depends on the other samples in the batch (it mixes them, e.g. a "
                              "softmax, normalisation or cumulative sum over dim 0); operations must keep each "
                              "sample on its own")
        problem = f"has shape {list(a)} for a batch of {batch} but {list(b)} for {T}x{batch} folded frames" \
            if a != b else f"{list(a)} has no batch axis (the samples are reduced or mixed)"
        raise ConfigError(f"spikify cannot fold time into the batch at {_describe_node(node, modules)}: its output "
                          f"{problem}; operations must keep the batch at dim 0, each sample on its own")


# ------------------------------------------------------------------------------------------------
# spikify
# ------------------------------------------------------------------------------------------------
def spikify(ann_module: nn.Module, neuron: str | NeuronConfig = "lif", T: int = 4, calibration: Iterable | None = None,
            **options) -> SpikingNet:
    """Make an SNN from ``ann_module`` (left untouched); see the module docstring.

    Args:
        ann_module: any ``nn.Module`` whose ``forward`` torch.fx can trace (or a registry ANN).
        neuron: a spiking neuron name (``"lif"``, ``"liaf"``, see ``neuron_names(spiking=True)``)
            or a :class:`~spikebridge.neurons.NeuronConfig`.
        T: time steps for static input.
        calibration: input batches ``[B, ...]`` (or ``(inputs, labels)`` pairs) of the training
            data: the per-layer thresholds are fitted on them (up to ``calibration_samples``
            samples). Without it every threshold is the neuron's own.
        options: ``example_input`` (a ``[B, ...]`` batch to check the batch axis when no
            calibration data is given), ``input_ndim`` (dims of one static batch; default from the
            data, else 4), ``calibrate`` (False: keep the neuron's threshold), ``device``,
            ``calibration_samples`` (512), ``per_channel_thresholds`` (False: one threshold per
            layer; True: one per channel / feature).
    """
    return spikify_with_graph(ann_module, neuron, T, calibration, **options)[0]


def spikify_with_graph(
    ann_module: nn.Module,
    neuron: str | NeuronConfig = "lif",
    T: int = 4,
    calibration: Iterable | None = None,
    *,
    example_input: torch.Tensor | None = None,
    input_ndim: int | None = None,
    calibrate: bool = True,
    device: torch.device | str | None = None,
    calibration_samples: int = 512,
    per_channel_thresholds: bool = False,
    neuron_builder: Callable[[], nn.Module] | None = None,
) -> tuple[SpikingNet, fx.GraphModule, list[torch.Tensor]]:
    """:func:`spikify`, also returning the traced ANN (``fx.GraphModule``, its activation nodes
    in the same order as ``snn.neurons``) and the calibration batches it used.

    Args:
        neuron_builder: build each site's time-major neuron (with a ``threshold`` attribute) with
            this factory instead of ``neuron`` (the conversion baseline's IF neurons use it).
    """
    config = _as_neuron_config(neuron)
    if not (isinstance(T, int) and T >= 1):
        raise ConfigError(f"T (time steps) must be a positive integer, got {T!r}")
    if not isinstance(ann_module, nn.Module):
        raise ConfigError(f"spikify needs an nn.Module, got {type(ann_module).__name__}")
    # DataParallel / DDP (.module) and torch.compile (._orig_mod) wrap the net spikify traces
    ann = copy.deepcopy(_traceable(getattr(ann_module, "module", None) or getattr(ann_module, "_orig_mod", ann_module)))
    ann = ann.cpu()
    ann.eval()
    gm = _trace(ann)
    inputs = [node.target for node in gm.graph.nodes if node.op == "placeholder" and not node.args]  # no default
    if len(inputs) != 1:
        raise ConfigError(f"spikify supports networks with one tensor input; {type(ann_module).__name__}.forward "
                          f"takes {len(inputs)} ({', '.join(map(str, inputs)) or 'none'})")
    modules = dict(gm.named_modules())
    calib_batches: list[torch.Tensor] = []
    if calibration is not None:
        seen = 0
        for batch in calibration:
            x = batch_inputs(batch).detach().cpu()
            if not x.is_floating_point():  # uint8 images, int16 event counts: taken as float, as the models do
                x = x.to(torch.get_default_dtype())
            calib_batches.append(x[: calibration_samples - seen])
            seen += len(calib_batches[-1])
            if seen >= calibration_samples:
                break
        if not calib_batches:
            raise ConfigError("spikify got an empty calibration set")
    example = calib_batches[0] if calib_batches else example_input
    if input_ndim is None:
        input_ndim = example.dim() if example is not None else 4

    # 1. refuse what cannot run per frame or spike
    for node in gm.graph.nodes:
        _check_node(node, modules)
    if example is not None:
        check_batch_axis(gm, example[: min(3, len(example))].cpu(), T=2)
    ann_graph = copy.deepcopy(gm)  # the ANN as traced: calibration targets come from it

    # 2. replace every activation call site with a ThresholdNeuron
    neurons: list[ThresholdNeuron] = []
    used_targets: dict[str, int] = {}
    for node in _activation_sites(gm):
        module = modules[node.target] if node.op == "call_module" else None
        scale, shift = _activation_affine(module)
        if node.op == "call_module":
            used_targets[node.target] = count = used_targets.get(node.target, 0) + 1
            target = node.target if count == 1 else f"{node.target}_{count}"
            source = f"{node.target} ({type(module).__name__})"
        else:
            target = f"spike_{node.name}"
            what = getattr(node.target, "__name__", node.target)
            source = f"{what}() in forward" if node.op == "call_function" else f"x.{what}() in forward"
        inner = (neuron_builder or config.build)()
        threshold_module = ThresholdNeuron(
            inner, float(inner.threshold), threshold=float(inner.threshold), input_scale=scale,
            input_shift=shift, analog=neuron_builder is None and config.spec.analog_output, source=source, time_steps=T,
        )
        if target in modules and node.op != "call_module":
            raise ConfigError(f"cannot name the neuron for node {node.name}: attribute {target!r} exists")
        _set_submodule(gm, target, threshold_module)
        modules[target] = threshold_module
        source_value = node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))
        with gm.graph.inserting_after(node):
            new_node = gm.graph.call_module(target, args=(source_value,))
        node.replace_all_uses_with(new_node)
        gm.graph.erase_node(node)
        neurons.append(threshold_module)
    if not neurons:
        raise ConfigError(
            f"{type(ann_module).__name__} has no ReLU-like activation (nn.ReLU/ReLU6/LeakyReLU or F.relu): "
            "nothing to turn into spiking neurons"
        )
    gm.graph.lint()
    gm.recompile()
    snn = SpikingNet(gm, neurons, neuron_config=config, T=T, input_ndim=input_ndim)
    snn.train(getattr(ann_module, "training", True))
    if calib_batches and calibrate:
        calibrate_thresholds(snn, ann_graph, calib_batches, device=device, per_channel=per_channel_thresholds)
    return snn, ann_graph, calib_batches


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, leaf = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, module)


# ------------------------------------------------------------------------------------------------
# Threshold calibration
# ------------------------------------------------------------------------------------------------
def _activation_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """The traced ANN's activation nodes, in graph order."""
    modules = dict(gm.named_modules())
    return [n for n in gm.graph.nodes if _is_activation(n, modules)]


def _subsample(values: torch.Tensor, limit: int = 1_000_000) -> torch.Tensor:
    """At most ``limit`` entries of the last dim of ``values`` (drawn with a fixed seed)."""
    if values.shape[-1] > limit:
        index = torch.randint(values.shape[-1], (limit,), generator=torch.Generator().manual_seed(0))
        values = values[..., index]
    return values


@torch.no_grad()
def calibrate_thresholds(
    snn: SpikingNet,
    ann_graph: fx.GraphModule,
    batches: list[torch.Tensor],
    *,
    device: torch.device | str | None = None,
    refine_steps: int = 12,
    per_channel: bool = False,
    ann_batches: list[torch.Tensor] | None = None,
) -> dict[str, float]:
    """Fit each neuron's threshold, in graph order, to reproduce the ANN's activation (MSE between
    the ANN's activation and the SNN's output averaged over T); see the module docstring.

    ``ann_batches``: what the ANN sees of the same samples, ``[B, ...]`` per batch, when the SNN's
    input differs from it (event batches ``[T, B, ...]`` in ``batches``: e.g. their mean over T, the
    rate-coded view a per-frame ANN reproduces); default ``batches`` (static ``[B, ...]``).

    Memory: about (T + 1) x the largest activation over all calibration samples (lower
    ``calibration_samples`` for large inputs, e.g. 64 for ImageNet-size ResNets).

    Returns ``{site: threshold}``.
    """
    device = torch.device(device) if device is not None else next(snn.parameters()).device
    was_training = snn.training
    snn.to(device).eval()
    ann_graph.eval().to(device)
    ann_sites = [n.name for n in _activation_sites(ann_graph)]
    if len(ann_sites) != len(snn.neurons):
        raise ConfigError("internal: activation sites and neurons differ in number")
    ann_inputs = list(ann_batches) if ann_batches is not None else batches  # [B, ...] each
    if len(ann_inputs) != len(batches):
        raise ConfigError(f"calibration: {len(batches)} SNN batches but {len(ann_inputs)} ANN batches")
    for site_name, neuron in zip(ann_sites, snn.neurons):
        # the neuron's input [T*b, ...] for every batch
        currents = [_run_to(neuron, lambda x=x: snn(x.to(device)), before=True).detach().cpu()
                    for x in batches]
        # the ANN's activation [B, ...] at this site only (negative parts of a leaky ReLU cannot
        # spike: clamped); one site at a time keeps the memory to (T + 1) x one activation
        recorder = _Recorder(ann_graph, names={site_name})
        target_parts = []
        for x in ann_inputs:
            recorder.run(x.to(device))
            target_parts.append(recorder.values[site_name].cpu())
        target = torch.cat(target_parts, dim=0).clamp(min=0)
        _fit_threshold(neuron, currents, target, refine_steps, per_channel)
    snn.train(was_training)
    return snn.thresholds()


def _channel_view(values: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``[N, C, ...] -> [C, N*...]`` (per channel) or ``[1, everything]``."""
    if per_channel and values.dim() >= 2:
        return values.transpose(0, 1).reshape(values.shape[1], -1)
    return values.reshape(1, -1)


def _fit_threshold(neuron: ThresholdNeuron, currents: list[torch.Tensor], ann_value: torch.Tensor,
                   refine_steps: int, per_channel: bool = False) -> None:
    """Set ``neuron.threshold`` (one level, or one per channel = dim 1) to what makes the
    time-averaged output best match ``ann_value`` (``[N, ...]``, mean squared error) given the
    neuron's input ``currents`` (``[T*b, ...]`` for each batch of ``b`` samples): a grid of
    percentiles of the ANN's positive activations, then a golden-section refinement (log scale) per
    channel."""
    steps = sum(len(c) for c in currents) // ann_value.shape[0]
    per_channel = per_channel and ann_value.dim() >= 2
    channels = ann_value.shape[1] if per_channel else 1
    targets = ann_value.split([len(c) // steps for c in currents])
    neuron.time_steps = steps
    shape = (channels,) if per_channel else ()
    neuron.threshold = nn.Parameter(torch.ones(shape, dtype=neuron.threshold.dtype, device=neuron.threshold.device))

    def error(level: torch.Tensor) -> torch.Tensor:  # [channels] -> [channels]
        neuron.threshold.copy_(level.reshape(shape))
        total = torch.zeros(channels, dtype=torch.float64)
        for chunk, target in zip(currents, targets):
            out = neuron(chunk).unflatten(0, (steps, len(target))).mean(0)
            total += _channel_view((out - target).double().pow(2), per_channel).sum(1)
        return total

    view = _subsample(_channel_view(ann_value, per_channel), 200_000)  # columns for the percentiles
    positive = torch.where(view > 0, view, torch.full_like(view, float("nan"))).double()
    quantiles = torch.tensor([0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0], dtype=torch.float64)
    grid = torch.nanquantile(positive, quantiles, dim=1).T  # [channels, q]
    grid = torch.nan_to_num(grid, nan=1.0).clamp(min=1e-4)
    scores = torch.stack([error(grid[:, k]) for k in range(grid.shape[1])], dim=1)  # [channels, q]
    best = scores.argmin(1)
    rows = torch.arange(channels)
    best_level, best_score = grid[rows, best], scores[rows, best]
    low = torch.where(best > 0, grid[rows, (best - 1).clamp(min=0)], best_level * 0.5)
    high = torch.where(best + 1 < grid.shape[1], grid[rows, (best + 1).clamp(max=grid.shape[1] - 1)], best_level * 1.5)
    low = torch.minimum(low, best_level)
    high = torch.maximum(high, best_level * 1.0001)
    # golden-section search in log space, every channel at once
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low.log(), high.log()
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = error(c.exp()), error(d.exp())
    for _ in range(refine_steps):
        left = fc < fd  # the minimum lies in [a, d]
        a, b = torch.where(left, a, c), torch.where(left, d, b)
        new_c, new_d = b - ratio * (b - a), a + ratio * (b - a)
        probe = torch.where(left, new_c, new_d)
        f_probe = error(probe.exp())
        c, d = torch.where(left, new_c, d), torch.where(left, c, new_d)
        fc, fd = torch.where(left, f_probe, fd), torch.where(left, fc, f_probe)
    candidates = torch.stack([best_level, c.exp(), d.exp()], 1)
    candidate_scores = torch.stack([best_score, fc, fd], 1)
    level = candidates[rows, candidate_scores.argmin(1)].to(neuron.threshold.dtype)
    neuron.threshold.copy_(level.reshape(shape))


# ------------------------------------------------------------------------------------------------
# New input channels (a static ANN's 1 or 3 colours -> 2 event polarities)
# ------------------------------------------------------------------------------------------------
def input_conv_name(graph: fx.Graph, modules: dict[str, nn.Module]) -> str:
    """The ``nn.Conv2d`` that reads the network's input: the first one in graph order fed by the
    input through parameter-free operations only (pads, reshapes, arithmetic). ConfigError if a
    layer with parameters (e.g. a BatchNorm on the raw input) or none comes first."""
    from_input = _input_dependent(graph)
    for node in graph.nodes:
        if node.op != "call_module" or node not in from_input:
            continue
        module = modules[node.target]
        if isinstance(module, nn.Conv2d):
            return str(node.target)
        if any(True for _ in module.parameters()):
            raise ConfigError(
                f"the network's input first goes through {_describe_node(node, modules)}, not an nn.Conv2d: "
                "cannot adapt its input channels (give the ANN a first Conv2d that reads the input)"
            )
    raise ConfigError("no nn.Conv2d module reads the network's input (functional convs are not adapted)")


def adapt_input_conv(model: nn.Module, in_channels: int, mode: str = "mean", *,
                     graph: fx.Graph | None = None) -> str:
    """Replace, in place, the ``nn.Conv2d`` that reads the input of the traced ``model`` (a
    :class:`SpikingNet` or an ``fx.GraphModule``; its ``graph`` unless one is given) with one taking
    ``in_channels`` channels; returns its name (e.g. ``"conv1"``).

    The new kernel ``[out, in_channels, kh, kw]`` comes from the old ``[out, c_src, kh, kw]`` as
    the bridge adapts a registry model's first layer (:func:`spikebridge.bridge._adapt_first_layer`):
    ``mean`` (the colour-mean kernel on every new channel: ``new([g/2, g/2]) == old(g)`` for a
    1-channel source), ``signed_polarity`` (ON = the grey kernel, OFF its negative), or ``skip``
    (freshly initialised by the global RNG, bias too). Otherwise the bias and the conv's settings
    (stride, padding, dilation, padding mode) are kept. Nothing changes when the conv already
    takes ``in_channels``.
    """
    if mode not in FIRST_LAYER_MODES:
        raise ConfigError(f"unknown first-layer mode {mode!r}; expected one of {', '.join(FIRST_LAYER_MODES)}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}")
    graph = graph if graph is not None else getattr(model, "graph", None)
    if not isinstance(graph, fx.Graph):
        raise ConfigError(f"adapt_input_conv needs a traced model (SpikingNet or fx.GraphModule), got {type(model).__name__}")
    name = input_conv_name(graph, dict(model.named_modules()))
    old: nn.Conv2d = model.get_submodule(name)
    if old.in_channels == in_channels:
        return name
    if old.groups != 1:
        raise ConfigError(f"the input conv '{name}' is grouped (groups={old.groups}); cannot adapt its input channels")
    new = nn.Conv2d(
        in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
        dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode,
    ).to(device=old.weight.device, dtype=old.weight.dtype)
    if mode != "skip":
        with torch.no_grad():
            new.weight.copy_(_adapt_first_layer(old.weight.detach(), in_channels, mode))
            if old.bias is not None:
                new.bias.copy_(old.bias.detach())
    new.train(old.training)
    _set_submodule(model, name, new)
    return name


__all__ = [
    "ACTIVATION_FUNCTIONS",
    "ACTIVATION_MODULES",
    "SpikingNet",
    "ThresholdNeuron",
    "TimeExpand",
    "adapt_input_conv",
    "calibrate_thresholds",
    "check_batch_axis",
    "input_conv_name",
    "spikify",
    "spikify_with_graph",
]
