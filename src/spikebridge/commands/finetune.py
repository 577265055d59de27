"""``spikebridge finetune``: your ANN -> an SNN, fine-tuned briefly with BPTT.

Two kinds of ``--ann``:

* ``FILE.py:ClassName`` (+ ``--ann-weights W.pth|W.safetensors``, ``--ann-kwargs JSON``): your own
  ``nn.Module`` is imported by path, loaded, and turned into an SNN by
  :func:`spikebridge.spikify.spikify` (per-layer thresholds calibrated on a few training batches);
* a spikebridge checkpoint (``spikebridge pretrain``'s ``last.json``): the registry SNN of the same
  layout is built, the ANN transferred (:func:`spikebridge.transfer`) and BN re-calibrated.

Writes ``OUT/summary.json`` (``ann_acc``: the ANN on the test split; ``transfer_acc``: the SNN
before fine-tuning; ``runs``: the run ``snn_finetuned`` in the demo's format), ``OUT/report.md``,
``OUT/config.yaml`` and the run's checkpoints ``OUT/snn_finetuned/checkpoints/last.json`` (which
``spikebridge evaluate`` and ``spikebridge export`` read).

Defaults of this command (a YAML ``--config`` or ``--set`` overrides them): one epoch of Adam at
LR 3e-4 with a cosine decay and no warm-up, batch 64; for a spikified ANN the LIF leak is
``decay = 0.5`` (the membrane integrates over about two steps, closer to the rate code a ReLU maps
to at T = 4 than the paper's 0.25). A transferred SNN already sits near a good solution: the
demo's one-cycle warm-up to LR 1e-3 throws part of it away in the first epoch. Measured on the
embedded MNIST with ``examples/byo_ann/mnist_cnn.py`` (ANN 98.6%, one epoch, T=4, seed 0):
decay 0.5 / LR 3e-4: 97.7% after the transfer -> 98.6%; decay 0.5 / LR 1e-4: 97.7 -> 98.0;
decay 0.25 / LR 3e-4: 96.8 -> 97.8; decay 1.0 (IF-like) / LR 1e-4: 97.9 -> 97.8.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# Fine-tuning recipe of this command, below any YAML / --set value
FINETUNE_DEFAULTS: dict[str, Any] = {
    "finetune.lr": 3e-4,
    "finetune.schedule": "cosine",
    "finetune.optimizer": "adam",
    "finetune.epochs": 1,
}
# For a spikified ANN (FILE.py:ClassName) also: a slower leak than the paper's 0.25
SPIKIFY_DEFAULTS: dict[str, Any] = {"neuron.decay": 0.5}


def register(sub, add, common) -> None:
    p = add(
        "finetune", cmd_finetune,
        "turn your ANN (FILE.py:ClassName + weights, or a spikebridge ANN checkpoint) into an SNN and fine-tune it",
        default_out="runs/finetune",
    )
    p.add_argument("--ann", required=True, metavar="FILE.py:ClassName|CKPT.json",
                   help="your ANN class (imported by path) or a spikebridge ANN checkpoint")
    p.add_argument("--ann-weights", metavar="W.pth|W.safetensors", help="weights for --ann FILE.py:ClassName")
    p.add_argument("--ann-kwargs", metavar="JSON", help="constructor arguments, e.g. '{\"num_classes\": 10}'")
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (default 1)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (default 3e-4)")
    p.add_argument("--calibration-samples", type=int, default=512,
                   help="training samples used to calibrate the per-layer thresholds (default %(default)s)")


def _configured_keys(args: argparse.Namespace) -> set[str]:
    """Dotted keys the user set in the YAML recipe or with --set."""
    from ..config import parse_override, read_yaml

    keys: set[str] = set()

    def walk(tree: dict, prefix: str) -> None:
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            keys.add(dotted)
            if isinstance(value, dict):
                walk(value, dotted + ".")

    if args.config:
        walk(read_yaml(args.config), "")
    for text in args.overrides:
        keys.add(parse_override(text)[0])
    return keys


def defaults_not_configured(args: argparse.Namespace, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` without the keys the user set in the YAML recipe or with --set."""
    taken = _configured_keys(args)
    return {key: value for key, value in defaults.items() if key not in taken}


def finetune_config(args: argparse.Namespace):
    from ..cli import _pipeline_config
    from ..restore import is_python_class_spec

    defaults = dict(FINETUNE_DEFAULTS)
    if is_python_class_spec(args.ann):
        defaults.update(SPIKIFY_DEFAULTS)
    extra = defaults_not_configured(args, defaults)
    if args.epochs is not None:
        extra["finetune.epochs"] = args.epochs
    if args.lr is not None:
        extra["finetune.lr"] = args.lr
    return _pipeline_config(args, extra)


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..byo import ann_source_from_flags
    from ..errors import ConfigError
    from ..train.distributed import current as current_rank

    cfg = finetune_config(args)
    if args.calibration_samples < 1:
        raise ConfigError(f"--calibration-samples must be >= 1, got {args.calibration_samples}")
    source = ann_source_from_flags(args.ann, args.ann_weights, args.ann_kwargs, weights_required=True)
    summary = finetune_ann(cfg, source, calibration_samples=args.calibration_samples)
    run = summary["runs"][0]
    if current_rank().is_main:  # under torchrun rank 0 alone reports
        print(f"ANN {summary['ann_acc']:.4f} | SNN (T={summary['T']}) after transfer {summary['transfer_acc']:.4f} | "
              f"after {run['epochs']} epoch(s) {run['final_acc']:.4f} (best {run['best_acc']:.4f}); "
              f"wrote {Path(cfg.run.out) / 'summary.json'}")
    return 0


