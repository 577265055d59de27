"""The networks and training steps the benchmarks time and measure.

A workload is described by a flat, JSON-serialisable :class:`Workload` (so a child process can
rebuild exactly the same one for a memory measurement) and built by :func:`build`, which returns
``(train_step, infer_step)``: two closures that run one optimizer step / one no-grad forward.

Contenders (``Workload.impl``):

* ``ours``      -- ``spikebridge.create_model(model, neuron=LIF, T)``; input static images
                   ``[B, C, H, W]`` (direct encoding: the stem runs once, its output is repeated
                   over T) or event frames ``[T, B, C, H, W]`` (``input="events"``).
* ``ann``       -- the same architecture with ReLU at batch ``B*T`` (the limit an SNN at T steps
                   cannot beat with per-step convolutions).
* ``sj``        -- SpikingJelly 2.0 ``neuron.LIFNode(step_mode="m")`` in place of our neurons.
* ``snntorch``  -- snnTorch ``Leaky`` stepped over T in a loop in place of our neurons.

``step_in_backward`` applies to every contender alike: the engine's ``StepInBackward`` (each
parameter updated and its gradient freed as soon as it is accumulated).

Peer networks: the conv/BN skeleton is ours (``[T*B, ...]`` folded, which is exactly what
SpikingJelly's ``layer.SeqToANNContainer`` does: flatten(0, 1) -> module -> unflatten); only the
neuron modules are swapped, so the convolutions, BatchNorm (statistics over T and B) and readout
are identical and the comparison isolates the neuron implementation and what it saves.

Neuron mapping (ours: ``u[t] = 0.25 * u[t-1] * (1 - s[t-1]) + x[t]``, ``s = u > 0.5``):

* SpikingJelly: ``LIFNode(tau=4/3, decay_input=False, v_threshold=0.5, v_reset=0.0,
  detach_reset=True)``: ``H[t] = V[t-1] - V[t-1] / tau + X[t] = 0.25 V[t-1] + X[t]`` and hard reset
  ``V[t] = H[t] (1 - S[t])``: the same recurrence (SpikingJelly fires on ``H >= 0.5``, we on
  ``> 0.5``; ``V / tau`` rounds differently from ``0.25 * V``). Surrogate ``surrogate.Rect(alpha=1)``
  = our ``rect`` (gradient 1 where ``|u - 0.5| < 0.5``); SpikingJelly 2.0 runs Rect through its
  autograd reference loop. ``surrogate.ATan(alpha=2)`` = our ``atan`` and takes SpikingJelly's
  registered fused op (hand-written backward, saves the charged potential).
* snnTorch: ``Leaky(beta=0.25, threshold=0.5, reset_mechanism="zero", init_hidden=True)``:
  ``mem = beta * (1 - reset) * mem + x`` with ``reset = mem[t-1] > threshold``: the same recurrence.
  Surrogate: snnTorch's ``atan`` (its default, alpha 2 = ours) for ``surrogate="atan"``; for
  ``rect`` its ``spike_grad`` is our rect Heaviside (snnTorch has no rectangle).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import spikebridge as sb
from spikebridge.layers import TimeFolded
from spikebridge.neurons import NeuronConfig
from spikebridge.train.engine import StepInBackward

IMPLS = ("ours", "ann", "sj", "snntorch")

#: input resolution and channels per model name (the benchmark's fixed choices)
MODEL_INPUT = {"cnn": (1, 28), "resnet18": (3, 64), "resnet34": (3, 64)}


@dataclass(frozen=True)
class Workload:
    impl: str = "ours"
    model: str = "resnet18"
    T: int = 6
    batch: int = 4  # B (the ANN runs at B * T)
    input: str = "static"  # static [B, C, H, W] | events [T, B, C, H, W]
    image_size: int = 0  # 0 = MODEL_INPUT's
    surrogate: str = "rect"  # rect | atan
    backend: str = "fused"  # ours: fused | reference | triton | auto
    compact_spikes: bool = True  # ours: spikes saved as bool
    checkpoint_blocks: bool = False  # ours: activation checkpointing per block
    channels_last: bool = False
    compile_neurons: bool = False  # ours: torch.compile each neuron module
    step_in_backward: bool = False  # every impl: optimizer step fused into the backward (engine option)
    device: str = "cpu"
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Workload":
        return cls(**json.loads(text))

    def label(self) -> str:
        parts = [self.impl]
        if self.impl in ("ours", "sj", "snntorch"):
            parts.append(self.surrogate)
        if self.impl == "ours":
            if self.backend != "fused":
                parts.append(self.backend)
            if not self.compact_spikes:
                parts.append("float-spikes")
            if self.checkpoint_blocks:
                parts.append("ckpt")
            if self.compile_neurons:
                parts.append("compiled")
        if self.step_in_backward:
            parts.append("step-in-bwd")
        if self.channels_last:
            parts.append("NHWC")
        return "/".join(parts)


# --------------------------------------------------------------------------------------------
# Peer neurons (imported only when asked for: they are optional benchmark dependencies)
# --------------------------------------------------------------------------------------------
def _sj_neuron(surrogate: str) -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate as sj_surrogate

    function = sj_surrogate.Rect(alpha=1.0) if surrogate == "rect" else sj_surrogate.ATan(alpha=2.0)
    return neuron.LIFNode(
        tau=4.0 / 3.0,
        decay_input=False,
        v_threshold=0.5,
        v_reset=0.0,
        detach_reset=True,
        step_mode="m",
        surrogate_function=function,
    )


class SnnTorchSequence(nn.Module):
    """snnTorch ``Leaky`` applied step by step to ``[T, B, ...]`` (membrane reset per sequence)."""

    def __init__(self, surrogate: str) -> None:
        super().__init__()
        import snntorch
        from snntorch import surrogate as snn_surrogate

        if surrogate == "rect":
            from spikebridge.surrogate import get_surrogate, heaviside

            rect = get_surrogate("rect")
            spike_grad = lambda mem_shift: heaviside(mem_shift, rect)  # noqa: E731
        else:
            spike_grad = snn_surrogate.atan(alpha=2.0)
        self.leaky = snntorch.Leaky(
            beta=0.25, threshold=0.5, reset_mechanism="zero", init_hidden=True, spike_grad=spike_grad
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.leaky.mem = torch.zeros_like(x[0])
        return torch.stack([self.leaky(x_t) for x_t in x])


def _swap_neurons(model: nn.Module, make: Callable[[], nn.Module]) -> int:
    count = 0
    for module in model.modules():
        if isinstance(module, TimeFolded):
            module.neuron = make()
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def build_model(w: Workload) -> nn.Module:
    in_channels, _ = MODEL_INPUT[w.model]
    if w.impl == "ann":
        model = sb.create_model(w.model, num_classes=10, neuron="relu", in_channels=in_channels)
    else:
        neuron = NeuronConfig(kind="lif", surrogate=w.surrogate, backend=w.backend if w.impl == "ours" else "fused")
        model = sb.create_model(w.model, num_classes=10, neuron=neuron, T=w.T, in_channels=in_channels)
        model.compact_spikes = w.compact_spikes and w.impl == "ours"
        model.checkpoint_blocks = w.checkpoint_blocks and w.impl == "ours"
        if w.impl == "sj":
            _swap_neurons(model, lambda: _sj_neuron(w.surrogate))
        elif w.impl == "snntorch":
            _swap_neurons(model, lambda: SnnTorchSequence(w.surrogate))
        elif w.impl == "ours" and w.compile_neurons:
            for module in model.modules():
                if isinstance(module, TimeFolded):
                    module.neuron = torch.compile(module.neuron, dynamic=False)
    return model


def make_batch(w: Workload, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels: ANN ``[B*T, C, H, W]``; SNN static ``[B, C, H, W]`` or events
    ``[T, B, C, H, W]`` (0/1 frames with 20% ones, like binned DVS polarities)."""
    in_channels, size = MODEL_INPUT[w.model]
    size = w.image_size or size
    if w.impl == "ann":
        x = torch.rand(w.batch * w.T, in_channels, size, size, generator=generator)
        y = torch.randint(0, 10, (w.batch * w.T,), generator=generator)
        return x, y
    y = torch.randint(0, 10, (w.batch,), generator=generator)
    if w.input == "events":
        x = (torch.rand(w.T, w.batch, in_channels, size, size, generator=generator) < 0.2).float()
    else:
        x = torch.rand(w.batch, in_channels, size, size, generator=generator)
    return x, y


