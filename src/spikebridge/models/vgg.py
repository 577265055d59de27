"""VGG-11/16 with BatchNorm (conv-BN-activation, max-pool between stages), global average pool
and one linear readout (the CIFAR-style VGG common in SNN papers)."""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import NeuronConfig
from .base import BridgeNet

VGG_STAGES = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(BridgeNet):
    def __init__(self, stages: list, *, num_classes: int, in_channels: int, neuron: NeuronConfig, T: int) -> None:
        super().__init__(neuron, T)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in stages:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), self.activation()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.finish_init()

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[1](self.features[0](x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.features[2:]:
            x = layer(x)
        return torch.flatten(self.avgpool(x), 1)
