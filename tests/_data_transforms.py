"""Random transforms only the tests use (torchvision-style augmentation on top of
:mod:`spikebridge.data.transforms`): the package trains in-memory images with a batch shift and
photos with RandomResizedCrop, so these live here."""
from __future__ import annotations

import torch
from PIL import Image

from spikebridge.data.transforms import RandomTransform, _crop, _image_hw, _pad, _pair


class RandomCrop(RandomTransform):
    """Zero-pad ``padding`` pixels on each side, then crop a random ``size`` box (torchvision's draws)."""

    def __init__(self, size, padding: int = 0, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.size = _pair(size, "RandomCrop size")
        self.padding = int(padding)

    def __call__(self, img, generator: torch.Generator | None = None):
        img = _pad(img, *(self.padding,) * 4)
        (h, w), (th, tw) = _image_hw(img), self.size
        rng = self._rng(generator)
        i = int(torch.randint(0, h - th + 1, size=(1,), generator=rng).item())
        j = int(torch.randint(0, w - tw + 1, size=(1,), generator=rng).item())
        return _crop(img, i, j, th, tw)


class RandomHorizontalFlip(RandomTransform):
    """Mirror left-right with probability ``p`` (one ``torch.rand(1)`` draw per call)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        super().__init__(generator)
        self.p = float(p)

    def __call__(self, img, generator: torch.Generator | None = None):
        if torch.rand(1, generator=self._rng(generator)).item() < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if isinstance(img, Image.Image) else img.flip(-1)
        return img
