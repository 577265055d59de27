"""Shared benchmark machinery: alternating timing with medians, peak memory in a child process,
environment notes, and result files.

Timing: contenders run one after another inside each repetition (A B C, A B C, ...), after
warm-up steps, and each contender's median over the repetitions is reported together with the
median of the per-repetition *ratios* (more robust on a shared, noisy machine than a ratio of
medians, because both sides of a ratio see the same moment's load).

Memory: :func:`peak_memory` runs ``memory_child.py`` in a fresh process per measurement. The child
builds the workload, runs one warm-up step, resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), runs one more step and reports ``VmHWM - VmRSS(before the step)``:
the peak resident memory the training step adds on top of the model, its gradients' previous
owner and the optimizer state. glibc is told to return freed large blocks to the kernel at once
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``), so RSS follows the live tensors.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from spikebridge.utils import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: environment for memory children: large allocations are mmap'ed and unmapped when freed
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "1"}


def require_peers(*modules: str) -> None:
    """Exit with one line when a side-by-side peer (SpikingJelly, snnTorch) is not installed: they
    are benchmark-only dependencies (``make bench-deps``)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{Path(sys.argv[0]).name}: {', '.join(missing)} not installed; run `make bench-deps` "
              "(or pass --no-peers where the script has it)", file=sys.stderr)
        sys.exit(2)


def set_threads(threads: int) -> int:
    """Fix torch's intra-op threads (1 by default in these benchmarks: with 2+ threads on a
    shared, oversubscribed machine every op waits for a descheduled worker and timings explode)."""
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def alternate(
    contenders: dict[str, Callable[[], object]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Time each callable ``reps`` times, interleaved (A B C A B C ...); seconds per call."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median of per-repetition ratios ``numerator[i] / denominator[i]``."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def summarize(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per contender: median / min seconds and the median ratio to ``baseline``."""
    out = {}
    for name, values in times.items():
        out[name] = {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "ratio_to_" + baseline: median_ratio(values, times[baseline]),
            "reps": len(values),
        }
    return out


def peak_memory(workload_json: str, *, mode: str = "train", threads: int = 1, timeout: float = 900) -> dict:
    """Peak RSS added by one step of ``workload_json`` (a :class:`workloads.Workload` as JSON),
    measured in a fresh child process. Returns the child's JSON report (bytes in ``peak_bytes``)."""
    env = dict(os.environ, **MEMORY_ENV)
    cmd = [sys.executable, str(HERE / "memory_child.py"), "--workload", workload_json, "--mode", mode,
           "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_memory_median(workload_json: str, *, repeats: int, **kwargs) -> dict:
    """:func:`peak_memory` ``repeats`` times (fresh processes), median of ``peak_bytes``."""
    runs = [peak_memory(workload_json, **kwargs) for _ in range(repeats)]
    report = dict(runs[0])
    for key in ("peak_bytes", "forward_kept_bytes"):
        values = [r[key] for r in runs if r.get(key) is not None]
        report[key] = statistics.median(values) if values else None
        report[key + "_runs"] = values
    return report


def environment() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "loadavg_at_start": [round(v, 2) for v in load],
        "command": " ".join([Path(sys.executable).name] + sys.argv),
    }


def write_results(name: str, payload: dict, markdown: str) -> Path:
    """Write ``results/NAME.json`` and ``results/NAME.md`` atomically; returns the JSON path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
    atomic_write_text(RESULTS / f"{name}.md", markdown)
    return path


def publish_table(name: str, title: str, env: dict, header: Sequence[str], rows: Sequence[Sequence[object]],
                  records: list) -> str:
    """Write ``results/NAME.{json,md}``: a titled markdown table with the command and the load at
    start, and the records with the environment. Prints and returns the markdown."""
    markdown = f"# {title} ({env['threads']} thread(s), {env['cpu']})\n\n" + table(header, rows)
    markdown += f"\nCommand: `{env['command']}`; load average at start {env['loadavg_at_start']}.\n"
    write_results(name, {"environment": env, "results": records}, markdown)
    print(markdown)
    return markdown


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
