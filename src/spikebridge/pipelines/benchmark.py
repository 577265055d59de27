"""The paper's time-accuracy benchmark on one dataset.

One ANN is trained (or read with ``--ann CKPT``); then every method of ``--methods`` (see
:mod:`spikebridge.analysis.benchmark`) trains an SNN, recording test accuracy against training
seconds and epochs. Writes ``OUT/benchmark.json``, ``OUT/benchmark.md``, the two figures,
``OUT/config.yaml`` and each run's folder ``OUT/<method>/`` (``--resume`` continues).

Static data: the SNNs learn the ANN's data with ``finetune`` / ``scratch`` (pipeS). Event data:
the ANN learns ``--ann-data`` (default ``mnist5k`` for ``es-mnist``), the SNNs the events with
``events.finetune`` / ``events.scratch`` (pipeD). :data:`DEFAULT_METHODS` is the paper's set
(arXiv:2203.01158, Sec. 4).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from ..analysis.benchmark import BenchRun, parse_methods, summarize, write_report
from ..config import PipelineConfig
from ..data.datasets import event_steps
from ..data.loading import with_time_bins
from ..errors import ConfigError
from ..train.engine import check_batches
from ..utils import Stopwatch, counted, seed_everything
from .ann import LoadedAnn, RegistryFamily, build_model, model_meta, use_checkpoint_model
from .context import claims_run_folder
from .runs import events_config, open_static, start_run

DEFAULT_METHODS = "scratch,scratch+liaf,pretrained,pretrained+wu,pretrained+liaf,encoder,encoder+wu,decoder"


def _decoder_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the readout: the model's ``PART_PREFIXES["decoder"]`` (CRNN: LSTM + fc), else its ``fc``."""
    prefixes = tuple(getattr(type(model), "PART_PREFIXES", {}).get("decoder", (model.readout_name + ".",)))
    return {k for k in model.state_dict() if k.startswith(prefixes)}


def _refuse_decoder_across_classes(classes: int | None, data, methods: list) -> None:
    if classes is not None and int(classes) != data.num_classes and any(m.base == "decoder" for m in methods):
        held = f"readout has {classes} classes" if classes else "weights hold no readout"
        raise ConfigError(f"decoder: the ANN's {held}, {data.name} {data.num_classes}: "
                          "nothing to transfer (leave out the decoder methods)")


