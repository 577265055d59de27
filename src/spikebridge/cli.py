"""The ``spikebridge`` command. Thin: parse flags and YAML, call pipelines / train / analysis.

Every command accepts ``--config FILE.yaml`` (a recipe), ``--set section.key=value`` overrides,
writes into ``--out DIR``, and turns user errors into one line on stderr with exit status 2
(internal errors: exit 1; the traceback only with ``--debug``).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import textwrap
from typing import Any, Callable

from .errors import SpikebridgeError

EXAMPLES = {
    "demo": "spikebridge demo --out runs/demo",
    "benchmark": "spikebridge benchmark --data mnist5k --out runs/benchmark",
    "pipes": "spikebridge pipes --data /data/imagenet --out runs/in1k --baseline",
    "piped": "spikebridge piped --data mnist5k --events es-mnist --baseline --out runs/piped",
    "pretrain": "spikebridge pretrain --data mnist5k --model cnn --epochs 10 --out runs/ann",
    "finetune": "spikebridge finetune --ann my_net.py:MyCNN --ann-weights my_net.pth --data mnist5k --T 4 --epochs 1 --out runs/ft",
    "evaluate": "spikebridge evaluate runs/ft/snn_finetuned/checkpoints/last.json --data mnist5k",
    "export": "spikebridge export runs/ft/snn_finetuned/checkpoints/last.json --format nir --out runs/ft/snn.nir",
    "convert": "spikebridge convert odg --input /data/imagenet/train --out /data/es-imagenet/train --workers 8",
}


# Further commands live in ``spikebridge/commands/<name>.py``; each defines
# ``register(subparsers, add, add_common_flags)`` where ``add(name, func, help, **common_kwargs)``
# creates a subcommand with the common flags (see ``build_parser``).
COMMAND_MODULES: tuple[str, ...] = ("finetune", "convert", "evaluate", "export", "benchmark")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _common(parser: argparse.ArgumentParser, *, data: bool = True, default_out: str | None = None) -> None:
    parser.add_argument("--config", metavar="FILE.yaml", help="a YAML recipe (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config value, e.g. --set finetune.lr=0.01 (repeatable)")
    parser.add_argument("--out", default=default_out, help="output folder (default: %(default)s)")
    if data:
        parser.add_argument("--data", help="mnist5k | es-mnist | a dataset folder")
    parser.add_argument("--model", help="registry model name (e.g. cnn, resnet18, resnet18_tv, vgg11)")
    parser.add_argument("--T", type=int, help="SNN time steps")
    parser.add_argument("--neuron", choices=["lif", "liaf"], help="SNN neuron")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--resume", action="store_true", default=None, help="continue from the last complete epoch")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--checkpoint-blocks", action="store_true", default=None,
                        help="activation checkpointing over blocks (less BPTT memory at large T, more time)")


def _overrides(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from .config import parse_override

    values: dict[str, Any] = {
        "data.name": getattr(args, "data", None),
        "model.name": args.model,
        "model.T": args.T,
        "neuron.kind": args.neuron,
        "run.seed": args.seed,
        "run.device": args.device,
        "run.resume": args.resume,
        "run.out": args.out,
        "model.checkpoint_blocks": getattr(args, "checkpoint_blocks", None),
    }
    if args.no_progress:
        values["run.progress"] = False
    values.update(extra or {})
    for text in args.overrides:
        key, value = parse_override(text)
        values[key] = value
    return values


def _pipeline_config(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    from .config import PipelineConfig, load_config

    return load_config(PipelineConfig, args.config, _overrides(args, extra))


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .pipelines import demo

    cfg = _pipeline_config(args)
    demo(cfg, events=not args.no_events)
    return 0


def _ann_and_config(args: argparse.Namespace, extra: dict[str, Any] | None = None):
    """The ANN ``--ann`` / ``--ann-weights`` / ``--ann-kwargs`` name (loaded first: bad input
    fails before anything is written; None without ``--ann``) and the config. A user class (also
    from a checkpoint ``pipes`` trained) gets ``finetune``'s spikify defaults (``neuron.decay``)
    unless the recipe / --set set them."""
    from .byo import ann_source_from_flags, load_ann
    from .commands.finetune import SPIKIFY_DEFAULTS, defaults_not_configured

    source = ann_source_from_flags(args.ann, args.ann_weights, args.ann_kwargs)
    loaded = load_ann(source) if source is not None else None
    extra = dict(extra or {})
    if loaded is not None and loaded.ann_class:
        extra.update(defaults_not_configured(args, SPIKIFY_DEFAULTS))
    return loaded, _pipeline_config(args, extra)


def cmd_piped(args: argparse.Namespace) -> int:
    from .byo import piped_with_ann
    from .pipelines import piped

    loaded, cfg = _ann_and_config(args, {"events.data": args.events})
    if loaded is None:
        piped(cfg, baseline=args.baseline)
    else:
        piped_with_ann(cfg, loaded, baseline=args.baseline)
    return 0


def cmd_pipes(args: argparse.Namespace) -> int:
    from .byo import pipes_with_ann
    from .pipelines import pipes

    loaded, cfg = _ann_and_config(args)
    if loaded is None:
        pipes(cfg, baseline=args.baseline)
    else:
        pipes_with_ann(cfg, loaded, baseline=args.baseline)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pipelines import open_static, pretrain_ann, resolve_device
    from .train.distributed import current

    cfg = _pipeline_config(args, {"ann.epochs": args.epochs, "ann.lr": args.lr, "ann_neuron": args.activation})
    if cfg.run.threads:
        import torch

        torch.set_num_threads(cfg.run.threads)
    bundle = open_static(cfg)  # all of cfg.data; model "auto" -> the model suggested for the data
    _ann, result = pretrain_ann(cfg, bundle, resolve_device(cfg.run.device))
    if current().is_main:
        print(f"ANN best test accuracy {result.best_acc:.4f} after {result.epochs} epochs ({result.seconds:.1f} s); "
              f"checkpoint: {cfg.run.out}/ann/checkpoints/last.json")
    return 0


def _ann_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ann", metavar="CKPT.json|FILE.py:ClassName",
                        help="the ANN: a spikebridge ANN checkpoint, or your nn.Module class (trained here on --data "
                             "unless --ann-weights is given)")
    parser.add_argument("--ann-weights", metavar="W.pth|W.safetensors", help="trained weights for --ann FILE.py:ClassName")
    parser.add_argument("--ann-kwargs", metavar="JSON", help="constructor arguments for --ann FILE.py:ClassName")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spikebridge",
        description="Train accurate low-latency SNNs fast by starting them from a trained ANN.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in EXAMPLES.values()),
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, func: Callable, help_text: str, **common) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_text, description=help_text,
            epilog=f"example:\n  {EXAMPLES[name]}" if name in EXAMPLES else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        _common(p, **common)
        p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        return p

    p = add("demo", cmd_demo, "the main job on the embedded MNIST: pipeS (ANN -> SNN, vs SNN from scratch) and "
            "pipeD on its ODG events; summary.json, report.md, plot", default_out="runs/demo")
    p.add_argument("--no-events", action="store_true", help="skip the pipeD (event) half")
    p = add("pipes", cmd_pipes, "pipeS: ANN pretraining (or --ann) then SNN fine-tuning on the same static data",
            default_out="runs/pipes")
    p.add_argument("--baseline", action="store_true", help="also train the SNN from scratch for comparison")
    _ann_flags(p)
    p = add("piped", cmd_piped, "pipeD: ANN on static images (trained here, or --ann) -> SNN fine-tuned on events",
            default_out="runs/piped")
    p.add_argument("--events", help="event dataset: es-mnist or an ES-ImageNet folder (default: es-mnist)")
    _ann_flags(p)
    p.add_argument("--baseline", action="store_true", help="also train the event SNN from scratch")
    p = add("pretrain", cmd_pretrain, "train the ANN (ReLU or sharpened ReLU) on static data", default_out="runs/pretrain")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--activation", choices=["relu", "sharpened_relu"])
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(f"spikebridge.commands.{module_name}")
        module.register(sub, add, _common)
    return parser


@contextlib.contextmanager
def _distributed(args: argparse.Namespace):
    """Under ``torchrun`` (RANK / WORLD_SIZE set): join the process group for the command's
    duration (nccl when it will train on CUDA, else gloo)."""
    from .train.distributed import launched_by_torchrun, setup_distributed, teardown_distributed

    if not launched_by_torchrun():
        yield
        return
    import torch

    wanted = (getattr(args, "device", None) or "auto").lower()
    on_gpu = torch.cuda.is_available() and not wanted.startswith("cpu")
    setup_distributed(torch.device("cuda" if on_gpu else "cpu"))
    try:
        yield
    finally:
        teardown_distributed()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _distributed(args):
            return int(args.func(args) or 0)
    except SpikebridgeError as exc:
        message = " ".join(str(exc).split())
        print(f"spikebridge: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikebridge: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # internal error
        if args.debug:
            raise
        text = textwrap.shorten(f"{type(exc).__name__}: {exc}", 300)
        print(f"spikebridge: internal error: {text} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
