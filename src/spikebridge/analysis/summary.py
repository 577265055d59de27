"""The run summary (``summary.json``), time-to-target, and the markdown results table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text


def time_to_target(curve: list[list[float]], target: float) -> float | None:
    """Training seconds until the curve's accuracy first reaches ``target`` (None if never)."""
    for seconds, _epoch, acc in curve:
        if acc >= target - 1e-12:
            return float(seconds)
    return None


def build_summary(
    dataset: str,
    T: int,
    runs: list[dict],
    *,
    baseline: str = "snn_scratch",
    pretrained: str = "snn_pretrained",
    ann: str = "ann",
    extra: dict[str, Any] | None = None,
) -> dict:
    """``summary.json``'s content: runs, ``target_acc`` (the baseline's best) and time-to-target.

    ``time_to_target`` has one entry per run (except the ANN) plus ``<pretrained>_total`` which
    adds the ANN's training seconds.
    """
    by_name = {run["name"]: run for run in runs}
    summary: dict[str, Any] = {"dataset": dataset, "T": T, "runs": runs}
    if baseline in by_name:
        target = by_name[baseline]["best_acc"]
        summary["target_acc"] = target
        ttt: dict[str, float | None] = {}
        for run in runs:
            if run["name"] == ann:
                continue
            ttt[run["name"]] = time_to_target(run["curve"], target)
            if run["name"] == pretrained and ann in by_name and ttt[run["name"]] is not None:
                ttt[f"{pretrained}_total"] = round(ttt[run["name"]] + by_name[ann]["seconds"], 3)
        if pretrained in ttt and f"{pretrained}_total" not in ttt:
            ttt[f"{pretrained}_total"] = None
        summary["time_to_target"] = ttt
    summary.update(extra or {})
    return summary


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