@claims_run_folder("benchmark")
def benchmark(cfg: PipelineConfig, methods: str | list, *, ann: LoadedAnn | None = None,
              ann_data: str | None = None) -> dict:
    """Train the ANN once (unless ``ann``), then one SNN per method; write and return the summary
    (``benchmark.json``). Event data (pipeD): the ANN learns ``ann_data``, the SNNs the events."""
    methods = parse_methods(methods)
    if ann is not None and not isinstance(ann.family, RegistryFamily):
        raise ConfigError("benchmark --ann takes a checkpoint of a registry model")
    cfg = use_checkpoint_model(cfg, ann)
    ctx = start_run(cfg)
    family = RegistryFamily()
    events = event_steps(cfg.data.name) is not None  # pipeD: the SNNs read its frames at events.image_size
    data = open_static(replace(cfg, data=replace(cfg.data, image_size=cfg.events.image_size)) if events else cfg)
    scfg, same_data, ann_cfg = cfg, True, cfg
    _refuse_decoder_across_classes(ann.checkpoint_model.get("num_classes") if ann is not None else None, data, methods)
    stream = data  # event frames as stored: a method's +T<n> merges them into n steps
    if events:  # pipeD: the ANN learns static images, the SNNs the events
        data = with_time_bins(data, cfg.events.time_bins)
        scfg, same_data = events_config(cfg, data), False
        ann_cfg = replace(cfg, data=replace(cfg.data, name=ann_data or cfg.data.name))
    check_batches(data, {m.name: scfg.scratch if m.base == "scratch" else scfg.finetune for m in methods})
    ann_info, model = None, None
    if any(m.transfers for m in methods):
        if ann is not None:
            model = ann.model
            ann_info = {"name": ann.label, **ann.training}
        else:
            ann_bundle = open_static(ann_cfg) if not same_data else data
            _refuse_decoder_across_classes(ann_bundle.num_classes, data, methods)  # before the ANN trains
            check_batches(ann_bundle, {"ann": ann_cfg.ann})
            ctx.log(f"[benchmark] ANN ({cfg.ann_neuron}, {ann_cfg.model.name}) on {ann_bundle.name}, {counted(cfg.ann.epochs, 'epoch')}")
            model, result = family.pretrain(ctx, ann_cfg, ann_bundle)
            ann_info = {"name": "ann", "epochs": result.epochs, "seconds": result.seconds, "best_acc": result.best_acc,
                        "curve": result.curve, "cpu_seconds": result.cpu_curve[-1][0] if result.cpu_curve else 0.0}
            scfg = replace(scfg, model=replace(scfg.model, name=scfg.events.model or ann_cfg.model.name)) \
                if not same_data else scfg
        model.to(ctx.device)

    runs: list[BenchRun] = []
    for method in methods:
        neuron = replace(cfg.neuron, kind=method.neuron or cfg.neuron.kind)
        mcfg = replace(scfg, neuron=neuron, model=replace(scfg.model, T=method.T or scfg.model.T))
        method_data = with_time_bins(stream, method.T) if events and method.T else data
        ctx.log(f"[benchmark] {method.name}: {neuron.kind}, T={mcfg.model.T}")
        transferred: set[str] = set()
        meta = model_meta(mcfg, method_data, neuron, mcfg.model.T)
        watch = Stopwatch()  # the bridge: from here to the SNN's first training step
        if method.base == "scratch":
            snn, meta = family.scratch(ctx, mcfg, method_data)
            result = ctx.fit(snn, method_data, mcfg.scratch, name=method.name, meta=meta)
            warmup_epochs, bridge = 0, (0.0, 0.0)
        else:
            if method.base == "decoder":  # a random SNN with the ANN's readout
                seed_everything(cfg.run.seed)
                snn = build_model(mcfg, method_data, neuron, mcfg.model.T).to(ctx.device)
                readout = _decoder_keys(snn)
                target = snn.state_dict()
                loaded = {k: v for k, v in model.state_dict().items()
                          if k in readout and tuple(v.shape) == tuple(target[k].shape)}
                if not loaded:
                    raise ConfigError(f"{method.name}: the ANN's readout does not fit the SNN's (another class count?)")
                snn.load_state_dict(loaded, strict=False)
                transferred = set(loaded)
            else:
                bridged = family.to_snn(ctx, mcfg, model, method_data, same_data=same_data)
                snn, transferred = bridged.snn, set(bridged.transferred)
                if method.base == "encoder":  # the readout starts as a new one
                    readout = _decoder_keys(snn)
                    seed_everything(cfg.run.seed + 1)
                    fresh = build_model(mcfg, method_data, neuron, mcfg.model.T).state_dict()
                    snn.load_state_dict({k: fresh[k] for k in readout}, strict=False)
                    transferred -= readout
            bridge = ctx.bridge_seconds(method.name, watch.seconds())
            said = {"decoder": f"starts from the ANN's readout ({len(transferred)} tensors) on a random SNN",
                    "encoder": f"keeps {len(transferred)} of the transferred tensors; the readout's "
                               f"{len(_decoder_keys(snn))} start new"}
            ctx.log(f"[benchmark] {method.name}: "
                    + said.get(method.base, f"starts from {len(transferred)} of the ANN's tensors as they are"))
            warmup_epochs = max(1, mcfg.finetune.freeze_epochs) if method.warmup else 0
            frozen = transferred - _decoder_keys(snn) if method.warmup else None
            phase = replace(mcfg.finetune, freeze_epochs=warmup_epochs)
            result = ctx.fit(snn, method_data, phase, name=method.name, meta={**meta, "bridge_seconds": bridge},
                             evaluate_first=True, frozen=frozen)
        runs.append(BenchRun(
            method=method.name, base=method.base, neuron=neuron.kind, T=mcfg.model.T, warmup_epochs=warmup_epochs,
            epochs=result.epochs, snn_seconds=result.seconds,
            ann_seconds=float(ann_info.get("seconds", 0.0)) if method.transfers and ann_info else 0.0,
            best_acc=result.best_acc, final_acc=result.final_acc,
            transfer_acc=result.curve[0][2] if method.transfers and result.curve else None,
            curve=result.curve, transferred=len(transferred), bridge_seconds=bridge[0],
            cpu_curve=result.cpu_curve, bridge_cpu_seconds=bridge[1],
            ann_cpu_seconds=float(ann_info.get("cpu_seconds", 0.0)) if method.transfers and ann_info else 0.0,
        ))
        ctx.log(f"[benchmark] {method.name}: best {result.best_acc:.4f} after {counted(result.epochs, 'epoch')}, {result.seconds:.1f} s")

    summary = summarize(runs, dataset=data.name, ann=ann_info, extra={
        "model": model_meta(scfg, data, cfg.neuron, scfg.model.T)["model"], "methods": [m.name for m in methods],
    })
    summary.update(ctx.wall_time())
    if ctx.is_main:
        write_report(summary, ctx.out, title=f"Time-accuracy benchmark on {Path(data.name).name or data.name}")
    return summary


__all__ = ["DEFAULT_METHODS", "benchmark"]
