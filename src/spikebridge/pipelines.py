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
from .analysis.summary import build_summary, results_table, write_json
from .bridge import TransferReport, recalibrate_batchnorm, transfer
from .config import PipelineConfig, dump_yaml
from .data.datasets import open_dataset
from .data.loading import DataBundle, iterate_batches
from .errors import ConfigError
from .models import create_model
from .neurons import NeuronConfig
from .train.engine import RunResult, fit
from .utils import atomic_write_text, seed_everything


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device: cuda requested but no CUDA device is available")
    return device


def model_meta(cfg: PipelineConfig, bundle: DataBundle, neuron: NeuronConfig, T: int) -> dict[str, Any]:
    """What a checkpoint needs to rebuild its model."""
    return {
        "model": {"name": cfg.model.name, "num_classes": bundle.num_classes, "in_channels": bundle.in_channels, "T": T},
        "neuron": asdict(neuron),
        "data": bundle.name,
    }


def build_model(cfg: PipelineConfig, bundle: DataBundle, neuron: NeuronConfig, T: int) -> nn.Module:
    return create_model(
        cfg.model.name,
        num_classes=cfg.model.num_classes or bundle.num_classes,
        neuron=neuron,
        T=T,
        in_channels=cfg.model.in_channels or bundle.in_channels,
    )


def ann_neuron(cfg: PipelineConfig) -> NeuronConfig:
    """The ANN's activation: its sharpening schedule spans the ANN's epochs by default."""
    sharpen = cfg.neuron.sharpen_epochs if cfg.neuron.sharpen_epochs != 100 else max(1, cfg.ann.epochs * 2)
    return replace(cfg.neuron, kind=cfg.ann_neuron, sharpen_epochs=sharpen)


def pretrain_ann(cfg: PipelineConfig, bundle: DataBundle, device: torch.device) -> tuple[nn.Module, RunResult]:
    seed_everything(cfg.run.seed)
    neuron = ann_neuron(cfg)
    ann = build_model(cfg, bundle, neuron, 1)
    result = fit(
        ann, bundle, cfg.ann, name="ann", run_dir=cfg.run.out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, meta=model_meta(cfg, bundle, neuron, 1),
    )
    return ann, result


