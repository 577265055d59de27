"""The bridge: carry a trained ANN's parameters into an SNN of the same layout.

Because one model definition serves both (same parameter names), the transfer is a
``load_state_dict`` of every tensor whose name and shape match, plus:

* a report of matched / missing / unexpected / shape-mismatched keys (and a refusal, with a clear
  error, when too little matches: a checkpoint of another architecture is not silently half-loaded);
* first-layer adaptation when the input channels change (3 colours or 1 grey -> 2 event
  polarities): ``signed_polarity`` (ON gets the grey-equivalent kernel, OFF its negative: ODG's ON/OFF
  events are the signed temporal derivative of intensity), ``mean`` (the colour-mean kernel copied to
  every new channel), or ``skip`` (re-initialised, as the reference code does);
* optional BatchNorm re-calibration: the running statistics are re-estimated with the SNN itself on a
  few training batches, so BN normalises what the spiking layers really produce.

Sources accepted: an ``nn.Module``, a state dict, a spikebridge checkpoint (``.json``), a
``.safetensors`` file, or a torchvision-style ``.pth``/``.pt`` state dict (loaded with
``weights_only=True``; ``module.`` prefixes from DDP are stripped).
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import CheckpointError, TransferError, first_line
from .layers import TimeFolded, is_marked_binary

FIRST_LAYER_MODES = ("signed_polarity", "mean", "skip")


@dataclass
class TransferReport:
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the SNN, not in the source
    unexpected: list[str] = field(default_factory=list)  # in the source, not in the SNN
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, source, snn)
    adapted: list[str] = field(default_factory=list)  # first-layer keys adapted to new channels
    reinitialised: list[str] = field(default_factory=list)
    recalibrated_bn: int = 0
    rate_errors: dict[str, float] = field(default_factory=dict)  # per layer, after match_firing_rates
    rates_not_matched: str = ""  # why bridge.match_rates did not apply (the run says so)
    seconds: float = 0.0  # wall time of the whole bridge (transfer + calibration), set by its caller

    @property
    def total(self) -> int:
        """How many tensors the SNN has that must be filled (its state dict's keys)."""
        return len(self.matched) + len(self.adapted) + len(self.reinitialised) + len(self.missing) + len(self.mismatched)

    @property
    def match_fraction(self) -> float:
        return (len(self.matched) + len(self.adapted)) / max(self.total, 1)

    @property
    def match_percent(self) -> str:
        """``match_fraction`` rounded down: ``100%`` only when every tensor transferred."""
        return f"{100 * (len(self.matched) + len(self.adapted)) // max(self.total, 1)}%"

    @property
    def transferred(self) -> set[str]:
        """Names of the SNN's tensors that came from the ANN (for warm-up freezing)."""
        return set(self.matched) | set(self.adapted)

    def summary(self) -> str:
        lines = [transfer_headline(self.to_dict())]
        for key, src, dst in self.mismatched:
            lines.append(f"  shape mismatch {key}: source {list(src)} vs SNN {list(dst)}")
        for label, keys in (("missing (kept as initialised)", self.missing), ("unexpected (ignored)", self.unexpected)):
            if keys:
                lines.append(f"  {label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}")
        if self.recalibrated_bn:
            lines.append(f"  re-calibrated {self.recalibrated_bn} BatchNorm layers on spiking activity")
        if self.rate_errors:
            worst = max(self.rate_errors.values())
            lines.append(f"  matched firing rates to the ANN in {len(self.rate_errors)} layers (worst mean error {worst:.4f})")
        if self.rates_not_matched:
            lines.append(f"  firing rates not matched (bridge.match_rates): {self.rates_not_matched}")
        if self.seconds:
            lines.append(f"  the bridge took {self.seconds:.1f} s")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "total": self.total,
            "matched": len(self.matched),
            "adapted": self.adapted,
            "reinitialised": self.reinitialised,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [[k, list(a), list(b)] for k, a, b in self.mismatched],
            "match_fraction": self.match_fraction,
            "match_percent": self.match_percent,
            "recalibrated_bn": self.recalibrated_bn,
            "rate_errors": self.rate_errors,
            "rates_not_matched": self.rates_not_matched,
            "bridge_seconds": self.seconds,
        }


