"""The paper's video model (arXiv:2203.01158 "Video (ES-UCF101)"): a CNN encoder applied to every frame and
a 1-layer LSTM on top, classifying from the last step.

One definition serves the ANN and the SNN (like every registry model):

* ANN, ``neuron="relu"``: RGB frame sequences ``[T, B, 3, H, W]`` (time-major, ``in_channels=3``);
* SNN, ``neuron="lif"``/``"liaf"``: event frames ``[T, B, 2, H, W]`` (``in_channels=2``).

Only the encoder's activations change: they are the chosen neuron (time-folded, so a LIF's
membrane runs over the T frames). The LSTM and the classifier are analog in both and identical,
so ``ann.state_dict()`` and ``snn.state_dict()`` have the same keys (with the first conv's input
channels as the only shape difference between an RGB ANN and an event SNN).

Layout (reference: input frames 256 x 342)::

    per frame [N, C, H, W], N = T*B:
      conv k5 s2 (8)  -> BN -> act     256x342 -> 126x169
      conv k3 s2 (16) -> BN -> act              -> 62x84
      conv k3 s2 (32) -> BN -> act              -> 30x41
      conv k3 s2 (64) -> BN -> act              -> 14x20   (64*14*20 = 17920)
      flatten -> fc 17920->1024 -> act -> fc 1024->512  (-> dropout)
    sequence [T, B, 512] -> LSTM (hidden 256) -> last step [B, 256] -> fc -> logits [B, classes]

As in the authors' code: the encoder's last FC is linear (no activation after it, so the LSTM reads
an analog embedding in the SNN too, not spikes) and BatchNorm's momentum is 0.01
(:data:`BN_MOMENTUM`).

Convolutions have no padding (as in the reference CRNN), so the encoder's FC input size follows
from the frame size given at construction (``input_size``, default ``(256, 342)``).

Transfer of parts (the paper's time-accuracy benchmark: encoder only / decoder only / full):
:func:`filter_state_dict` keeps the tensors of the chosen parts (``CRNN.PART_PREFIXES``); hand the
result to :func:`spikebridge.transfer` with a ``min_match`` that fits the part (the decoder is a
small fraction of the tensors).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..layers import set_time_steps
from ..neurons import NeuronConfig
from .base import BridgeNet

#: BatchNorm momentum of the encoder (the authors' CRNN: 0.01; torch's default is 0.1)
BN_MOMENTUM = 0.01


class FrameEncoder(nn.Module):
    """The per-frame CNN: ``[N, C, H, W]`` -> ``[N, fc_sizes[-1]]`` (N = T*B, folded time-major).

    ``activation`` is a factory giving a fresh activation for each place (the model's
    :meth:`BridgeNet.activation`, which time-folds neurons). Parameter names: ``conv{i}``,
    ``bn{i}`` (i = 1..4), ``fc{j}`` (j = 1..2); activations ``act{i}`` and ``fc_act{j}`` (every FC
    but the last, which is linear: its output is the LSTM's analog input) hold none.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        input_size: tuple[int, int],
        channels: Sequence[int],
        kernels: Sequence[int],
        strides: Sequence[int],
        fc_sizes: Sequence[int],
        dropout: float,
        activation: Callable[[], nn.Module],
    ) -> None:
        super().__init__()
        if not (len(channels) == len(kernels) == len(strides) >= 1):
            raise ConfigError(f"channels, kernels and strides need the same length >= 1, got "
                              f"{list(channels)}, {list(kernels)}, {list(strides)}")
        if not fc_sizes:
            raise ConfigError("fc_sizes needs at least one layer")
        height, width = input_size
        cin = in_channels
        for i, (cout, k, s) in enumerate(zip(channels, kernels, strides), start=1):
            setattr(self, f"conv{i}", nn.Conv2d(cin, cout, k, stride=s, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout, momentum=BN_MOMENTUM))
            setattr(self, f"act{i}", activation())
            height, width = (height - k) // s + 1, (width - k) // s + 1  # no padding
            if height < 1 or width < 1:
                raise ConfigError(f"input frames {tuple(input_size)} are too small for the CRNN encoder "
                                  f"(conv {i} would output {height}x{width})")
            cin = cout
        self.n_convs = len(channels)
        self.feature_shape = (cin, height, width)
        fin = cin * height * width
        for j, fout in enumerate(fc_sizes, start=1):
            setattr(self, f"fc{j}", nn.Linear(fin, fout))
            if j < len(fc_sizes):
                setattr(self, f"fc_act{j}", activation())
            fin = fout
        self.n_fcs = len(fc_sizes)
        self.out_features = fin
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_convs + 1):
            x = getattr(self, f"act{i}")(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = torch.flatten(x, 1)
        for j in range(1, self.n_fcs):
            x = getattr(self, f"fc_act{j}")(getattr(self, f"fc{j}")(x))
        x = getattr(self, f"fc{self.n_fcs}")(x)  # linear: the LSTM's analog input
        return self.dropout(x)


class CRNN(BridgeNet):
    """CNN encoder per frame + LSTM + linear classifier on the last step (see the module docstring).

    Input: ``[T, B, C, H, W]`` time-major frames with ``(H, W) == input_size``. Output: logits
    ``[B, num_classes]``. ``T`` (from :class:`BridgeNet`) is only a default: the time steps always
    come from the input's first axis.
    """

    input_ndim = 5  # [T, B, C, H, W]: always a sequence
    #: state-dict name prefixes of the parts that can be transferred on their own
    PART_PREFIXES: dict[str, tuple[str, ...]] = {"encoder": ("encoder.",), "decoder": ("lstm.", "fc.")}

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        neuron: NeuronConfig,
        T: int,
        input_size: tuple[int, int] = (256, 342),
        channels: Sequence[int] = (8, 16, 32, 64),
        kernels: Sequence[int] = (5, 3, 3, 3),
        strides: Sequence[int] = (2, 2, 2, 2),
        fc_sizes: Sequence[int] = (1024, 512),
        lstm_hidden: int = 256,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(neuron, T)
        if len(input_size) != 2 or not all(isinstance(s, int) and s >= 1 for s in input_size):
            raise ConfigError(f"input_size must be (height, width) in pixels, got {input_size!r}")
        if not (isinstance(lstm_hidden, int) and lstm_hidden >= 1):
            raise ConfigError(f"lstm_hidden must be a positive integer, got {lstm_hidden!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.encoder = FrameEncoder(
            in_channels=in_channels, input_size=self.input_size, channels=channels, kernels=kernels,
            strides=strides, fc_sizes=fc_sizes, dropout=dropout, activation=self.activation,
        )
        self.lstm = nn.LSTM(self.encoder.out_features, lstm_hidden, num_layers=1)
        self.fc = nn.Linear(lstm_hidden, num_classes)
        self.finish_init()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W]`` -> logits ``[B, num_classes]`` (LSTM output at the last step)."""
        if x.dim() != 5:
            raise ConfigError(f"CRNN expects time-major frames [T, B, C, H, W], got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.input_size:
            raise ConfigError(f"CRNN was built for {self.input_size[0]}x{self.input_size[1]} frames "
                              f"(input_size), got {x.shape[-2]}x{x.shape[-1]}")
        return self.outputs_at_each_step(x)[-1]

    def outputs_at_each_step(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, num_classes]``: entry ``t-1`` is the logits of the first ``t`` frames (the
        encoder's neurons and the LSTM are causal, so one pass gives every prefix)."""
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        steps, batch = x.shape[:2]
        set_time_steps(self._folded, steps)
        features = self.encoder(x.flatten(0, 1))  # [T*B, F]
        sequence, _ = self.lstm(features.view(steps, batch, -1))  # [T, B, hidden]
        return self.fc(sequence)


def filter_state_dict(state: Mapping[str, torch.Tensor] | nn.Module,
                      parts: Sequence[str] = ("encoder", "decoder")) -> dict[str, torch.Tensor]:
    """Keep only the tensors of ``parts`` (``"encoder"``, ``"decoder"``: :attr:`CRNN.PART_PREFIXES`)
    of a CRNN state dict, or of a module's (a DDP ``module.`` prefix is understood). The result goes
    to :func:`spikebridge.transfer` (``min_match`` lowered to fit the part).
    """
    table = CRNN.PART_PREFIXES
    if isinstance(parts, str):
        parts = (parts,)
    unknown = [p for p in parts if p not in table]
    if unknown or not parts:
        raise ConfigError(f"unknown transfer parts {unknown or list(parts)}; choose from {', '.join(table)}")
    if isinstance(state, nn.Module):
        state = getattr(state, "module", state).state_dict()
    keep = tuple(prefix for part in parts for prefix in table[part])
    lead = "module." if state and all(k.startswith("module.") for k in state) else ""
    return {k[len(lead):]: v for k, v in state.items() if k[len(lead):].startswith(keep)}
