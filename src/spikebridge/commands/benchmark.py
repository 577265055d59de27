"""``spikebridge benchmark``: the paper's time-accuracy benchmark on one dataset.

One ANN is trained (or read with ``--ann CKPT``); then every method of ``--methods`` (see
:mod:`spikebridge.analysis.benchmark`: ``scratch``, ``pretrained``, ``encoder``, ``decoder`` with
the modifiers ``wu``, ``lif``/``liaf``, ``T<n>``) trains an SNN, recording test accuracy against
training seconds and epochs. Writes ``OUT/benchmark.json``, ``OUT/benchmark.md``,
``OUT/accuracy_vs_time.png``, ``OUT/accuracy_vs_epochs.png``, ``OUT/config.yaml`` and each run's
folder ``OUT/<method>/`` (metrics + checkpoints: ``--resume`` continues an interrupted benchmark).

Static data (``mnist5k``, an image folder): the SNNs learn the ANN's data (pipeS). Event data
(``es-mnist``, an event folder): the ANN learns ``--ann-data`` (default ``mnist5k`` for
``es-mnist``) and the SNNs the events (pipeD).

Defaults of this command, below any YAML ``--config`` / ``--set`` value, sized so that the default
benchmark on the embedded MNIST finishes in under 10 minutes on 2 CPU cores: ANN 6 epochs,
fine-tuning 2 epochs (Adam, LR 1e-3, cosine decay without warm-up), SNN from scratch 6 epochs (no
plateau extension); methods: scratch,
pretrained, pretrained+wu, encoder, pretrained+liaf (LIF vs LIAF), pretrained+T2 (add
``scratch+liaf`` or ``decoder`` with ``--methods``).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

BENCHMARK_DEFAULTS: dict[str, Any] = {
    "ann.epochs": 6,
    "finetune.epochs": 2,
    "finetune.lr": 1e-3,  # cosine from the start: a transferred SNN already sits near a good solution,
    "finetune.schedule": "cosine",  # a one-cycle warm-up to a higher LR first throws part of it away
    "scratch.epochs": 6,
    "scratch.until_plateau": 0,
}
DEFAULT_METHODS = "scratch,pretrained,pretrained+wu,encoder,pretrained+liaf,pretrained+T2"


def register(sub, add, common) -> None:
    p = add(
        "benchmark", cmd_benchmark,
        "the time-accuracy benchmark: SNNs from scratch vs from the ANN (full / encoder / decoder, warm-up), "
        "LIF vs LIAF, T values; table, figures, JSON",
        default_out="runs/benchmark",
    )
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated methods, BASE[+wu][+lif|+liaf][+T<n>], BASE in scratch, pretrained, "
                        "encoder, decoder (default: %(default)s)")
    p.add_argument("--ann", metavar="CKPT", help="use this ANN checkpoint instead of training one")
    p.add_argument("--ann-data", help="the ANN's static data when --data is events (default: mnist5k for es-mnist)")


def _configured_keys(args: argparse.Namespace) -> set[str]:
    """Dotted keys the user set in the YAML recipe or with --set (or with a flag)."""
    from ..config import parse_override, read_yaml

    keys: set[str] = set()

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            keys.add(f"{prefix}{key}")
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    if args.config:
        walk(read_yaml(args.config), "")
    keys.update(parse_override(text)[0] for text in args.overrides)
    return keys


def cmd_benchmark(args: argparse.Namespace) -> int:
    from ..analysis.benchmark import markdown_table, parse_methods
    from ..cli import _pipeline_config
    from ..train.distributed import current

    methods = parse_methods(args.methods)  # a bad method fails before anything trains
    taken = _configured_keys(args)
    cfg = _pipeline_config(args, {k: v for k, v in BENCHMARK_DEFAULTS.items() if k not in taken})
    summary = run_benchmark(cfg, methods, ann_checkpoint=args.ann, ann_data=args.ann_data)
    if current().is_main:
        print(markdown_table(summary))
        print(f"wrote {Path(cfg.run.out) / 'benchmark.md'}, benchmark.json, accuracy_vs_time.png, accuracy_vs_epochs.png "
              f"({summary['wall_seconds']} s)")
    return 0


def _decoder_keys(model) -> set[str]:
    """State-dict keys of the readout: the model's ``PART_PREFIXES["decoder"]`` (CRNN: LSTM + fc), else ``fc.``."""
    prefixes = tuple(getattr(type(model), "PART_PREFIXES", {}).get("decoder", ("fc.",)))
    return {k for k in model.state_dict() if k.startswith(prefixes)}