def finetune_ann(cfg, source, *, calibration_samples: int = 512) -> dict:
    """Build the ANN from ``source``, measure it, make the SNN, fine-tune, write the outputs.

    ``source``: a :class:`spikebridge.byo.AnnSource` (the user's class with its trained weights,
    or a spikebridge ANN checkpoint). Returns the summary written to ``summary.json``.
    """
    from ..analysis.summary import write_json
    from ..byo import load_ann, spikify_ann_class
    from ..data.loading import DataBundle
    from ..errors import CheckpointError, ConfigError
    from ..pipelines import _prepare_run, bridge_to_snn, open_static
    from ..train.distributed import current as current_rank
    from ..train.engine import evaluate, fit
    from ..utils import atomic_write_text, seed_everything

    started = time.perf_counter()
    device = _prepare_run(cfg)  # threads; OUT and config.yaml (rank 0 under torchrun)
    out = Path(cfg.run.out)
    seed_everything(cfg.run.seed)
    bundle: DataBundle = open_static(cfg)
    T = cfg.model.T

    loaded = load_ann(source)  # the class + its weights, or the checkpoint's ANN
    ann, ann_label = loaded.model, loaded.label
    ann.to(device).eval()
    ann_acc = evaluate(ann, bundle, device=device)["acc"]
    _log(cfg, f"ANN {ann_label}: test accuracy {ann_acc:.4f} on {bundle.name}")

    extra: dict[str, Any] = {}
    if loaded.ann_class is not None:
        snn, meta, extra["thresholds"] = spikify_ann_class(cfg, ann, loaded.ann_class, loaded.kwargs, bundle, device,
                                                           calibration_samples=calibration_samples)
        _log(cfg, f"spikified: {len(snn.neurons)} neuron layers, thresholds "
                  + ", ".join(f"{k}={v:.3g}" for k, v in extra["thresholds"].items()))
    else:
        info = loaded.checkpoint_model
        if int(info.get("num_classes", bundle.num_classes)) != bundle.num_classes:
            raise CheckpointError(f"{source.checkpoint}: the ANN has {info['num_classes']} classes, {bundle.name} has {bundle.num_classes}")
        model_cfg = replace(cfg.model, name=info["name"], in_channels=int(info.get("in_channels", 0)))
        snn, report = bridge_to_snn(replace(cfg, model=model_cfg), ann, bundle, device)
        extra["transfer"] = report.to_dict()
        meta = {"model": {"name": info["name"], "num_classes": bundle.num_classes,
                          "in_channels": int(info.get("in_channels", bundle.in_channels)), "T": T},
                "neuron": asdict(cfg.neuron), "data": bundle.name}
        _log(cfg, report.summary())
    if not getattr(snn, "spiking", False):
        raise ConfigError("internal: the fine-tuned model is not spiking")

    result = fit(
        snn, bundle, cfg.finetune, name="snn_finetuned", run_dir=out, seed=cfg.run.seed, device=device,
        progress=cfg.run.progress, resume=cfg.run.resume, evaluate_first=True, meta=meta,
        amp=cfg.run.amp, sync_bn=cfg.run.sync_bn,
    )
    summary: dict[str, Any] = {
        "dataset": bundle.name,
        "T": T,
        "ann": ann_label,
        "ann_acc": ann_acc,
        "transfer_acc": result.curve[0][2] if result.curve else None,
        "runs": [result.to_summary()],
        "finetune": asdict(cfg.finetune),
        "neuron": asdict(cfg.neuron),
        **extra,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if current_rank().is_main:  # under torchrun rank 0 alone writes
        write_json(out / "summary.json", summary)
        atomic_write_text(out / "report.md", _report(summary))
    return summary


def _report(summary: dict) -> str:
    run = summary["runs"][0]
    lines = [
        f"# Your ANN as an SNN: {summary['ann']} on {summary['dataset']}, T={summary['T']}",
        "",
        "| model | test accuracy |",
        "|---|---:|",
        f"| ANN | {summary['ann_acc']:.4f} |",
        f"| SNN right after the transfer | {summary['transfer_acc']:.4f} |",
        f"| SNN after {run['epochs']} fine-tuning epoch(s) ({run['seconds']:.1f} s) | {run['final_acc']:.4f} |",
        "",
        f"Gap to the ANN after fine-tuning: {100 * (summary['ann_acc'] - run['final_acc']):+.2f} points.",
        "",
        f"Fine-tuning: {summary['finetune']['optimizer']} LR {summary['finetune']['lr']:g} "
        f"({summary['finetune']['schedule']}), batch {summary['finetune']['batch_size']}; neuron "
        f"{summary['neuron']['kind']} (decay {summary['neuron']['decay']}, threshold {summary['neuron']['threshold']}).",
    ]
    if summary.get("thresholds"):
        lines += ["", "Calibrated per-layer thresholds (in the ANN's activation units):", ""]
        lines += [f"- `{k}`: {v:.4g}" for k, v in summary["thresholds"].items()]
    return "\n".join(lines) + "\n"


def _log(cfg, message: str) -> None:
    if cfg.run.progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
