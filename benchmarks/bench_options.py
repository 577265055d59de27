"""Options that trade memory, time or compile cost, each against the plain default, side by side.

* ``compact_spikes`` (default on): spikes saved for the backward as the LIF's uint8 code (or
  bool) instead of float32, and the lean backward of the convolutions that read them.
* ``step_in_backward`` (engine option, on by default in training runs; measured here both ways): each parameter is updated by the
  optimizer as soon as its gradient is accumulated, and the gradient freed.
* ``checkpoint_blocks``: activation checkpointing of every ResNet block / CNN conv-BN-LIF triple.
* ``channels_last``: NHWC memory format for the whole network (CPU convolutions via oneDNN).
* ``--compile``: ``torch.compile`` of the neuron op alone (fused and reference backends), timed
  on one neuron-sized tensor against the eager fused op; compile time reported separately.

Each model/T row alternates the variants within each repetition (medians, median ratios to the
default), then measures the peak memory of one training step of each in a fresh process.

    python benchmarks/bench_options.py --models resnet18 --T 6 16 --compile
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import alternate, environment, mib, peak_memory_median, set_threads, summarize, table, write_results  # noqa: E402
from workloads import Workload, build  # noqa: E402

VARIANTS = {
    "default (compact spikes)": {},
    "float spikes": {"compact_spikes": False},
    "checkpoint_blocks": {"checkpoint_blocks": True},
    "channels_last": {"channels_last": True},
    "step_in_backward": {"step_in_backward": True},
    "step_in_backward + checkpoint_blocks": {"step_in_backward": True, "checkpoint_blocks": True},
}


def compile_rows(reps: int, steps: int, batch: int) -> tuple[list[list[str]], dict]:
    """Neuron op alone: eager fused vs torch.compile'd fused / reference, fwd+bwd on a
    ResNet-18 layer-1 sized tensor [T, B, 64, 16, 16]."""
    import spikebridge as sb

    x = (torch.randn(steps, batch, 64, 16, 16) * 0.8 + 0.3).requires_grad_()
    grad = torch.randn_like(x)
    eager = sb.LIF(backend="fused")
    contenders = {"eager fused": eager}
    compile_seconds = {}
    for name, backend in (("compiled fused", "fused"), ("compiled reference", "reference")):
        module = torch.compile(sb.LIF(backend=backend), dynamic=False)
        start = time.perf_counter()
        module(x).backward(grad)
        compile_seconds[name] = time.perf_counter() - start
        contenders[name] = module
    equal = {name: bool(torch.equal(m(x.detach()), eager(x.detach()))) for name, m in contenders.items()}

    def runner(module):
        def run():
            x.grad = None
            module(x).backward(grad)
        return run

    times = summarize(alternate({n: runner(m) for n, m in contenders.items()}, reps), "eager fused")
    rows = [[name, f"{times[name]['median_s'] * 1e3:.1f}", f"{times[name]['ratio_to_eager fused']:.2f}",
             f"{compile_seconds.get(name, 0.0):.1f}", equal[name]] for name in contenders]
    return rows, {"times": times, "compile_seconds": compile_seconds, "spikes_equal": equal}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18"])
    parser.add_argument("--T", nargs="+", type=int, default=[6, 16])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-repeats", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also torch.compile of the neuron op")
    parser.add_argument("--name", default="options")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    env = environment()
    rows, records = [], []
    base = next(iter(VARIANTS))
    for model in args.models:
        for steps in args.T:
            loads = {name: dataclasses.replace(Workload(impl="ours", model=model, T=steps, batch=args.batch), **kw)
                     for name, kw in VARIANTS.items()}
            times = summarize(alternate({n: build(w)[0] for n, w in loads.items()}, args.reps), base)
            memory = {n: peak_memory_median(w.to_json(), repeats=args.memory_repeats, threads=args.threads)
                      for n, w in loads.items()}
            records.append({"model": model, "T": steps, "B": args.batch, "time": times, "memory": memory})
            for name in loads:
                peak, kept = memory[name]["peak_bytes"], memory[name]["forward_kept_bytes"]
                rows.append([model, steps, args.batch, name, f"{times[name]['median_s']:.3f}",
                             f"{times[name]['ratio_to_' + base]:.2f}", mib(peak),
                             f"{peak / memory[base]['peak_bytes']:.2f}", mib(kept),
                             f"{kept / memory[base]['forward_kept_bytes']:.2f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    header = ["model", "T", "B", "variant", "train step s", "time / default", "peak step MiB", "peak / default",
              "forward keeps MiB", "kept / default"]
    markdown = f"# Options ({env['threads']} thread(s), {env['cpu']})\n\n" + table(header, rows)
    payload = {"environment": env, "results": records}
    if args.compile:
        compile_table, payload["compile"] = compile_rows(args.reps, 6, args.batch)
        markdown += "\n## torch.compile of the neuron op (fwd+bwd, [6, B, 64, 16, 16])\n\n"
        markdown += table(["variant", "ms (median)", "time / eager fused", "compile s", "spikes equal"], compile_table)
    markdown += f"\nCommand: `{env['command']}`; load average at start {env['loadavg_at_start']}.\n"
    write_results(args.name, payload, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
