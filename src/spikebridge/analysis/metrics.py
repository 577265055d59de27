"""Spiking activity and its cost: per-layer firing rates, synaptic operations (SOPs), the ANN's
multiply-accumulates (MACs) and energy estimates.

Definitions (exact, what :func:`measure_activity` counts)
---------------------------------------------------------
* **Neuron layer**: every time-folded neuron module; its **firing rate** = spikes / (neurons x
  T x samples): nonzero outputs, or for an analog-output neuron (LIAF, whose output is
  ``leaky_relu(u)``) its resets, ``u > threshold``, i.e. outputs above the threshold.
* **Synaptic layer**: every ``Conv1d/2d/3d`` and ``Linear``. The **fan-out** ``f(e)`` of an input
  element is the number of (output unit, weight) pairs that read it (padding, stride, dilation,
  groups and borders included), computed exactly as the gradient of ``sum(conv(x, ones))``. The
  dense cost of one frame, ``sum_e f(e)``, is the layer's MACs.
* **SOPs** = ``sum over frames and elements of [x_e != 0] * f(e)``: every nonzero input triggers
  one accumulate per synapse it feeds. A layer's input is **analog** (dense MACs, not SOPs) when
  no spiking layer ran before it (the first conv on images) or the last one emits analog values
  (LIAF). The model's own input counts as events when it is binary (event frames).
* **Frames**: a registry model's stem runs once per static image, a spikified net's first conv
  T times, every later layer T times. **ANN MACs** = one dense frame through every layer.
* **Neuron updates** = neurons x T per sample (one add each, one multiply when the leak is
  neither 0 nor 1).

Energy (45 nm CMOS, Horowitz 2014): an FP32 accumulate 0.9 pJ, an FP32 MAC 4.6 pJ. ANN energy =
MACs x 4.6 pJ; SNN synaptic energy = SOPs x 0.9 pJ + analog MACs x 4.6 pJ (neuron updates apart).
``operation_table()`` gives FP32 adds and multiplies per sample in G (measured: it depends on the
firing rates).

The paper's convention (``operation_table("paper")``)
-----------------------------------------------------
arXiv:2203.01158 (ES-ImageNet table, from Lin et al. 2021) counts **dense** operations per time
step, with no firing-rate factor. Per sample, with ``M`` = nominal MACs of one frame
(``C_in/groups x prod(kernel) x outputs`` per conv, padding taps included; ``in x out`` per linear
layer), ``A`` = adds inside each kernel window (``prod(kernel) - 1`` per output and input
channel; ``in - 1`` per output of a linear layer) and ``N`` = neurons per frame:

* ``2d_cnn``: ``A`` adds, ``M`` multiplies;
* ``lif``: ``T (A + 2N)`` adds, ``2 T N`` multiplies (``u = decay u (1 - s) + x``);
* ``liaf``: the LIF's adds, ``T M`` multiplies.

The window-add rule is inferred from the table (adds / mults = 0.89 in every row). On the paper's
ResNet-18 (2 input channels, 1000 classes, 224x224, T = 8) this is within 1.5 % of the table
(tests/test_opcount.py); our ResNet-18 has no max-pool (``M`` 1 % higher), and the paper's LIF
mults exceed ``2 T N`` by a fixed ~0.23 G (the same for ResNet-34: an unstated stem cost we do
not invent).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import TimeFolded
from ..models.crnn import CRNN
from ..neurons import neuron_spec_of

ENERGY_PER_AC_PJ = 0.9  # FP32 add, 45 nm
ENERGY_PER_MAC_PJ = 4.6  # FP32 multiply (3.7 pJ) + add (0.9 pJ), 45 nm
SYNAPTIC_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class NeuronLayerStats:
    name: str
    neurons: int  # per frame (one sample, one time step)
    spikes_per_sample: float  # nonzero outputs over all T steps, per sample
    firing_rate: float  # spikes / (neurons * T)
    analog: bool = False  # emits analog values (LIAF)
    leak_multiply: bool = True


@dataclass
class SynapticLayerStats:
    name: str
    type: str
    macs_per_frame: int  # dense cost of one frame (= sum of fan-outs)
    frames_per_sample: float  # how many frames per sample this layer ran
    analog_input: bool
    input_events_per_sample: float  # nonzero inputs over all frames, per sample
    sops_per_sample: float  # accumulates (event inputs) per sample
    macs_per_sample: float  # multiply-accumulates (analog inputs) per sample
    nominal_macs_per_frame: int = 0  # C_in/groups x prod(kernel) x outputs (padding taps included)
    window_adds_per_frame: int = 0  # adds inside each kernel window (the paper's convention)


@dataclass
class ActivityReport:
    """What :func:`measure_activity` found, per sample; ``to_dict`` / ``to_markdown`` for reports."""

    samples: int
    time_steps: int
    neuron_layers: list[NeuronLayerStats] = field(default_factory=list)
    synaptic_layers: list[SynapticLayerStats] = field(default_factory=list)

    @property
    def sops(self) -> float:
        return sum(s.sops_per_sample for s in self.synaptic_layers)

    @property
    def snn_macs(self) -> float:
        return sum(s.macs_per_sample for s in self.synaptic_layers)

    @property
    def ann_macs(self) -> float:
        return float(sum(s.macs_per_frame for s in self.synaptic_layers))

    @property
    def neuron_updates(self) -> float:
        return float(sum(n.neurons for n in self.neuron_layers) * self.time_steps)

    @property
    def leak_multiplies(self) -> float:
        return float(sum(n.neurons for n in self.neuron_layers if n.leak_multiply) * self.time_steps)

    @property
    def mean_firing_rate(self) -> float:
        total = sum(n.neurons for n in self.neuron_layers)
        return sum(n.firing_rate * n.neurons for n in self.neuron_layers) / max(total, 1)

    def energy(self) -> dict[str, float]:
        """Energy per sample in microjoules (see the module docstring for the constants)."""
        ann = self.ann_macs * ENERGY_PER_MAC_PJ * 1e-6
        snn = (self.sops * ENERGY_PER_AC_PJ + self.snn_macs * ENERGY_PER_MAC_PJ) * 1e-6
        updates = (self.neuron_updates * ENERGY_PER_AC_PJ + self.leak_multiplies * (ENERGY_PER_MAC_PJ - ENERGY_PER_AC_PJ)) * 1e-6
        return {"ann_uj": ann, "snn_synaptic_uj": snn, "snn_neuron_updates_uj": updates,
                "snn_over_ann": snn / ann if ann else float("nan"), "pj_per_ac": ENERGY_PER_AC_PJ,
                "pj_per_mac": ENERGY_PER_MAC_PJ}

    def operation_table(self, convention: str = "measured") -> dict[str, dict[str, float]]:
        """The paper's format: FP32 additions and multiplications per sample, in G.

        ``"measured"``: rows ``ann`` and ``snn``, from the measured SOPs and analog MACs (the
        module docstring). ``"paper"``: rows ``2d_cnn``, ``lif`` and ``liaf``, dense per step from
        shapes only, as arXiv:2203.01158 counts (module docstring, "The paper's convention").
        """
        giga = 1e-9
        if convention == "paper":
            macs = sum(s.nominal_macs_per_frame for s in self.synaptic_layers)
            adds = sum(s.window_adds_per_frame for s in self.synaptic_layers)
            neurons = sum(n.neurons for n in self.neuron_layers)
            steps = self.time_steps
            snn_adds = steps * (adds + 2 * neurons) * giga
            return {
                "2d_cnn": {"add_G": adds * giga, "mult_G": macs * giga},
                "lif": {"add_G": snn_adds, "mult_G": 2 * steps * neurons * giga},
                "liaf": {"add_G": snn_adds, "mult_G": steps * macs * giga},
            }
        if convention != "measured":
            raise ValueError(f"convention must be 'measured' or 'paper', got {convention!r}")
        return {
            "ann": {"add_G": self.ann_macs * giga, "mult_G": self.ann_macs * giga},
            "snn": {
                "add_G": (self.sops + self.snn_macs + self.neuron_updates) * giga,
                "mult_G": (self.snn_macs + self.leak_multiplies) * giga,
            },
        }

    def to_dict(self) -> dict:
        if not self.neuron_layers:  # an ANN: its MACs and energy, no SNN fields (they read as zero spikes)
            return {"samples": self.samples, "ann_macs_per_sample": self.ann_macs,
                    "energy": {"ann_uj": self.energy()["ann_uj"], "pj_per_mac": ENERGY_PER_MAC_PJ},
                    "layers": [{"name": s.name, "type": s.type, "macs_per_sample": s.macs_per_frame}
                               for s in self.synaptic_layers]}
        return {"samples": self.samples, "T": self.time_steps, "mean_firing_rate": self.mean_firing_rate,
                "sops_per_sample": self.sops, "snn_analog_macs_per_sample": self.snn_macs,
                "ann_macs_per_sample": self.ann_macs, "neuron_updates_per_sample": self.neuron_updates,
                "energy": self.energy(), "operations_G": self.operation_table(),
                "operations_G_paper_convention": self.operation_table("paper"),
                "neuron_layers": [asdict(n) for n in self.neuron_layers],
                "synaptic_layers": [asdict(s) for s in self.synaptic_layers]}

    def to_markdown(self) -> str:
        e = self.energy()
        if not self.neuron_layers:  # an ANN: no spikes, SOPs or SNN rows (they read as an SNN's zeros)
            return "\n".join([
                f"Measured on {self.samples} samples (an ANN: no spiking neurons).", "",
                "| layer | type | MACs / sample |", "|---|---|---:|",
                *(f"| {s.name} | {s.type} | {s.macs_per_frame:,} |" for s in self.synaptic_layers), "",
                f"MACs per sample: {self.ann_macs:,.0f}; energy per sample (45 nm, {ENERGY_PER_MAC_PJ} pJ/MAC): "
                f"{e['ann_uj']:.4f} uJ.",
            ]) + "\n"

        def ops_table(table: dict[str, dict[str, float]]) -> list[str]:
            return ["| FP32 ops per sample (G) | add | mult |", "|---|---:|---:|",
                    *(f"| {row} | {v['add_G']:.6f} | {v['mult_G']:.6f} |" for row, v in table.items())]

        lines = [
            f"Measured on {self.samples} samples, T={self.time_steps}.",
            "",
            "| neuron layer | neurons | spikes / sample | firing rate |",
            "|---|---:|---:|---:|",
            *(f"| {n.name} | {n.neurons} | {n.spikes_per_sample:.1f} | {n.firing_rate:.4f} |"
              for n in self.neuron_layers),
            f"| **all** | {sum(n.neurons for n in self.neuron_layers)} | "
            f"{sum(n.spikes_per_sample for n in self.neuron_layers):.1f} | {self.mean_firing_rate:.4f} |",
            "",
            "| synaptic layer | type | input | frames | SOPs / sample | MACs / sample | ANN MACs |",
            "|---|---|---|---:|---:|---:|---:|",
            *(f"| {s.name} | {s.type} | {'analog' if s.analog_input else 'events'} | {s.frames_per_sample:g} | "
              f"{s.sops_per_sample:,.0f} | {s.macs_per_sample:,.0f} | {s.macs_per_frame:,} |"
              for s in self.synaptic_layers),
            "",
            f"SOPs per sample: {self.sops:,.0f}; analog MACs: {self.snn_macs:,.0f}; ANN MACs: {self.ann_macs:,.0f}.",
            "",
            *ops_table({row.upper(): v for row, v in self.operation_table().items()}),
            "",
            "The paper's convention (dense per step, no firing rates; arXiv:2203.01158, ES-ImageNet table):",
            "",
            *ops_table(self.operation_table("paper")),
            "",
            f"Energy per sample (45 nm, {ENERGY_PER_AC_PJ} pJ/AC, {ENERGY_PER_MAC_PJ} pJ/MAC): ANN {e['ann_uj']:.4f} uJ, "
            f"SNN synaptic {e['snn_synaptic_uj']:.4f} uJ ({e['snn_over_ann']:.2f}x the ANN), "
            f"plus neuron updates {e['snn_neuron_updates_uj']:.4f} uJ.",
        ]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# fan-out maps
# ------------------------------------------------------------------------------------------------
def fanout_map(layer: nn.Module, frame_shape: tuple[int, ...]) -> torch.Tensor:
    """``f(e)`` for every element of one input frame (``frame_shape`` without the batch), exact."""
    if isinstance(layer, nn.Linear):
        return torch.full(frame_shape, float(layer.out_features))
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[layer.weight.dim() - 2]
        if layer.padding_mode != "zeros":
            raise NotImplementedError(f"fan-out of padding_mode={layer.padding_mode!r}")
        with torch.enable_grad():
            x = torch.ones((1, *frame_shape), dtype=torch.float64, requires_grad=True)
            ones = torch.ones(layer.weight.shape, dtype=torch.float64)
            y = conv(x, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups)
            y.sum().backward()
        return x.grad[0].float()
    raise TypeError(f"no fan-out for {type(layer).__name__}")


def nominal_counts(layer: nn.Module, outputs_per_frame: int) -> tuple[int, int]:
    """``(MACs, window adds)`` of one frame from the layer's shape and its output count (the
    paper's convention: padding taps included; see the module docstring)."""
    if isinstance(layer, nn.Linear):
        return outputs_per_frame * layer.in_features, outputs_per_frame * (layer.in_features - 1)
    taps = int(torch.tensor(layer.kernel_size).prod())
    per_output = layer.in_channels // layer.groups
    return outputs_per_frame * per_output * taps, outputs_per_frame * per_output * (taps - 1)