@dataclass
class Parts:
    """A built workload: the model, its optimizer, one fixed batch, and the peer state reset."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    reset: Callable[[], None]

    def forward_loss(self) -> torch.Tensor:
        """Training-mode forward and loss (gradients zeroed first); the caller runs backward."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        return F.cross_entropy(self.model(self.x), self.y)

    def finish_step(self, loss: torch.Tensor) -> float:
        loss.backward()
        self.optimizer.step()
        self.reset()
        return float(loss.detach())


def build_parts(w: Workload) -> Parts:
    if w.impl not in IMPLS:
        raise ValueError(f"unknown impl {w.impl!r}; expected one of {IMPLS}")
    torch.manual_seed(w.seed)
    device = torch.device(w.device)
    model = build_model(w).to(device)
    generator = torch.Generator().manual_seed(w.seed + 1)
    x, y = make_batch(w, generator)
    x, y = x.to(device), y.to(device)
    if w.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if w.step_in_backward:
        StepInBackward(optimizer)  # the hooks live on the parameters; step() after backward is then a no-op
    return Parts(model, optimizer, x, y, _peer_reset(model, w))


def build(w: Workload) -> tuple[Callable[[], float], Callable[[], None], nn.Module]:
    """``(train_step, infer_step, model)`` for workload ``w``; ``train_step()`` returns the loss."""
    parts = build_parts(w)

    def train_step() -> float:
        return parts.finish_step(parts.forward_loss())

    def infer_step() -> None:
        parts.model.eval()
        with torch.no_grad():
            parts.model(parts.x)
        parts.reset()

    return train_step, infer_step, parts.model


def _peer_reset(model: nn.Module, w: Workload) -> Callable[[], None]:
    if w.impl == "sj":
        from spikingjelly.activation_based import functional

        return lambda: functional.reset_net(model)
    return lambda: None
