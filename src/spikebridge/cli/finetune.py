"""``spikebridge finetune``: your trained ANN -> an SNN, fine-tuned briefly with BPTT (pipeS without
pretraining; :func:`spikebridge.pipelines.runs.finetune`).

``--ann`` is ``FILE.py:ClassName`` + ``--ann-weights`` (+ ``--ann-kwargs``: your ``nn.Module``,
turned into an SNN by :func:`spikebridge.spikify.spikify`), a spikebridge ANN checkpoint, or a
registry model + ``--ann-weights`` (e.g. ``resnet18_tv`` with torchvision's weights); the last two
are transferred by the bridge. Writes ``OUT/summary.json``, ``OUT/report.md``, ``OUT/config.yaml``
and ``OUT/snn_finetuned/checkpoints/last.json``. Without a recipe the command preset is
:data:`spikebridge.pipelines.plan.FINETUNE_PRESET` (and a LIF leak of 0.5 for a spikified class).
"""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..pipelines.context import log
from . import ann_flags, request, run_request

EXAMPLE = ("spikebridge finetune --ann my_net.py:MyCNN --ann-weights my_net.pth --data mnist5k --T 4 --epochs 1 "
           "--out runs/ft")


def register(sub, add, common) -> None:
    p = add("finetune", run, "turn your trained ANN (a spikebridge ANN checkpoint, a registry model + --ann-weights, "
            "or FILE.py:ClassName + --ann-weights) into an SNN and fine-tune it", example=EXAMPLE)
    ann_flags(p, required=True)
    p.add_argument("--epochs", type=int, help="fine-tuning epochs (finetune.epochs; default 1)")
    p.add_argument("--lr", type=float, help="fine-tuning learning rate (finetune.lr; default 3e-4)")
    p.add_argument("--calibration-samples", type=int,
                   help="training samples for the calibration (bridge.calibration_batch_size, one batch)")


def run(args: argparse.Namespace) -> int:
    flags = {"finetune.epochs": args.epochs, "finetune.lr": args.lr}
    if args.calibration_samples is not None:
        if args.calibration_samples < 1:
            raise ConfigError(f"--calibration-samples must be >= 1, got {args.calibration_samples}")
        flags.update({"bridge.calibration_batches": 1, "bridge.calibration_batch_size": args.calibration_samples})
    summary = run_request(args, request(args, "finetune", flags=flags, weights_required=True))
    if summary is not None:
        result = summary["runs"][-1]
        ann_acc = "-" if summary["ann_acc"] is None else f"{summary['ann_acc']:.4f}"
        log(f"ANN {ann_acc} | SNN (T={summary['T']}) after transfer {summary['transfer_acc']:.4f} | "
            f"after {result['epochs']} epoch(s) {result['final_acc']:.4f} (best {result['best_acc']:.4f})")
    return 0
