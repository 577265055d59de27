"""The paper's time-accuracy benchmark: what its methods mean, and how their results are reported.

A *method* names how an SNN starts and what it is, as ``BASE[+MODIFIER...]``:

=================  ================================================================================
base               the SNN starts from
=================  ================================================================================
``scratch``        random weights (BPTT from scratch)
``pretrained``     the ANN: every tensor that fits (the bridge), BN calibrated
``encoder``        the ANN's encoder (everything but the readout, which is re-initialised)
``decoder``        the ANN's readout only (``fc``; the CRNN's LSTM + fc), the rest random
=================  ================================================================================

modifiers: ``wu`` (warm-up: for the first ``finetune.freeze_epochs`` epochs, at least 1, every
transferred tensor of the encoder stays frozen and only the readout and new layers train; the
paper's "+WU"), ``lif`` / ``liaf`` (the neuron), ``T<n>`` (time steps), e.g. ``pretrained+liaf``,
``scratch+T2``, ``encoder+wu``.

Results (one :class:`BenchRun` per method) go to a JSON file, a markdown table and two figures:
test accuracy against training seconds (for transferred methods the ANN's training seconds come
first: the honest cost of starting from an ANN) and against epochs of SNN training.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import MAX_T, check_int
from ..errors import ConfigError, short_repr
from ..neurons import neuron_names
from ..utils import atomic_write_text, counted
from .plots import plot_accuracy_vs_time
from .summary import time_to_target, wall_time_line, write_json

BASES = ("scratch", "pretrained", "encoder", "decoder")


@dataclass(frozen=True)
class BenchMethod:
    """One benchmark method, parsed from its name (see the module docstring)."""

    name: str
    base: str
    warmup: bool = False
    neuron: str | None = None  # None = the configured neuron
    T: int | None = None  # None = the configured T

    @property
    def transfers(self) -> bool:
        return self.base != "scratch"


def parse_method(text: str) -> BenchMethod:
    """``"pretrained+liaf+T2"`` -> :class:`BenchMethod`; raises ConfigError naming the bad part."""
    name = text.strip()
    parts = [p.strip().lower() for p in name.split("+")]
    if not parts or parts[0] not in BASES:
        raise ConfigError(f"benchmark method {name!r}: it must start with one of {', '.join(BASES)}")
    base, warmup, neuron, steps = parts[0], False, None, None
    kinds = [("warm-up" if p == "wu" else "neuron" if p in neuron_names(spiking=True) else "T") for p in parts[1:]]
    for kind in dict.fromkeys(kinds):
        if kinds.count(kind) > 1:
            raise ConfigError(f"benchmark method {short_repr(name)}: gives its {kind} more than once")
    for part, original in zip(parts[1:], name.split("+")[1:]):
        if part == "wu":
            warmup = True
        elif part in neuron_names(spiking=True):
            neuron = part
        elif re.fullmatch(r"t[0-9]+", part):
            steps = check_int(f"benchmark method {short_repr(name)}: T", int(part[1:]), 1, MAX_T)
        else:
            raise ConfigError(f"benchmark method {short_repr(name)}: unknown modifier {original.strip()!r} "
                              f"(wu, {', '.join(neuron_names(spiking=True))} or T<n>)")
    if warmup and base in ("scratch", "decoder"):
        raise ConfigError(f"benchmark method {name!r}: warm-up (+wu) freezes the transferred encoder; "
                          f"{base} transfers none")
    return BenchMethod(name=name, base=base, warmup=warmup, neuron=neuron, T=steps)


def parse_methods(texts: list[str] | str) -> list[BenchMethod]:
    """A comma-separated list (or a list of strings); duplicates are refused."""
    if isinstance(texts, str):
        texts = [texts]
    items = [item for text in texts for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError("give at least one benchmark method")
    methods = [parse_method(item) for item in items]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"benchmark methods repeat: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return methods


@dataclass
class BenchRun:
    """One method's outcome. ``curve``: ``[[SNN training seconds, epoch, test accuracy], ...]``
    (the point at 0 s is the accuracy right after the transfer for transferred methods);
    ``cpu_curve`` the same in process CPU seconds. A transferred method's total time adds the ANN's
    training and the bridge (its calibration) before the SNN's first second."""

    method: str
    base: str
    neuron: str
    T: int
    warmup_epochs: int
    epochs: int
    snn_seconds: float
    ann_seconds: float  # the ANN's training seconds this method builds on (0 for scratch)
    best_acc: float
    final_acc: float
    transfer_acc: float | None
    curve: list[list[float]] = field(default_factory=list)
    transferred: int = 0  # tensors taken from the ANN as they are (an adapted first layer not counted)
    bridge_seconds: float = 0.0
    cpu_curve: list[list[float]] = field(default_factory=list)
    ann_cpu_seconds: float = 0.0
    bridge_cpu_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return round(self.ann_seconds + self.bridge_seconds + self.snn_seconds, 3)

    def total_curve(self, cpu: bool = False) -> list[list[float]]:
        """The curve against all training seconds (the ANN's and the bridge's first); ``cpu``: in
        process CPU seconds."""
        offset = self.ann_cpu_seconds + self.bridge_cpu_seconds if cpu else self.ann_seconds + self.bridge_seconds
        return [[round(offset + s, 3), e, a] for s, e, a in (self.cpu_curve if cpu else self.curve)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": self.total_seconds}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> BenchRun:
        """A run from its :meth:`to_dict` record (a ``benchmark.json`` entry)."""
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})


