"""pipeS (:func:`run_pipes`), pipeD (:func:`run_piped`) and the commands' flows built on them (the
demo, ``pretrain``, ``pipes``, ``piped``, ``finetune``), each written once for every ANN source
(:mod:`spikebridge.pipelines.ann`). Each flow starts with :func:`start_run` and ends with
:func:`write_outputs` (``summary.json``, ``metrics.csv``, ``report.md``, the figure).
"""
from __future__ import annotations

import os
from dataclasses import asdict, replace
from typing import Any

import torch
from torch import nn

from ..analysis.plots import plot_accuracy_vs_time
from ..analysis.summary import PIPED, PIPES, build_summary, results_table, wall_time_line, write_json
from ..bridge import FIRST_LAYER_MODES, transfer_headline
from ..config import PipelineConfig, dump_yaml
from ..data.datasets import open_data_config, open_dataset, resolve_model_name
from ..data.loading import DataBundle, with_time_bins
from ..errors import ConfigError, clip
from ..train.distributed import current as current_rank
from ..train.engine import METRICS_COLUMNS, RunResult, check_batches, evaluate, write_metrics_csv
from ..utils import Stopwatch, atomic_write_text, counted, ensure_dir
from .ann import LoadedAnn, RegistryFamily, check_model_fits, use_checkpoint_model
from .context import RunContext, claims_run_folder, log, log_written


def start_run(cfg: PipelineConfig) -> RunContext:
    """The run's context; torch's threads; ``OUT/config.yaml`` (rank 0 alone writes under torchrun).
    ``cfg`` is validated already: by the run plan (CLI) or :func:`~.context.claims_run_folder`."""
    ctx = RunContext.from_config(cfg)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if ctx.is_main:
        ensure_dir(ctx.out)
        # the run folder by its absolute path: a --resume from another working directory wrote its relative one
        atomic_write_text(ctx.out / "config.yaml", dump_yaml(replace(cfg, run=replace(cfg.run, out=os.path.abspath(ctx.out)))))
    return ctx


def open_static(cfg: PipelineConfig) -> DataBundle:
    """Open ``cfg.data``; a ``model.name`` of ``auto`` becomes the model suggested for it, and for
    video clips ``model.T`` their frames (in ``cfg``: what the run and its checkpoints record)."""
    bundle = open_data_config(cfg.data)
    cfg.model.name = resolve_model_name(cfg.model.name, bundle)
    if bundle.info.get("format") == "video-clips":
        cfg.model.T = bundle.time_steps
    check_model_fits(cfg, bundle)
    return bundle


def open_events(cfg: PipelineConfig) -> DataBundle:
    """``cfg.events.data`` with ``events.time_bins`` steps (and ``data.limit_train`` / ``limit_test``)."""
    return with_time_bins(open_dataset(cfg.events.data, split_seed=cfg.data.split_seed, workers=cfg.data.workers,
                                       image_size=cfg.events.image_size, limit_train=cfg.data.limit_train,
                                       limit_test=cfg.data.limit_test), cfg.events.time_bins)


def events_config(cfg: PipelineConfig, events: DataBundle) -> PipelineConfig:
    """The pipeline config of the event half: event model/T/channels and the event phases."""
    steps = events.time_steps or cfg.model.T
    model = replace(cfg.model, name=cfg.events.model or cfg.model.name, T=steps, in_channels=events.in_channels)
    return replace(cfg, model=model, finetune=cfg.events.finetune, scratch=cfg.events.scratch)


def ann_extra(loaded: LoadedAnn) -> dict[str, Any]:
    """``summary.json``'s record of an ANN given with ``--ann``: its label and, for a spikebridge
    checkpoint, its recorded training seconds (wall and CPU), which ``*_total`` counts as it counts
    an ANN trained in the run."""
    extra: dict[str, Any] = {"ann": loaded.label}
    if "seconds" in loaded.training:
        extra.update(ann_seconds=loaded.training["seconds"], ann_cpu_seconds=loaded.training.get("cpu_seconds", 0.0))
    return extra


