"""VGG-11/16 with BatchNorm (conv-BN-activation, max-pool between stages).

* ``vgg11`` / ``vgg16``: global average pool and one linear readout (the CIFAR-style VGG common in
  SNN papers).
* ``vgg11_bn_tv`` / ``vgg16_bn_tv``: torchvision's ``vgg11_bn`` / ``vgg16_bn`` with its parameter
  names (convolutions with bias, 7x7 adaptive pool, the 4096-4096 classifier with dropout), so
  torchvision state-dict files load with zero missing/unexpected keys. The classifier's hidden
  layers get the model's activation (spiking neurons in the SNN); its readout is ``classifier.6``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..neurons import NeuronConfig
from .base import BridgeNet

VGG_STAGES = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class TimeSharedDropout(nn.Dropout):
    """Dropout of a folded ``[T*B, ...]`` tensor with one mask per sample, shared by its T steps
    (SpikingJelly's multi-step dropout); plain dropout when T = 1 (the ANN)."""

    time_steps = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        mask = F.dropout(x.new_ones(1, x.shape[0] // self.time_steps, *x.shape[1:]), self.p, training=True)
        return (x.unflatten(0, (self.time_steps, -1)) * mask).flatten(0, 1)


#: layers inside a VGG block; any other (an activation, a dropout) ends one
_WEIGHTED_OR_SHAPING = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear)


class VGG(BridgeNet):
    def __init__(self, stages: list, *, num_classes: int, in_channels: int, neuron: NeuronConfig, T: int,
                 torchvision_layout: bool = False) -> None:
        super().__init__(neuron, T)
        layers: list[nn.Module] = []
        channels = in_channels
        for item in stages:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=not torchvision_layout))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=torchvision_layout), nn.BatchNorm2d(item),
                           self.activation()]
                channels = item
        self.features = nn.Sequential(*layers)
        if torchvision_layout:
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            dropouts = [TimeSharedDropout(0.5), TimeSharedDropout(0.5)]
            self._folded += dropouts  # their masks follow the time steps, as the neurons do
            self.classifier = nn.Sequential(nn.Linear(channels * 49, 4096), self.activation(), dropouts[0],
                                            nn.Linear(4096, 4096), self.activation(), dropouts[1],
                                            nn.Linear(4096, num_classes))
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(channels, num_classes)
        self.flatten = nn.Flatten()  # a module, so the bridge's calibration chain runs on through it
        self.finish_init()

    @property
    def fc(self) -> nn.Module:
        """The readout: ``fc``, or torchvision's ``classifier.6`` (AttributeError before either is
        built, as for any missing attribute: ``hasattr`` and ``add_module`` rely on it)."""
        modules = self._modules
        if "classifier" in modules:
            return modules["classifier"][6]
        if "fc" in modules:
            return modules["fc"]
        raise AttributeError("fc")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[1](self.features[0](x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.classifier[:6] if "classifier" in self._modules else []
        layers = [*self.features[2:], self.avgpool, self.flatten, *hidden]
        # blocks that end at each activation: what --checkpoint-blocks recomputes in the backward
        ends = [i + 1 for i, layer in enumerate(layers) if not isinstance(layer, _WEIGHTED_OR_SHAPING)]
        starts = [0, *ends]
        blocks = [nn.Sequential(*layers[a:b]) for a, b in zip(starts, [*ends, len(layers)]) if b > a]
        return self.run_sequential(nn.Sequential(*blocks), x)
