"""Image transforms (PIL images and tensors) without torchvision, plus a fast batch shift.

Geometric transforms accept a ``PIL.Image.Image`` or a tensor ``[..., H, W]`` and return the same
kind; :class:`ToTensor` gives a float tensor ``[C, H, W]`` in ``[0, 1]``.

A random transform draws from the ``generator`` passed to the call (:class:`Compose` forwards it),
else the one given to its constructor, else PyTorch's global RNG (as torchvision does). A
constructor generator would be copied into every DataLoader worker with the same state, so inside
a worker the transform draws from a private generator seeded from ``(generator.initial_seed(),
worker seed)``: reproducible runs, and workers still differ. :class:`RandomResizedCrop` makes
torchvision's RNG calls in the same order, so with the global RNG and the same seed it picks the
same boxes.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from spikebridge.errors import ConfigError, DataError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageLike",
    "RandomTransform",
    "Compose",
    "ToTensor",
    "Normalize",
    "Resize",
    "CenterCrop",
    "RandomResizedCrop",
    "imagenet_train_transform",
    "imagenet_eval_transform",
    "random_shift_offsets",
    "shift_batch",
    "random_shift",
]

# ImageNet's per-channel mean / std of pixel values in [0, 1].
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

ImageLike = Union[Image.Image, torch.Tensor]
"""A PIL image, or a tensor whose last two dimensions are ``[H, W]``."""

#: PIL modes of grey images (one channel, alpha dropped).
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# --------------------------------------------------------------------------- helpers


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    """``size`` as ``(height, width)``; an int means a square."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, Sequence) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    elif isinstance(size, Sequence) and len(size) == 1:
        h = w = int(size[0])
    else:
        raise ConfigError(f"{name} must be an int or (height, width), got {size!r}")
    if h <= 0 or w <= 0:
        raise ConfigError(f"{name} must be positive, got {size!r}")
    return h, w


def _check_interpolation(interpolation: str) -> str:
    if interpolation not in _PIL_RESAMPLE:
        raise ConfigError(
            f"interpolation must be one of {sorted(_PIL_RESAMPLE)}, got {interpolation!r}"
        )
    return interpolation