def _loaded(ann: LoadedAnn | nn.Module | None) -> LoadedAnn | None:
    """A registry model built by ``create_model`` (Python callers) as a :class:`LoadedAnn` of its
    architecture; any other module is refused, naming the way to pass one's own class."""
    if ann is None or isinstance(ann, LoadedAnn):
        return ann
    built = getattr(ann, "registry_model", None)
    if not isinstance(ann, nn.Module) or not isinstance(built, dict):
        raise ConfigError(f"ann=: {type(ann).__name__} is not a registry model (spikebridge.create_model); for your "
                          "own class give ann=load_ann(AnnSource(class_spec='net.py:Net', weights='w.pth')) "
                          "(spikebridge.pipelines), or convert it with spikebridge.spikify")
    if getattr(ann, "spiking", False):
        raise ConfigError(f"ann=: this {built['name']} is already spiking; give the ANN (neuron='relu' or "
                          "'sharpened_relu')")
    return LoadedAnn(ann, built["name"], RegistryFamily(), checkpoint_model=dict(built))


def _reported(details: dict[str, Any], bridge_seconds: float) -> dict[str, Any]:
    """A bridge's ``details`` for ``summary.json``: the transfer report's seconds are the phase's
    ``bridge_seconds`` (after ``--resume``, the first run's: one figure, not two)."""
    if isinstance(details.get("transfer"), dict):
        return {**details, "transfer": {**details["transfer"], "bridge_seconds": bridge_seconds}}
    return details


