"""The ANN of a run, whatever its source, and how it becomes an SNN.

Sources (``--ann``): none (a registry model, trained in the run), a spikebridge ANN checkpoint, a
registry model name with ``--ann-weights`` (e.g. ``resnet18_tv`` and torchvision's weights), or
the user's ``FILE.py:ClassName`` (with ``--ann-weights`` its trained weights; without, it is
trained in the run). :func:`ann_source_from_flags` checks them before any data is opened;
:func:`load_ann` builds the ANN.

Two families (:class:`AnnFamily`: ``pretrain``, ``to_snn``, ``scratch``) turn an ANN into an SNN:
:class:`RegistryFamily` (the same architecture with spiking neurons; the bridge of
arXiv:2203.01158, Sec. 3) and :class:`ClassFamily` (the user's class,
:func:`spikebridge.spikify.spikify`). The from-scratch baseline of either is the same SNN from a
seeded fresh initialisation (a user class: spikified and calibrated the same way).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..bridge import as_state_dict, match_firing_rates, recalibrate_batchnorm, transfer
from ..config import PipelineConfig
from ..data.datasets import resolve_model_name
from ..data.loading import DataBundle, calibration_batches
from ..errors import CheckpointError, ConfigError, first_line, short_repr
from ..models import create_model, list_models
from ..neurons import NeuronConfig, SharpenedReLU
from ..restore import (
    USER_ANN_MODEL_NAME,
    ann_class_meta,
    check_weights,
    import_ann,
    is_python_class_spec,
    model_from_checkpoint,
    parse_ann_kwargs,
    spikified_meta,
)
from ..spikify import adapt_input_conv, calibrate_thresholds, check_batch_axis, spikify, spikify_with_graph
from ..train.checkpoint import checkpoint_of_weights
from ..train.engine import RunResult, optimizer_family, state_by_name
from ..utils import seed_everything
from .context import RunContext


# ------------------------------------------------------------------------------------------------
# What --ann names, and the ANN itself
# ------------------------------------------------------------------------------------------------
@dataclass
class AnnSource:
    """``--ann``: the user's class ``class_spec`` (``FILE.py:ClassName``; ``weights``: its trained
    weights, None = train it here; ``kwargs``: its constructor arguments), a registry ``model``
    with its ``weights`` (a state dict file), or a spikebridge ANN checkpoint ``checkpoint``
    (``.json``; ``trust_code``: a checkpoint of a user class may import the class file it records,
    hash-checked, see :func:`spikebridge.restore.model_from_checkpoint`)."""

    class_spec: str | None = None
    model: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    trust_code: bool = False

    @property
    def label(self) -> str:
        return str(self.class_spec or self.model or self.checkpoint)

    @property
    def identity(self) -> str:
        """:attr:`label` with its file's absolute path (what a run records of its ANN, so that a
        ``--resume`` from another working directory names the same one)."""
        if self.checkpoint:
            return os.path.abspath(os.path.expanduser(self.checkpoint))
        if self.class_spec:
            file, _, name = self.class_spec.rpartition(":")
            return f"{os.path.abspath(os.path.expanduser(file))}:{name}"
        return self.label


def ann_source_from_flags(ann: str | None, weights: str | None, kwargs_text: str | None, *,
                          weights_required: bool = False, trust_code: bool = False) -> AnnSource | None:
    """``--ann`` / ``--ann-weights`` / ``--ann-kwargs`` as an :class:`AnnSource` (None: no ``--ann``).

    ``weights_required``: a class needs ``--ann-weights`` (``finetune``; ``pipes`` / ``piped``
    train the class when it is missing). A registry model name always needs ``--ann-weights``."""
    if ann is not None and not ann.strip():  # --ann '' (an unset shell variable): not the same as no --ann
        raise ConfigError("--ann is empty: give a checkpoint, a registry model with --ann-weights, or FILE.py:ClassName")
    if not ann:
        if weights or kwargs_text:
            raise ConfigError("--ann-weights / --ann-kwargs go with --ann FILE.py:ClassName (your ANN class) "
                              "or --ann MODEL (a registry model)")
        if trust_code:
            raise ConfigError("--trust-code goes with --ann CKPT (a checkpoint of your own ANN class); there is no --ann")
        return None
    if weights and not Path(weights).expanduser().is_file():
        raise ConfigError(f"--ann-weights: file not found: {short_repr(weights)}")
    if ann in list_models() and not Path(ann).exists():  # a registry name (a folder of that name is a checkpoint's)
        if not weights:
            raise ConfigError(f"--ann {short_repr(ann)} needs --ann-weights W.pth|W.safetensors (its trained weights); "
                              f"to train it here use --model {short_repr(ann)}")
        if kwargs_text:
            raise ConfigError("--ann-kwargs goes with --ann FILE.py:ClassName; a registry model takes its sizes "
                              "from its weights")
        return AnnSource(model=ann, weights=weights)
    if is_python_class_spec(ann):
        if weights_required and not weights:
            raise ConfigError("--ann FILE.py:ClassName needs --ann-weights W.pth|W.safetensors (the trained weights)")
        return AnnSource(class_spec=ann, weights=weights, kwargs=parse_ann_kwargs(kwargs_text))
    path_part = ann.rpartition(":")[0] if ":" in ann else ann
    if path_part.endswith(".py"):
        raise ConfigError(f"--ann {short_repr(ann)}: expected FILE.py:ClassName (a Python file and the nn.Module class in it) "
                          "or a spikebridge checkpoint .json")
    suffix, path = Path(ann).suffix.lower(), Path(ann).expanduser()
    checkpoint_tensors = suffix == ".safetensors" and (  # its JSON lies beside it
        path.with_suffix(".json").is_file() or checkpoint_of_weights(path) is not None)
    if suffix in (".pth", ".pt", ".bin", ".safetensors") and not checkpoint_tensors:  # bare weights
        raise ConfigError(f"--ann {short_repr(ann)} is a weights file without its model: give --ann MODEL "
                          f"--ann-weights {short_repr(ann)} (MODEL: a registry model such as resnet18_tv) or --ann "
                          "FILE.py:ClassName --ann-weights ...")
    if not path.exists():
        raise ConfigError(f"--ann {short_repr(ann)}: no such checkpoint, nor a registry model "
                          f"({', '.join(list_models())}) or FILE.py:ClassName")
    if weights or kwargs_text:
        raise ConfigError("--ann-weights / --ann-kwargs go with --ann MODEL or --ann FILE.py:ClassName; a checkpoint "
                          "has its own")
    return AnnSource(checkpoint=ann, trust_code=trust_code)


@dataclass
class LoadedAnn:
    """The ANN an :class:`AnnSource` names: ``model`` (None: a class to be trained in the run),
    its ``family`` (how it becomes an SNN), a checkpoint's ``meta["model"]`` (else empty) and its
    optimizer's per-parameter state by parameter name (``bridge.transfer_optimizer``: the
    fine-tune starts from its momentum buffers, as when the ANN trains in the run)."""

    model: nn.Module | None
    label: str
    family: AnnFamily
    checkpoint_model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # a checkpoint's epochs, seconds, best_acc, curve
    optimizer_state: dict[str, dict[str, Any]] | None = None


def load_ann(source: AnnSource, *, checkpoint: Any = None) -> LoadedAnn:
    """Import the user's class and load its weights, or rebuild a checkpoint's ANN
    (``checkpoint``: ``source.checkpoint`` already read, e.g. by the run plan)."""
    if source.model:
        return _registry_ann(source)
    if source.class_spec:  # without weights it is built once here all the same: a bad file or class fails now
        model = import_ann(source.class_spec, source.kwargs, source.weights)
        return LoadedAnn(model if source.weights else None, source.label, ClassFamily(source.class_spec, source.kwargs))
    model, meta, ckpt = model_from_checkpoint(source.checkpoint if checkpoint is None else checkpoint,
                                          trust_code=source.trust_code)
    if getattr(model, "spiking", False):
        raise CheckpointError(f"{source.checkpoint}: this checkpoint is already an SNN; give the ANN's checkpoint")
    info = meta["model"]
    recorded = ckpt.resume_state()  # its training record, checked (a hand-edited JSON: one line)
    curve = list(recorded["curve"])
    training = {"epochs": ckpt.epoch, "seconds": recorded["seconds"], "cpu_seconds": recorded["cpu_seconds"], "curve": curve,
                "best_acc": max((point[2] for point in curve), default=None)}
    family = ClassFamily(info["ann"], dict(info.get("ann_kwargs") or {})) if info["name"] == USER_ANN_MODEL_NAME \
        else RegistryFamily()
    state = ckpt.optimizer_state()
    try:
        by_name = state_by_name(model, state) if state is not None else None
    except CheckpointError:  # another model's optimizer: nothing to carry (the run says so)
        by_name = None
    return LoadedAnn(model, source.label, family, info, training, by_name)


def _registry_ann(source: AnnSource) -> LoadedAnn:
    """A registry model's ReLU ANN with ``source.weights`` (a plain state dict, or one held under
    ``state_dict`` / ``model``; ``.pth`` read with ``weights_only``). Its classes and input channels
    are read from the weights (the readout's weight, the first conv). Weights of another registry
    model are refused with that model's name."""
    name = str(source.model)
    if name in list_models(sequence=True):
        raise ConfigError(f"--ann {short_repr(name)}: a sequence model's frame size is not in its weights; "
                          "give a spikebridge checkpoint (--ann CKPT.json)")
    state = as_state_dict(Path(source.weights).expanduser())
    try:
        sizes = _sizes_fitting(name, state, source.weights)
    except CheckpointError:
        others = [m for m in list_models(sequence=False) if m != name and _fits(m, state)]
        if not others:
            raise
        raise CheckpointError(f"{short_repr(source.weights)}: these weights fit the registry model {' and '.join(others)}, "
                              f"not {name}: give --ann {others[-1]} --ann-weights ... (*_tv: torchvision's layout)") from None
    model = create_model(name, neuron="relu", **{**sizes, "num_classes": max(1, sizes["num_classes"])})
    own = model.state_dict()
    model.load_state_dict({**own, **state}, strict=True)  # backbone weights (num_classes 0): the readout stays new
    return LoadedAnn(model, source.label, RegistryFamily(), {"name": name, **sizes})


def _sizes_fitting(name: str, state: dict[str, torch.Tensor], source: Any) -> dict[str, int]:
    """The sizes of registry model ``name`` that ``state`` holds (classes from the readout's weight,
    0 for backbone weights without the readout; input channels from the first convolution);
    CheckpointError when ``state`` does not fit it (:func:`check_weights`). Models are built on the
    meta device: nothing is allocated."""
    with torch.device("meta"):
        probe = create_model(name, neuron="relu", num_classes=1)
    readout = probe.readout_name + "."
    fc = state.get(readout + "weight")
    headless = not any(k.startswith(readout) for k in state)
    if not headless and (not isinstance(fc, torch.Tensor) or fc.dim() != 2):
        raise CheckpointError(f"{short_repr(source)}: no {readout + 'weight'!r} [classes, features] tensor; not "
                              f"weights of the registry model {name}")
    first_conv = next((k for k, v in probe.state_dict().items() if v.dim() == 4), None)
    conv = state.get(first_conv) if first_conv else None
    channels = int(conv.shape[1]) if isinstance(conv, torch.Tensor) and conv.dim() == 4 else 3
    sizes = {"num_classes": 0 if headless else int(fc.shape[0]), "in_channels": channels, "T": 1}
    with torch.device("meta"):
        own = create_model(name, neuron="relu", **{**sizes, "num_classes": max(1, sizes["num_classes"])}).state_dict()
    if headless:
        own = {k: v for k, v in own.items() if not k.startswith(readout)}
    check_weights(own, state, source, name)
    return sizes


def _fits(name: str, state: dict[str, torch.Tensor]) -> bool:
    try:
        _sizes_fitting(name, state, "")
        return True
    except (CheckpointError, ConfigError):
        return False


def check_checkpoint_optimizer(cfg: PipelineConfig, ckpt: Any, label: str) -> None:
    """``bridge.transfer_optimizer`` with an ANN checkpoint: its optimizer state, if it holds any,
    must be of the fine-tune's optimizer family (the check config does for an ANN trained in the
    run). A checkpoint without one (bare weights) fine-tunes from a fresh state, as the run logs."""
    state = ckpt.optimizer_state() if cfg.bridge.transfer_optimizer else None
    if not state or not state.get("state"):
        return
    have, want = optimizer_family(state), optimizer_family(cfg.finetune.optimizer)
    if have != want:
        raise ConfigError(f"bridge.transfer_optimizer carries the ANN optimizer's state into the fine-tune, so the "
                          f"checkpoint's optimizer ({have or 'unknown'}) and finetune.optimizer ({cfg.finetune.optimizer}) "
                          "must be the same")


def use_checkpoint_model(cfg: PipelineConfig, loaded: LoadedAnn | None) -> PipelineConfig:
    """``model.name: auto`` + a registry checkpoint: the SNN is the checkpoint's architecture (not
    the model ``auto`` would pick for the data)."""
    if loaded is not None and loaded.checkpoint_model and isinstance(loaded.family, RegistryFamily) \
            and cfg.model.name in ("auto", ""):
        return replace(cfg, model=replace(cfg.model, name=loaded.checkpoint_model["name"]))
    return cfg


# ------------------------------------------------------------------------------------------------
# Registry models: one definition serves the ANN and the SNN, the bridge carries the parameters
# ------------------------------------------------------------------------------------------------
def model_meta(cfg: PipelineConfig, bundle: DataBundle, neuron: NeuronConfig, T: int) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model. A sequence model (the video CRNN, whose
    encoder's first FC layer depends on the frame size) is built for the data's frame size."""
    name = resolve_model_name(cfg.model.name, bundle)
    model = {"name": name, "num_classes": cfg.model.num_classes or bundle.num_classes,
             "in_channels": cfg.model.in_channels or bundle.in_channels, "T": T}
    if name in list_models(sequence=True):
        model["options"] = {"input_size": list(bundle.frame_size)}
    return {"model": model, "neuron": asdict(neuron), "data": bundle.name}


def build_model(cfg: PipelineConfig, bundle: DataBundle, neuron: NeuronConfig, T: int) -> nn.Module:
    """A fresh model as :func:`model_meta` describes it."""
    spec = model_meta(cfg, bundle, neuron, T)["model"]
    model = create_model(spec["name"], num_classes=spec["num_classes"], neuron=neuron, T=T,
                         in_channels=spec["in_channels"], **spec.get("options", {}))
    if cfg.model.checkpoint_blocks:
        model.checkpoint_blocks = True  # recompute blocks in the backward: less memory, more time
    return model


def check_model_fits(cfg: PipelineConfig, bundle: DataBundle) -> None:
    """ConfigError, before any training, when the registry model cannot read the data's samples
    (``vgg16_bn_tv``'s five 2x2 max-pools need 32 x 32 frames): one forward on the meta device."""
    if resolve_model_name(cfg.model.name, bundle) not in list_models():
        return  # the user's own class: its own business
    sample = bundle.first_sample()
    sample = sample.unsqueeze(1) if bundle.kind == "events" else sample.unsqueeze(0)  # a batch of one
    key = "events.image_size" if bundle.kind == "events" else "data.image_size"
    check_model_reads(lambda: build_model(cfg, bundle, NeuronConfig("relu"), 1), cfg.model.name, tuple(sample.shape),
                      bundle.name, resize_key=key if Path(bundle.name).is_dir() else "")


def check_model_reads(build: Callable[[], nn.Module], name: str, shape: tuple[int, ...], data_name: str, *,
                      resize_key: str = "") -> None:
    """ConfigError when model ``name`` (``build()`` makes it) cannot read a batch of ``shape``: one
    forward on the meta device, nothing allocated. ``resize_key``: the setting that gives larger
    frames, named in the advice."""
    try:
        with torch.device("meta"):
            build().eval()(torch.empty(shape))
    except RuntimeError as exc:
        larger = f"larger ones (--set {resize_key}=...) or " if resize_key else ""
        raise ConfigError(f"model {name} cannot read the {'x'.join(map(str, shape[-2:]))} frames of "
                          f"{short_repr(data_name)} ({first_line(exc)[:120]}); give {larger}another model") from None


def ann_neuron(cfg: PipelineConfig) -> NeuronConfig:
    """The ANN's activation: by default its sharpening schedule spans the ANN's epochs, so the
    last ANN epoch has the paper's final bounds (a step at the threshold); an explicit
    ``neuron.sharpen_epochs`` (the paper's 100) wins."""
    sharpen = cfg.neuron.sharpen_epochs or max(1, cfg.ann.epochs)
    return replace(cfg.neuron, kind=cfg.ann_neuron, sharpen_epochs=sharpen)


def bridge_to_snn(cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle, device: torch.device, *,
                  same_data: bool = True):
    """A new SNN with the ANN's parameters, calibrated on a few training batches: ``(snn, report)``.

    BN running statistics are re-estimated on spiking activity; when the SNN sees the ANN's own
    data (``same_data``: pipeS), the ANN's activation is the spike-like sharpened ReLU and the
    neuron is LIF, each channel's firing rate is also matched to the ANN's (``bridge.match_rates``).
    """
    start = time.perf_counter()
    seed_everything(cfg.run.seed)
    snn = build_model(cfg, bundle, cfg.neuron, cfg.model.T).to(device)
    report = transfer(ann, snn, cfg.bridge.first_layer, min_match=cfg.bridge.min_match)
    # a small training split: a quarter of it (at least CALIBRATION_MIN_SAMPLES), so that the
    # bridge costs about an epoch's forward passes or less (it calibrated on the whole split);
    # only the batches that hold them are read
    share, size = max(CALIBRATION_MIN_SAMPLES, len(bundle.train) // 4), cfg.bridge.calibration_batch_size
    batches = list(calibration_batches(bundle, min(cfg.bridge.calibration_batches, -(-share // size)), size,
                                       seed=cfg.run.seed))
    left, kept = share, []
    for batch in batches:
        if left > 0:
            kept.append(batch[:left])
            left -= len(batch)
    batches = kept
    if cfg.bridge.recalibrate_bn:
        report.recalibrated_bn = recalibrate_batchnorm(snn, batches, device)
    spike_like_ann = any(isinstance(m, SharpenedReLU) for m in ann.modules())
    why_not = ("the SNN reads other data than the ANN (events)" if not same_data else
               "the ANN's activation is not the spike-like sharpened ReLU" if not spike_like_ann else
               f"{cfg.neuron.kind}'s output is analog" if cfg.neuron.spec.analog_output else "")
    if cfg.bridge.match_rates and not why_not:
        report.rate_errors = match_firing_rates(ann, snn, batches, iterations=cfg.bridge.calibration_iterations,
                                                device=device, progress=cfg.run.progress)
    elif cfg.bridge.match_rates and same_data:  # pipeD's event bridge never matches rates (README)
        report.rates_not_matched = why_not
    report.seconds = time.perf_counter() - start
    return snn, report


#: the fewest calibration samples the bridge takes from a small training split (:func:`bridge_to_snn`)
CALIBRATION_MIN_SAMPLES = 64


@dataclass
class Bridged:
    """An SNN made from an ANN: its checkpoint ``meta``, the tensors carried over as they are
    (``transferred``: what a warm-up keeps frozen) and what ``summary.json`` reports of it."""

    snn: nn.Module
    meta: dict
    transferred: set[str]
    details: dict[str, Any]


class AnnFamily(Protocol):
    def pretrain(self, ctx: RunContext, cfg: PipelineConfig, bundle: DataBundle) -> tuple[nn.Module, RunResult]: ...

    def to_snn(self, ctx: RunContext, cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle, *,
               same_data: bool) -> Bridged: ...

    def scratch(self, ctx: RunContext, cfg: PipelineConfig, bundle: DataBundle) -> tuple[nn.Module, dict]: ...

    def check_reads(self, cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle) -> None: ...


class RegistryFamily:
    """Registry architectures: the bridge (:func:`bridge_to_snn`)."""

    def pretrain(self, ctx: RunContext, cfg: PipelineConfig, bundle: DataBundle) -> tuple[nn.Module, RunResult]:
        seed_everything(cfg.run.seed)
        neuron = ann_neuron(cfg)
        ann = build_model(cfg, bundle, neuron, 1)
        return ann, ctx.fit(ann, bundle, cfg.ann, name="ann", meta=model_meta(cfg, bundle, neuron, 1))

    def to_snn(self, ctx: RunContext, cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle, *,
               same_data: bool) -> Bridged:
        snn, report = bridge_to_snn(cfg, ann, bundle, ctx.device, same_data=same_data)
        ctx.log(report.summary())
        return Bridged(snn, model_meta(cfg, bundle, cfg.neuron, cfg.model.T), set(report.matched),
                       {"transfer": report.to_dict()})

    def scratch(self, ctx: RunContext, cfg: PipelineConfig, bundle: DataBundle) -> tuple[nn.Module, dict]:
        seed_everything(cfg.run.seed)
        return build_model(cfg, bundle, cfg.neuron, cfg.model.T), model_meta(cfg, bundle, cfg.neuron, cfg.model.T)

    def check_reads(self, cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle) -> None:
        """Nothing to check: a registry ANN's classes and channels are read from its weights."""


# ------------------------------------------------------------------------------------------------
# The user's class: spikify
# ------------------------------------------------------------------------------------------------
class ClassFamily:
    """The user's ``FILE.py:ClassName`` (``kwargs``: its constructor arguments)."""

    def __init__(self, spec: str, kwargs: dict[str, Any] | None = None) -> None:
        self.spec, self.kwargs = spec, dict(kwargs or {})

    def fresh(self, seed: int) -> nn.Module:
        """A freshly initialised ``ClassName(**kwargs)``, the initialisation seeded with ``seed``."""
        seed_everything(seed)
        return import_ann(self.spec, self.kwargs)

    def pretrain(self, ctx: RunContext, cfg: PipelineConfig, bundle: DataBundle) -> tuple[nn.Module, RunResult]:
        """Train the class (seeded fresh initialisation, its own activations) with ``cfg.ann``:
        run ``ann``, whose checkpoints rebuild with ``evaluate`` / ``--ann CKPT``."""
        ann = self.fresh(cfg.run.seed)
        self.check_reads(cfg, ann, bundle)
        meta = ann_class_meta(self.spec, self.kwargs, num_classes=bundle.num_classes,
                              in_channels=bundle.in_channels, data=bundle.name)
        return ann, ctx.fit(ann, bundle, cfg.ann, name="ann", meta=meta)

    def check_reads(self, cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle) -> None:
        """ConfigError, before any training, when ``ann`` cannot read ``bundle``'s samples or does not
        give one score per class (with weights it crashed in the ANN's evaluation)."""
        _check_classes(ann, bundle, self.spec, calibration_inputs(bundle, 2, 2, cfg.run.seed)[0])

    def check_convertible(self, cfg: PipelineConfig, ann: nn.Module | None) -> None:
        """ConfigError, before any work (the run plan), when spikify cannot convert the class (an
        activation or call it does not know): the run found it only after the ANN's epochs."""
        spikify_with_graph(ann if ann is not None else self.fresh(cfg.run.seed), cfg.neuron, T=cfg.model.T,
                           calibrate=False)

    def to_snn(self, ctx: RunContext, cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle, *,
               same_data: bool, first_layer: str | None = None) -> Bridged:
        """``spikify`` the ANN (``cfg.neuron``, ``cfg.model.T``), its thresholds calibrated on
        ``bridge.calibration_batches`` x ``calibration_batch_size`` training samples. For events
        (batches ``[T, B, C, H, W]``) the ``nn.Conv2d`` reading the input is first replaced by one
        with ``bundle.in_channels`` channels (``first_layer``, default ``bridge.first_layer``:
        mean | signed_polarity | skip, drawn from ``run.seed``) and each threshold is calibrated
        against the adapted ANN on each sample's mean frame over T."""
        samples = cfg.bridge.calibration_batches * cfg.bridge.calibration_batch_size
        batches = calibration_inputs(bundle, samples, cfg.bridge.calibration_batch_size, cfg.run.seed)
        meta = {"num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "T": cfg.model.T,
                "data": bundle.name}
        if bundle.kind != "events":
            _check_classes(ann, bundle, self.spec, batches[0])
            snn = spikify(ann, cfg.neuron, T=cfg.model.T, calibration=batches, device=ctx.device,
                          calibration_samples=samples).to(ctx.device)
            used = min(samples, sum(len(x) for x in batches))  # the training split may hold fewer
            ctx.log(f"spikified {self.spec}: {len(snn.neurons)} neuron layers, thresholds calibrated on {used} samples")
            return Bridged(snn, spikified_meta(self.spec, self.kwargs, cfg.neuron, input_ndim=snn.input_ndim, **meta),
                           set(ann.state_dict()), {"thresholds": snn.thresholds()})
        mode = first_layer or cfg.bridge.first_layer
        kept, seen = [], 0
        for x in batches:  # [T, b, ...]: at most `samples` samples (dim 1)
            kept.append(x[:, : samples - seen])
            seen += kept[-1].shape[1]
            if seen >= samples:
                break
        ann_views = [x.mean(0) for x in kept]  # [b, C, H, W]: the rate-coded view of each sample
        input_ndim = kept[0].dim() - 1
        snn, ann_graph, _ = spikify_with_graph(ann, cfg.neuron, T=cfg.model.T, input_ndim=input_ndim, calibrate=False)
        seed_everything(cfg.run.seed)
        conv = adapt_input_conv(snn, bundle.in_channels, mode)
        adapt_input_conv(ann_graph, bundle.in_channels, "skip")
        ann_graph.get_submodule(conv).load_state_dict(snn.get_submodule(conv).state_dict())
        _check_classes(ann_graph, bundle, self.spec, ann_views[0])
        check_batch_axis(ann_graph, ann_views[0][: min(3, len(ann_views[0]))])
        calibrate_thresholds(snn, ann_graph, kept, ann_batches=ann_views, device=ctx.device)
        snn.to(ctx.device)
        ctx.log(f"spikified {self.spec} for events: input conv {conv!r} adapted ({mode}), thresholds calibrated")
        meta = spikified_meta(self.spec, self.kwargs, cfg.neuron, input_ndim=input_ndim, input_conv=conv, **meta)
        transferred = {k for k in ann.state_dict() if not k.startswith(conv + ".")}
        return Bridged(snn, meta, transferred, {"thresholds": snn.thresholds(), "events_input_conv": {
            "name": conv, "in_channels": bundle.in_channels, "first_layer": mode}})

    def scratch(self, ctx: RunContext, cfg: PipelineConfig, bundle: DataBundle) -> tuple[nn.Module, dict]:
        bridged = self.to_snn(ctx, cfg, self.fresh(cfg.run.seed), bundle, same_data=True, first_layer="skip")
        return bridged.snn, bridged.meta


def calibration_inputs(bundle: DataBundle, samples: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Seeded training batches without augmentation, ``samples`` in all (static ``[b, ...]``,
    events ``[T, b, ...]``)."""
    batch = max(1, min(batch_size, samples, len(bundle.train)))
    batches = list(calibration_batches(bundle, -(-samples // batch), batch_size=batch, seed=seed))
    if not batches:
        raise ConfigError(f"{bundle.name}: no training samples to calibrate the thresholds on")
    return batches


def ann_output(ann: nn.Module, example: torch.Tensor, label: str, data_name: str) -> Any:
    """The ANN's output on the batch ``example`` (eval mode, no gradients); ConfigError naming
    ``--ann label`` and the data when it cannot read it."""
    was_training = ann.training
    ann.eval()
    try:
        with torch.no_grad():
            return ann(example.to(next(ann.parameters()).device))
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--ann {label}: fails on {data_name} input of shape {list(example.shape[1:])} "
                          f"({first_line(exc)[:200]})") from None
    finally:
        ann.train(was_training)


def _check_classes(ann: nn.Module, bundle: DataBundle, label: str, example: torch.Tensor) -> None:
    """Refuse an ANN whose output on ``example[:2]`` (``[b, ...]``) is not ``[2, bundle.num_classes]``."""
    out = ann_output(ann, example[:2], label, bundle.name)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"--ann {label}: returns a {type(out).__name__}; spikebridge trains and converts networks "
                          "that return one tensor of class scores [batch, classes]")
    if out.dim() != 2 or out.shape[1] != bundle.num_classes:
        raise ConfigError(f"--ann {label}: outputs {list(out.shape)} for a batch of 2, but {bundle.name} has "
                          f"{bundle.num_classes} classes (pass them with --ann-kwargs)")


__all__ = [
    "AnnFamily", "AnnSource", "Bridged", "ClassFamily", "LoadedAnn", "RegistryFamily",
    "ann_source_from_flags", "bridge_to_snn", "build_model", "load_ann", "model_meta",
    "use_checkpoint_model",
]
