"""``spikebridge pretrain``: train the ANN (ReLU or the paper's sharpened ReLU) on static data."""
from __future__ import annotations

import argparse

from ..neurons import neuron_names
from ..pipelines.context import log
from ..utils import counted
from . import request, run_request

EXAMPLE = "spikebridge pretrain --data mnist5k --model cnn --epochs 10 --out runs/ann"


def register(sub, add, common) -> None:
    p = add("pretrain", run, "train the ANN (ReLU or sharpened ReLU) on static data", example=EXAMPLE,
            flags="ann")
    p.add_argument("--epochs", type=int, help="ANN epochs (ann.epochs)")
    p.add_argument("--lr", type=float, help="ANN learning rate (ann.lr)")
    p.add_argument("--activation", choices=neuron_names(spiking=False), help="the ANN's activation (ann_neuron)")


def run(args: argparse.Namespace) -> int:
    flags = {"ann.epochs": args.epochs, "ann.lr": args.lr, "ann_neuron": args.activation}
    summary = run_request(args, request(args, "pretrain", flags=flags))
    if summary is not None:
        ann = summary["runs"][0]
        log(f"ANN test accuracy {ann['final_acc']:.4f} after {counted(ann['epochs'], 'epoch')} (best {ann['best_acc']:.4f}, "
            f"{ann['seconds']:.1f} s); the last epoch's checkpoint: {args.out}/ann/checkpoints/last.json")
    return 0