# ------------------------------------------------------------------------------------------------
# the two flows
# ------------------------------------------------------------------------------------------------
def run_pipes(ctx: RunContext, cfg: PipelineConfig, bundle: DataBundle, loaded: LoadedAnn | None, *,
              baseline: bool, name: str = "snn_pretrained") -> tuple[nn.Module, nn.Module, list[RunResult], dict]:
    """ANN on static data (trained here when ``loaded`` is None or has no model yet) -> SNN
    fine-tuned on the same data (+ the SNN from scratch): ``(ann, snn, runs, summary extras)``."""
    loaded = loaded or LoadedAnn(None, f"{cfg.ann_neuron} {cfg.model.name}", RegistryFamily())
    family, label, ann = loaded.family, loaded.label, loaded.model
    runs: list[RunResult] = []
    extra: dict[str, Any] = {}
    check_batches(bundle, {**({"ann": cfg.ann} if ann is None else {}), name: cfg.finetune,
                           **({"snn_scratch": cfg.scratch} if baseline else {})})
    if ann is None:
        ctx.log(f"[pipeS] ANN {label} on {bundle.name}: {len(bundle.train)} train / {len(bundle.test)} test, "
                f"{counted(cfg.ann.epochs, 'epoch')}")
        ann, ann_result = family.pretrain(ctx, cfg, bundle)
        runs.append(ann_result)
        momentum = ann_result.optimizer_state if cfg.bridge.transfer_optimizer else None
        extra["ann_acc"] = ann_result.final_acc
    else:
        family.check_reads(cfg, ann, bundle)
        classes, channels = (loaded.checkpoint_model.get(k) for k in ("num_classes", "in_channels"))
        extra.update(ann_extra(loaded))
        if classes is not None and int(classes) != bundle.num_classes:  # e.g. ImageNet weights, 10 classes
            held = f"{classes} classes" if classes else "no classifier (backbone weights)"
            ctx.log(f"[pipeS] {loaded.label} has {held}, {bundle.name} {bundle.num_classes} classes: the SNN's "
                    "classifier starts new (not transferred), and the ANN is not evaluated on this data")
            extra["ann_acc"] = None
        elif channels is not None and int(channels) != bundle.in_channels:  # e.g. RGB weights, grey images
            ctx.log(f"[pipeS] {loaded.label} reads {channels}-channel images, {bundle.name} has {bundle.in_channels}: "
                    f"the SNN's first layer is adapted (bridge.first_layer: {cfg.bridge.first_layer}), and the ANN is "
                    "not evaluated on this data")
            extra["ann_acc"] = None
        else:
            extra["ann_acc"] = evaluate(ann.to(ctx.device), bundle, device=ctx.device)["acc"]
        momentum = loaded.optimizer_state if cfg.bridge.transfer_optimizer else None  # a checkpoint's momentum
        if cfg.bridge.transfer_optimizer and not momentum:
            ctx.log(f"[pipeS] {loaded.label} holds no optimizer state of this model: the fine-tune starts with a "
                    "fresh one (bridge.transfer_optimizer)")
    ann_acc = "-" if extra["ann_acc"] is None else f"{extra['ann_acc']:.4f}"
    ctx.log(f"[pipeS] ANN test accuracy {ann_acc}; bridge: ANN -> SNN ({cfg.neuron.kind}, "
            f"T={cfg.model.T}), then fine-tune {counted(cfg.finetune.epochs, 'epoch')}")
    watch = Stopwatch()
    bridged = family.to_snn(ctx, cfg, ann, bundle, same_data=True)
    bridge = ctx.bridge_seconds(name, watch.seconds())  # counted in the time to target
    extra["bridge_seconds"], extra["bridge_cpu_seconds"] = bridge
    # warm-up (finetune.freeze_epochs): only what was not transferred as-is trains (e.g. a new classifier)
    frozen = bridged.transferred if cfg.finetune.freeze_epochs > 0 else None
    result = ctx.fit(bridged.snn, bundle, cfg.finetune, name=name, meta={**bridged.meta, "bridge_seconds": bridge},
                     evaluate_first=True, optimizer_state=momentum, frozen=frozen)
    runs.append(result)
    extra.update(_reported(bridged.details, bridge[0]), transfer_acc=result.curve[0][2] if result.curve else None)
    if baseline:
        ctx.log(f"[pipeS] baseline: the same SNN from scratch ({counted(cfg.scratch.epochs, 'epoch')})")
        snn, meta = family.scratch(ctx, cfg, bundle)
        runs.append(ctx.fit(snn, bundle, cfg.scratch, name="snn_scratch", meta=meta))
    return ann, bridged.snn, runs, extra


