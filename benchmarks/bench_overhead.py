"""Spiking overhead: an SNN training step at (T, B) against the same architecture's ANN at B*T.

An SNN at T steps cannot cost less than its ANN on a batch T times larger (the same convolutions
on the same number of frames), so ``SNN / ANN-at-B*T`` is the overhead of spiking: the neuron
recurrence and what it saves. With static input (direct encoding) the SNN's stem runs once per
image instead of once per step, so the ratio can go below 1; ``--input events`` feeds T event
frames and removes that advantage. Times alternate SNN / ANN within each repetition; the table
reports medians and the median of per-repetition ratios. ``--memory`` adds the peak memory of one
training step of each (a fresh process per measurement).

    python benchmarks/bench_overhead.py --models cnn resnet18 --T 4 6 8 --input static events --memory

``--step-in-backward`` runs both the SNN and the ANN with the engine's ``step_in_backward`` option
(each parameter updated and its gradient freed as soon as it is accumulated).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import alternate, environment, mib, peak_memory_median, publish_table, set_threads, summarize  # noqa: E402
from workloads import Workload, build  # noqa: E402

DEFAULT_BATCH = {"cnn": 32, "resnet18": 4}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet18"])
    parser.add_argument("--T", nargs="+", type=int, default=[4, 6, 8])
    parser.add_argument("--batch", type=int, default=0, help="B (0 = per model: cnn 32, resnet18 4)")
    parser.add_argument("--input", nargs="+", default=["static"], choices=["static", "events"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="also peak memory (child processes)")
    parser.add_argument("--memory-repeats", type=int, default=1)
    parser.add_argument("--step-in-backward", action="store_true",
                        help="both SNN and ANN: the optimizer step fused into the backward (engine option)")
    parser.add_argument("--name", default="overhead")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    env = environment()
    rows, records = [], []
    for model in args.models:
        batch = args.batch or DEFAULT_BATCH.get(model, 8)
        for input_kind in args.input:
            for steps in args.T:
                fused = args.step_in_backward
                snn = Workload(impl="ours", model=model, T=steps, batch=batch, input=input_kind, step_in_backward=fused)
                ann = Workload(impl="ann", model=model, T=steps, batch=batch, step_in_backward=fused)
                snn_train, snn_infer, _ = build(snn)
                ann_train, ann_infer, _ = build(ann)
                train = summarize(alternate({"snn": snn_train, "ann": ann_train}, args.reps), "ann")
                infer = summarize(alternate({"snn": snn_infer, "ann": ann_infer}, args.reps), "ann")
                record = {"model": model, "T": steps, "B": batch, "input": input_kind, "step_in_backward": fused,
                          "train": train, "infer": infer}
                memory_cells = ["", "", "", ""]
                if args.memory:
                    mem_snn = peak_memory_median(snn.to_json(), repeats=args.memory_repeats, threads=args.threads)
                    mem_ann = peak_memory_median(ann.to_json(), repeats=args.memory_repeats, threads=args.threads)
                    record["memory"] = {"snn": mem_snn, "ann": mem_ann}
                    memory_cells = [mib(mem_snn["peak_bytes"]), mib(mem_ann["peak_bytes"]),
                                    f"{mem_snn['peak_bytes'] / mem_ann['peak_bytes']:.2f}",
                                    f"{mem_snn['forward_kept_bytes'] / mem_ann['forward_kept_bytes']:.2f}"]
                records.append(record)
                rows.append([
                    model, input_kind, steps, batch,
                    f"{train['snn']['median_s']:.3f}", f"{train['ann']['median_s']:.3f}",
                    f"**{train['snn']['ratio_to_ann']:.2f}**",
                    f"{infer['snn']['median_s']:.3f}", f"{infer['ann']['median_s']:.3f}",
                    f"**{infer['snn']['ratio_to_ann']:.2f}**",
                    *memory_cells,
                ])
                print(" ".join(str(c) for c in rows[-1]), flush=True)
    header = ["model", "input", "T", "B", "train SNN s", "train ANN(B*T) s", "train ratio",
              "infer SNN s", "infer ANN(B*T) s", "infer ratio", "peak SNN MiB", "peak ANN MiB", "peak ratio",
              "forward-kept ratio"]
    publish_table(args.name, "Spiking overhead", env, header, rows, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