def _is_binary(x) -> bool:
    return isinstance(x, torch.Tensor) and (x.dtype == torch.bool or bool(((x == 0) | (x == 1)).all()))


def _spike_valued(x: torch.Tensor) -> bool:
    """Whether ``x`` ``[N, C, ...]`` holds spikes: zeros and one value per channel (1, or a spikified
    neuron's level ``V``); averages of spikes (pooled over T or windows, a readout's mean) do not."""
    rows = x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() > 1 else x.reshape(1, -1)
    fired = rows != 0
    high = torch.where(fired, rows, torch.full_like(rows, -float("inf"))).amax(1)
    low = torch.where(fired, rows, torch.full_like(rows, float("inf"))).amin(1)
    return bool(((high == low) | ~fired.any(1)).all())


# ------------------------------------------------------------------------------------------------
# measuring
# ------------------------------------------------------------------------------------------------
def _neuron_is_analog(module: nn.Module) -> bool:
    spec = neuron_spec_of(getattr(module, "neuron", module))
    return spec is not None and spec.analog_output


def spikes_of(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """The spikes (bool) in a neuron layer's ``output``: its nonzero values, or for an analog-output
    neuron (LIAF: ``leaky_relu(u)``) its resets, the values above its threshold (``u > threshold``)."""
    if _neuron_is_analog(module):
        return output > getattr(module, "neuron", module).threshold
    return output != 0


def _neuron_leaks(module: nn.Module) -> bool:
    inner = getattr(module, "neuron", module)
    if getattr(inner, "learnable_decay", False):
        return True
    decay = getattr(inner, "fixed_decay", getattr(inner, "decay", 1.0))
    return isinstance(decay, torch.Tensor) or decay not in (0.0, 1.0)


@torch.no_grad()
def measure_activity(model: nn.Module, batches: Iterable, *, device: torch.device | str = "cpu",
                     time_steps: int | None = None) -> ActivityReport:
    """Run ``model`` (eval mode) on ``batches`` (tensors or ``(x, y)`` pairs) and count firing
    rates, SOPs and MACs per sample (see the module docstring for the exact definitions).

    ``time_steps``: T for the report (default: the model's ``T``, or the events' T).
    """
    model = getattr(model, "module", model)
    names = {id(m): n for n, m in model.named_modules()}
    neurons = [m for m in model.modules() if isinstance(m, TimeFolded)]
    synapses = [m for m in model.modules() if isinstance(m, SYNAPTIC_TYPES)]
    state = {"source": "analog"}  # what the last layer that ran emitted: analog input or spikes
    neuron_counts = {id(m): [0, 0.0] for m in neurons}  # neurons per frame, spikes
    synapse_counts = {id(m): {"frames": 0.0, "events": 0.0, "sops": 0.0, "macs": 0.0, "analog": False, "per_frame": 0,
                             "nominal": (0, 0)} for m in synapses}
    fanouts: dict[tuple[int, tuple], torch.Tensor] = {}
    handles = []

    def on_model_start(_module, inputs):
        state["source"] = "spikes" if inputs and _is_binary(inputs[0]) else "analog"

    def on_neuron(module, _inputs, output):
        entry = neuron_counts[id(module)]
        entry[0] = int(output[0].numel())
        entry[1] += float(spikes_of(module, output).sum())
        state["source"] = "analog" if _neuron_is_analog(module) else "spikes"

    def on_synapse(module, inputs, output):
        x = inputs[0]
        frame_shape = tuple(x.shape[1:])
        key = (id(module), frame_shape)
        if key not in fanouts:
            fanouts[key] = fanout_map(module, frame_shape).to(x.device)
        fan = fanouts[key]
        entry = synapse_counts[id(module)]
        frames = x.shape[0]
        entry["frames"] += frames
        entry["per_frame"] = int(fan.sum().item())
        if state["source"] == "spikes" and _spike_valued(x):  # not a mean of spikes (the cnn's readout)
            events = (x != 0).sum(0).to(fan.dtype)
            entry["events"] += float(events.sum())
            entry["sops"] += float((events * fan).sum())
        else:
            entry["analog"] = True
            entry["events"] += float((x != 0).sum())
            entry["macs"] += float(fan.sum()) * frames
        entry["nominal"] = nominal_counts(module, int(output[0].numel() if output.dim() > 1 else 1))

    handles.append(model.register_forward_pre_hook(on_model_start))
    handles += [m.register_forward_hook(on_neuron) for m in neurons]
    handles += [m.register_forward_hook(on_synapse) for m in synapses]
    was_training = model.training
    model.eval()
    samples, steps_seen = 0, None
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            x = x.to(device)
            model(x)
            # time-major frames [T, B, ...]: one dim more than a static batch, or a CRNN's own input
            sequence = x.dim() == getattr(model, "input_ndim", 4) + 1 or isinstance(model, CRNN)
            samples += x.shape[1] if sequence else x.shape[0]
            steps_seen = x.shape[0] if sequence else getattr(model, "T", 1)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    steps = int(time_steps or steps_seen or getattr(model, "T", 1))
    n = max(samples, 1)  # per sample
    neuron_layers = [
        NeuronLayerStats(name=names[id(m)], neurons=count, spikes_per_sample=spikes / n,
                         firing_rate=spikes / max(count * steps * samples, 1), analog=_neuron_is_analog(m),
                         leak_multiply=_neuron_leaks(m))
        for m in neurons for count, spikes in [neuron_counts[id(m)]] if count]  # count 0: not used in this forward
    synaptic_layers = [
        SynapticLayerStats(name=names[id(m)], type=type(m).__name__, macs_per_frame=e["per_frame"],
                           frames_per_sample=e["frames"] / n, analog_input=bool(e["analog"]),
                           input_events_per_sample=e["events"] / n, sops_per_sample=e["sops"] / n,
                           macs_per_sample=e["macs"] / n, nominal_macs_per_frame=e["nominal"][0],
                           window_adds_per_frame=e["nominal"][1])
        for m in synapses for e in [synapse_counts[id(m)]] if e["frames"]]
    return ActivityReport(samples, steps, neuron_layers, synaptic_layers)


__all__ = [
    "ENERGY_PER_AC_PJ", "ENERGY_PER_MAC_PJ", "ActivityReport", "NeuronLayerStats", "SynapticLayerStats",
    "fanout_map", "measure_activity", "nominal_counts",
]
