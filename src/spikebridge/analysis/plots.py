"""Figures for reports: readable without the code (titles, axis labels with units, legends)."""
from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..utils import atomic_path


def subplots(*grid: int, figsize: tuple[float, float], **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, drawn without pyplot: the user's matplotlib
    backend (a notebook's inline one) is left as it is, and no figure stays open."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as a PNG (atomically); a title wider than its panel is wrapped."""
    for ax in fig.axes:
        title = ax.get_title()
        width = int(ax.get_position().width * fig.get_figwidth() * 72 / (0.6 * ax.title.get_fontsize()))  # chars
        if len(title) > width > 10:
            ax.set_title(textwrap.fill(title, width))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130, bbox_inches="tight")
    return path


def accuracy_ranges(accuracies: list[float]) -> tuple[float, float, float]:
    """The y ranges (in %) of the accuracy-vs-time panels: ``(low of every evaluation, low of the
    top of the range, high)``. The full panel shows every point; the zoom the best 15 points at
    most, from the lower quartile up."""
    if not accuracies:
        return 0.0, 0.0, 100.5
    top, full = max(accuracies), max(0.0, min(accuracies) - 3)
    zoom = max(full, min(top - 15, sorted(accuracies)[len(accuracies) // 4] - 2))  # never wider than the full panel
    return full, zoom, min(100.5, top + 1.5)


def plot_accuracy_vs_time(runs: list[dict], path: str | Path, *, title: str, targets: dict[str, float] | None = None,
                          x: str = "seconds", label_key: str = "name") -> None:
    """Test accuracy against training seconds (``x="seconds"``) or epochs (``x="epochs"``), one
    line per run (``run[label_key]``), markers at each evaluation, each of ``targets`` (label:
    accuracy) as a dashed line. Two panels: every evaluation (left) and the top of the range
    (right, where the runs are compared); the legend sits below them, over no data."""
    column, xlabel = (0, "training time (s)") if x == "seconds" else (1, "epochs of training")
    drawn = [run for run in runs if run["curve"]]
    targets = {label: value for label, value in (targets or {}).items() if value is not None}
    full_low, zoom_low, high = accuracy_ranges([100 * p[2] for run in drawn for p in run["curve"]])
    fig, axes = subplots(1, 2, figsize=(10.5, 4.2))
    for ax, low, name in ((axes[0], full_low, "every evaluation"),
                          (axes[1], zoom_low, f"top of the range ({zoom_low:.0f}-{min(100.0, high):.0f}%)")):
        for run in drawn:
            ax.plot([p[column] for p in run["curve"]], [100 * p[2] for p in run["curve"]], marker="o", markersize=3,
                    label=f"{run[label_key]} (best {100 * run['best_acc']:.1f}%)")
        for (label, value), (style, colour) in zip(targets.items(), (("--", "grey"), (":", "black"))):
            ax.axhline(100 * value, color=colour, linestyle=style, linewidth=1, label=f"{label} {100 * value:.1f}%")
        ax.set_ylim(low, high)
        if x == "epochs":  # whole epochs only (the ticks read 0.25, 0.50, ...)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=name)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(3, len(handles)), frameon=False,
                   bbox_to_anchor=(0.5, -0.02 - 0.045 * ((len(handles) - 1) // 3)))
    fig.tight_layout()
    save_png(fig, path)
