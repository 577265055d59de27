"""Pipelines: compositions of data, models, the bridge, the trainer and the report.

* :func:`pretrain_ann` trains the ANN (ReLU or the paper's sharpened ReLU) on static data.
* :func:`bridge_to_snn` builds the SNN of the same layout, transfers, re-calibrates BN.
* :func:`pipes` = ANN -> SNN on the same static data (plus the from-scratch SNN baseline).
* :func:`demo` = pipeS on the embedded MNIST, with summary, report and plot.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .analysis.plots import plot_accuracy_vs_time
from .analysis.summary import PIPED, PIPES, build_summary, results_table, write_json
from .bridge import TransferReport, match_firing_rates, recalibrate_batchnorm, transfer
from .config import PipelineConfig, dump_yaml, from_dict
from .data.datasets import open_data_config, open_dataset, resolve_model_name
from .data.loading import DataBundle, calibration_batches, with_time_bins
from .errors import CheckpointError, ConfigError
from .models import create_model, list_models
from .neurons import NeuronConfig, SharpenedReLU
from .train.checkpoint import Checkpoint, load_checkpoint
from .train.distributed import current as current_rank
from .train.distributed import local_device
from .train.engine import RunResult, fit
from .utils import atomic_write_text, ensure_dir, seed_everything


def resolve_device(name: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; under torchrun ``cuda`` is this process's GPU."""
    if name == "auto":
        return local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device: cuda requested but no CUDA device is available")
    return local_device(device)


def model_options(name: str, bundle: DataBundle) -> dict[str, Any]:
    """Constructor arguments a model takes from the data: a sequence model (the video CRNN, whose
    encoder's first FC layer depends on the frame size) is built for the data's frame size."""
    return {"input_size": list(bundle.frame_size)} if name in list_models(sequence=True) else {}


def model_meta(cfg: PipelineConfig, bundle: DataBundle, neuron: NeuronConfig, T: int) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model."""
    name = resolve_model_name(cfg.model.name, bundle)
    model = {"name": name, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "T": T}
    options = model_options(name, bundle)
    if options:
        model["options"] = options
    return {"model": model, "neuron": asdict(neuron), "data": bundle.name}


def build_model(cfg: PipelineConfig, bundle: DataBundle, neuron: NeuronConfig, T: int) -> nn.Module:
    name = resolve_model_name(cfg.model.name, bundle)
    model = create_model(
        name,
        num_classes=cfg.model.num_classes or bundle.num_classes,
        neuron=neuron,
        T=T,
        in_channels=cfg.model.in_channels or bundle.in_channels,
        **model_options(name, bundle),
    )
    if cfg.model.checkpoint_blocks:
        model.checkpoint_blocks = True  # recompute blocks in the backward: less memory, more time
    return model


def stored_model_options(spec: dict) -> dict[str, Any]:
    """A checkpoint's ``model.options`` (lists back to the tuples the constructors take)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (spec.get("options") or {}).items()}


