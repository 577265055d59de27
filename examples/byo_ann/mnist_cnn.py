"""An externally defined MNIST CNN, written as a user would (no spikebridge imports, no BatchNorm).

Used by ``benchmarks/byo_ann_mnist.py`` and ``spikebridge finetune --ann examples/byo_ann/mnist_cnn.py:MnistCNN``.
``MnistCNN`` is a Sequential-free module that calls ``F.relu`` / ``F.max_pool2d`` and flattens
with ``x.view(x.size(0), -1)`` in ``forward``; ``MnistSequentialCNN`` is the same network as an
``nn.Sequential`` of modules.
"""
import torch.nn.functional as F
from torch import nn


class MnistCNN(nn.Module):
    """Conv(1->16, 5x5) - ReLU - MaxPool 2 - Conv(16->32, 5x5) - ReLU - MaxPool 2 - Linear(512->128) - ReLU - Linear(128->classes)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.dropout = nn.Dropout(0.25)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(x.size(0), -1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


class MnistSequentialCNN(nn.Sequential):
    """The same layers as :class:`MnistCNN`, as an ``nn.Sequential`` of modules."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )
