"""A small CNN for 28-32 px inputs (MNIST, ES-MNIST, N-MNIST): a stride-1 conv then stride-2
convs, each conv-BN-activation, an adaptive average pool to a small grid (``pool_grid`` x
``pool_grid``, keeping where things are: a global pool after three convs loses too much), one linear
readout."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import NeuronConfig
from .base import BridgeNet


class SmallCNN(BridgeNet):
    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        neuron: NeuronConfig,
        T: int,
        widths: tuple[int, ...] = (16, 32, 64),
        pool_grid: int = 4,
    ) -> None:
        super().__init__(neuron, T)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = self.activation()
        blocks = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), self.activation()]
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_grid)
        self.fc = nn.Linear(widths[-1] * pool_grid * pool_grid, num_classes)
        self.finish_init()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.run_sequential(self.blocks, self.act1(x), group=3)  # conv-BN-activation triples
        return torch.flatten(self.avgpool(x), 1)
