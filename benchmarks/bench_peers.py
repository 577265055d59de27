"""Peers: the same network and data with spikebridge, SpikingJelly 2.0 and snnTorch.

Training step time (alternating contenders within each repetition; medians and median ratios to
``ours/rect``) and the peak memory of one training step (one fresh process per measurement; the
median of ``--memory-repeats`` processes). Before timing, every contender trains 3 steps from the
same weights and data and the losses are compared: equal losses show the networks compute the
same thing (see ``workloads.py`` for the neuron mapping).

Needs the peers (``make bench-deps``: ``pip install --no-deps spikingjelly==2.0.0 snntorch loguru``).

    python benchmarks/bench_peers.py --models resnet18 cnn --T 6
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (alternate, environment, mib, peak_memory_median, publish_table, require_peers,  # noqa: E402
                    set_threads, summarize)
from workloads import Workload, build  # noqa: E402

CONTENDERS = ("ours/rect", "sj/rect", "snntorch/rect", "ours/atan", "sj/atan", "snntorch/atan")
DEFAULT_BATCH = {"cnn": 32, "resnet18": 8}


def workload(label: str, model: str, steps: int, batch: int, step_in_backward: bool = False) -> Workload:
    impl, surrogate = label.split("/")
    return Workload(impl=impl, model=model, T=steps, batch=batch, surrogate=surrogate,
                    step_in_backward=step_in_backward)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "cnn"])
    parser.add_argument("--T", type=int, default=6)
    parser.add_argument("--batch", type=int, default=0, help="B (0 = per model: cnn 32, resnet18 8)")
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS))
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-repeats", type=int, default=2)
    parser.add_argument("--step-in-backward", action="store_true",
                        help="every contender: the optimizer step fused into the backward (engine option)")
    parser.add_argument("--name", default="peers")
    args = parser.parse_args(argv)
    require_peers("spikingjelly", "snntorch")
    set_threads(args.threads)
    env = environment()
    base = args.contenders[0]
    rows, records = [], []
    for model in args.models:
        batch = args.batch or DEFAULT_BATCH.get(model, 8)
        loads = {label: workload(label, model, args.T, batch, args.step_in_backward) for label in args.contenders}
        # same computation check: 3 training steps from the same weights and data
        losses = {}
        for label, w in loads.items():
            train, _, _ = build(w)
            losses[label] = [round(train(), 5) for _ in range(3)]
        steps = {label: build(w)[0] for label, w in loads.items()}
        times = summarize(alternate(steps, args.reps), base)
        del steps
        memory = {label: peak_memory_median(w.to_json(), repeats=args.memory_repeats, threads=args.threads)
                  for label, w in loads.items()}
        record = {"model": model, "T": args.T, "B": batch, "step_in_backward": args.step_in_backward,
                  "losses_3_steps": losses, "time": times, "memory": memory}
        for label in args.contenders:
            peak, kept = memory[label]["peak_bytes"], memory[label]["forward_kept_bytes"]
            rows.append([
                model, args.T, batch, label,
                f"{times[label]['median_s']:.3f}", f"**{times[label]['ratio_to_' + base]:.2f}**",
                mib(peak), f"**{peak / memory[base]['peak_bytes']:.2f}**",
                mib(kept), f"{kept / memory[base]['forward_kept_bytes']:.2f}",
                " ".join(f"{v:.4f}" for v in losses[label]),
            ])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
        records.append(record)
    header = ["model", "T", "B", "contender", "train step s (median)", f"time / {base}", "peak step MiB",
              f"peak / {base}", "forward keeps MiB", f"kept / {base}", "loss after steps 1-3"]
    publish_table(args.name, "Peers", env, header, rows, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
