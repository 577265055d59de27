"""The neuron op alone: forward + backward of one multi-step LIF on ``[T, B, C, H, W]``.

Contenders (alternating, medians, median ratios to ``fused``): our fused op (the CPU default),
our autograd reference loop, SpikingJelly 2.0's ``LIFNode`` (Rect: its autograd loop; ATan: its
registered op), and ReLU forward + backward on the same tensor (the ANN's cost for the same
elements). Also the no-grad forward of the fused op and of the reference.

    python benchmarks/bench_neuron.py --shape 6 8 64 32 32 --reps 15
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from common import (alternate, environment, require_peers, set_threads, summarize, table,  # noqa: E402
                    write_results)
from spikebridge.neurons import multistep_fused, multistep_reference  # noqa: E402
from spikebridge.surrogate import get_surrogate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs="+", type=int, default=[6, 8, 64, 32, 32])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--name", default="neuron")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    env = environment()
    x = (torch.randn(*args.shape, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.3).requires_grad_()
    grad = torch.randn(*args.shape, generator=torch.Generator().manual_seed(1))
    rect = get_surrogate("rect")

    def fwd_bwd(op, slope=None):
        def run():
            x.grad = None
            op(x, 0.25, 0.5, rect, slope).backward(grad)
        return run

    def fwd_only(op):
        def run():
            with torch.no_grad():
                op(x, 0.25, 0.5, rect, None)
        return run

    def relu():
        x.grad = None
        torch.relu(x).backward(grad)

    contenders = {
        "fused": fwd_bwd(multistep_fused),
        "reference (autograd loop)": fwd_bwd(multistep_reference),
        "fused LIAF": fwd_bwd(multistep_fused, 0.2),
        "ReLU": relu,
    }
    if not args.no_peers:
        require_peers("spikingjelly")
        from spikingjelly.activation_based import functional, neuron, surrogate

        for label, function in (("SpikingJelly LIFNode Rect", surrogate.Rect(alpha=1.0)),
                                ("SpikingJelly LIFNode ATan", surrogate.ATan(alpha=2.0))):
            node = neuron.LIFNode(tau=4.0 / 3.0, decay_input=False, v_threshold=0.5, v_reset=0.0,
                                  detach_reset=True, step_mode="m", surrogate_function=function)

            def run(node=node):
                x.grad = None
                node(x).backward(grad)
                functional.reset_net(node)
            contenders[label] = run
    contenders["fused, no grad"] = fwd_only(multistep_fused)
    contenders["reference, no grad"] = fwd_only(multistep_reference)
    times = summarize(alternate(contenders, args.reps, warmup=2), "fused")
    rows = [[name, f"{t['median_s'] * 1e3:.1f}", f"{t['min_s'] * 1e3:.1f}", f"{t['ratio_to_fused']:.2f}"]
            for name, t in times.items()]
    markdown = (f"# Neuron op alone, shape {list(args.shape)} ({env['threads']} thread(s), {env['cpu']})\n\n"
                + table(["contender (fwd+bwd unless noted)", "ms (median)", "ms (min)", "time / fused"], rows)
                + f"\nCommand: `{env['command']}`; load average at start {env['loadavg_at_start']}.\n")
    write_results(args.name, {"environment": env, "shape": args.shape, "times": times}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
