"""GPU benchmark (run by ``benchmarks/gpu.sh``): paper ResNet-18, 224x224, T=6, batch 32.

Each contender runs in its own process (clean CUDA memory statistics; SpikingJelly reads its
implementation choice from the environment at import): ``--warmup`` steps, then ``--steps`` timed
training steps (``torch.cuda.synchronize`` around each; the median is reported) and the peak
``torch.cuda.max_memory_allocated`` of one step after ``reset_peak_memory_stats``. Contenders:

* ``ours/triton`` and ``ours/fused`` (rect surrogate; the Triton kernels vs the fused PyTorch op),
  ``ours/triton/atan``;
* SpikingJelly 2.0 ``LIFNode`` with ``Rect`` (its Torch reference path: Rect has no registered
  kernel) and with ``ATan`` under ``SJ_LIF_CUDA_IMPLEMENTATION`` = ``auto`` / ``triton`` /
  ``cuda`` (its registered kernels; a choice that cannot run here is reported as unavailable);
* the ANN at batch ``B*T`` (the per-frame convolution limit).

    python benchmarks/gpu_bench.py --batch 32 --T 6 --size 224
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONTENDERS = [
    # (label, workload fields, SpikingJelly implementation or None)
    ("ours/triton", {"impl": "ours", "backend": "triton"}, None),
    ("ours/fused", {"impl": "ours", "backend": "fused"}, None),
    ("ours/triton/atan", {"impl": "ours", "backend": "triton", "surrogate": "atan"}, None),
    ("sj/rect (torch)", {"impl": "sj", "surrogate": "rect"}, "auto"),
    ("sj/atan (auto)", {"impl": "sj", "surrogate": "atan"}, "auto"),
    ("sj/atan (triton)", {"impl": "sj", "surrogate": "atan"}, "triton"),
    ("sj/atan (cuda)", {"impl": "sj", "surrogate": "atan"}, "cuda"),
    ("ann (B*T)", {"impl": "ann"}, None),
]


def child(args: argparse.Namespace) -> int:
    import torch

    from workloads import Workload, build

    workload = Workload(**json.loads(args.workload))
    train_step, _, _ = build(workload)
    for _ in range(args.warmup):
        train_step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        train_step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    train_step()
    torch.cuda.synchronize()
    print(json.dumps({
        "median_s": statistics.median(times),
        "min_s": min(times),
        "peak_bytes": torch.cuda.max_memory_allocated(),
        "peak_above_model_bytes": torch.cuda.max_memory_allocated() - before,
        "device": torch.cuda.get_device_name(),
    }))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--T", type=int, default=6)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=150, help="seconds per contender")
    parser.add_argument("--only", nargs="*", default=None, help="labels to run (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from common import environment, table, write_results

    env = environment()
    results, rows = {}, []
    for label, fields, sj_impl in CONTENDERS:
        if args.only and label not in args.only:
            continue
        workload = dict(model="resnet18", T=args.T, batch=args.batch, image_size=args.size, device="cuda", **fields)
        child_env = dict(os.environ)
        if sj_impl is not None:
            child_env["SJ_LIF_CUDA_IMPLEMENTATION"] = sj_impl
        cmd = [sys.executable, __file__, "--child", "--workload", json.dumps(workload),
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=args.timeout)
            ok = proc.returncode == 0
            detail = json.loads(proc.stdout.strip().splitlines()[-1]) if ok else {"error": proc.stderr.strip().splitlines()[-1:] }
        except subprocess.TimeoutExpired:
            ok, detail = False, {"error": f"timed out after {args.timeout:.0f} s"}
        except (json.JSONDecodeError, IndexError) as exc:
            ok, detail = False, {"error": f"unreadable child output: {exc}"}
        detail["wall_s"] = time.perf_counter() - start
        results[label] = {"ok": ok, **detail}
        print(label, json.dumps(results[label]), flush=True)
    base = results.get("ours/triton", {})
    for label, r in results.items():
        if not r["ok"]:
            rows.append([label, "unavailable", "", "", "", str(r.get("error"))[:120]])
            continue
        ratio = f"{r['median_s'] / base['median_s']:.2f}" if base.get("ok") else ""
        mem_ratio = f"{r['peak_bytes'] / base['peak_bytes']:.2f}" if base.get("ok") else ""
        rows.append([label, f"{r['median_s'] * 1e3:.1f}", ratio, f"{r['peak_bytes'] / 2**30:.2f}", mem_ratio, ""])
    device = next((r["device"] for r in results.values() if r.get("ok")), "no GPU result")
    markdown = (f"# GPU: paper ResNet-18, {args.size}x{args.size}, T={args.T}, batch {args.batch} ({device})\n\n"
                + table(["contender", "train step ms (median)", "time / ours/triton", "peak GiB",
                         "memory / ours/triton", "note"], rows)
                + f"\nCommand: `{env['command']}`.\n")
    write_results("gpu", {"environment": env, "device": device, "results": results}, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
