"""Figures for reports: readable without the code (titles, axis labels with units, legends)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..utils import atomic_path  # noqa: E402


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (atomically) and close it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_vs_time(runs: list[dict], path: str | Path, *, title: str, target: float | None = None,
                          x: str = "seconds", label_key: str = "name") -> None:
    """Test accuracy against training seconds (``x="seconds"``) or epochs (``x="epochs"``), one
    line per run (``run[label_key]``), markers at each evaluation, the target as a dashed line."""
    column, xlabel = (0, "training time (s)") if x == "seconds" else (1, "epochs of training")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for run in runs:
        curve = run["curve"]
        if not curve:
            continue
        xs = [p[column] for p in curve]
        accs = [100 * p[2] for p in curve]
        ax.plot(xs, accs, marker="o", markersize=3, label=f"{run[label_key]} (best {100 * run['best_acc']:.1f}%)")
    if target is not None:
        ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label=f"target {100 * target:.1f}%")
    accs_all = [100 * p[2] for run in runs for p in run["curve"]]
    if accs_all:
        top = max(accs_all)
        ax.set_ylim(max(0.0, min(top - 15, sorted(accs_all)[len(accs_all) // 4] - 2)), min(100.5, top + 1.5))
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, path)
