"""Figures for evaluation reports (PNG, readable without the code: titles, units, legends):
accuracy against T, firing rates, spike rasters, event frames, images, and
:func:`conversion_vs_bridge` (``plots.plot_accuracy_vs_time``: accuracy against training time).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .metrics import spikes_of
from .plots import save_png, subplots


def t_ticks(values, marks=()) -> list[int]:
    """The T axis's labelled ticks: every T, or beyond 8 of them (on the log axis 9, 10, 11, 12
    run together) the powers of two, the marked T and the last one."""
    ticks = sorted(values)
    if len(ticks) > 8:
        ticks = sorted({t for t in ticks if t & (t - 1) == 0} | set(marks) | {ticks[-1]})
    return ticks


def plot_accuracy_vs_T(
    curves: dict[str, Sequence[Sequence[float]]], path: str | Path, *, title: str,
    marks: dict[str, int] | None = None,
) -> Path:
    """``curves``: ``{label: [(T, accuracy in [0, 1]), ...]}``; ``marks``: ``{label: T}`` to ring
    one point per line (e.g. the T the SNN was trained at)."""
    fig, ax = subplots(figsize=(6.4, 4.2))
    for label, curve in curves.items():
        if not curve:
            continue
        ts = [p[0] for p in curve]
        accs = [100 * p[1] for p in curve]
        line = ax.plot(ts, accs, marker="o", markersize=3, label=label)[0]
        if marks and label in marks and marks[label] in ts:
            i = ts.index(marks[label])
            ax.plot([ts[i]], [accs[i]], marker="o", markersize=10, markerfacecolor="none",
                    markeredgecolor=line.get_color(), linestyle="none")
    ax.set_xscale("log", base=2)
    ticks = t_ticks({int(p[0]) for curve in curves.values() for p in curve}, (marks or {}).values())
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set(xlabel="time steps T (log scale)", ylabel="test accuracy (%)", ylim=(0, 100.5), title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return save_png(fig, path)


def plot_firing_rates(rates: Sequence[tuple[str, float]], path: str | Path, *, title: str) -> Path:
    """Bar chart of ``[(layer name, firing rate in [0, 1]), ...]`` in network order."""
    names = [n for n, _ in rates]
    values = [100 * r for _, r in rates]
    fig, ax = subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.8))
    ax.bar(range(len(values)), values, color="#4477aa")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="firing rate (% of neurons per step)", xlabel="neuron layer (input -> output)", title=title)
    ax.grid(alpha=0.3, axis="y")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=6)
    return save_png(fig, path)


def plot_spike_raster(spikes: torch.Tensor, path: str | Path, *, title: str) -> Path:
    """``spikes``: ``[T, N]`` (nonzero = spike) for N neurons of one sample."""
    data = (spikes != 0).cpu().numpy()
    steps, count = data.shape
    fig, ax = subplots(figsize=(max(4.0, 0.35 * steps + 2), max(2.5, 0.18 * count + 1)))
    t_idx, n_idx = np.nonzero(data)
    ax.scatter(t_idx + 1, n_idx, marker="s", s=30, color="black")
    ax.set(xlim=(0.5, steps + 0.5), ylim=(-0.5, count - 0.5), xticks=range(1, steps + 1), title=title,
           xlabel=f"time step (black square = spike; {int(data.sum())} spikes)", ylabel="neuron")
    ax.grid(alpha=0.2)
    return save_png(fig, path)


def plot_event_frames(frames: torch.Tensor, path: str | Path, *, title: str) -> Path:
    """``frames``: ``[T, 2, H, W]`` (channel 0 = ON, 1 = OFF) or ``[T, 1, H, W]``: one panel per step,
    ON events red, OFF events blue."""
    data = frames.detach().float().cpu()
    steps = data.shape[0]
    fig, axes = subplots(1, steps, figsize=(1.6 * steps, 2.0), squeeze=False)
    for t in range(steps):
        on = data[t, 0].numpy()
        off = data[t, 1].numpy() if data.shape[1] > 1 else np.zeros_like(on)
        image = np.ones((*on.shape, 3))
        image[on > 0] = (0.85, 0.1, 0.1)
        image[off > 0] = (0.1, 0.2, 0.85)
        image[(on > 0) & (off > 0)] = (0.5, 0.1, 0.5)
        ax = axes[0, t]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(f"t={t + 1}: {int((on > 0).sum())} ON / {int((off > 0).sum())} OFF", fontsize=6)
        ax.axis("off")
    fig.suptitle(f"{title} (red = ON, blue = OFF)", fontsize=9)
    return save_png(fig, path)


def plot_images(images: torch.Tensor, path: str | Path, *, title: str) -> Path:
    """``images`` ``[N, C, H, W]`` in [0, 1] side by side (grey when ``C`` is 1)."""
    fig, axes = subplots(1, len(images), figsize=(2.2 * len(images), 2.4), squeeze=False)
    for ax, image in zip(axes[0], images):
        pixels = image.permute(1, 2, 0).numpy()
        ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return save_png(fig, path)


@torch.no_grad()
def record_spikes(model: nn.Module, x: torch.Tensor, *, layer: str | None = None, neurons: int = 24,
                  seed: int = 0) -> tuple[str, torch.Tensor]:
    """Spikes ``[T, neurons]`` (:func:`~.metrics.spikes_of`) of ``neurons`` randomly chosen active units of one neuron layer (the
    first one by default) for the first sample of ``x``. Returns ``(layer name, spikes)``."""
    from ..layers import TimeFolded

    model = getattr(model, "module", model)
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, TimeFolded)]
    if not candidates:
        raise ValueError("the model has no spiking layer")
    name, module = next(((n, m) for n, m in candidates if n == layer), candidates[0]) if layer else candidates[0]
    captured = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    was_training = model.training
    model.eval()
    try:
        model(x[:1] if x.dim() == getattr(model, "input_ndim", 4) else x[:, :1])
    finally:
        handle.remove()
        model.train(was_training)
    out = captured[0]
    steps = module.time_steps
    per_step = spikes_of(module, out).unflatten(0, (steps, -1))[:, 0].flatten(1).float()  # [T, units]
    active = torch.nonzero(per_step.any(0)).flatten()
    pool = active if len(active) >= neurons else torch.arange(per_step.shape[1])
    choice = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:neurons]].sort().values
    return name, per_step[:, choice]


def conversion_vs_bridge(ann: nn.Module, snn: nn.Module, bundle, T_values: Sequence[int], out_dir: str | Path, *,
                         max_samples: int | None = 1000, calibration_batches: int = 2,
                         calibration_batch_size: int = 128, percentile: float = 99.9,
                         device: torch.device | str = "cpu", filename: str = "accuracy_vs_T.png") -> dict:
    """Accuracy against T of the bridge's SNN and of classic conversion of ``ann`` (the same
    weights the SNN started from), on the test split; writes ``out_dir/filename``.

    Returns ``{"bridge": [[T, acc], ...], "conversion": [...], "trained_T": T,
    "bridge_acc_at_trained_T": acc, "conversion_T_to_match": T or None, "figure": path, "seconds": s}``
    where ``conversion_T_to_match`` is the smallest T at which conversion reaches the bridge's
    accuracy at its trained T (None within the measured range).
    """
    from ..conversion import accuracy_curve, conversion_accuracy_curve

    started = time.perf_counter()
    T_values = sorted({int(t) for t in T_values})
    trained_T = int(getattr(getattr(snn, "module", snn), "T", T_values[0]))
    bridge_T = sorted(set(T_values) | {trained_T})
    bridge = accuracy_curve(snn, bundle, bridge_T, device=device, max_samples=max_samples)
    conversion = conversion_accuracy_curve(
        ann, bundle, T_values, percentile=percentile, calibration_batches=calibration_batches,
        calibration_batch_size=calibration_batch_size, device=device, max_samples=max_samples,
    )
    at_trained = dict(bridge)[trained_T]
    match = next((t for t, acc in conversion if acc >= at_trained), None)
    out = Path(out_dir)
    figure = plot_accuracy_vs_T(
        {f"bridge SNN (trained at T={trained_T})": bridge, f"ANN->SNN conversion (IF, soft reset, p{percentile:g})": conversion},
        out / filename, title=f"Accuracy vs time steps: the bridge vs conversion of the same ANN "
                              f"({min(max_samples or len(bundle.test), len(bundle.test))} test samples)",
        marks={f"bridge SNN (trained at T={trained_T})": trained_T},
    )
    return {
        "bridge": [[t, a] for t, a in bridge],
        "conversion": [[t, a] for t, a in conversion],
        "trained_T": trained_T,
        "bridge_acc_at_trained_T": at_trained,
        "conversion_T_to_match": match,
        "percentile": percentile,
        "samples": min(max_samples or len(bundle.test), len(bundle.test)),
        "figure": str(figure),
        "seconds": round(time.perf_counter() - started, 2),
    }


__all__ = [
    "conversion_vs_bridge", "plot_accuracy_vs_T", "plot_event_frames", "plot_firing_rates",
    "plot_spike_raster", "record_spikes",
]
