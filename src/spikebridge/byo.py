"""Bring your own ANN: the user's ``FILE.py:ClassName`` (or a spikebridge ANN checkpoint) as the
ANN of ``spikebridge finetune``, ``pipes`` and ``piped``.

* :class:`AnnSource` / :func:`ann_source_from_flags`: what ``--ann`` / ``--ann-weights`` /
  ``--ann-kwargs`` name, checked before any data is opened (one-line errors, exit 2).
* :func:`load_ann`: the ANN itself (:class:`LoadedAnn`): the class imported and its weights loaded
  strictly, or a checkpoint's model rebuilt (a registry ANN, or a user class that ``pipes`` /
  ``piped`` trained: checkpoint metadata ``ann_class``).
* :func:`pretrain_ann_class`: train a freshly initialised (seeded) user class on static data,
  with its own activations (run ``ann``).
* :func:`spikify_ann_class`: the user's ANN as an SNN for static data: spikify, per-layer
  thresholds calibrated on training images, checkpoint metadata that ``evaluate`` / ``export``
  read back (:func:`spikebridge.restore.spikified_meta`).
* :func:`spikify_ann_class_for_events`: the same for event data ``[T, B, C, H, W]``: after
  spikify, the ``nn.Conv2d`` reading the input is replaced by one taking the event channels
  (:func:`spikebridge.spikify.adapt_input_conv`, ``bridge.first_layer`` mode), and the thresholds
  are calibrated on event batches against the (equally adapted) ANN applied to each sample's mean
  event frame over T (the rate-coded input a per-frame ANN sees).
* :func:`pipes_with_ann`, :func:`piped_with_ann`: pipeS / pipeD from such an ANN. A registry
  checkpoint goes through :func:`spikebridge.pipelines.pipes` / ``piped`` (the bridge, with
  ``model.name`` taken from the checkpoint when it is ``auto``); a user class through spikify.
  Runs and ``summary.json`` as in the demo (``ann``, ``snn_pretrained``, ``snn_scratch``;
  ``snn_events_pretrained``, ``snn_events_scratch``; ``target_acc``, ``time_to_target``), plus
  ``ann`` (what ``--ann`` named), ``ann_acc`` (its static test accuracy, when static data is
  opened) and ``thresholds`` (the calibrated per-layer thresholds of the fine-tuned SNN's start).

The from-scratch baselines of a user class are the same class freshly initialised (seeded with
``run.seed``), spikified and calibrated the same way (a data-based initialisation that uses no
trained weights), trained with ``scratch`` / ``events.scratch``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .analysis.summary import PIPED, PIPES, build_summary
from .config import PipelineConfig
from .data.loading import DataBundle, calibration_batches
from .errors import CheckpointError, ConfigError
from .restore import (
    USER_ANN_MODEL_NAME,
    ann_class_meta,
    import_ann,
    is_python_class_spec,
    load_ann_weights,
    model_from_checkpoint,
    parse_ann_kwargs,
    spikified_meta,
)
from .spikify import SpikingNet, adapt_input_conv, calibrate_thresholds, check_batch_axis, spikify, spikify_with_graph
from .train.engine import RunResult, evaluate, fit
from .utils import seed_everything


# ------------------------------------------------------------------------------------------------
# What --ann names, and the ANN itself
# ------------------------------------------------------------------------------------------------
@dataclass
class AnnSource:
    """``--ann``: the user's class ``class_spec`` (``FILE.py:ClassName``; ``weights``: its trained
    weights, None = train it here; ``kwargs``: its constructor arguments), or a spikebridge ANN
    checkpoint ``checkpoint`` (``.json``)."""

    class_spec: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None

    @property
    def label(self) -> str:
        return str(self.class_spec or self.checkpoint)


def ann_source_from_flags(ann: str | None, weights: str | None, kwargs_text: str | None, *,
                          weights_required: bool = False) -> AnnSource | None:
    """``--ann`` / ``--ann-weights`` / ``--ann-kwargs`` as an :class:`AnnSource` (None: no ``--ann``).

    ``weights_required``: a class needs ``--ann-weights`` (``finetune``; ``pipes`` / ``piped``
    train the class when it is missing)."""
    if not ann:
        if weights or kwargs_text:
            raise ConfigError("--ann-weights / --ann-kwargs go with --ann FILE.py:ClassName (your ANN class)")
        return None
    if is_python_class_spec(ann):
        if weights_required and not weights:
            raise ConfigError("--ann FILE.py:ClassName needs --ann-weights W.pth|W.safetensors (the trained weights)")
        if weights and not Path(weights).expanduser().is_file():
            raise ConfigError(f"--ann-weights: file not found: {weights}")
        return AnnSource(class_spec=ann, weights=weights, kwargs=parse_ann_kwargs(kwargs_text))
    path_part = ann.rpartition(":")[0] if ":" in ann else ann
    if path_part.endswith(".py"):
        raise ConfigError(f"--ann {ann!r}: expected FILE.py:ClassName (a Python file and the nn.Module class in it) "
                          "or a spikebridge checkpoint .json")
    if weights or kwargs_text:
        raise ConfigError("--ann-weights / --ann-kwargs go with --ann FILE.py:ClassName; a checkpoint has its own")
    return AnnSource(checkpoint=ann)


@dataclass
class LoadedAnn:
    """The ANN an :class:`AnnSource` names.

    ``ann_class`` / ``kwargs``: the user's class (becomes an SNN by spikify), None for a registry
    model (becomes an SNN by the bridge; ``registry_name``). ``trained``: False for a class given
    without weights (a pipeline trains it first). ``checkpoint_model``: a checkpoint's
    ``meta["model"]`` (name, num_classes, in_channels, ...)."""

    model: nn.Module
    label: str
    ann_class: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    trained: bool = True
    registry_name: str | None = None
    checkpoint_model: dict[str, Any] = field(default_factory=dict)


def load_ann(source: AnnSource) -> LoadedAnn:
    """Import + load the weights of the user's class, or rebuild a checkpoint's ANN."""
    if source.class_spec:
        model = import_ann(source.class_spec, source.kwargs)
        if source.weights:
            load_ann_weights(model, source.weights)
        return LoadedAnn(model, source.label, source.class_spec, dict(source.kwargs), trained=bool(source.weights))
    model, meta, _ckpt = model_from_checkpoint(source.checkpoint)
    if getattr(model, "spiking", False):
        raise CheckpointError(f"{source.checkpoint}: this checkpoint is already an SNN; give the ANN's checkpoint")
    info = meta["model"]
    if info["name"] == USER_ANN_MODEL_NAME:
        return LoadedAnn(model, source.label, info["ann"], dict(info.get("ann_kwargs") or {}), checkpoint_model=info)
    return LoadedAnn(model, source.label, registry_name=info["name"], checkpoint_model=info)


def build_ann_class(ann_class: str, kwargs: dict[str, Any] | None, *, seed: int) -> nn.Module:
    """A freshly initialised ``ClassName(**kwargs)``, the initialisation seeded with ``seed``."""
    seed_everything(seed)
    return import_ann(ann_class, kwargs)


def use_checkpoint_model_name(cfg: PipelineConfig, loaded: LoadedAnn) -> None:
    """``model.name: auto`` + a registry checkpoint: the SNN is the checkpoint's architecture
    (not the model ``auto`` would pick for the data)."""
    if loaded.registry_name and cfg.model.name in ("auto", ""):
        cfg.model.name = loaded.registry_name


def pretrain_ann_class(cfg: PipelineConfig, ann_class: str, kwargs: dict[str, Any] | None, bundle: DataBundle,
                       device: torch.device) -> tuple[nn.Module, RunResult]:
    """Train the user's class (seeded fresh initialisation, its own activations) with ``cfg.ann``
    on ``bundle``: run ``ann``, whose checkpoints rebuild with ``evaluate`` / ``--ann CKPT``."""
    ann = build_ann_class(ann_class, kwargs, seed=cfg.run.seed)
    _check_classes(ann, bundle, ann_class, calibration_inputs(bundle, 2, 2, cfg.run.seed)[0])
    result = fit(
        ann, bundle, cfg.ann, name="ann", run_dir=cfg.run.out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, amp=cfg.run.amp, sync_bn=cfg.run.sync_bn,
        meta=ann_class_meta(ann_class, kwargs, num_classes=bundle.num_classes, in_channels=bundle.in_channels,
                            data=bundle.name),
    )
    return ann, result


# ------------------------------------------------------------------------------------------------
# The user's ANN as an SNN
# ------------------------------------------------------------------------------------------------
def calibration_inputs(bundle: DataBundle, samples: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Seeded training batches without augmentation, ``samples`` in all (static ``[b, ...]``,
    events ``[T, b, ...]``)."""
    batch = max(1, min(batch_size, samples, len(bundle.train)))
    batches = list(calibration_batches(bundle, -(-samples // batch), batch_size=batch, seed=seed))
    if not batches:
        raise ConfigError(f"{bundle.name}: no training samples to calibrate the thresholds on")
    return batches


def _check_classes(ann: nn.Module, bundle: DataBundle, label: str, example: torch.Tensor) -> None:
    """Refuse an ANN whose output on ``example[:2]`` (``[b, ...]``) is not ``[2, bundle.num_classes]``."""
    was_training = ann.training
    ann.eval()
    try:
        with torch.no_grad():
            out = ann(example[:2].to(next(ann.parameters()).device))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ann {label}: fails on {bundle.name} input of shape {list(example.shape[1:])} ({first})") from None
    finally:
        ann.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != bundle.num_classes:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"--ann {label}: outputs {shape} for a batch of 2, but {bundle.name} has "
                          f"{bundle.num_classes} classes (pass them with --ann-kwargs)")


def spikify_ann_class(
    cfg: PipelineConfig, ann: nn.Module, ann_class: str, kwargs: dict[str, Any] | None, bundle: DataBundle,
    device: torch.device, *, calibration_samples: int, calibration_batch_size: int = 250,
) -> tuple[SpikingNet, dict, dict[str, float]]:
    """The user's ANN as an SNN for static ``bundle`` (``cfg.neuron``, ``cfg.model.T``), its
    thresholds calibrated on ``calibration_samples`` training images: ``(snn, checkpoint meta,
    thresholds)``."""
    batches = calibration_inputs(bundle, calibration_samples, calibration_batch_size, cfg.run.seed)
    _check_classes(ann, bundle, ann_class, batches[0])
    snn = spikify(ann, cfg.neuron, T=cfg.model.T, calibration=batches, device=device,
                  calibration_samples=calibration_samples).to(device)
    meta = spikified_meta(ann_class, kwargs, cfg.neuron, num_classes=bundle.num_classes,
                          in_channels=bundle.in_channels, T=cfg.model.T, input_ndim=snn.input_ndim, data=bundle.name)
    return snn, meta, snn.thresholds()


def spikify_ann_class_for_events(
    cfg: PipelineConfig, ann: nn.Module, ann_class: str, kwargs: dict[str, Any] | None, events: DataBundle,
    device: torch.device, *, first_layer: str, calibration_samples: int, calibration_batch_size: int = 250,
) -> tuple[SpikingNet, dict, str, dict[str, float]]:
    """The user's (static) ANN as an SNN for ``events`` (batches ``[T, B, C, H, W]``).

    Spikify; replace the ``nn.Conv2d`` reading the input by one with ``events.in_channels``
    channels (``first_layer``: mean | signed_polarity | skip; ``skip`` draws the new conv from
    the RNG seeded with ``run.seed``); calibrate each threshold on ``calibration_samples`` event
    samples against the adapted ANN on each sample's mean frame over T. Returns ``(snn, checkpoint
    meta, name of the adapted conv, thresholds)``. ``cfg.model.T``: the events' time steps.
    """
    batches = calibration_inputs(events, calibration_samples, calibration_batch_size, cfg.run.seed)
    kept, seen = [], 0
    for x in batches:  # [T, b, ...]: at most calibration_samples samples (dim 1)
        kept.append(x[:, : calibration_samples - seen])
        seen += kept[-1].shape[1]
        if seen >= calibration_samples:
            break
    batches = kept
    ann_views = [x.mean(0) for x in batches]  # [b, C, H, W]: the rate-coded view of each sample
    input_ndim = batches[0].dim() - 1
    snn, ann_graph, _ = spikify_with_graph(ann, cfg.neuron, T=cfg.model.T, input_ndim=input_ndim, calibrate=False)
    seed_everything(cfg.run.seed)
    conv = adapt_input_conv(snn, events.in_channels, first_layer)
    adapt_input_conv(ann_graph, events.in_channels, "skip")
    ann_graph.get_submodule(conv).load_state_dict(snn.get_submodule(conv).state_dict())
    _check_classes(ann_graph, events, ann_class, ann_views[0])
    check_batch_axis(ann_graph, ann_views[0][: min(3, len(ann_views[0]))])
    calibrate_thresholds(snn, ann_graph, batches, ann_batches=ann_views, device=device)
    snn.to(device)
    meta = spikified_meta(ann_class, kwargs, cfg.neuron, num_classes=events.num_classes,
                          in_channels=events.in_channels, T=cfg.model.T, input_ndim=input_ndim, data=events.name,
                          input_conv=conv)
    return snn, meta, conv, snn.thresholds()


def _log(cfg: PipelineConfig, message: str) -> None:
    from .pipelines import _log as pipeline_log

    pipeline_log(cfg, message)


def _calibration_samples(cfg: PipelineConfig) -> int:
    return cfg.bridge.calibration_batches * cfg.bridge.calibration_batch_size


# ------------------------------------------------------------------------------------------------
# pipeS / pipeD from the user's ANN
# ------------------------------------------------------------------------------------------------
def pipes_with_ann(cfg: PipelineConfig, source: AnnSource | LoadedAnn, *, baseline: bool = True) -> dict:
    """pipeS from ``source`` (see the module docstring); writes and returns ``summary.json``."""
    from .pipelines import _prepare_run, open_static, pipes, write_outputs

    loaded = source if isinstance(source, LoadedAnn) else load_ann(source)  # bad --ann: fails before any output
    if loaded.ann_class is None:
        use_checkpoint_model_name(cfg, loaded)
        return pipes(cfg, baseline=baseline, ann=loaded.model)
    device = _prepare_run(cfg)
    started = time.perf_counter()
    bundle = open_static(cfg)
    runs: list[RunResult] = []
    ann, momentum = loaded.model, None
    if not loaded.trained:
        _log(cfg, f"[pipeS] ANN {loaded.label} on {bundle.name}: {len(bundle.train)} train / {len(bundle.test)} test")
        ann, ann_result = pretrain_ann_class(cfg, loaded.ann_class, loaded.kwargs, bundle, device)
        runs.append(ann_result)
        momentum = ann_result.optimizer_state if cfg.bridge.transfer_optimizer else None
    ann_acc = evaluate(ann.to(device), bundle, device=device)["acc"]
    _log(cfg, f"[pipeS] ANN {loaded.label}: test accuracy {ann_acc:.4f}; spikify ({cfg.neuron.kind}, T={cfg.model.T})")
    samples = _calibration_samples(cfg)
    snn, meta, thresholds = spikify_ann_class(cfg, ann, loaded.ann_class, loaded.kwargs, bundle, device,
                                              calibration_samples=samples,
                                              calibration_batch_size=cfg.bridge.calibration_batch_size)
    common = dict(run_dir=cfg.run.out, seed=cfg.run.seed, device=device, progress=cfg.run.progress,
                  resume=cfg.run.resume, amp=cfg.run.amp, sync_bn=cfg.run.sync_bn)
    pretrained = fit(snn, bundle, cfg.finetune, name="snn_pretrained", evaluate_first=True, meta=meta,
                     optimizer_state=momentum, **common)
    runs.append(pretrained)
    if baseline:
        _log(cfg, f"[pipeS] baseline: {loaded.label} freshly initialised, spikified, from scratch ({cfg.scratch.epochs} epochs)")
        fresh = build_ann_class(loaded.ann_class, loaded.kwargs, seed=cfg.run.seed)
        scratch_snn, scratch_meta, _ = spikify_ann_class(cfg, fresh, loaded.ann_class, loaded.kwargs, bundle, device,
                                                         calibration_samples=samples,
                                                         calibration_batch_size=cfg.bridge.calibration_batch_size)
        runs.append(fit(scratch_snn, bundle, cfg.scratch, name="snn_scratch", meta=scratch_meta, **common))
    summary = build_summary(
        bundle.name, cfg.model.T, [r.to_summary() for r in runs], comparisons=(PIPES,),
        extra={"ann": loaded.label, "ann_acc": ann_acc, "transfer_acc": pretrained.curve[0][2], "thresholds": thresholds},
    )
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(cfg, summary, runs, title=f"pipeS on {bundle.name}: your ANN as an SNN (T={cfg.model.T}) vs from scratch")
    return summary


def piped_with_ann(cfg: PipelineConfig, source: AnnSource | LoadedAnn, *, baseline: bool = True) -> dict:
    """pipeD from ``source`` (see the module docstring); writes and returns ``summary.json``."""
    from .bridge import FIRST_LAYER_MODES
    from .pipelines import (
        _prepare_run, events_config, first_layer_comparison, open_events, open_static, piped, write_outputs,
    )

    loaded = source if isinstance(source, LoadedAnn) else load_ann(source)  # bad --ann: fails before any output
    if loaded.ann_class is None:
        use_checkpoint_model_name(cfg, loaded)
        return piped(cfg, baseline=baseline, ann=loaded.model)
    device = _prepare_run(cfg)
    started = time.perf_counter()
    runs: list[RunResult] = []
    ann = loaded.model
    extra: dict[str, Any] = {"ann": loaded.label}
    if not loaded.trained:
        bundle = open_static(cfg)
        _log(cfg, f"[pipeD] ANN {loaded.label} on {bundle.name}: {len(bundle.train)} train / {len(bundle.test)} test")
        ann, ann_result = pretrain_ann_class(cfg, loaded.ann_class, loaded.kwargs, bundle, device)
        runs.append(ann_result)
        extra["ann_acc"] = evaluate(ann, bundle, device=device)["acc"]
    events = open_events(cfg)
    ecfg = events_config(cfg, events)
    samples = _calibration_samples(cfg)

    def event_snn(model: nn.Module, mode: str) -> tuple[SpikingNet, dict, str, dict[str, float]]:
        return spikify_ann_class_for_events(ecfg, model, loaded.ann_class, loaded.kwargs, events, device,
                                            first_layer=mode, calibration_samples=samples,
                                            calibration_batch_size=cfg.bridge.calibration_batch_size)

    mode = cfg.bridge.first_layer
    _log(cfg, f"[pipeD] events {events.name}: T={ecfg.model.T}, {events.in_channels} polarities; spikify "
              f"{loaded.label}, its input conv adapted ({mode})")
    snn, meta, conv, thresholds = event_snn(ann, mode)
    # warm-up ("+WU"): for finetune.freeze_epochs epochs only what was not transferred as-is trains
    transferred = {k for k in ann.state_dict() if not k.startswith(conv + ".")}
    frozen = transferred if ecfg.finetune.freeze_epochs > 0 else None
    common = dict(seed=cfg.run.seed, device=device, progress=cfg.run.progress, amp=cfg.run.amp, sync_bn=cfg.run.sync_bn)
    pretrained = fit(snn, events, ecfg.finetune, name="snn_events_pretrained", run_dir=cfg.run.out,
                     resume=cfg.run.resume, evaluate_first=True, frozen=frozen, meta=meta, **common)
    runs.append(pretrained)
    modes = {mode: pretrained.curve[: cfg.events.compare_epochs + 1]}
    if cfg.events.compare_first_layer:
        for other in FIRST_LAYER_MODES:
            if other in modes:
                continue
            _log(cfg, f"[pipeD] first layer '{other}': {cfg.events.compare_epochs} epoch(s) for comparison")
            snn_other = event_snn(ann, other)[0]
            modes[other] = fit(snn_other, events, ecfg.finetune, name=f"snn_events_{other}", run_dir=None,
                               evaluate_first=True, stop_after=cfg.events.compare_epochs, **common).curve
    if baseline:
        _log(cfg, f"[pipeD] baseline: {loaded.label} freshly initialised, spikified, on events from scratch "
                  f"({ecfg.scratch.epochs} epochs)")
        fresh = build_ann_class(loaded.ann_class, loaded.kwargs, seed=cfg.run.seed)
        scratch_snn, scratch_meta, _, _ = event_snn(fresh, "skip")
        runs.append(fit(scratch_snn, events, ecfg.scratch, name="snn_events_scratch", run_dir=cfg.run.out,
                        resume=cfg.run.resume, meta=scratch_meta, **common))
    extra.update(transfer_acc=pretrained.curve[0][2], thresholds=thresholds,
                 first_layer_comparison=first_layer_comparison(ecfg.model.T, modes),
                 events_input_conv={"name": conv, "in_channels": events.in_channels, "first_layer": mode})
    summary = build_summary(cfg.events.data, ecfg.model.T, [r.to_summary() for r in runs], comparisons=(PIPED,),
                            extra=extra)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(cfg, summary, runs, title=f"pipeD on {cfg.events.data}: your static ANN as an event SNN vs from scratch")
    return summary


__all__ = [
    "AnnSource",
    "LoadedAnn",
    "ann_source_from_flags",
    "build_ann_class",
    "calibration_inputs",
    "load_ann",
    "piped_with_ann",
    "pipes_with_ann",
    "pretrain_ann_class",
    "spikify_ann_class",
    "spikify_ann_class_for_events",
    "use_checkpoint_model_name",
]
