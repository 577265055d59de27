"""The base every registry model builds on: one definition serves the ANN and the SNN.

A model defines ``forward_stem`` (the layers before the first activation: conv + BN),
``forward_features`` (everything after, down to pooled features ``[N, F]``) and ``fc``. The base
class handles time:

* static input ``[B, C, H, W]``: the stem runs once per image and its output is repeated over the
  model's ``T`` steps (direct encoding: every step sees the same analog image, so computing the
  first conv once is exact);
* event input ``[T, B, C, H, W]`` (time-major): the stem runs on every frame and T comes from the
  input;
* the readout averages the pooled features over T before ``fc`` (= the mean of per-step logits).

An ANN is the same model with ``neuron="relu"`` (or ``sharpened_relu``) and T = 1.

Memory options of a training forward (attributes; both leave values and gradients unchanged):
``compact_spikes`` (default on) stores the spikes that layers save for the backward as bool;
``checkpoint_blocks`` (default off) recomputes each block in the backward instead of keeping its
activations (subclasses run their blocks through :meth:`BridgeNet.run_sequential`).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import TimeFolded, as_input_of, compact_spike_storage, init_batchnorm, run_checkpointed, set_time_steps
from ..neurons import NeuronConfig


class BridgeNet(nn.Module):
    """Base class: subclasses build their layers with :meth:`activation` and set ``self.fc``."""

    input_ndim = 4  # [B, C, H, W]
    #: store spikes saved for the backward as bool (exact; ~1/3 less activation memory)
    compact_spikes: bool = True
    #: activation checkpointing of each block during training (less memory, one more forward)
    checkpoint_blocks: bool = False

    def __init__(self, neuron: NeuronConfig, T: int) -> None:
        super().__init__()
        if not (isinstance(T, int) and T >= 1):
            raise ConfigError(f"T (time steps) must be a positive integer, got {T!r}")
        self.neuron_config = neuron
        self.T = T if neuron.spiking else 1
        self._folded: list[nn.Module] = []  # what follows the input's T: its neurons (and VGG-tv's dropouts)

    # -- building ---------------------------------------------------------------------------
    def activation(self) -> nn.Module:
        """A fresh activation for one place in the network (a time-folded neuron for SNNs)."""
        module = self.neuron_config.build()
        if self.neuron_config.spiking:
            module = TimeFolded(module, self.T)
            self._folded.append(module)
        return module

    def finish_init(self) -> None:
        """Call at the end of a subclass's ``__init__``: standard weight init + tdBN init."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        init_batchnorm(self, self.neuron_config.bn_weight_init)

    # -- running ----------------------------------------------------------------------------
    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_step_features(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The pooled features at every step, ``[T, B, F]``; T from events ``[T, B, C, H, W]``, else
        ``steps`` (default ``self.T``) for static ``[B, C, H, W]``. Integer input (Tonic's int16
        event counts) is taken as float, any input in the parameters' dtype (:func:`as_input_of`)."""
        x = as_input_of(x, self)
        if x.dim() == self.input_ndim + 1:
            steps, batch = x.shape[:2]
            hidden = self.forward_stem(x.flatten(0, 1))
        elif x.dim() == self.input_ndim:
            steps, batch = steps or self.T, x.shape[0]
            hidden = self.forward_stem(x)
            if steps > 1:
                hidden = hidden.unsqueeze(0).expand(steps, *hidden.shape).flatten(0, 1)
        else:
            raise ConfigError(
                f"{type(self).__name__} expects input [B, C, H, W] or events [T, B, C, H, W], "
                f"got shape {tuple(x.shape)}"
            )
        set_time_steps(self._folded, steps)
        compact = self.compact_spikes and self.spiking and self.training and torch.is_grad_enabled()
        with compact_spike_storage(compact):
            features = self.forward_features(hidden)
        return features.view(steps, batch, *features.shape[1:]).flatten(2)  # an empty batch too (view(..., -1) fails)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.per_step_features(x).mean(0))

    def run_sequential(self, sequence: nn.Sequential, x: torch.Tensor, group: int = 1) -> torch.Tensor:
        """``sequence(x)``; when ``checkpoint_blocks`` is set and a gradient is being recorded
        (training), every ``group`` consecutive modules of ``sequence`` run as one checkpointed
        block instead (the sequence's own forward hooks then do not fire)."""
        if not (self.checkpoint_blocks and self.training and torch.is_grad_enabled()):
            return sequence(x)
        for start in range(0, len(sequence), group):
            x = run_checkpointed(sequence[start:start + group] if group > 1 else sequence[start], x)
        return x

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to activations that follow a schedule (the sharpened ReLU)."""
        for module in self.modules():
            if module is not self and hasattr(module, "set_epoch"):
                module.set_epoch(epoch)

    @property
    def spiking(self) -> bool:
        return self.neuron_config.spiking

    @property
    def readout_name(self) -> str:
        """The state-dict prefix of the readout ``fc`` (``classifier.6`` in torchvision's VGG)."""
        return next(name for name, module in self.named_modules() if module is self.fc)