def summarize(runs: list[BenchRun], *, dataset: str, ann: dict | None, target_method: str = "scratch",
              extra: dict | None = None) -> dict:
    """``benchmark.json``'s content: the runs, and, when ``target_method`` ran, its best accuracy as
    the target with each method's seconds to reach it (SNN seconds and all seconds)."""
    summary: dict[str, Any] = {"dataset": dataset, "ann": ann, "runs": [r.to_dict() for r in runs]}
    by_name = {r.method: r for r in runs}
    if target_method in by_name:
        target = by_name[target_method].best_acc
        summary.update(target_method=target_method, target_acc=target, time_to_target={
            run.method: {"snn_seconds": time_to_target(run.curve, target),
                         "total_seconds": time_to_target(run.total_curve(), target),
                         "total_cpu_seconds": time_to_target(run.total_curve(cpu=True), target)} for run in runs})
    summary.update(extra or {})
    return summary


def markdown_table(summary: dict) -> str:
    """The results table (one row per method)."""
    reach = summary.get("time_to_target", {})
    target_name = summary.get("target_method")
    base = reach.get(target_name) or {}
    head = ("| method | neuron | T | epochs | SNN s | ANN s | bridge s | total s | after transfer | best acc | "
            "total s to target | x target method's time | x in CPU time |")
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ratio(got: float | None, key: str) -> str:
        return f"{got / base[key]:.2f}" if got is not None and base.get(key) else "-"

    for run in summary["runs"]:
        got = reach.get(run["method"]) or {}
        wall, cpu = got.get("total_seconds"), got.get("total_cpu_seconds")
        reach_txt = "-" if not got else "never" if wall is None else f"{wall:.1f}"
        after = "-" if run["transfer_acc"] is None else f"{run['transfer_acc']:.4f}"
        lines.append(
            f"| {run['method']} | {run['neuron']} | {run['T']} | {run['epochs']} | {run['snn_seconds']:.1f} | "
            f"{run['ann_seconds']:.1f} | {run.get('bridge_seconds', 0.0):.1f} | {run['total_seconds']:.1f} | {after} | "
            f"{run['best_acc']:.4f} | {reach_txt} | {ratio(wall, 'total_seconds')} | {ratio(cpu, 'total_cpu_seconds')} |"
        )
    return "\n".join(lines)


def render_markdown(summary: dict, title: str) -> str:
    """``benchmark.md``: the table, how to read it, the figures."""
    lines = [f"# {title}", "", markdown_table(summary), ""]
    if "target_acc" in summary:
        lines.append(
            f"Target: the best test accuracy of `{summary['target_method']}`, {summary['target_acc']:.4f}. "
            "*total s to target*: training seconds until a method first reaches it, the ANN's and the "
            "bridge's seconds included for methods that start from the ANN; the last two columns divide by "
            "the target method's own time, in wall and in process CPU seconds (the one to quote on a shared "
            "machine)."
        )
    ann = summary.get("ann")
    if ann:
        best = "unknown" if ann.get("best_acc") is None else f"{ann['best_acc']:.4f}"
        trained = (f"{counted(ann['epochs'], 'epoch')}, {ann['seconds']:.1f} s" if "seconds" in ann
                   else "loaded weights without a training record (no ANN time counted)")
        lines.append(f"The ANN ({ann['name']}): {trained}, best test accuracy {best}; every transferred method "
                     "starts from this one ANN.")
    lines += ["", "![accuracy vs training time](accuracy_vs_time.png)", "",
              "![accuracy vs epochs](accuracy_vs_epochs.png)", ""]
    if summary.get("wall_seconds") is not None:
        lines.append(wall_time_line(summary, "benchmark"))
    return "\n".join(lines) + "\n"


def write_report(summary: dict, out: str | Path, *, title: str) -> None:
    """Write ``benchmark.json``, ``benchmark.md``, ``accuracy_vs_time.png`` (all training seconds)
    and ``accuracy_vs_epochs.png`` (epochs of SNN training, one line per method) into ``out``."""
    out = Path(out)
    write_json(out / "benchmark.json", summary)
    shifted = [{"name": run.method, "best_acc": run.best_acc, "curve": run.total_curve()}
               for run in map(BenchRun.from_dict, summary["runs"])]
    targets = {"target": summary.get("target_acc")}
    plot_accuracy_vs_time(shifted, out / "accuracy_vs_time.png", targets=targets,
                          title=f"{title}: accuracy vs training time (ANN included)")
    plot_accuracy_vs_time(summary["runs"], out / "accuracy_vs_epochs.png", title=f"{title}: accuracy vs epochs",
                          targets=targets, x="epochs", label_key="method")
    atomic_write_text(out / "benchmark.md", render_markdown(summary, title))


__all__ = [
    "BASES", "BenchMethod", "BenchRun", "markdown_table", "parse_method", "parse_methods",
    "render_markdown", "summarize", "write_report",
]