def calibration_batches(bundle: DataBundle, count: int, batch_size: int = 250, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for i, (x, _y) in enumerate(iterate_batches(bundle, bundle.train, batch_size, train=True, generator=generator)):
        if i >= count:
            break
        yield x


def bridge_to_snn(
    cfg: PipelineConfig, ann: nn.Module, bundle: DataBundle, device: torch.device
) -> tuple[nn.Module, TransferReport]:
    """A new SNN with the ANN's parameters, BN re-calibrated on spiking activity."""
    seed_everything(cfg.run.seed)
    snn = build_model(cfg, bundle, cfg.neuron, cfg.model.T).to(device)
    report = transfer(ann, snn, cfg.bridge.first_layer, min_match=cfg.bridge.min_match)
    if cfg.bridge.recalibrate_bn:
        # same data view as training, without the random augmentation
        calib = replace(bundle, max_shift=0)
        report.recalibrated_bn = recalibrate_batchnorm(
            snn, calibration_batches(calib, cfg.bridge.calibration_batches, seed=cfg.run.seed), device
        )
    return snn, report


def train_snn_scratch(cfg: PipelineConfig, bundle: DataBundle, device: torch.device, name: str = "snn_scratch") -> RunResult:
    seed_everything(cfg.run.seed)
    snn = build_model(cfg, bundle, cfg.neuron, cfg.model.T)
    return fit(
        snn, bundle, cfg.scratch, name=name, run_dir=cfg.run.out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, meta=model_meta(cfg, bundle, cfg.neuron, cfg.model.T),
    )


def finetune_snn(
    cfg: PipelineConfig, snn: nn.Module, bundle: DataBundle, device: torch.device, *, name: str,
    frozen: set[str] | None = None,
) -> RunResult:
    return fit(
        snn, bundle, cfg.finetune, name=name, run_dir=cfg.run.out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, evaluate_first=True, frozen=frozen,
        meta=model_meta(cfg, bundle, cfg.neuron, cfg.model.T),
    )


def pipes(cfg: PipelineConfig, *, baseline: bool = True, bundle: DataBundle | None = None) -> dict:
    """pipeS: ANN on static data -> SNN fine-tuned on the same data (+ the scratch SNN baseline)."""
    device = resolve_device(cfg.run.device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    out = Path(cfg.run.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    bundle = bundle or open_dataset(cfg.data.name, max_shift=cfg.data.max_shift, split_seed=cfg.data.split_seed)
    started = time.perf_counter()

    _log(cfg, f"[1/3] ANN ({cfg.ann_neuron}, {cfg.model.name}) on {bundle.name}: {len(bundle.train)} train / {len(bundle.test)} test")
    ann, ann_result = pretrain_ann(cfg, bundle, device)
    _log(cfg, f"[2/3] bridge: ANN -> SNN ({cfg.neuron.kind}, T={cfg.model.T}), then fine-tune")
    snn, report = bridge_to_snn(cfg, ann, bundle, device)
    _log(cfg, report.summary())
    pre_result = finetune_snn(cfg, snn, bundle, device, name="snn_pretrained")
    runs = [ann_result, pre_result]
    if baseline:
        _log(cfg, f"[3/3] baseline: the same SNN from scratch ({cfg.scratch.epochs}+ epochs)")
        runs.append(train_snn_scratch(cfg, bundle, device))
    summary = build_summary(
        bundle.name, cfg.model.T, [r.to_summary() for r in runs],
        extra={"transfer": report.to_dict(), "transfer_acc": pre_result.curve[0][2], "wall_seconds": None},
    )
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(cfg, summary, runs, title=f"pipeS on {bundle.name}: SNN (T={cfg.model.T}) from an ANN vs from scratch")
    return summary


def write_outputs(cfg: PipelineConfig, summary: dict, runs: list[RunResult], *, title: str) -> None:
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
    ttt = summary.get("time_to_target", {})
    lines = [f"# {title}", "", table, ""]
    if "target_acc" in summary:
        lines.append(f"Target accuracy (the scratch SNN's best): {summary['target_acc']:.4f}.")
        pre, scratch = ttt.get("snn_pretrained"), ttt.get("snn_scratch")
        if pre is not None and scratch:
            lines.append(
                f"The pretrained SNN reached it after {pre:.1f} s of SNN training "
                f"({ttt.get('snn_pretrained_total')} s including the ANN), the scratch SNN after {scratch:.1f} s: "
                f"{pre / scratch:.2f}x the time."
            )
        elif pre is None:
            lines.append("The pretrained SNN did not reach the target.")
    if "transfer_acc" in summary:
        lines.append(f"Accuracy right after the transfer (before any SNN training): {summary['transfer_acc']:.4f}.")
    lines += ["", "![accuracy vs training time](accuracy_vs_time.png)", ""]
    if summary.get("transfer"):
        t = summary["transfer"]
        lines.append(
            f"Transfer: {t['matched']} tensors matched ({t['match_fraction']:.0%}), adapted {len(t['adapted'])}, "
            f"missing {len(t['missing'])}, unexpected {len(t['unexpected'])}, BN layers re-calibrated: {t['recalibrated_bn']}."
        )
    lines.append(f"\nWall time of the whole run: {summary.get('wall_seconds')} s.")
    return "\n".join(lines) + "\n"


def _log(cfg: PipelineConfig, message: str) -> None:
    if cfg.run.progress:
        tqdm.write(message)


def demo_config(out: str = "runs/demo") -> PipelineConfig:
    """The demo's recipe: sized to finish in a few minutes on 2 CPU cores."""
    cfg = PipelineConfig()
    cfg.run.out = out
    return cfg


def demo(cfg: PipelineConfig) -> dict:
    return pipes(cfg, baseline=True)