def transfer_headline(record: dict) -> str:
    """The first line of a transfer's report from its :meth:`TransferReport.to_dict` (the console
    and ``report.md`` say the same)."""
    return (f"transferred {record['matched'] + len(record['adapted'])} of the SNN's {record['total']} tensors "
            f"({record['match_percent']}), adapted {len(record['adapted'])}, re-initialised "
            f"{len(record['reinitialised'])}, missing {len(record['missing'])}, unexpected {len(record['unexpected'])}, "
            f"shape-mismatched {len(record['mismatched'])}")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a spikebridge checkpoint (its ``.json``, tensors file, phase folder, or
    a run folder: its ANN's, as ``--ann RUN`` takes it), ``.safetensors`` or ``.pth``/``.pt`` file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".json" or path.is_dir() or path.suffix == ".safetensors":
        from .train.checkpoint import load_checkpoint, locate_checkpoint

        return load_checkpoint(locate_checkpoint(path, snn=False)).model_state
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/pickled-object files
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if pickled:  # torch.save(model) or other Python objects: loading them would run their code
            raise CheckpointError(f"{path}: holds a pickled Python object ({pickled.group(1)[:100]}), not only "
                                  "tensors, and spikebridge never runs code from a weights file; save the weights "
                                  "with torch.save(model.state_dict(), PATH)") from None
        with open(path, "rb") as f:
            head = f.read(12)
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch.save's zip nor a legacy pickle
            raise CheckpointError(f"{path}: not a weights file of torch.save, .safetensors or a spikebridge "
                                  f"checkpoint (it starts with {head!r})") from None
        raise CheckpointError(f"{path}: not a loadable state-dict file ({type(exc).__name__}: "
                              f"{first_line(exc)[:200]})") from None
    return _tensors_of(state, str(path), CheckpointError)


def _tensors_of(state, where: str, error: type[Exception]) -> dict[str, torch.Tensor]:
    """A state dict of tensors: ``state`` itself or the one under ``state_dict`` / ``model`` /
    ``model_state_dict`` (a training script's checkpoint dict); ``error`` naming ``where`` else."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        others = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)][:3] if isinstance(state, dict) \
            else []
        raise error(f"{where}: expected a state dict of tensors" + (
            f" (not tensors: {', '.join(others)}); give the state dict itself, or one under state_dict, model or "
            "model_state_dict" if others else f", got {type(state).__name__}"))
    return state


def as_state_dict(source) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        source = getattr(source, "module", source)
        return source.state_dict()
    if isinstance(source, (str, Path)):
        source = load_state_dict_file(source)  # its tensors (_tensors_of), or CheckpointError naming the file
    elif isinstance(source, dict):
        source = _tensors_of(source, "the source", TransferError)
    else:
        raise TransferError(f"cannot transfer from {type(source).__name__}: give a module, state dict or file")
    while source:  # DDP's module. and torch.compile's _orig_mod. (in either order)
        prefix = next((p for p in ("module.", "_orig_mod.") if all(k.startswith(p) for k in source)), None)
        if prefix is None:
            break
        source = {k[len(prefix):]: v for k, v in source.items()}
    return source


def _names_as_in(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``source`` itself, or when none of its names is the target's, the tensors under the
    one-level prefix whose names are (``model.`` of a spikebridge checkpoint's tensors read with
    safetensors, ``backbone.``, ``net.`` ...), the prefix dropped."""
    if any(k in target for k in source):
        return source
    best, best_hits = source, 0
    for prefix in {k.split(".", 1)[0] + "." for k in source if "." in k}:
        under = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
        hits = sum(k in target for k in under)
        if hits > best_hits:
            best, best_hits = under, hits
    return best


def _adapt_first_layer(weight: torch.Tensor, in_channels: int, mode: str) -> torch.Tensor:
    """Map a conv kernel ``[out, c_src, kh, kw]`` onto ``in_channels`` input channels (``mode``:
    ``mean`` or ``signed_polarity``; the callers check it)."""
    if mode == "mean":
        return weight.mean(dim=1, keepdim=True).expand(-1, in_channels, -1, -1).clone()
    if in_channels != 2:
        raise TransferError(f"first_layer='signed_polarity' needs 2 input channels (ON/OFF), the SNN has {in_channels}")
    grey = weight.sum(dim=1, keepdim=True)  # response to a grey image (all colours equal)
    return torch.cat([grey, -grey], dim=1)


def transfer(
    source,
    snn_model: nn.Module,
    first_layer: str = "mean",
    *,
    min_match: float = 0.5,
    strict_shapes: bool = False,
) -> TransferReport:
    """Load every tensor of ``source`` whose name and shape fit ``snn_model``; report the rest.

    ``first_layer``: how a first convolution with other input channels is adapted (``mean``,
    the default as ``bridge.first_layer``'s; ``signed_polarity`` for 2 event polarities; ``skip``).

    Raises :class:`TransferError` when less than ``min_match`` of the SNN's tensors can be loaded
    (a checkpoint of another architecture), or when ``strict_shapes`` and any shape differs.
    """
    if first_layer not in FIRST_LAYER_MODES:
        raise TransferError(f"unknown first_layer mode {first_layer!r}; expected one of {', '.join(FIRST_LAYER_MODES)}")
    target = getattr(snn_model, "module", snn_model)
    target_state = target.state_dict()
    source_state = _names_as_in(as_state_dict(source), target_state)
    report = TransferReport()
    new_state: dict[str, torch.Tensor] = {}
    first_conv = next((k for k, v in target_state.items() if v.dim() == 4), None)
    for key, dst in target_state.items():
        if key not in source_state:
            report.missing.append(key)
            continue
        src = source_state[key]
        if tuple(src.shape) == tuple(dst.shape):
            new_state[key] = src.to(dst.dtype)
            report.matched.append(key)
        elif key == first_conv and src.dim() == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]:
            if first_layer == "skip":
                report.reinitialised.append(key)
            else:
                new_state[key] = _adapt_first_layer(src, dst.shape[1], first_layer).to(dst.dtype)
                report.adapted.append(key)
        else:
            report.mismatched.append((key, tuple(src.shape), tuple(dst.shape)))
    report.unexpected = [k for k in source_state if k not in target_state]
    if strict_shapes and report.mismatched:
        raise TransferError("shape mismatch: " + "; ".join(f"{k} {list(a)} vs {list(b)}" for k, a, b in report.mismatched[:3]))
    if not new_state or report.match_fraction < min_match:
        example = report.mismatched[0] if report.mismatched else None
        hint = f" (e.g. {example[0]}: {list(example[1])} vs {list(example[2])})" if example else ""
        raise TransferError(
            f"only {report.match_percent} of the SNN's tensors match the source (need {min_match:.0%}): "
            f"is it a checkpoint of another architecture or class count?{hint}"
        )
    target.load_state_dict(new_state, strict=False)
    return report