def run_piped(ctx: RunContext, cfg: PipelineConfig, ann: nn.Module, loaded: LoadedAnn | None, *,
              baseline: bool, events: DataBundle | None = None) -> tuple[list[RunResult], dict]:
    """A static ANN -> SNN fine-tuned on ``cfg.events.data`` (or the given ``events`` bundle) (+ the
    event SNN from scratch, + the other first-layer adaptations for ``events.compare_epochs``
    epochs): ``(runs, summary extras)``."""
    family = loaded.family if loaded is not None else RegistryFamily()
    events = open_events(cfg) if events is None else events  # a given bundle keeps its own T
    ecfg = events_config(cfg, events)
    mode = cfg.bridge.first_layer
    ctx.log(f"[pipeD] events {events.name}: T={ecfg.model.T}, {events.in_channels} polarities; "
            f"bridge the static ANN (first layer: {mode}), then fine-tune {counted(ecfg.finetune.epochs, 'epoch')}")
    watch = Stopwatch()
    bridged = family.to_snn(ctx, ecfg, ann, events, same_data=False)
    bridge_seconds, bridge_cpu_seconds = ctx.bridge_seconds("snn_events_pretrained", watch.seconds())
    # warm-up ("+WU"): for finetune.freeze_epochs epochs only what was not transferred as-is trains
    frozen = bridged.transferred if ecfg.finetune.freeze_epochs > 0 else None
    result = ctx.fit(bridged.snn, events, ecfg.finetune, name="snn_events_pretrained", evaluate_first=True,
                     meta={**bridged.meta, "bridge_seconds": (bridge_seconds, bridge_cpu_seconds)}, frozen=frozen)
    runs = [result]
    modes = {mode: result.curve[: cfg.events.compare_epochs + 1]}
    if cfg.events.compare_first_layer:
        for other in FIRST_LAYER_MODES:
            if other in modes:
                continue
            ctx.log(f"[pipeD] first layer '{other}': {cfg.events.compare_epochs} epoch(s) for comparison")
            other_cfg = replace(ecfg, bridge=replace(ecfg.bridge, first_layer=other))
            snn_other = family.to_snn(ctx, other_cfg, ann, events, same_data=False).snn
            modes[other] = ctx.fit(snn_other, events, ecfg.finetune, name=f"snn_events_{other}", saved=False,
                                   evaluate_first=True, stop_after=cfg.events.compare_epochs).curve
    if baseline:
        ctx.log(f"[pipeD] baseline: the event SNN from scratch ({counted(ecfg.scratch.epochs, 'epoch')})")
        snn, meta = family.scratch(ctx, ecfg, events)
        runs.append(ctx.fit(snn, events, ecfg.scratch, name="snn_events_scratch", meta=meta))
    extra = {("events_transfer" if key == "transfer" else key): value
             for key, value in _reported(bridged.details, bridge_seconds).items()}
    # per first-layer mode: the accuracy right after the transfer and after each compared epoch
    comparison = {mode: {"transfer_acc": curve[0][2], "acc": [p[2] for p in curve[1:]],
                         "seconds": [p[0] for p in curve[1:]]} for mode, curve in modes.items()}
    extra.update(events_data=events.name, events_transfer_acc=result.curve[0][2],
                 events_bridge_seconds=bridge_seconds, events_bridge_cpu_seconds=bridge_cpu_seconds,
                 first_layer_comparison={"T": ecfg.model.T, "modes": comparison})
    return runs, extra


# ------------------------------------------------------------------------------------------------
# the commands' flows
# ------------------------------------------------------------------------------------------------
@claims_run_folder("pretrain")
def pretrain(cfg: PipelineConfig, *, ann: LoadedAnn | None = None) -> dict:
    """Train the ANN (a registry model with ``ann_neuron``, or the user's class) on static data."""
    ctx = start_run(cfg)
    bundle = open_static(cfg)
    family = ann.family if ann is not None else RegistryFamily()
    ctx.log(f"[pretrain] ANN on {bundle.name}: {len(bundle.train)} train / {len(bundle.test)} test, {counted(cfg.ann.epochs, 'epoch')}")
    _model, result = family.pretrain(ctx, cfg, bundle)
    return write_outputs(ctx, [result], dataset=bundle.name, T=1, comparisons=(),
                         title=f"ANN pretraining on {bundle.name}")


@claims_run_folder("pipes")
def pipes(cfg: PipelineConfig, *, baseline: bool = False, ann: LoadedAnn | nn.Module | None = None,
          bundle: DataBundle | None = None) -> dict:
    """pipeS: ANN on static data (trained here unless given) -> SNN fine-tuned on the same data
    (+ the scratch SNN baseline with ``baseline``, as the CLI's ``--baseline``). Writes and returns
    ``summary.json``."""
    if bundle is not None and bundle.kind != "static":
        raise ConfigError(f"pipes(bundle=...): {clip(bundle.name)!r} holds {bundle.kind} samples [T, C, H, W]; pipeS "
                          "trains on static images (events: piped(cfg, events=...))")
    loaded = _loaded(ann)
    cfg = use_checkpoint_model(cfg, loaded)
    ctx = start_run(cfg)
    bundle = bundle or open_static(cfg)
    _ann, _snn, runs, extra = run_pipes(ctx, cfg, bundle, loaded, baseline=baseline)
    return write_outputs(ctx, runs, dataset=bundle.name, T=cfg.model.T, comparisons=(PIPES,), extra=extra,
                         title=f"pipeS on {bundle.name}: SNN (T={cfg.model.T}) from an ANN"
                               + (" vs from scratch" if baseline else ""))


