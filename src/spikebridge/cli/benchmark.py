"""``spikebridge benchmark``: the paper's time-accuracy benchmark on one dataset
(:mod:`spikebridge.pipelines.benchmark`): SNNs from scratch vs from the ANN (full / encoder /
decoder, warm-up), LIF vs LIAF, T values; writes ``benchmark.json``, ``benchmark.md`` and figures."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import request, run_request

EXAMPLE = "spikebridge benchmark --data mnist5k --out runs/benchmark"


def register(sub, add, common) -> None:
    from ..pipelines.benchmark import DEFAULT_METHODS

    p = add("benchmark", run, "the time-accuracy benchmark: SNNs from scratch vs from the ANN (full / encoder / "
            "decoder, warm-up), LIF vs LIAF, T values; table, figures, JSON", example=EXAMPLE)
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated methods, BASE[+wu][+lif|+liaf][+T<n>], BASE in scratch, pretrained, "
                        "encoder, decoder (default: %(default)s)")
    p.add_argument("--ann", metavar="CKPT|MODEL", help="use this ANN (a checkpoint, or a registry model with "
                   "--ann-weights) instead of training one")
    p.add_argument("--ann-weights", metavar="W.pth|W.safetensors", help="trained weights for --ann MODEL")
    p.add_argument("--ann-data", help="the ANN's static data when --data is events (default: mnist5k for es-mnist)")


def run(args: argparse.Namespace) -> int:
    from ..analysis.benchmark import markdown_table
    from ..pipelines.context import log, log_written

    options = {"methods": args.methods, "ann_data": args.ann_data}
    summary = run_request(args, request(args, "benchmark", options=options))
    if summary is not None:
        log(markdown_table(summary))
        log_written(Path(args.out), f"{summary['wall_seconds']} s")
    return 0