def _channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-channel mean of a ``[N, C, ...]`` activation (N = B for the ANN, T*B for the SNN)."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).float().mean(1) if x.dim() > 1 else x.float().mean()


def _activation_pairs(ann: nn.Module, snn: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(name, ANN activation, SNN neuron) for every time-folded neuron whose name exists in the ANN."""
    ann_modules = dict(getattr(ann, "module", ann).named_modules())
    return [
        (name, ann_modules[name], module)
        for name, module in getattr(snn, "module", snn).named_modules()
        if isinstance(module, TimeFolded) and name in ann_modules
    ]


def _feeding_layers(snn: nn.Module, pairs, example: torch.Tensor) -> dict[str, nn.Module]:
    """For each neuron, the layer with a bias (an affine BatchNorm, else a linear or convolution
    layer) that ran last before it in a forward pass: the one whose bias shifts the neuron's input
    current (``bn2`` for a residual block's final neuron, ``classifier.3`` in torchvision's VGG)."""
    ran: list[nn.Module] = []  # the layers with a bias, in the order they ran
    feeding: dict[str, nn.Module] = {}

    def note_feeder(name: str) -> None:  # (a pre-hook returning a value would replace the input)
        if ran and name not in feeding:
            feeding[name] = ran[-1]

    hooks = [module.register_forward_hook(lambda m, i, o: ran.append(m)) for module in snn.modules()
             if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine)
             or (isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and module.bias is not None)]
    for name, _ann_act, neuron in pairs:
        hooks.append(neuron.register_forward_pre_hook(lambda m, i, name=name: note_feeder(name)))
    try:
        snn(example)
    finally:
        for hook in hooks:
            hook.remove()
    return feeding


def _ann_targets(ann: nn.Module, pairs, ann_batches: list[torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Per neuron name, the ANN activation's per-channel mean output over ``ann_batches`` (eval mode)."""
    ann.eval()
    targets: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in pairs}
    hooks = [act.register_forward_hook(lambda m, i, o, name=name: targets[name].append(_channel_mean(o)))
             for name, act, _ in pairs]
    try:
        for batch in ann_batches:
            ann(batch.to(device))
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.stack(values).mean(0) for name, values in targets.items()}