@claims_run_folder("finetune")
def finetune(cfg: PipelineConfig, ann: LoadedAnn) -> dict:
    """Your trained ANN -> an SNN, fine-tuned (pipeS without pretraining or baseline; run
    ``snn_finetuned``). Writes and returns ``summary.json``."""
    cfg = use_checkpoint_model(cfg, ann)
    ctx = start_run(cfg)
    bundle = open_static(cfg)
    _ann, _snn, runs, extra = run_pipes(ctx, cfg, bundle, ann, baseline=False, name="snn_finetuned")
    return write_outputs(ctx, runs, dataset=bundle.name, T=cfg.model.T, comparisons=(),
                         extra={**extra, "finetune": asdict(cfg.finetune), "neuron": asdict(cfg.neuron)},
                         title=f"Your ANN as an SNN: {ann.label} on {bundle.name}, T={cfg.model.T}")


@claims_run_folder("piped")
def piped(cfg: PipelineConfig, *, baseline: bool = False, ann: LoadedAnn | nn.Module | None = None,
          events: DataBundle | None = None) -> dict:
    """pipeD: an ANN pretrained on static images (trained here unless given) -> SNN on events:
    ``cfg.events.data``, or ``events``, any torch datasets of ``[T, 2, H, W]`` frames made a bundle
    by :func:`spikebridge.data.loading.dataset_bundle` (a Tonic dataset, say)."""
    if events is not None and events.kind != "events":
        raise ConfigError(f"piped(events=...): {clip(events.name)!r} holds {events.kind} samples, not [T, C, H, W] "
                          "event frames")
    loaded = _loaded(ann)
    cfg = use_checkpoint_model(cfg, loaded)
    ctx = start_run(cfg)
    runs: list[RunResult] = []
    extra: dict[str, Any] = ann_extra(loaded) if loaded is not None else {}
    model = loaded.model if loaded is not None else None
    events = open_events(cfg) if events is None else events  # bad event data fails before the ANN trains
    bundle = open_static(cfg) if model is None else None
    ecfg = events_config(cfg, events)
    check_model_fits(ecfg, events)
    check_batches(events, {"snn_events_pretrained": ecfg.finetune, **({"snn_events_scratch": ecfg.scratch}
                                                                     if baseline else {})})
    if model is None:
        check_batches(bundle, {"ann": cfg.ann})
        family = loaded.family if loaded is not None else RegistryFamily()
        ctx.log(f"[pipeD] ANN on {bundle.name}: {len(bundle.train)} train / {len(bundle.test)} test, {counted(cfg.ann.epochs, 'epoch')}")
        model, ann_result = family.pretrain(ctx, cfg, bundle)
        runs.append(ann_result)
        extra["ann_acc"] = ann_result.final_acc
    event_runs, event_extra = run_piped(ctx, cfg, model, loaded, baseline=baseline, events=events)
    extra.update(event_extra, transfer_acc=event_extra["events_transfer_acc"])
    name = event_extra["events_data"]
    return write_outputs(ctx, runs + event_runs, dataset=name, T=event_extra["first_layer_comparison"]["T"],
                         comparisons=(PIPED,), extra=extra,
                         title=f"pipeD on {name}: event SNN from a static ANN" + (" vs from scratch" if baseline else ""))


