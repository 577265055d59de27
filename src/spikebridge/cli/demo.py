"""``spikebridge demo``: the main job on the embedded MNIST: pipeS (ANN -> SNN, vs the SNN from
scratch) and pipeD on its ODG events; ``summary.json``, ``report.md`` and the figures."""
from __future__ import annotations

import argparse

from . import request, run_request

EXAMPLE = "spikebridge demo --out runs/demo"


def register(sub, add, common) -> None:
    p = add("demo", run, "the main job on the embedded MNIST: pipeS (ANN -> SNN, vs SNN from scratch) and pipeD on "
            "its ODG events; summary.json, report.md, plots", example=EXAMPLE)
    p.add_argument("--no-events", action="store_true", help="skip the pipeD (event) half")


def run(args: argparse.Namespace) -> int:
    run_request(args, request(args, "demo", options={"events": not args.no_events}))
    return 0
