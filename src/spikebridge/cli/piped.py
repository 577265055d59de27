"""``spikebridge piped``: pipeD, an ANN on static images (trained here, or ``--ann``) -> the SNN
fine-tuned on events (arXiv:2203.01158, Sec. 3.2); ``--baseline`` adds the event SNN from scratch."""
from __future__ import annotations

import argparse

from . import ann_flags, request, run_request

EXAMPLE = "spikebridge piped --data mnist5k --events es-mnist --baseline --out runs/piped"


def register(sub, add, common) -> None:
    p = add("piped", run, "pipeD: ANN on static images (trained here, or --ann) -> SNN fine-tuned on events",
            example=EXAMPLE)
    p.add_argument("--events", help="event dataset: es-mnist or an event folder (events.data; default: es-mnist)")
    p.add_argument("--baseline", action="store_true", help="also train the event SNN from scratch")
    ann_flags(p)


def run(args: argparse.Namespace) -> int:
    run_request(args, request(args, "piped", flags={"events.data": args.events}, options={"baseline": args.baseline}))
    return 0
