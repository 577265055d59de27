"""``spikebridge pipes``: pipeS, an ANN on static data (trained here, or ``--ann``) -> the SNN
fine-tuned on the same data (arXiv:2203.01158, Sec. 3.2); ``--baseline`` adds the SNN from scratch."""
from __future__ import annotations

import argparse

from . import ann_flags, request, run_request

EXAMPLE = "spikebridge pipes --data /data/imagenet --out runs/in1k --baseline"


def register(sub, add, common) -> None:
    p = add("pipes", run, "pipeS: ANN pretraining (or --ann) then SNN fine-tuning on the same static data",
            example=EXAMPLE)
    p.add_argument("--baseline", action="store_true", help="also train the SNN from scratch for comparison")
    ann_flags(p)


def run(args: argparse.Namespace) -> int:
    run_request(args, request(args, "pipes", options={"baseline": args.baseline}))
    return 0