def load_model(path: str | Path) -> tuple[nn.Module, Checkpoint]:
    """Rebuild a model from a spikebridge checkpoint (its JSON stores the model's config)."""
    ckpt = load_checkpoint(path)
    meta = ckpt.meta
    if "model" not in meta or "neuron" not in meta:
        raise CheckpointError(f"{ckpt.path}: no model description in its metadata (not written by spikebridge?)")
    try:
        neuron = from_dict(NeuronConfig, meta["neuron"], "neuron")
        spec = meta["model"]
        model = create_model(spec["name"], num_classes=spec["num_classes"], neuron=neuron, T=spec["T"],
                             in_channels=spec["in_channels"], **stored_model_options(spec))
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{ckpt.path}: incomplete model description ({exc})") from None
    try:
        model.load_state_dict(ckpt.model_state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{ckpt.path}: weights do not fit {spec['name']}: {first}") from None
    if ckpt.epoch > 0 and hasattr(model, "set_epoch"):
        model.set_epoch(ckpt.epoch - 1)  # a sharpened ReLU ends where its last training epoch left it
    return model, ckpt


def ann_neuron(cfg: PipelineConfig) -> NeuronConfig:
    """The ANN's activation: its sharpening schedule spans the ANN's epochs by default."""
    sharpen = cfg.neuron.sharpen_epochs or max(1, cfg.ann.epochs * 2)  # an explicit value (the paper's 100) wins
    return replace(cfg.neuron, kind=cfg.ann_neuron, sharpen_epochs=sharpen)


def pretrain_ann(cfg: PipelineConfig, bundle: DataBundle, device: torch.device) -> tuple[nn.Module, RunResult]:
    seed_everything(cfg.run.seed)
    neuron = ann_neuron(cfg)
    ann = build_model(cfg, bundle, neuron, 1)
    result = fit(
        ann, bundle, cfg.ann, name="ann", run_dir=cfg.run.out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, meta=model_meta(cfg, bundle, neuron, 1),
        amp=cfg.run.amp, sync_bn=cfg.run.sync_bn,
    )
    return ann, result


def bridge_to_snn(
    cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle, device: torch.device, *, same_data: bool = True
) -> tuple[nn.Module, TransferReport]:
    """A new SNN with the ANN's parameters, calibrated on a few training batches.

    BN running statistics are re-estimated on spiking activity; when the SNN sees the ANN's own
    data (``same_data``: pipeS), the ANN's activation is the spike-like sharpened ReLU and the
    neuron is LIF, each channel's firing rate is also matched to the ANN's (``bridge.match_rates``).
    """
    seed_everything(cfg.run.seed)
    snn = build_model(cfg, bundle, cfg.neuron, cfg.model.T).to(device)
    report = transfer(ann, snn, cfg.bridge.first_layer, min_match=cfg.bridge.min_match)
    batches = list(calibration_batches(bundle, cfg.bridge.calibration_batches,
                                       cfg.bridge.calibration_batch_size, seed=cfg.run.seed))
    if cfg.bridge.recalibrate_bn:
        report.recalibrated_bn = recalibrate_batchnorm(snn, batches, device)
    spike_like_ann = any(isinstance(m, SharpenedReLU) for m in ann.modules())
    if cfg.bridge.match_rates and same_data and spike_like_ann and cfg.neuron.kind == "lif":
        errors = match_firing_rates(ann, snn, batches, iterations=cfg.bridge.calibration_iterations, device=device)
        report.rate_errors = errors
    return snn, report


def train_snn_scratch(cfg: PipelineConfig, bundle: DataBundle, device: torch.device, name: str = "snn_scratch") -> RunResult:
    seed_everything(cfg.run.seed)
    snn = build_model(cfg, bundle, cfg.neuron, cfg.model.T)
    return fit(
        snn, bundle, cfg.scratch, name=name, run_dir=cfg.run.out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, meta=model_meta(cfg, bundle, cfg.neuron, cfg.model.T),
        amp=cfg.run.amp, sync_bn=cfg.run.sync_bn,
    )


def finetune_snn(
    cfg: PipelineConfig, snn: nn.Module, bundle: DataBundle, device: torch.device, *, name: str,
    frozen: set[str] | None = None, optimizer_state: dict | None = None,
) -> RunResult:
    """Fine-tune ``snn`` with ``cfg.finetune``; ``optimizer_state``: the ANN run's final optimizer
    state (``RunResult.optimizer_state``) when ``bridge.transfer_optimizer`` carries it over."""
    return fit(
        snn, bundle, cfg.finetune, name=name, run_dir=cfg.run.out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, evaluate_first=True, frozen=frozen,
        optimizer_state=optimizer_state, amp=cfg.run.amp, sync_bn=cfg.run.sync_bn,
        meta=model_meta(cfg, bundle, cfg.neuron, cfg.model.T),
    )


def _prepare_run(cfg: PipelineConfig) -> torch.device:
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    out = Path(cfg.run.out)
    if current_rank().is_main:  # under torchrun rank 0 alone writes
        ensure_dir(out)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    return device


def open_static(cfg: PipelineConfig) -> DataBundle:
    """Open ``cfg.data``; a ``model.name`` of ``auto`` becomes the model suggested for it (in ``cfg``)."""
    bundle = open_data_config(cfg.data)
    cfg.model.name = resolve_model_name(cfg.model.name, bundle)
    return bundle


def run_pipes(
    cfg: PipelineConfig, bundle: DataBundle, device: torch.device, *, baseline: bool, ann: nn.Module | None = None
) -> tuple[nn.Module, nn.Module, list[RunResult], TransferReport]:
    """ANN on static data (trained here unless ``ann`` is given) -> SNN fine-tuned on the same
    data (+ the SNN from scratch)."""
    runs: list[RunResult] = []
    momentum = None
    if ann is None:
        _log(cfg, f"[pipeS] ANN ({cfg.ann_neuron}, {cfg.model.name}) on {bundle.name}: "
                  f"{len(bundle.train)} train / {len(bundle.test)} test")
        ann, ann_result = pretrain_ann(cfg, bundle, device)
        runs.append(ann_result)
        momentum = ann_result.optimizer_state if cfg.bridge.transfer_optimizer else None
    _log(cfg, f"[pipeS] bridge: ANN -> SNN ({cfg.neuron.kind}, T={cfg.model.T}), then fine-tune")
    snn, report = bridge_to_snn(cfg, ann, bundle, device)
    _log(cfg, report.summary())
    runs.append(finetune_snn(cfg, snn, bundle, device, name="snn_pretrained", optimizer_state=momentum))
    if baseline:
        _log(cfg, f"[pipeS] baseline: the same SNN from scratch ({cfg.scratch.epochs} epochs)")
        runs.append(train_snn_scratch(cfg, bundle, device))
    return ann, snn, runs, report


def events_config(cfg: PipelineConfig, events: DataBundle) -> PipelineConfig:
    """The pipeline config of the event half: event model/T/channels and the event phases."""
    steps = events.time_steps or cfg.model.T
    model = replace(cfg.model, name=cfg.events.model or cfg.model.name, T=steps, in_channels=events.in_channels)
    return replace(cfg, model=model, finetune=cfg.events.finetune, scratch=cfg.events.scratch)


def open_events(cfg: PipelineConfig) -> DataBundle:
    """``cfg.events.data`` with ``events.time_bins`` steps (and ``data.limit_train`` / ``limit_test``)."""
    return with_time_bins(open_dataset(cfg.events.data, split_seed=cfg.data.split_seed, workers=cfg.data.workers,
                                       image_size=cfg.events.image_size, limit_train=cfg.data.limit_train,
                                       limit_test=cfg.data.limit_test), cfg.events.time_bins)


def first_layer_comparison(T: int, curves: dict[str, list[list[float]]]) -> dict:
    """``summary.json``'s ``first_layer_comparison``: per first-layer mode, the accuracy right
    after the transfer and after each compared epoch (curves ``[[seconds, epoch, acc], ...]``)."""
    return {
        "T": T,
        "modes": {
            mode: {"transfer_acc": curve[0][2], "acc": [p[2] for p in curve[1:]], "seconds": [p[0] for p in curve[1:]]}
            for mode, curve in curves.items()
        },
    }


def run_piped(
    cfg: PipelineConfig, ann: nn.Module, device: torch.device, *, baseline: bool
) -> tuple[list[RunResult], dict, TransferReport]:
    """Static ANN -> SNN fine-tuned on the event version of the data (+ the event SNN from scratch).

    Also fine-tunes briefly with the other first-layer adaptations and returns their accuracies.
    """
    events = open_events(cfg)
    ecfg = events_config(cfg, events)
    _log(cfg, f"[pipeD] events {events.name}: T={ecfg.model.T}, {events.in_channels} polarities; "
              f"bridge the static ANN (first layer: {cfg.bridge.first_layer})")
    snn, report = bridge_to_snn(ecfg, ann, events, device, same_data=False)
    _log(cfg, report.summary())
    # warm-up ("+WU"): for finetune.freeze_epochs epochs only what was not transferred as-is trains
    frozen = set(report.matched) if ecfg.finetune.freeze_epochs > 0 else None
    runs = [finetune_snn(ecfg, snn, events, device, name="snn_events_pretrained", frozen=frozen)]
    modes = {cfg.bridge.first_layer: runs[0].curve[: cfg.events.compare_epochs + 1]}
    if cfg.events.compare_first_layer:
        for mode in ("signed_polarity", "mean", "skip"):
            if mode in modes:
                continue
            mode_cfg = replace(ecfg, bridge=replace(ecfg.bridge, first_layer=mode))
            snn_mode, _ = bridge_to_snn(mode_cfg, ann, events, device, same_data=False)
            _log(cfg, f"[pipeD] first layer '{mode}': {cfg.events.compare_epochs} epoch(s) for comparison")
            result = fit(
                snn_mode, events, ecfg.finetune, name=f"snn_events_{mode}", run_dir=None, seed=cfg.run.seed,
                device=device, progress=cfg.run.progress, evaluate_first=True, stop_after=cfg.events.compare_epochs,
            )
            modes[mode] = result.curve
    if baseline:
        _log(cfg, f"[pipeD] baseline: the event SNN from scratch ({ecfg.scratch.epochs} epochs)")
        runs.append(train_snn_scratch(ecfg, events, device, name="snn_events_scratch"))
    return runs, first_layer_comparison(ecfg.model.T, modes), report


def pipes(cfg: PipelineConfig, *, baseline: bool = True, bundle: DataBundle | None = None,
          ann: nn.Module | None = None) -> dict:
    """pipeS: ANN on static data (trained here unless given) -> SNN fine-tuned on the same data
    (+ the scratch SNN baseline)."""
    device = _prepare_run(cfg)
    started = time.perf_counter()
    bundle = bundle or open_static(cfg)
    extra: dict[str, Any] = {}
    if ann is not None:
        from .train.engine import evaluate

        extra["ann_acc"] = evaluate(ann.to(device), bundle, device=device)["acc"]
    _ann, _snn, runs, report = run_pipes(cfg, bundle, device, baseline=baseline, ann=ann)
    pretrained = next(r for r in runs if r.name == "snn_pretrained")
    summary = build_summary(
        bundle.name, cfg.model.T, [r.to_summary() for r in runs], comparisons=(PIPES,),
        extra={"transfer": report.to_dict(), "transfer_acc": pretrained.curve[0][2], **extra},
    )
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(cfg, summary, runs, title=f"pipeS on {bundle.name}: SNN (T={cfg.model.T}) from an ANN vs from scratch")
    return summary


def piped(cfg: PipelineConfig, *, baseline: bool = True, ann: nn.Module | None = None) -> dict:
    """pipeD: an ANN pretrained on static images (trained here unless given) -> SNN on events."""
    device = _prepare_run(cfg)
    started = time.perf_counter()
    runs: list[RunResult] = []
    if ann is None:
        ann, ann_result = pretrain_ann(cfg, open_static(cfg), device)
        runs.append(ann_result)
    event_runs, comparison, report = run_piped(cfg, ann, device, baseline=baseline)
    runs += event_runs
    summary = build_summary(
        cfg.events.data, comparison["T"], [r.to_summary() for r in runs], comparisons=(PIPED,),
        extra={"events_transfer": report.to_dict(), "first_layer_comparison": comparison},
    )
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(cfg, summary, runs, title=f"pipeD on {cfg.events.data}: event SNN from a static ANN vs from scratch")
    return summary


def write_outputs(cfg: PipelineConfig, summary: dict, runs: list[RunResult], *, title: str) -> None:
    if not current_rank().is_main:  # under torchrun rank 0 alone writes
        return
    out = Path(cfg.run.out)
    write_json(out / "summary.json", summary)
    columns = ("epoch", "seconds", "train_loss", "train_acc", "test_loss", "test_acc", "lr")
    rows = [",".join(("run", *columns))]
    for run in runs:
        for record in run.history:
            rows.append(",".join([run.name, *("" if record.get(k) is None else str(record[k]) for k in columns)]))
    atomic_write_text(out / "metrics.csv", "\n".join(rows) + "\n")
    plot_accuracy_vs_time(summary["runs"], out / "accuracy_vs_time.png", title=title, target=summary.get("target_acc"))
    table = results_table(summary["runs"], summary.get("time_to_target"))
    atomic_write_text(out / "report.md", render_report(summary, table, title))
    if cfg.run.progress:
        tqdm.write("\n" + table + "\n")
        tqdm.write(f"wrote {out / 'summary.json'}, {out / 'report.md'}, {out / 'accuracy_vs_time.png'}")


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
            line += (f"`{comp.pretrained}` reached it after {pre:.1f} s of SNN training{ratio} the "
                     f"{scratch:.1f} s `{comp.baseline}` needed ({ttt.get(comp.pretrained + '_total')} s including the ANN).")
        lines.append(line)
    if "transfer_acc" in summary:
        lines.append(f"- accuracy right after the transfer, before any SNN training: {summary['transfer_acc']:.4f}")
    lines += ["", "![accuracy vs training time](accuracy_vs_time.png)", ""]
    conv = summary.get("conversion_vs_bridge")
    if conv:
        match = conv.get("conversion_T_to_match")
        lines += ["## The bridge vs ANN-to-SNN conversion of the same ANN", "",
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
    if modes:
        lines += ["## First-layer adaptation (static ANN -> 2 event polarities)", "",
                  "| first layer | after transfer | after epoch 1 | after last compared epoch |", "|---|---:|---:|---:|"]
        for mode, entry in modes.items():
            accs = entry["acc"] or [float("nan")]
            lines.append(f"| {mode} | {entry['transfer_acc']:.4f} | {accs[0]:.4f} | {accs[-1]:.4f} |")
        lines.append("")
    for key, label in (("transfer", "static"), ("events_transfer", "event")):
        if summary.get(key):
            t = summary[key]
            lines.append(
                f"Transfer ({label}): {t['matched']} tensors matched ({t['match_fraction']:.0%}), adapted "
                f"{len(t['adapted'])}, re-initialised {len(t['reinitialised'])}, missing {len(t['missing'])}, "
                f"unexpected {len(t['unexpected'])}; BN layers re-calibrated: {t['recalibrated_bn']}."
            )
    lines.append(f"\nWall time of the whole run: {summary.get('wall_seconds')} s.")
    return "\n".join(lines) + "\n"


def _log(cfg: PipelineConfig, message: str) -> None:
    if cfg.run.progress and current_rank().is_main:
        tqdm.write(message)


def demo(cfg: PipelineConfig, *, events: bool = True) -> dict:
    """The main job: pipeS on the embedded MNIST and pipeD on its ODG events (ES-MNIST), one report."""
    device = _prepare_run(cfg)
    started = time.perf_counter()
    bundle = open_static(cfg)
    ann, snn, runs, report = run_pipes(cfg, bundle, device, baseline=True)
    extra: dict[str, Any] = {"transfer": report.to_dict(), "transfer_acc": runs[1].curve[0][2]}
    if cfg.demo_conversion_samples:
        from .analysis.figures import conversion_vs_bridge

        _log(cfg, "[pipeS] accuracy vs T: the fine-tuned SNN vs classic ANN->SNN conversion of the same ANN")
        extra["conversion_vs_bridge"] = conversion_vs_bridge(
            ann, snn, bundle, [1, 2, 4, 8, 16, 32], cfg.run.out, max_samples=cfg.demo_conversion_samples, device=device
        )
    comparisons = [PIPES]
    if events:
        event_runs, comparison, event_report = run_piped(cfg, ann, device, baseline=True)
        runs += event_runs
        comparisons.append(PIPED)
        extra.update(events_data=cfg.events.data, events_transfer=event_report.to_dict(),
                     first_layer_comparison=comparison)
    summary = build_summary(bundle.name, cfg.model.T, [r.to_summary() for r in runs],
                            comparisons=tuple(comparisons), extra=extra)
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(cfg, summary, runs, title=f"spikebridge demo on {bundle.name}: SNNs from an ANN vs from scratch")
    return summary
