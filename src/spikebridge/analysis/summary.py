"""The run summary (``summary.json``), time-to-target, and the markdown results table."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text


def time_to_target(curve: list[list[float]], target: float) -> float | None:
    """Training seconds until the curve's accuracy first reaches ``target`` (None if never)."""
    for seconds, _epoch, acc in curve:
        if acc >= target - 1e-12:
            return float(seconds)
    return None


@dataclass(frozen=True)
class Comparison:
    """A scratch baseline and the bridged run measured against its best accuracy; ``bridge_key``:
    the summary entry with the bridge's seconds, counted in the bridged run's time to target."""

    baseline: str = "snn_scratch"
    pretrained: str = "snn_pretrained"
    target_key: str = "target_acc"
    bridge_key: str = "bridge_seconds"  # its CPU seconds: bridge_key with "_seconds" -> "_cpu_seconds"


PIPES = Comparison()
PIPED = Comparison("snn_events_scratch", "snn_events_pretrained", "events_target_acc", "events_bridge_seconds")
#: (curve, seconds, bridge seconds, summary key suffix): wall-clock time, and the process's CPU time
CLOCKS = (("curve", "seconds", "_seconds", ""), ("cpu_curve", "cpu_seconds", "_cpu_seconds", "_cpu"))


def build_summary(dataset: str, T: int, runs: list[dict], *, comparisons: tuple[Comparison, ...] = (PIPES,),
                  ann: str = "ann", extra: dict[str, Any] | None = None) -> dict:
    """``summary.json``'s content: runs, each comparison's target (its baseline's best accuracy)
    and ``time_to_target`` for the baseline and the bridged run (its training seconds plus the
    bridge's, ``extra[bridge_key]``), plus ``<pretrained>_total`` which adds the ANN's training
    seconds (its run's, else ``extra["ann_seconds"]``: an ``--ann`` checkpoint's record); ``time_ratio[<pretrained>]``: its seconds to the target over the baseline's (None when
    it never got there), ``time_ratio[<pretrained>_total]`` the same with the ANN's seconds. The same in the process's CPU seconds (``time_to_target_cpu``,
    ``time_ratio_cpu``, from each run's ``cpu_curve``): the ratio to quote on a shared CPU machine,
    where the load changes between phases."""
    by_name = {run["name"]: run for run in runs}
    summary: dict[str, Any] = {"dataset": dataset, "T": T, "runs": runs}
    for curve_key, seconds_key, bridge_suffix, suffix in CLOCKS:
        ttt: dict[str, float | None] = {}
        for comp in comparisons:
            if comp.baseline not in by_name or (suffix and curve_key not in by_name[comp.baseline]):
                continue
            target = by_name[comp.baseline]["best_acc"]
            summary[comp.target_key] = target
            ttt[comp.baseline] = time_to_target(by_name[comp.baseline][curve_key], target)
            if comp.pretrained in by_name:
                reach = time_to_target(by_name[comp.pretrained].get(curve_key, []), target)
                bridge = (extra or {}).get(comp.bridge_key.replace("_seconds", bridge_suffix)) or 0.0
                if reach is not None:
                    reach = round(reach + float(bridge), 3)
                ttt[comp.pretrained] = reach
                ann_seconds = by_name[ann].get(seconds_key, 0.0) if ann in by_name else \
                    float((extra or {}).get(f"ann_{seconds_key}") or 0.0)  # an --ann checkpoint's record
                ttt[f"{comp.pretrained}_total"] = None if reach is None else round(reach + ann_seconds, 3)
                base, ratios = ttt[comp.baseline], summary.setdefault(f"time_ratio{suffix}", {})
                for key in (comp.pretrained, f"{comp.pretrained}_total"):  # the SNN alone, and with the ANN
                    ratios[key] = None if ttt[key] is None or not base else round(ttt[key] / base, 4)
        if ttt:
            summary[f"time_to_target{suffix}"] = ttt
    summary.update(extra or {})
    return summary


def wall_time_line(summary: dict, what: str) -> str:
    """The report's line on the summary's ``wall_seconds`` (``what``: run, benchmark)."""
    if summary.get("wall_seconds_session"):
        return f"Wall time of this session: {summary['wall_seconds']} s (resumed with --resume; earlier sessions are not counted)."
    return f"Wall time of the whole {what}: {summary.get('wall_seconds')} s."


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def results_table(runs: list[dict], time_to_target_map: dict | None = None) -> str:
    """A markdown table: run, epochs, training seconds, best accuracy, seconds to target."""
    ttt = time_to_target_map or {}
    lines = ["| run | epochs | train s | best acc | s to target |", "|---|---:|---:|---:|---:|"]
    for run in runs:
        reach = ttt.get(run["name"])
        reach_txt = "-" if run["name"] not in ttt else ("never" if reach is None else f"{reach:.1f}")
        lines.append(f"| {run['name']} | {run['epochs']} | {run['seconds']:.1f} | {run['best_acc']:.4f} | {reach_txt} |")
    return "\n".join(lines)