def _image_hw(img: ImageLike) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or of a tensor ``[..., H, W]``."""
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, torch.Tensor):
        if img.ndim < 2:
            raise DataError(f"image tensor must have at least 2 dims [..., H, W], got {tuple(img.shape)}")
        return int(img.shape[-2]), int(img.shape[-1])
    raise DataError(f"expected a PIL image or a tensor, got {type(img).__name__}")


def _crop(img: ImageLike, top: int, left: int, height: int, width: int) -> ImageLike:
    """Crop box rows ``[top, top+height)``, cols ``[left, left+width)``; the box must lie inside."""
    if isinstance(img, Image.Image):
        return img.crop((left, top, left + width, top + height))
    return img[..., top : top + height, left : left + width]


def _pad(img: ImageLike, left: int, top: int, right: int, bottom: int) -> ImageLike:
    """Zero padding on each side, in pixels."""
    if left == top == right == bottom == 0:
        return img
    if isinstance(img, Image.Image):
        w, h = img.size
        if img.mode == "P":
            out = Image.new("P", (w + left + right, h + top + bottom), 0)
            palette = img.getpalette()
            if palette is not None:
                out.putpalette(palette)
        else:
            bands = len(img.getbands())
            out = Image.new(img.mode, (w + left + right, h + top + bottom), 0 if bands == 1 else (0,) * bands)
        out.paste(img, (left, top))
        return out
    h, w = img.shape[-2:]
    out_t = img.new_zeros((*img.shape[:-2], h + top + bottom, w + left + right))
    out_t[..., top : top + h, left : left + w] = img
    return out_t


def _resize(img: ImageLike, height: int, width: int, interpolation: str) -> ImageLike:
    """Resize to exactly ``(height, width)``. PIL: PIL's filter (antialiased when shrinking);
    tensors: ``F.interpolate`` with ``antialias=True`` for bilinear/bicubic."""
    if isinstance(img, Image.Image):
        if (img.height, img.width) == (height, width):
            return img
        return img.resize((width, height), _PIL_RESAMPLE[interpolation])
    if tuple(img.shape[-2:]) == (height, width):
        return img
    lead = img.shape[:-2]
    x = img.reshape(1, -1, *img.shape[-2:])
    dtype = x.dtype
    xf = x if x.is_floating_point() else x.float()
    smooth = {} if interpolation == "nearest" else {"align_corners": False, "antialias": True}
    y = F.interpolate(xf, size=(height, width), mode=interpolation, **smooth)
    if not dtype.is_floating_point:
        y = (y.round().clamp(0, 255) if dtype == torch.uint8 else y.round()).to(dtype)
    return y.reshape(*lead, height, width)


class RandomTransform:
    """Base of the random transforms: holds an optional ``torch.Generator`` and resolves which
    generator a call draws from (see the module docstring for the precedence and the
    per-DataLoader-worker re-seeding)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator
        self._worker_key: tuple[int, int] | None = None
        self._worker_generator: torch.Generator | None = None

    def _rng(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The generator to draw from; ``None`` means PyTorch's global RNG."""
        if generator is not None:
            return generator
        if self.generator is None:
            return None
        info = torch.utils.data.get_worker_info()
        if info is None:
            return self.generator
        key = (os.getpid(), int(info.seed))
        if self._worker_key != key:
            seed = (int(self.generator.initial_seed()) * 1_000_003 + int(info.seed)) % (2**63 - 1)
            g = torch.Generator(device=self.generator.device)
            g.manual_seed(seed)
            self._worker_generator = g
            self._worker_key = key
        return self._worker_generator

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> ImageLike:
        raise NotImplementedError


# --------------------------------------------------------------------------- transforms


class Compose:
    """Apply transforms in order. ``generator`` given to the call is forwarded to every
    :class:`RandomTransform`; other callables get the image only."""

    def __init__(self, transforms: Sequence[Callable[..., Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, img: Any, generator: torch.Generator | None = None) -> Any:
        for t in self.transforms:
            if isinstance(t, (RandomTransform, Compose)):
                img = t(img, generator=generator)
            else:
                img = t(img)
        return img

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


class ToTensor:
    """PIL image / uint8 array / tensor -> float32 tensor ``[C, H, W]`` in ``[0, 1]``.

    - PIL: grey modes (``1``, ``L``, ``LA``, ``I;16``, ``I``, ``F``) give 1 channel, every other
      mode is converted to RGB (3 channels; alpha dropped). 8-bit values are divided by 255,
      16-bit ones (``I;16``, ``I``) by 65535, ``F`` is taken as is.
    - numpy: ``[H, W]`` or ``[H, W, C]``; uint8 divided by 255, floats taken as is.
    - tensor: ``[H, W]`` or ``[C, H, W]``; uint8 divided by 255, floats taken as is.

    ``channels`` forces the channel count: ``1`` converts colour to luma
    (ITU-R 601-2: ``0.299 R + 0.587 G + 0.114 B``; PIL's own conversion for PIL input),
    ``3`` repeats a grey channel. ``None`` keeps the natural count.
    """

    def __init__(self, channels: int | None = None) -> None:
        if channels not in (None, 1, 3):
            raise ConfigError(f"ToTensor channels must be None, 1 or 3, got {channels!r}")
        self.channels = channels

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, Image.Image):
            x = self._from_pil(img)
        elif isinstance(img, np.ndarray):
            x = self._from_array(img)
        elif isinstance(img, torch.Tensor):
            x = img
            if x.ndim == 2:
                x = x.unsqueeze(0)
            if x.ndim != 3:
                raise DataError(f"ToTensor expects a tensor [C, H, W] or [H, W], got {tuple(img.shape)}")
            x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        else:
            raise DataError(f"ToTensor expects a PIL image, numpy array or tensor, got {type(img).__name__}")
        return self._fix_channels(x)

    def _from_pil(self, img: Image.Image) -> torch.Tensor:
        if img.mode in GREY_MODES:
            if img.mode in ("1", "LA"):
                img = img.convert("L")
            scale = {"L": 255.0, "F": 1.0}.get(img.mode, 65535.0)  # else 16-bit / 32-bit integer grey
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / np.float32(scale))
            return x.unsqueeze(0).contiguous()
        if self.channels == 1:
            x = torch.from_numpy(np.asarray(img.convert("L"), dtype=np.float32) / np.float32(255.0))
            return x.unsqueeze(0)
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.array(img)  # writable copy (PIL's buffer view is read-only)
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0).contiguous()

    @staticmethod
    def _from_array(arr: np.ndarray) -> torch.Tensor:
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise DataError(f"ToTensor expects an array [H, W] or [H, W, C], got shape {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
        return x.float().div_(255.0).contiguous() if arr.dtype == np.uint8 else x.float().contiguous()

    def _fix_channels(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[0]
        if self.channels is None or c == self.channels:
            return x
        if self.channels == 3 and c == 1:
            return x.expand(3, -1, -1).contiguous()
        if self.channels == 1 and c == 3:
            w = x.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            return (x * w).sum(0, keepdim=True)
        raise DataError(f"ToTensor cannot turn an image with {c} channels into {self.channels}")

    def __repr__(self) -> str:
        return f"ToTensor(channels={self.channels})"


class Normalize:
    """``(x - mean) / std`` per channel on a float tensor ``[..., C, H, W]``.

    ``mean`` and ``std`` hold one value per channel (or a single value for all channels).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        mean_t = tuple(float(m) for m in mean)
        std_t = tuple(float(s) for s in std)
        if len(mean_t) == 0 or len(mean_t) != len(std_t):
            raise ConfigError(f"Normalize needs mean and std of equal, non-zero length, got {mean_t} and {std_t}")
        if any(s == 0 for s in std_t):
            raise ConfigError(f"Normalize std must not contain 0, got {std_t}")
        self.mean = mean_t
        self.std = std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 3:
            raise DataError("Normalize expects a float tensor [..., C, H, W]; put ToTensor before it")
        c = x.shape[-3]
        if len(self.mean) not in (1, c):
            raise DataError(
                f"Normalize has {len(self.mean)} channel means but the image has {c} channels "
                f"(use ToTensor(channels={len(self.mean)}) or matching mean/std)"
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class Resize:
    """Resize (bilinear by default; PIL for PIL images).

    ``size`` an int: the *shorter* side becomes ``size`` and the longer one
    ``int(size * long / short)`` (torchvision's rule, aspect ratio kept); ``(h, w)``: exact size.
    An image that already has the target size is returned unchanged.
    """

    def __init__(self, size: int | Sequence[int], interpolation: str = "bilinear") -> None:
        pair = _pair(size, "Resize size")
        square = isinstance(size, (int, np.integer)) and not isinstance(size, bool)
        self.size: int | tuple[int, int] = int(size) if square else pair
        self.interpolation = _check_interpolation(interpolation)

    def __call__(self, img: ImageLike) -> ImageLike:
        h, w = _image_hw(img)
        if isinstance(self.size, tuple):
            return _resize(img, *self.size, self.interpolation)
        if w <= h:
            return _resize(img, int(self.size * h / w), self.size, self.interpolation)
        return _resize(img, self.size, int(self.size * w / h), self.interpolation)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, interpolation={self.interpolation!r})"


class CenterCrop:
    """Crop the central ``size`` box (torchvision's rounding: top = round((H - h) / 2)).

    An image smaller than ``size`` is first zero-padded symmetrically (extra pixel on the
    right/bottom), as torchvision does.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size, "CenterCrop size")

    def __call__(self, img: ImageLike) -> ImageLike:
        ch, cw = self.size
        h, w = _image_hw(img)
        if ch > h or cw > w:
            dw, dh = max(cw - w, 0), max(ch - h, 0)
            img = _pad(img, dw // 2, dh // 2, (dw + 1) // 2, (dh + 1) // 2)
            h, w = _image_hw(img)
            if (h, w) == (ch, cw):
                return img
        top = int(round((h - ch) / 2.0))
        left = int(round((w - cw) / 2.0))
        return _crop(img, top, left, ch, cw)

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


class RandomResizedCrop(RandomTransform):
    """Crop a random box of random area and aspect ratio, then resize it to ``size``.

    Box sampling is torchvision's, call for call: up to 10 attempts of
    ``area * U(scale)`` and ``exp(U(log ratio))`` (ratio = width / height), rounded with
    ``int(round(.))``, accepted when it fits, with top/left drawn by ``torch.randint``; after 10
    failures a centre crop of the whole image clamped to the ratio range.

    Args:
        size: output ``(height, width)`` in pixels, or an int for a square.
        scale: range of the box area as a fraction of the image area.
        ratio: range of the box aspect ratio ``width / height``.
        interpolation: ``"bilinear"`` (default), ``"bicubic"`` or ``"nearest"``.
        generator: optional ``torch.Generator`` (see module docstring).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        interpolation: str = "bilinear",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(generator)
        self.size = _pair(size, "RandomResizedCrop size")
        if len(scale) != 2 or scale[0] > scale[1] or scale[0] <= 0:
            raise ConfigError(f"RandomResizedCrop scale must be (min, max) with 0 < min <= max, got {scale}")
        if len(ratio) != 2 or ratio[0] > ratio[1] or ratio[0] <= 0:
            raise ConfigError(f"RandomResizedCrop ratio must be (min, max) with 0 < min <= max, got {ratio}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = _check_interpolation(interpolation)

    @staticmethod
    def get_params(
        height: int,
        width: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        generator: torch.Generator | None = None,
    ) -> tuple[int, int, int, int]:
        """Sample a box ``(top, left, box_height, box_width)`` inside a ``height x width`` image.

        ``generator=None`` draws from the global RNG, exactly like torchvision's ``get_params``.
        """
        area = height * width
        log_ratio = torch.log(torch.tensor(ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
            aspect_ratio = torch.exp(
                torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator)
            ).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                return i, j, h, w
        # Fallback: central crop of the whole image, clamped to the ratio range.
        in_ratio = float(width) / float(height)
        h, w = height, width
        if in_ratio < min(ratio):
            h = int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            w = int(round(h * max(ratio)))
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: ImageLike, generator: torch.Generator | None = None) -> ImageLike:
        h, w = _image_hw(img)
        i, j, bh, bw = self.get_params(h, w, self.scale, self.ratio, self._rng(generator))
        return _resize(_crop(img, i, j, bh, bw), self.size[0], self.size[1], self.interpolation)

    def __repr__(self) -> str:
        return (
            f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={self.interpolation!r})"
        )


# --------------------------------------------------------------------------- presets


def norm_stats(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std for ``channels``: 3-channel statistics are averaged for grey input."""
    mean_t, std_t = tuple(mean), tuple(std)
    if channels == 1 and len(mean_t) == 3:
        return (sum(mean_t) / 3.0,), (sum(std_t) / 3.0,)
    return mean_t, std_t


def imagenet_train_transform(size: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                             channels: int = 3) -> Compose:
    """The paper's ImageNet training pipeline: ``RandomResizedCrop(size)`` (no flip) -> ``ToTensor``
    -> ImageNet normalisation. Output: float ``[channels, size, size]``.

    ``channels=1`` gives grey tensors normalised with the channel-averaged statistics.
    """
    m, s = norm_stats(IMAGENET_MEAN, IMAGENET_STD, channels)
    return Compose([RandomResizedCrop(size, scale=scale), ToTensor(channels=channels), Normalize(m, s)])


def imagenet_eval_transform(size: int = 224, channels: int = 3) -> Compose:
    """The paper's ImageNet test pipeline: ``Resize`` (shorter side) to ``round(size * 256 / 224)``
    (256 for 224, 73 for 64) -> ``CenterCrop(size)`` -> ``ToTensor`` -> ImageNet normalisation.
    Output: float ``[channels, size, size]``."""
    m, s = norm_stats(IMAGENET_MEAN, IMAGENET_STD, channels)
    resize = Resize(int(round(size * 256 / 224)))
    return Compose([resize, CenterCrop(size), ToTensor(channels=channels), Normalize(m, s)])


# --------------------------------------------------------------------------- batch shift


def random_shift_offsets(
    batch_size: int, max_shift: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Integer offsets ``[batch_size, 2]`` (int64; column 0 = rows ``dy``, column 1 = cols ``dx``),
    uniform in ``[-max_shift, max_shift]``: one ``torch.randint(-m, m + 1, (B, 2))`` draw, on the
    generator's device (CPU for the global RNG)."""
    if max_shift < 0:
        raise ConfigError(f"max_shift must be >= 0, got {max_shift}")
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(
        -int(max_shift), int(max_shift) + 1, (int(batch_size), 2), generator=generator, device=device
    )


def shift_batch(batch: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Translate every sample of ``batch`` by its own integer offset, filling with zeros.

    Args:
        batch: ``[B, ..., H, W]`` (e.g. ``[B, C, H, W]`` or ``[B, T, C, H, W]``), any dtype;
            all leading dims of a sample (time steps, channels) move together.
        offsets: int ``[B, 2]``: ``(dy, dx)`` per sample; positive moves content down / right.

    Returns:
        A new tensor like ``batch`` with ``out[b, ..., y, x] = batch[b, ..., y - dy, x - dx]``
        where that pixel exists, else 0. Vectorised (two ``gather``\\ s, no per-sample loop).
    """
    if batch.ndim < 3:
        raise DataError(f"shift_batch expects a batch [B, ..., H, W], got shape {tuple(batch.shape)}")
    b, h, w = batch.shape[0], batch.shape[-2], batch.shape[-1]
    if tuple(offsets.shape) != (b, 2):
        raise DataError(f"shift_batch offsets must have shape [{b}, 2], got {tuple(offsets.shape)}")
    if b == 0 or h == 0 or w == 0:
        return batch.clone()
    off = offsets.to(device=batch.device, dtype=torch.long)
    dy = off[:, 0].clamp(-h, h)
    dx = off[:, 1].clamp(-w, w)
    m = int(max(dy.abs().max().item(), dx.abs().max().item()))
    if m == 0:
        return batch.clone()
    flat = batch.reshape(b, -1, h, w)
    k = flat.shape[1]
    padded = flat.new_zeros((b, k, h + 2 * m, w + 2 * m))
    padded[:, :, m : m + h, m : m + w] = flat
    ar_h = torch.arange(h, device=batch.device)
    ar_w = torch.arange(w, device=batch.device)
    rows = (ar_h[None, :] + m - dy[:, None]).view(b, 1, h, 1).expand(b, k, h, w + 2 * m)
    out = padded.gather(2, rows)
    cols = (ar_w[None, :] + m - dx[:, None]).view(b, 1, 1, w).expand(b, k, h, w)
    out = out.gather(3, cols)
    return out.reshape(batch.shape)


def random_shift(
    batch: torch.Tensor, max_shift: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random integer translation of each sample in ``[-max_shift, max_shift]`` pixels per axis,
    zero fill; a fast in-memory augmentation (e.g. MNIST, event frames).

    Args:
        batch: ``[B, C, H, W]`` or ``[B, T, C, H, W]`` (one offset per sample, shared by all
            its time steps and channels), any dtype and device.
        max_shift: largest shift in pixels (``0`` returns a copy).
        generator: ``torch.Generator`` for the offsets (``None``: global RNG); offsets are
            :func:`random_shift_offsets` ``(B, max_shift, generator)``.
    """
    if batch.ndim not in (4, 5):
        raise DataError(f"random_shift expects [B, C, H, W] or [B, T, C, H, W], got shape {tuple(batch.shape)}")
    offsets = random_shift_offsets(batch.shape[0], max_shift, generator)
    if max_shift == 0:
        return batch.clone()
    return shift_batch(batch, offsets)