class _Reached(Exception):
    """Raised by a hook to end a forward early, carrying (``args[0]``) the tensor it was waiting for."""


def _run_to(module: nn.Module, run, *, before: bool) -> torch.Tensor:
    """Call ``run()`` and stop it where ``module`` is reached: return ``module``'s input (``before``)
    or its output. Nothing after that point is computed."""
    def stop(m, args, *output):  # a pre-hook gets no output
        raise _Reached(output[0] if output else args[0])

    handle = (module.register_forward_pre_hook if before else module.register_forward_hook)(stop)
    try:
        run()
    except _Reached as reached:
        return reached.args[0]
    finally:
        handle.remove()
    raise TransferError(f"calibration: {type(module).__name__} was not reached in the forward pass")


def _chain_units(model: nn.Module) -> list[nn.Module]:
    """The model's children, ``nn.Sequential``/``nn.ModuleList`` containers opened recursively:
    the candidates for the units the calibration runs one after another."""
    units: list[nn.Module] = []

    def expand(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                expand(child)
            else:
                units.append(child)

    expand(model)
    return units


def _find_chain(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The longest run of units (:func:`_chain_units`) that a forward pass calls strictly one after
    another, each called once with one tensor argument that IS the previous unit's output, not
    modified in between. Running such a run on the first unit's input gives exactly what the full
    forward computes inside it (ResNet: the stem activation, pooling and the residual blocks; VGG:
    every layer after the stem)."""
    units = _chain_units(model)
    events: list[tuple[str, int]] = []  # ("in"/"out", unit index) in the order they happened
    inputs: dict[int, list] = {}
    outputs: dict[int, tuple[torch.Tensor, int]] = {}
    calls = [0] * len(units)

    def pre(index):
        def hook(m, args, kwargs):
            calls[index] += 1
            single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            inputs[index] = [args[0], args[0]._version] if single else None
            events.append(("in", index))
        return hook

    def post(index):
        def hook(m, args, out):
            outputs[index] = (out, out._version) if isinstance(out, torch.Tensor) else None
            events.append(("out", index))
        return hook

    handles = [h for i, unit in enumerate(units) for h in (
        unit.register_forward_pre_hook(pre(i), with_kwargs=True), unit.register_forward_hook(post(i)))]
    try:
        model(example)
    finally:
        for handle in handles:
            handle.remove()
    best: list[int] = []
    run: list[int] = []
    for (kind, a), (next_kind, b) in zip(events, events[1:] + [("end", -1)]):
        if kind == "in":
            continue
        if not run or run[-1] != a:  # (a unit called inside another one ends the run)
            best = max(best, run, key=len)
            run = [a] if calls[a] == 1 and inputs.get(a) is not None else []
        linked = (next_kind == "in" and bool(run) and calls[b] == 1 and inputs.get(b) is not None
                  and outputs.get(a) is not None and inputs[b][0] is outputs[a][0]
                  and inputs[b][1] == outputs[a][1])
        if linked:
            run.append(b)
        else:
            best = max(best, run, key=len)
            run = []
    return [units[i] for i in best]


def _unit_index(units: list[nn.Module], module: nn.Module) -> int | None:
    return next((i for i, unit in enumerate(units) if any(m is module for m in unit.modules())), None)


def _pack(x: torch.Tensor) -> torch.Tensor:
    """A cached activation: spikes (floats a neuron marked 0/1, :func:`~spikebridge.layers.mark_binary`)
    are kept as ``bool`` (a quarter of the memory; exact)."""
    return x.to(torch.bool) if x.is_floating_point() and is_marked_binary(x) else x


def _unpack(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype) if x.dtype == torch.bool else x


@contextlib.contextmanager
def _cumulative_stats(modules: Iterable[nn.Module]):
    """Reset the running statistics of every tracking BatchNorm in ``modules`` and average the
    batches seen inside this context cumulatively (momentum None); momenta restored on exit.
    Yields the BatchNorms."""
    norms = list({id(m): m for module in modules for m in module.modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}.values())
    momenta = [m.momentum for m in norms]
    saved = [{k: v.clone() for k, v in m.state_dict().items() if k in ("running_mean", "running_var",
                                                                        "num_batches_tracked")} for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        yield norms
    except BaseException:  # a failed estimate (bad batch, none at all, Ctrl-C) leaves the statistics as they were
        for m, state in zip(norms, saved):
            m.load_state_dict(state, strict=False)
        raise
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


class _Replay:
    """Within a bisection, what runs before the shifted BatchNorm does not change: the outputs of
    the leaf modules of ``modules`` that run exactly once per batch, before ``norm``, are recorded
    on the first pass (``with replay:``) and returned on the later ones instead of being recomputed
    (ResNet: the block's convolutions and downsample; the glue between them still runs)."""

    def __init__(self, modules: list[nn.Module], norm: nn.Module) -> None:
        self.norm = norm
        self.leaves = [m for unit in modules for m in unit.modules()
                       if m is not norm and next(m.children(), None) is None and "forward" not in m.__dict__]
        self.outputs: dict[nn.Module, list] | None = None  # None: not recorded yet
        self._undo: list = []

    def __enter__(self) -> "_Replay":
        if self.outputs is None:
            seen_norm = [0]
            calls: dict[nn.Module, list] = {m: [] for m in self.leaves}

            def count(m, args):
                seen_norm[0] += 1

            def record(m, args, out):
                calls[m].append((out, seen_norm[0]))

            self._undo = [self.norm.register_forward_pre_hook(count).remove]
            self._undo += [m.register_forward_hook(record).remove for m in self.leaves]
            self._calls, self._norm_calls = calls, seen_norm
            return self
        for module, outputs in self.outputs.items():
            def replay(*args, _outputs=iter(outputs), **kwargs):
                return next(_outputs)
            module.forward = replay
            self._undo.append(lambda module=module: delattr(module, "forward"))
        return self

    def __exit__(self, *exc) -> None:
        for undo in self._undo:
            undo()
        self._undo = []
        if self.outputs is None and not exc[0]:
            batches = self._norm_calls[0]  # the norm runs once per batch
            self.outputs = {m: [out for out, _ in calls] for m, calls in self._calls.items()
                            if len(calls) == batches and all(n == i for i, (_, n) in enumerate(calls))}
            del self._calls


@torch.no_grad()
def match_firing_rates(
    ann: nn.Module,
    snn: nn.Module,
    batches: list[torch.Tensor],
    *,
    iterations: int = 10,
    max_shift: float = 1.0,
    device: torch.device | str = "cpu",
    ann_batches: list[torch.Tensor] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Threshold-aware calibration: layer by layer (in forward order), shift the bias of the
    BatchNorm (or, where none follows it, the linear or convolution layer) feeding each spiking
    neuron (:func:`_feeding_layers`) so that every channel's firing rate (mean over time, batch and
    positions) equals the mean output of the ANN's activation at the same place.

    Meant for ANNs whose activation is spike-like and bounded in [0, 1] (the sharpened ReLU): the
    LIF's leak makes inputs a little below threshold fire on later steps, which a step-like ANN
    never does; this moves each channel's effective threshold back to where the ANN learned it.
    Per channel the rate is monotone in the bias, so a vectorised bisection over
    ``[-max_shift, max_shift]`` (``iterations`` halvings) finds the shift. BN running statistics
    are re-estimated (on spiking activity) before each layer and at the end. ``ann_batches``
    (default: ``batches``) are what the ANN sees of the same samples when the SNN's input differs
    (pipeD: the static images of the digits whose events are in ``batches``). Returns, per layer,
    the mean absolute rate error after calibration. ``progress``: a progress bar, one step a layer.

    Cost: each step computes only what it changes. The network is cut into units that run one
    after another (:func:`_find_chain`); the calibration batches' input to the unit holding a
    layer's BatchNorm is cached (train and eval mode) once the layers before are calibrated, and
    the BN re-estimation and every bisection step run only from that unit to the layer's neuron;
    then the cache moves on. A layer outside the chain (the first one, fed by the stem's BN before
    the time expansion) runs the forward up to its neuron. The result equals the plain form
    (``tests/_model_reference.py``: same operations on the same tensors, in the same order).
    Memory: the two cached activations of all calibration batches (spikes stored as ``bool``).
    """
    pairs = _activation_pairs(ann, snn)
    if not pairs or not batches:
        return {}
    was_training = (ann.training, snn.training)
    batches = [b.to(device) for b in batches]
    target = _ann_targets(ann, pairs, ann_batches or batches, device)
    example = batches[0]
    ndim = getattr(snn, "input_ndim", None)
    if ndim is not None and example.dim() in (ndim, ndim + 1):  # two samples are enough to trace
        example = example.narrow(example.dim() - ndim, 0, min(2, example.shape[example.dim() - ndim]))
    feeding = _feeding_layers(snn.eval(), pairs, example)
    units = _find_chain(snn, example)
    folded = [m for m in snn.modules() if isinstance(m, TimeFolded)]
    # the input of chain unit ``position`` for every calibration batch, in train mode (for BatchNorm
    # statistics) and in eval mode (for firing rates), with each batch's time steps and the dtype
    cache: SimpleNamespace | None = None

    def full_passes(stop: nn.Module, keep, *, before: bool = False) -> list:
        """Per batch, ``keep`` of the whole model's forward up to ``stop`` (its input or output)."""
        return [keep(_run_to(stop, lambda b=b: snn(b), before=before)) for b in batches]

    def span_passes(stores: list, start: int, stop: nn.Module, keep, *, consume: bool = False) -> list:
        """Per batch, ``keep`` of chain units ``start``.. run on the cached input up to ``stop``'s
        output (``consume``: each cached input is released once used)."""
        out = []
        for index, steps in enumerate(cache.steps):
            for module, value in zip(folded, steps):
                module.time_steps = value
            stored = stores[index]
            if consume:
                stores[index] = None

            def run(x=_unpack(stored, cache.dtype)):
                for unit in units[start:]:
                    x = unit(x)
            out.append(keep(_run_to(stop, run, before=False)))
        return out

    def in_train_mode(modules: list[nn.Module], run):
        """``run()`` with ``modules`` in train mode and their BatchNorm statistics re-estimated
        from scratch, as :func:`recalibrate_batchnorm` does; eval mode again afterwards."""
        with _cumulative_stats(modules):
            for module in modules:
                module.train()
            try:
                return run()
            finally:
                for module in modules:
                    module.eval()

    def build_cache(position: int) -> SimpleNamespace:
        first = units[position]
        train = in_train_mode([snn], lambda: full_passes(first, _pack, before=True))
        steps = []
        evals = full_passes(first, lambda x: (steps.append([m.time_steps for m in folded]), x.dtype, _pack(x)),
                            before=True)
        return SimpleNamespace(position=position, train=train, evals=[x for _, _, x in evals], steps=steps,
                               dtype=evals[0][1])

    def advance(to: int) -> None:
        while cache.position < to:
            unit = units[cache.position]
            cache.train = in_train_mode([unit], lambda: span_passes(cache.train, cache.position, unit, _pack,
                                                                    consume=True))
            cache.evals = span_passes(cache.evals, cache.position, unit, _pack, consume=True)
            cache.position += 1

    errors: dict[str, float] = {}
    bar = tqdm(pairs, desc="bridge: matching firing rates", unit="layer", disable=not progress, leave=False)
    for name, _act, neuron in bar:
        norm = feeding.get(name)
        if norm is None or norm.bias is None or target[name].numel() != norm.bias.numel():
            continue
        start, end = _unit_index(units, norm), _unit_index(units, neuron)
        chained = start is not None and end is not None and start <= end
        if chained:
            if cache is None or cache.position > start:
                cache = build_cache(start)
            advance(start)
            in_train_mode(units[start:end + 1], lambda: span_passes(cache.train, start, neuron, lambda x: None))
        else:
            cache = None  # this layer's bias shift changes what any cache holds
            in_train_mode([snn], lambda: full_passes(neuron, lambda x: None))
        base = norm.bias.detach().clone()
        low = torch.full_like(base, -max_shift)
        high = torch.full_like(base, max_shift)
        goal = target[name].to(base.device, base.dtype)
        replay = _Replay(units[start:end + 1], norm) if chained else None

        def rate_at(shift: torch.Tensor) -> torch.Tensor:
            norm.bias.copy_(base + shift)
            if chained:
                with replay:
                    seen = span_passes(cache.evals, start, neuron, _channel_mean)
            else:
                seen = full_passes(neuron, _channel_mean)
            return torch.stack(seen).mean(0).to(base.dtype)

        for _ in range(iterations):
            middle = (low + high) / 2
            too_high = rate_at(middle) > goal
            high = torch.where(too_high, middle, high)
            low = torch.where(too_high, low, middle)
        errors[name] = float((rate_at((low + high) / 2) - goal).abs().mean())
    bar.close()
    cache = None
    recalibrate_batchnorm(snn, batches, device)
    ann.train(was_training[0])
    snn.train(was_training[1])
    return errors


@torch.no_grad()
def batch_inputs(batch) -> torch.Tensor:
    """The inputs of a batch given as a tensor or an ``(inputs, labels, ...)`` pair (a DataLoader's)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TransferError(f"batches must be tensors or (inputs, labels) pairs, got {type(batch).__name__}")


def recalibrate_batchnorm(model: nn.Module, batches: Iterable, device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean/var from ``batches`` (input tensors or
    ``(inputs, labels)`` pairs, as a DataLoader gives) run through ``model``.

    Uses a cumulative average (momentum None) over all given batches, then restores each layer's
    momentum and the model's train/eval mode. Returns the number of BN layers updated. When it
    fails (a bad batch, no batch at all) the statistics are left as they were.
    """
    with _cumulative_stats([model]) as norms:
        if not norms:
            return 0
        was_training = model.training
        model.train()
        seen = 0
        try:
            for batch in batches:
                model(batch_inputs(batch).to(device))
                seen += 1
        finally:
            model.train(was_training)
        if seen == 0:
            raise TransferError("BatchNorm re-calibration got no batches")
    return len(norms)
