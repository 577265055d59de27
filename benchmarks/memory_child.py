"""Child process of :func:`common.peak_memory`: the peak memory one step of a workload adds.

Prints one JSON line: ``peak_bytes`` (``VmHWM`` after the measured step minus ``VmRSS`` before
it, both from ``/proc/self/status``; gradients are dropped before, so they count), and
``forward_kept_bytes`` (RSS after the forward minus before: what the forward keeps for the
backward), the RSS before, the loss, and the workload. CPU only (on CUDA
the GPU benchmark reads ``torch.cuda.max_memory_allocated`` instead).

    python benchmarks/memory_child.py --workload '{"impl": "ours", "model": "cnn", "T": 6}'
"""
from __future__ import annotations

import argparse
import gc
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from workloads import Workload, build_parts  # noqa: E402


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True, help="Workload as JSON (fields of workloads.Workload)")
    parser.add_argument("--mode", choices=("train", "infer"), default="train")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = Workload(**json.loads(args.workload))
    parts = build_parts(workload)

    def infer() -> None:
        parts.model.eval()
        with torch.no_grad():
            parts.model(parts.x)
        parts.reset()

    if args.mode == "train":
        parts.finish_step(parts.forward_loss())  # warm-up: optimizer state, kernels, library pages
        parts.optimizer.zero_grad(set_to_none=True)
    else:
        infer()
    gc.collect()
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    kept = None
    loss = None
    if args.mode == "train":
        loss_tensor = parts.forward_loss()
        kept = (_status_kib("VmRSS") - before) * 1024  # what the forward keeps for the backward
        loss = parts.finish_step(loss_tensor)
    else:
        infer()
    peak = _status_kib("VmHWM")
    print(json.dumps({
        "peak_bytes": (peak - before) * 1024,
        "forward_kept_bytes": kept,
        "rss_before_bytes": before * 1024,
        "loss": loss,
        "mode": args.mode,
        "workload": json.loads(workload.to_json()),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