def run_benchmark(cfg, methods, *, ann_checkpoint: str | None = None, ann_data: str | None = None) -> dict:
    """Train the ANN once, then one SNN per method; write and return the summary (``benchmark.json``)."""
    import torch

    from ..analysis.benchmark import BenchRun, summarize, write_report
    from ..config import dump_yaml
    from ..data.loading import with_time_bins
    from ..errors import ConfigError
    from ..pipelines import (
        build_model, bridge_to_snn, finetune_snn, load_model, model_meta, open_static, pretrain_ann,
        resolve_device, train_snn_scratch,
    )
    from ..train.distributed import current
    from ..utils import atomic_write_text, seed_everything

    started = time.perf_counter()
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    out = Path(cfg.run.out)
    log = print if cfg.run.progress and current().is_main else (lambda *a, **k: None)

    ann, ckpt = (None, None)
    if ann_checkpoint is not None and any(m.transfers for m in methods):
        ann, ckpt = load_model(ann_checkpoint)
        if cfg.model.name in ("", "auto"):  # the SNN takes the checkpoint's architecture
            cfg = replace(cfg, model=replace(cfg.model, name=ckpt.meta["model"]["name"]))
    data = open_static(cfg)
    if data.kind == "events":  # pipeD: the ANN learns static images, the SNNs the events
        source = ann_data or ("mnist5k" if cfg.data.name == "es-mnist" else None)
        if source is None and ann_checkpoint is None:
            raise ConfigError(f"{cfg.data.name} holds events: give the ANN's static images with --ann-data (or --ann CKPT)")
        events = with_time_bins(data, cfg.events.time_bins)
        ann_bundle = None
        if ann_checkpoint is None:
            ann_cfg = replace(cfg, data=replace(cfg.data, name=source))
            ann_bundle = open_static(ann_cfg)
            cfg = replace(cfg, model=replace(cfg.model, name=ann_cfg.model.name))
        snn_bundle, same_data = events, False
        snn_model = replace(cfg.model, T=events.time_steps or cfg.model.T, in_channels=events.in_channels)
    else:
        ann_cfg, ann_bundle, snn_bundle, same_data, snn_model = cfg, data, data, True, cfg.model
    if current().is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))

    ann_info = None
    if any(m.transfers for m in methods):
        if ckpt is not None:
            history = ckpt.meta.get("history", [])
            accs = [h["test_acc"] for h in history if h.get("test_acc") is not None]
            ann_info = {"name": str(ann_checkpoint), "epochs": ckpt.epoch, "seconds": float(ckpt.meta.get("seconds", 0.0)),
                        "best_acc": max(accs) if accs else None, "curve": ckpt.meta.get("curve", [])}
        else:
            log(f"[benchmark] ANN ({ann_cfg.ann_neuron}, {ann_cfg.model.name}) on {ann_bundle.name}, {ann_cfg.ann.epochs} epochs")
            ann, ann_result = pretrain_ann(ann_cfg, ann_bundle, device)
            ann_info = {"name": "ann", "epochs": ann_result.epochs, "seconds": ann_result.seconds,
                        "best_acc": ann_result.best_acc, "curve": ann_result.curve}
        ann.to(device)

    runs: list[BenchRun] = []
    for method in methods:
        neuron = replace(cfg.neuron, kind=method.neuron or cfg.neuron.kind)
        mcfg = replace(cfg, neuron=neuron, model=replace(snn_model, T=method.T or snn_model.T))
        log(f"[benchmark] {method.name}: {neuron.kind}, T={mcfg.model.T}")
        transferred: set[str] = set()
        if method.base == "scratch":
            result = train_snn_scratch(mcfg, snn_bundle, device, name=method.name)
            warmup_epochs = 0
        else:
            if method.base == "decoder":  # a random SNN with the ANN's readout
                seed_everything(cfg.run.seed)
                snn = build_model(mcfg, snn_bundle, neuron, mcfg.model.T).to(device)
                readout = _decoder_keys(snn)
                source_state = {k: v for k, v in ann.state_dict().items() if k in readout}
                target = snn.state_dict()
                loaded = {k: v for k, v in source_state.items() if tuple(v.shape) == tuple(target[k].shape)}
                if not loaded:
                    raise ConfigError(f"{method.name}: the ANN's readout does not fit the SNN's (another class count?)")
                snn.load_state_dict(loaded, strict=False)
                transferred = set(loaded)
            else:
                snn, report = bridge_to_snn(mcfg, ann, snn_bundle, device, same_data=same_data)
                transferred = set(report.transferred)
                if method.base == "encoder":  # the readout starts as a new one
                    readout = _decoder_keys(snn)
                    seed_everything(cfg.run.seed + 1)
                    fresh = build_model(mcfg, snn_bundle, neuron, mcfg.model.T).state_dict()
                    snn.load_state_dict({k: fresh[k] for k in readout}, strict=False)
                    transferred -= readout
            warmup_epochs = max(1, cfg.finetune.freeze_epochs) if method.warmup else 0
            frozen = transferred - _decoder_keys(snn) if method.warmup else None
            wcfg = replace(mcfg, finetune=replace(cfg.finetune, freeze_epochs=warmup_epochs))
            result = finetune_snn(wcfg, snn, snn_bundle, device, name=method.name, frozen=frozen)
        runs.append(BenchRun(
            method=method.name, base=method.base, neuron=neuron.kind, T=mcfg.model.T, warmup_epochs=warmup_epochs,
            epochs=result.epochs, snn_seconds=result.seconds,
            ann_seconds=float(ann_info["seconds"]) if method.transfers and ann_info else 0.0,
            best_acc=result.best_acc, final_acc=result.final_acc,
            transfer_acc=result.curve[0][2] if method.transfers and result.curve else None,
            curve=result.curve, transferred=len(transferred),
        ))
        log(f"[benchmark] {method.name}: best {result.best_acc:.4f} after {result.epochs} epochs, {result.seconds:.1f} s")

    dataset = snn_bundle.name
    summary = summarize(runs, dataset=dataset, ann=ann_info, extra={
        "model": model_meta(mcfg if runs else cfg, snn_bundle, cfg.neuron, snn_model.T)["model"],
        "methods": [m.name for m in methods],
    })
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    if current().is_main:
        write_report(summary, out, title=f"Time-accuracy benchmark on {Path(dataset).name or dataset}")
    return summary


__all__ = ["BENCHMARK_DEFAULTS", "DEFAULT_METHODS", "register", "run_benchmark"]
