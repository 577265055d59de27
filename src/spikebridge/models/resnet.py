"""ResNets: the paper's variant and the torchvision layout, with torchvision's parameter names.

* ``resnet18`` / ``resnet34`` (the paper's): conv1 7x7/2 -> BN -> activation, *no* max-pool, every
  stage starts with stride 2 (224 -> 112 -> 56 -> 28 -> 14 -> 7).
* ``resnet18_tv`` / ``resnet34_tv`` / ``resnet50_tv``: torchvision's layout (max-pool after the stem,
  stage 1 at stride 1), so torchvision state-dict files load with zero missing/unexpected keys.

The activation after the residual sum is a separate module from the one inside the block, so
neurons with learnable decay get one decay per place.
"""
from __future__ import annotations

import torch
from torch import nn

from ..neurons import NeuronConfig
from .base import BridgeNet


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, net: BridgeNet, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = net.activation()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.act2 = net.activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, net: BridgeNet, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = net.activation()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = net.activation()
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.act3 = net.activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


class ResNet(BridgeNet):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        *,
        num_classes: int,
        in_channels: int,
        neuron: NeuronConfig,
        T: int,
        torchvision_layout: bool,
    ) -> None:
        super().__init__(neuron, T)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = self.activation()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if torchvision_layout else nn.Identity()
        first_stride = 1 if torchvision_layout else 2
        self.layer1 = self._make_layer(block, 64, layers[0], first_stride)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.finish_init()

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self, self.inplanes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(x))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self.run_sequential(layer, x)
        return torch.flatten(self.avgpool(x), 1)
