"""``spikebridge finetune``: your trained ANN -> an SNN, fine-tuned briefly with BPTT (pipeS without
pretraining; :func:`spikebridge.pipelines.runs.finetune`).

Three kinds of ``--ann``:

* ``FILE.py:ClassName`` + ``--ann-weights W.pth|W.safetensors`` (+ ``--ann-kwargs JSON``): your own
  ``nn.Module``, imported by path and turned into an SNN by :func:`spikebridge.spikify.spikify`
  (per-layer thresholds calibrated on a few training batches);
* a spikebridge ANN checkpoint (``spikebridge pretrain``'s ``last.json``): the registry SNN of the
  same layout, the ANN transferred by the bridge (with ``bridge.transfer_optimizer`` its momentum
  buffers too);
* a registry model + ``--ann-weights W.pth|W.safetensors`` (e.g. ``--ann resnet18_tv`` with
  torchvision's weights): its ReLU ANN, transferred by the bridge the same way.

Writes ``OUT/summary.json`` (``ann_acc``, ``transfer_acc``, the run ``snn_finetuned``),
``OUT/report.md``, ``OUT/config.yaml`` and ``OUT/snn_finetuned/checkpoints/last.json``.

Without a recipe the command preset (:data:`spikebridge.pipelines.plan.FINETUNE_PRESET`) is one
epoch of Adam at LR 3e-4 with a cosine decay, and for a spikified class a LIF leak of 0.5.
Measured on the embedded MNIST with ``examples/byo_ann/mnist_cnn.py`` (ANN 98.6%, one epoch, T=4,
seed 0): decay 0.5 / LR 3e-4: 97.7% after the transfer -> 98.6%; decay 0.5 / LR 1e-4: 97.7 -> 98.0;
decay 0.25 / LR 3e-4: 96.8 -> 97.8; decay 1.0 (IF-like) / LR 1e-4: 97.9 -> 97.8.
"""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..pipelines.context import log
from . import ann_flags, request, run_request

EXAMPLE = ("spikebridge finetune --ann my_net.py:MyCNN --ann-weights my_net.pth --data mnist5k --T 4 --epochs 1 "
           "--out runs/ft")


def register(sub, add, common) -> None:
    p = add("finetune", run, "turn your ANN (FILE.py:ClassName + weights, or a spikebridge ANN checkpoint) into an "
            "SNN and fine-tune it", example=EXAMPLE, default_out="runs/finetune")
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
        log(f"ANN {summary['ann_acc']:.4f} | SNN (T={summary['T']}) after transfer {summary['transfer_acc']:.4f} | "
            f"after {result['epochs']} epoch(s) {result['final_acc']:.4f} (best {result['best_acc']:.4f}); "
            f"wrote {args.out}/summary.json")
    return 0