@claims_run_folder("demo")
def demo(cfg: PipelineConfig, *, events: bool = True) -> dict:
    """The main job: pipeS on the embedded MNIST and pipeD on its ODG events (ES-MNIST), one report."""
    ctx = start_run(cfg)
    bundle = open_static(cfg)
    ann, snn, runs, extra = run_pipes(ctx, cfg, bundle, None, baseline=True)
    if cfg.demo_conversion_samples:
        from ..analysis.figures import conversion_vs_bridge

        ctx.log("[pipeS] accuracy vs T: the fine-tuned SNN vs classic ANN->SNN conversion of the same ANN")
        extra["conversion_vs_bridge"] = conversion_vs_bridge(
            ann, snn, bundle, [1, 2, 4, 8, 16, 32], cfg.run.out, max_samples=cfg.demo_conversion_samples,
            device=ctx.device)
    if events:
        event_runs, event_extra = run_piped(ctx, cfg, ann, None, baseline=True)
        runs += event_runs
        extra.update(event_extra)
    return write_outputs(ctx, runs, dataset=bundle.name, T=cfg.model.T, extra=extra,
                         comparisons=(PIPES, PIPED) if events else (PIPES,),
                         title=f"spikebridge demo on {bundle.name}: SNNs from an ANN vs from scratch")


def write_outputs(ctx: RunContext, runs: list[RunResult], *, dataset: str, T: int, comparisons: tuple,
                  extra: dict[str, Any] | None = None, title: str) -> dict:
    """The run's summary (:func:`~spikebridge.analysis.summary.build_summary` of ``runs``) with its
    ``wall_seconds`` (since ``ctx.started``), written as ``summary.json`` with ``metrics.csv``,
    ``report.md`` and the figure into ``ctx.out`` (rank 0 alone under torchrun); returns it."""
    summary = build_summary(dataset, T, [r.to_summary() for r in runs], comparisons=comparisons, extra=extra)
    summary.update(ctx.wall_time())
    if not current_rank().is_main:
        return summary
    out = ctx.out
    write_json(out / "summary.json", summary)
    write_metrics_csv(out / "metrics.csv", [{"run": run.name, **record} for run in runs for record in run.history],
                      ("run", *METRICS_COLUMNS))
    targets = {f"target ({label})": summary.get(comp.target_key) for comp, label in ((PIPES, "static"), (PIPED, "events"))
               if comp in comparisons}
    plot_accuracy_vs_time(curves_after_bridge(summary, comparisons), out / "accuracy_vs_time.png", title=title,
                          targets=targets)
    table = results_table(summary["runs"], summary.get("time_to_target"))
    atomic_write_text(out / "report.md", render_report(summary, table, title))
    log("\n" + table + "\n")
    log_written(out)
    return summary


def curves_after_bridge(summary: dict, comparisons: tuple) -> list[dict]:
    """The summary's runs for the accuracy-vs-time figure: a bridged SNN's curve starts once its
    bridge is done (its ``bridge_key`` seconds), as its time to target counts them."""
    after = {comp.pretrained: float(summary.get(comp.bridge_key) or 0.0) for comp in comparisons}
    return [{**run, "curve": [[t + after.get(run["name"], 0.0), *rest] for t, *rest in run["curve"]]}
            for run in summary["runs"]]


def _with_ann(summary: dict, total: float) -> str:
    """What ``*_total`` counts: the ANN trained in the run, an ``--ann`` checkpoint's recorded
    training, or (weights files record none) no ANN time."""
    if any(run["name"] == "ann" for run in summary["runs"]):
        return f"{total} s including the ANN"
    if summary.get("ann_seconds") is not None:
        return f"{total} s including the {summary['ann_seconds']:.1f} s the --ann checkpoint recorded for the ANN"
    return f"{total} s: --ann weights record no training time for the ANN"


def render_report(summary: dict, table: str, title: str) -> str:
    """``report.md``: the results table, what the numbers mean, the figure, the transfer report."""
    ttt = summary.get("time_to_target", {})
    lines = [f"# {title}", "", table, ""]
    for comp, label in ((PIPES, "static"), (PIPED, "event")):
        if comp.target_key not in summary:
            continue
        target = summary[comp.target_key]
        pre, scratch = ttt.get(comp.pretrained), ttt.get(comp.baseline)
        line = f"- **{label}**: target = best accuracy of `{comp.baseline}` = {target:.4f}. "
        if pre is None:
            line += f"`{comp.pretrained}` did not reach it."
        else:
            ratio = f" = {pre / scratch:.2f}x" if scratch else ""
            line += (f"`{comp.pretrained}` reached it after {pre:.1f} s (the bridge's {summary.get(comp.bridge_key) or 0:.1f} s "
                     f"+ SNN training){ratio} the "
                     f"{scratch:.1f} s `{comp.baseline}` needed ({_with_ann(summary, ttt.get(comp.pretrained + '_total'))}).")
        cpu = (summary.get("time_ratio_cpu") or {}).get(comp.pretrained)
        if cpu is not None:
            line += f" In the process's CPU seconds (the ratio to quote on a shared machine): {cpu:.2f}x."
        lines.append(line)
    if summary.get("ann_acc") is not None:
        lines.append(f"- the ANN's test accuracy: {summary['ann_acc']:.4f}")
    if summary.get("transfer_acc") is not None:
        lines.append(f"- accuracy right after the transfer, before any SNN training: {summary['transfer_acc']:.4f}")
    lines += ["", "![accuracy vs training time](accuracy_vs_time.png)", ""]
    conv = summary.get("conversion_vs_bridge")
    if conv:
        match = conv.get("conversion_T_to_match")
        lines += ["## The bridge vs ANN-to-SNN conversion of the same ANN", "",
                  f"On a seeded subset of {conv['samples']} test samples (demo_conversion_samples; the table "
                  "above uses the whole test split). "
                  f"The fine-tuned SNN reaches {conv['bridge_acc_at_trained_T']:.4f} at T={conv['trained_T']}; "
                  + (f"classic conversion needs T={match} for the same accuracy." if match else
                     f"classic conversion does not reach it up to T={max(t for t, _ in conv['conversion'])}."),
                  "", "| T | bridge | conversion |", "|---:|---:|---:|"]
        bridge, conversion = dict(conv["bridge"]), dict(conv["conversion"])
        for t in sorted(set(bridge) | set(conversion)):
            fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
            lines.append(f"| {t} | {fmt(bridge.get(t))} | {fmt(conversion.get(t))} |")
        lines += ["", "![accuracy vs T](accuracy_vs_T.png)", ""]
    modes = (summary.get("first_layer_comparison") or {}).get("modes")
    if modes and len(modes) > 1:  # a comparison (events.compare_first_layer), not the one mode the run used
        last = max(len(entry["acc"]) for entry in modes.values())  # the compared epochs (events.compare_epochs)
        lines += ["## First-layer adaptation (static ANN -> 2 event polarities)", "",
                  "| first layer | after transfer | after epoch 1 |" + (f" after epoch {last} |" if last > 1 else ""),
                  "|---|---:|---:|" + ("---:|" if last > 1 else "")]
        for mode, entry in modes.items():
            accs = entry["acc"] or [float("nan")]
            lines.append(f"| {mode} | {entry['transfer_acc']:.4f} | {accs[0]:.4f} |"
                         + (f" {accs[min(last, len(accs)) - 1]:.4f} |" if last > 1 else ""))
        lines.append("")
    for key, label in (("transfer", "static"), ("events_transfer", "event")):
        if summary.get(key):
            t = summary[key]
            lines.append(f"Transfer ({label}): {transfer_headline(t)}; BN layers re-calibrated: {t['recalibrated_bn']}.")
    lines.append("\n" + wall_time_line(summary, "run"))
    return "\n".join(lines) + "\n"


__all__ = [
    "demo", "events_config", "finetune", "open_events", "open_static", "piped", "pipes",
    "pretrain", "render_report", "run_piped", "run_pipes", "start_run", "write_outputs",
]
