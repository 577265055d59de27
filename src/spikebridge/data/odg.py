"""ODG: Omnidirectional Discrete Gradient, the image -> event-stream conversion of ES-ImageNet.

The algorithm (arXiv:2203.01158, "ODG"):

1. The image is scaled to [0, 1]; its intensity ``I`` is the maximum over the colour channels
   (HSV value). ``I`` is resized with ``torch.nn.functional.interpolate(mode="nearest")`` so that
   the longer side is ``size`` (254): a ``a x b`` (height x width) image becomes
   ``size x int(b*size/a)`` when ``a > b``, otherwise ``int(a*size/b) x size``.
2. ``I`` is placed on a zero canvas of ``(size+4) x (size+4)`` pixels at 9 successive offsets
   ``path`` (row, col), top-left corner of the image at the offset.
3. For each of the 8 moves ``t = 1..8``, ``D = canvas_t - canvas_(t-1)`` (float32). ON events where
   ``D > threshold``, OFF events where ``D < -threshold``. Events inside the strips swept by the
   image's own border during the move are removed (rows ``[min(r,r0), max(r,r0))`` and
   ``[min(r,r0)+h, max(r,r0)+h)``, columns likewise with ``c``/``w``, over the whole canvas); then
   only events with ``window[0] < row < window[1]`` and ``window[0] < col < window[1]`` are kept.
   A sample with fewer than ``min_events`` events (ON and OFF together) is dropped (``None``).

Event coordinates are canvas coordinates, stored as uint8 rows ``(row, col, t)``, ``t`` in 1..8,
sorted by ``(t, row, col)``. Reading (step 5) centres the image with the shift
``((size - height)//2, (size - width)//2)`` on a ``canvas x canvas`` grid and crops
``crop[0]:crop[1]`` in both axes (:func:`events_to_dense`). The layout of dense frames in
spikebridge is time-major ``[T, 2, H, W]``, channel 0 = ON, channel 1 = OFF.

Also here: the edge-integral reconstruction (step 6) and the embedded ES-MNIST variant
(:func:`es_mnist_frames`, :func:`cached_es_mnist`).
"""
from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ConfigError, DataError, SpikebridgeError, first_line
from ..utils import atomic_path

#: ES-ImageNet's resize of the longer image side and its window of kept events (224 x 224 frames)
ES_IMAGENET_SIZE, ES_IMAGENET_WINDOW = 254, (16, 240)
#: The 9 offsets (row, col) of the released ES-ImageNet (arXiv:2203.01158, ODG step 2).
ODG_PATH: tuple[tuple[int, int], ...] = (
    (1, 0), (0, 2), (2, 1), (1, 0), (0, 1), (2, 2), (1, 0), (1, 1), (2, 1),
)


@dataclass(frozen=True)
class EventSample:
    """One ODG sample in the released ES-ImageNet layout.

    ``pos`` / ``neg``: uint8 ``[N, 3]`` rows ``(row, col, t)`` in canvas coordinates, ``t`` in
    ``1..T``; ``height`` / ``width``: the resized image's size in pixels (before the canvas).
    """

    pos: np.ndarray
    neg: np.ndarray
    height: int
    width: int

    @property
    def n_events(self) -> int:
        """ON and OFF events together."""
        return int(self.pos.shape[0] + self.neg.shape[0])


@dataclass(frozen=True)
class ESMNISTConfig:
    """ODG parameters for the 28x28 embedded ES-MNIST (chosen by us, not from the paper).

    The digit is not resized (``size=28``), the canvas is 32x32, events with
    ``0 < row < 29`` (and col) are kept and the dense frames are the canvas crop ``[1:29]``, so the
    output is 28x28 and covers the whole digit (MNIST digits lie in the central 20x20 box).
    ``min_events=0``: no digit is dropped, so the split is unchanged.
    """

    size: int = 28
    threshold: float = 0.18
    window: tuple[int, int] = (0, 29)
    canvas: int = 32
    crop: tuple[int, int] = (1, 29)
    path: tuple[tuple[int, int], ...] = ODG_PATH


# ----------------------------------------------------------------------------------------------
# image -> intensity
# ----------------------------------------------------------------------------------------------

def _scale(arr: np.ndarray, what: str) -> np.ndarray:
    """uint8 (/255), uint16 (/65535), bool or float in [0, 1] -> float32 in [0, 1]."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535.0)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{what}: float image contains NaN or Inf")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise DataError(
                f"{what}: float image values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]"
            )
        return arr
    raise DataError(f"{what}: unsupported image dtype {arr.dtype} (use uint8, uint16, bool or float in [0, 1])")


def _pil_to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("L", "RGB", "I;16", "F"):
        return np.asarray(image)
    if mode.startswith("I;16"):  # I;16B, I;16L, I;16N
        return np.asarray(image.convert("I")).astype(np.uint16)
    if mode == "I":  # 32-bit integer, taken as 16-bit data (PNG/TIFF 16-bit grey)
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if mode in ("1", "LA", "La"):
        return np.asarray(image.convert("L"))
    # P, PA, RGBA, RGBa, RGBX, CMYK, YCbCr, LAB, HSV, ...: alpha dropped, colour kept.
    return np.asarray(image.convert("RGB"))


def _as_channels_last(image: Any) -> tuple[np.ndarray, str]:
    """Any accepted image -> (numpy ``[H, W, C]`` in its native dtype with C in {1, 3}, description)."""
    if isinstance(image, Image.Image):
        arr, what = _pil_to_array(image), f"PIL image (mode {image.mode})"
    elif isinstance(image, torch.Tensor):
        arr, what = image.detach().cpu().numpy(), "tensor image"
        if arr.ndim == 3:
            arr = np.moveaxis(arr, 0, -1)  # CxHxW -> HxWxC
    elif isinstance(image, np.ndarray):
        arr, what = image, "array image"
    else:
        raise DataError(
            f"unsupported image type {type(image).__name__} (use a PIL image, numpy array or tensor)"
        )
    if arr.ndim == 2:
        return arr[:, :, None], what
    if arr.ndim != 3:
        raise DataError(f"{what}: expected an HxW or HxWxC (tensor: CxHxW) image, got shape {tuple(arr.shape)}")
    c = arr.shape[2]
    if c in (1, 2):
        return arr[:, :, :1], what  # grey (alpha dropped)
    if c in (3, 4):
        return arr[:, :, :3], what  # RGB (alpha dropped)
    raise DataError(f"{what}: expected 1-4 colour channels, got shape {tuple(arr.shape)}")


def _intensity_of(arr: np.ndarray, what: str) -> np.ndarray:
    """``[H, W, C]`` native dtype -> float32 ``[H, W]``: scaled to [0, 1], max over channels."""
    if arr.shape[2] == 3 and arr.dtype != np.bool_:
        # max commutes with the monotone scaling: take it in the native dtype (fast), then scale
        arr = np.maximum(np.maximum(arr[:, :, 0], arr[:, :, 1]), arr[:, :, 2])
    else:
        arr = arr.max(axis=2)
    return np.ascontiguousarray(_scale(arr, what))


def resized_shape(height: int, width: int, size: int = ES_IMAGENET_SIZE) -> tuple[int, int]:
    """ODG step 1: the longer side becomes ``size``; the other is ``int(other*size/longer)``.

    Raises :class:`DataError` when the shorter side would become 0 (an extremely thin image).
    """
    if height <= 0 or width <= 0:
        raise DataError(f"empty image ({height}x{width})")
    if height > width:
        new = (size, int(width * size / height))
    else:
        new = (int(height * size / width), size)
    if min(new) < 1:
        raise DataError(f"image {height}x{width} is too elongated: it would be resized to {new[0]}x{new[1]}")
    return new


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices that ``F.interpolate(mode="nearest")`` picks along one axis (float32 input).

    Nearest-neighbour interpolation is a separable selection, so interpolating a float32 ramp
    ``0..n_in-1`` gives exactly the indices PyTorch uses for a float32 image (tested).
    """
    ramp = torch.arange(n_in, dtype=torch.float32).reshape(1, 1, n_in, 1)
    return F.interpolate(ramp, size=(n_out, 1), mode="nearest").reshape(-1).numpy().astype(np.int64)


def resized_intensity(image: Any, size: int = ES_IMAGENET_SIZE) -> np.ndarray:
    """ODG step 1: the intensity ``I`` (maximum over the colour channels, HSV value), float32
    ``[h, w]`` in [0, 1], resized nearest-neighbour (``F.interpolate``'s pixels) to longer side ``size``.

    ``image``: a PIL image of any mode (``L``/``1``/``LA`` grey, ``RGB``, ``RGBA``/``P``/``CMYK``/...
    converted to RGB, ``I;16``/``I`` 16-bit divided by 65535, ``F`` float in [0, 1]; alpha dropped);
    a numpy array ``HxW`` or ``HxWxC`` (C in 1..4) or a torch tensor ``HxW`` or ``CxHxW``, uint8
    (/255), uint16 (/65535), bool, or float in [0, 1].
    """
    arr, what = _as_channels_last(image)
    h, w = resized_shape(arr.shape[0], arr.shape[1], size=size)
    rows = nearest_indices(arr.shape[0], h)
    cols = nearest_indices(arr.shape[1], w)
    return _intensity_of(arr.take(rows, axis=0).take(cols, axis=1), what)


# ----------------------------------------------------------------------------------------------
# the event masks (vectorised over a batch of equally sized intensity images)
# ----------------------------------------------------------------------------------------------

#: The largest ODG ``size``: the canvas is ``(size + 4)**2`` float32 values, three at a time
#: (~200 MB at 4096; 10.8 GB at 30000). The paper uses 254; stored coordinates are < 256 anyway.
ODG_MAX_SIZE = 4096


def _check_params(size: int, path: Sequence[tuple[int, int]], window: tuple[int, int], threshold: float) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 1 <= size <= ODG_MAX_SIZE:
        raise ConfigError(f"ODG size must be an integer in 1..{ODG_MAX_SIZE}, got {size!r:.40}")
    if len(path) < 2:
        raise ConfigError(f"ODG path needs at least 2 offsets, got {len(path)}")
    if any(not (0 <= r <= 4 and 0 <= c <= 4) for r, c in path):
        raise ConfigError(f"ODG path offsets must lie in 0..4 (the canvas is 4 pixels larger), got {path}")
    if len(path) - 1 > 255:
        raise ConfigError("ODG path longer than 256 offsets cannot be stored as uint8 t")
    if not isinstance(threshold, (int, float, np.number)) or not math.isfinite(threshold) or threshold < 0:
        raise ConfigError(f"ODG threshold must be a finite number >= 0, got {threshold!r:.40}")
    lo, hi = window
    if not lo < hi:
        raise ConfigError(f"ODG window must satisfy window[0] < window[1], got {window}")


def _region_masks(
    img: np.ndarray,
    threshold: float,
    window: tuple[int, int],
    offsets: Sequence[tuple[int, int]],
    size: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """ODG steps 2-3 on resized intensities ``img`` float32 ``[N, h, w]`` placed on a ``size x size``
    canvas, restricted to the window region ``[lo:hi, lo:hi]``.

    Returns ``(on, off, lo)`` with ``on``/``off`` bool ``[N, T, hi-lo, hi-lo]`` (index ``[n, t-1, row -
    lo, col - lo]`` is the event of move ``t`` at canvas ``(row, col)``; strips and window applied);
    only rows/cols strictly inside the window can hold a kept event, so nothing outside is computed.
    """
    n, h, w = img.shape
    thr = np.float32(threshold)
    lo = max(window[0] + 1, 0)
    hi = max(min(window[1], size), lo)
    n_steps = len(offsets) - 1
    on = np.zeros((n, n_steps, hi - lo, hi - lo), dtype=bool)
    off = np.zeros_like(on)
    if hi == lo:
        return on, off, lo

    def placed(r: int, c: int) -> np.ndarray:
        canvas = np.zeros((n, size, size), dtype=np.float32)
        canvas[:, r:r + h, c:c + w] = img
        return canvas[:, lo:hi, lo:hi]

    prev = placed(*offsets[0])
    for t in range(1, len(offsets)):
        (r0, c0), (r, c) = offsets[t - 1], offsets[t]
        cur = placed(r, c)
        diff = cur - prev
        keep_rows = np.ones(size, dtype=bool)
        keep_cols = np.ones(size, dtype=bool)
        for start, stop in ((min(r, r0), max(r, r0)), (min(r, r0) + h, max(r, r0) + h)):
            keep_rows[start:stop] = False  # strips swept by the image's top / bottom border
        for start, stop in ((min(c, c0), max(c, c0)), (min(c, c0) + w, max(c, c0) + w)):
            keep_cols[start:stop] = False  # strips swept by the image's left / right border
        keep = keep_rows[lo:hi, None] & keep_cols[None, lo:hi]
        np.logical_and(diff > thr, keep, out=on[:, t - 1])
        np.logical_and(diff < -thr, keep, out=off[:, t - 1])
        prev = cur
    return on, off, lo


def _mask_to_rows(mask: np.ndarray, lo: int = 0) -> np.ndarray:
    """bool ``[T, K, K]`` (region starting at canvas ``lo``) -> uint8 ``[N, 3]`` rows
    ``(row, col, t)`` in canvas coordinates, sorted by ``(t, row, col)``."""
    height, width = mask.shape[-2:]
    t, rest = np.divmod(np.flatnonzero(mask), height * width)  # ~4x faster than np.nonzero on 3-D
    row, col = np.divmod(rest, width)
    out = np.empty((t.shape[0], 3), dtype=np.uint8)
    out[:, 0] = row + lo
    out[:, 1] = col + lo
    out[:, 2] = t + 1
    return out


def odg(
    image: Any,
    *,
    size: int = ES_IMAGENET_SIZE,
    threshold: float = 0.18,
    window: tuple[int, int] = ES_IMAGENET_WINDOW,
    min_events: int = 1000,
    path: Sequence[tuple[int, int]] = ODG_PATH,
) -> EventSample | None:
    """Convert one static image into an ODG event sample (ES-ImageNet, arXiv:2203.01158 steps 1-3).

    ``image``: see :func:`resized_intensity` for the accepted types. ``size``: length in pixels of
    the resized longer side (the canvas is ``size + 4``). ``threshold``: on the [0, 1] intensity
    difference, compared in float32 with strict inequalities. ``window``: events need
    ``window[0] < row < window[1]`` and the same for col (canvas pixels). ``path``: the 9 (row, col)
    offsets. Returns ``None`` when the sample has fewer than ``min_events`` events.

    Coordinates are stored as uint8: a ``size``/``window``/``path`` combination that could give a
    coordinate above 255 (the largest row/col inside the window and where the image can be) raises
    :class:`ConfigError` (the defaults give at most 239).
    """
    path = tuple((int(r), int(c)) for r, c in path)
    window = (int(window[0]), int(window[1]))
    _check_params(size, path, window, threshold)
    if min(window[1] - 1, max(max(r for r, _ in path), max(c for _, c in path)) + size - 1) > 255:
        raise ConfigError(
            f"ODG size={size}, window={window} can produce event coordinates above 255, which the "
            "uint8 ES-ImageNet format cannot store; narrow the window to window[1] <= 256"
        )
    resized = resized_intensity(image, size=size)
    height, width = resized.shape
    on, off, lo = _region_masks(resized[None], threshold, window, path, size + 4)
    sample = EventSample(pos=_mask_to_rows(on[0], lo), neg=_mask_to_rows(off[0], lo),
                         height=int(height), width=int(width))
    if sample.n_events < min_events:
        return None
    return sample


# ----------------------------------------------------------------------------------------------
# reading: events -> dense frames, and the edge integral
# ----------------------------------------------------------------------------------------------

def _check_rows(rows: np.ndarray, name: str, n_steps: int) -> np.ndarray:
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != 3:
        raise DataError(f"{name}: expected rows of (row, col, t) with shape [N, 3], got {tuple(rows.shape)}")
    rows = rows.astype(np.int64)
    if rows.size and (rows[:, 2].min() < 1 or rows[:, 2].max() > n_steps):
        raise DataError(f"{name}: t must lie in 1..{n_steps}, got {rows[:, 2].min()}..{rows[:, 2].max()}")
    return rows


def events_to_dense(
    sample: EventSample,
    *,
    canvas: int = 256,
    crop: tuple[int, int] = ES_IMAGENET_WINDOW,
    size: int = ES_IMAGENET_SIZE,
    n_steps: int = 8,
    dtype: torch.dtype = torch.uint8,
) -> torch.Tensor:
    """arXiv:2203.01158 step 5: binary frames ``[T, 2, H, W]`` (time-major; channel 0 = ON, 1 = OFF).

    Events are shifted by ``((size - height)//2, (size - width)//2)`` (centring the resized image)
    onto a ``canvas x canvas`` grid; events falling outside the grid are dropped. The result is the
    crop ``[crop[0]:crop[1], crop[0]:crop[1]]`` -- ``[8, 2, 224, 224]`` with the defaults.
    """
    dense = torch.zeros((n_steps, 2, canvas, canvas), dtype=dtype)
    dr = (size - sample.height) // 2
    dc = (size - sample.width) // 2
    for channel, (rows, name) in enumerate(((sample.pos, "pos"), (sample.neg, "neg"))):
        ev = _check_rows(rows, name, n_steps)
        r = ev[:, 0] + dr
        c = ev[:, 1] + dc
        inside = (r >= 0) & (r < canvas) & (c >= 0) & (c < canvas)
        t = torch.from_numpy(ev[inside, 2] - 1)
        dense[t, channel, torch.from_numpy(r[inside]), torch.from_numpy(c[inside])] = 1
    return dense[:, :, crop[0]:crop[1], crop[0]:crop[1]].contiguous()


def reconstruct_edge_integral(frames: torch.Tensor | np.ndarray, *,
                              path: Sequence[tuple[int, int]] = ODG_PATH) -> np.ndarray:
    """arXiv:2203.01158 step 6, the "edge integral" of dense frames ``[T, 2, H, W]``: float32
    ``[H, W]``, ``sum_t (ON_t - OFF_t)`` shifted back by ``-path[t]`` (the image's offset after
    move ``t``; pixels shifted in from outside count as 0).

    The shift brings the events into the image's own coordinates: an ON event lands on the pixel
    the image just moved onto (inside a bright region's border), an OFF event just outside it. The
    result is an edge-enhanced grey image, positive on the bright side of edges.
    """
    offsets = [(int(r), int(c)) for r, c in path]
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[1] != 2:
        raise DataError(f"expected frames [T, 2, H, W], got shape {tuple(frames.shape)}")
    if frames.shape[0] > len(offsets) - 1:
        raise DataError(f"{frames.shape[0]} frames but the path has only {len(offsets) - 1} moves")
    _, _, h, w = frames.shape
    out = np.zeros((h, w), dtype=np.float32)
    for t in range(frames.shape[0]):
        r, c = offsets[t + 1]
        out[: h - r, : w - c] += frames[t, 0, r:, c:] - frames[t, 1, r:, c:]  # out[y, x] += signed[y + r, x + c]
    return out


#: :func:`edge_integral_image`: the grey level of a zero edge integral, and its step per unit of ON - OFF
#: (the integral of 8 binary steps lies in -8..8, so 8..248: nothing is clipped).
EDGE_GREY_ZERO, EDGE_GREY_STEP = 128, 15


def edge_integral_image(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """The edge integral of dense frames ``[T, 2, H, W]`` as an 8-bit grey image ``[H, W]``:
    ``EDGE_GREY_ZERO + EDGE_GREY_STEP * reconstruct_edge_integral(frames)``, rounded and clipped to
    0..255 (a fixed scale, so images stay comparable; what ``spikebridge convert edge-integral``
    writes for the self-pretrained ANN of arXiv:2203.01158)."""
    integral = reconstruct_edge_integral(frames)
    return np.clip(np.rint(EDGE_GREY_ZERO + EDGE_GREY_STEP * integral), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# ES-MNIST: the embedded event default
# ----------------------------------------------------------------------------------------------

def es_mnist_frames(
    images: np.ndarray | torch.Tensor,
    *,
    config: ESMNISTConfig = ESMNISTConfig(),
    batch_size: int = 1024,
) -> torch.Tensor:
    """ODG of 28x28 digits, vectorised over the batch: uint8 ``[N, 8, 2, 28, 28]`` (0/1).

    ``images``: uint8 ``[N, 28, 28]`` (or ``[N, 1, 28, 28]``). Equal, digit by digit, to
    ``events_to_dense(odg(img, size=28, window=(0, 29), min_events=0), canvas=32, crop=(1, 29),
    size=28)`` with :class:`ESMNISTConfig`'s defaults. No digit is dropped.
    """
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise DataError(f"es_mnist_frames expects images [N, H, W], got shape {tuple(arr.shape)}")
    if arr.dtype != np.uint8:
        raise DataError(f"es_mnist_frames expects uint8 images, got {arr.dtype}")
    n, h, w = arr.shape
    cfg = config
    if max(h, w) != cfg.size:
        raise DataError(f"es_mnist_frames: images are {h}x{w} but the config's size is {cfg.size}")
    c0, c1 = cfg.crop
    offsets = tuple((int(r), int(c)) for r, c in cfg.path)
    n_steps = len(offsets) - 1
    _check_params(cfg.size, offsets, cfg.window, cfg.threshold)
    out = torch.zeros((n, n_steps, 2, c1 - c0, c1 - c0), dtype=torch.uint8)
    for start in range(0, n, batch_size):
        chunk = arr[start:start + batch_size].astype(np.float32) / np.float32(255.0)
        on, off, lo = _region_masks(chunk, cfg.threshold, cfg.window, offsets, cfg.size + 4)
        # the window region, shifted by the centring offset, on a grid large enough to hold it
        r0, q0, k = (cfg.size - h) // 2 + lo, (cfg.size - w) // 2 + lo, on.shape[-1]
        grid = (max(cfg.canvas, r0 + k), max(cfg.canvas, q0 + k))
        dense = np.zeros((len(chunk), n_steps, 2, *grid), dtype=np.uint8)
        dense[:, :, 0, r0:r0 + k, q0:q0 + k] = on
        dense[:, :, 1, r0:r0 + k, q0:q0 + k] = off
        dense = dense[:, :, :, :cfg.canvas, :cfg.canvas]  # events outside the canvas are dropped
        out[start:start + len(chunk)] = torch.from_numpy(dense[:, :, :, c0:c1, c0:c1])
    return out


def _images_digest(images: np.ndarray, labels: np.ndarray, config: ESMNISTConfig) -> str:
    h = hashlib.sha1()
    h.update(repr(config).encode())
    h.update(repr((images.shape, str(images.dtype))).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    return h.hexdigest()


def cached_es_mnist(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    cache_path: str | Path,
    *,
    config: ESMNISTConfig = ESMNISTConfig(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """ES-MNIST frames of ``images`` with an ``.npz`` cache at ``cache_path``.

    Returns ``(frames uint8 [N, 8, 2, 28, 28], labels int64 [N])``. The cache holds the frames
    bit-packed along the last axis, the labels and a digest of (images, labels, config); it is
    rebuilt (and rewritten atomically) when missing, unreadable, of the wrong shape/dtype, or made
    from other images or parameters.
    """
    imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    labs = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if imgs.ndim == 4 and imgs.shape[1] == 1:
        imgs = imgs[:, 0]
    if len(imgs) != len(labs):
        raise DataError(f"cached_es_mnist: {len(imgs)} images but {len(labs)} labels")
    labs = labs.astype(np.int64)
    digest = _images_digest(imgs, labs, config)
    n_steps, side = len(config.path) - 1, config.crop[1] - config.crop[0]
    expected = (len(imgs), n_steps, 2, side, side)
    cache_path = Path(cache_path)

    cached = _load_es_mnist_cache(cache_path, digest, expected)
    if cached is not None:
        return cached, torch.from_numpy(labs)

    frames = es_mnist_frames(imgs, config=config)
    packed = np.packbits(frames.numpy(), axis=-1)
    try:
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, frames_packed=packed, labels=labs, digest=np.array(digest),
                                    shape=np.array(expected, dtype=np.int64))
    except (OSError, SpikebridgeError) as exc:  # a read-only home: the run goes on (the cache only saves time)
        print(f"spikebridge: warning: the ES-MNIST events are not cached ({first_line(exc)[:160]}); set "
              "SPIKEBRIDGE_CACHE to a writable folder to reuse them", file=sys.stderr)
    return frames, torch.from_numpy(labs)


def _load_es_mnist_cache(path: Path, digest: str, expected: tuple[int, ...]) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from .events import load_npz_arrays

    packed_bytes = int(np.prod(expected[:-1])) * ((expected[-1] + 7) // 8)
    try:
        stored, shape, packed = load_npz_arrays(path, ("digest", "shape", "frames_packed"),
                                                max_bytes=max(packed_bytes, 4096))
        if str(stored) != digest or tuple(shape.tolist()) != expected:
            return None
        if packed.dtype != np.uint8 or packed.shape[:-1] != expected[:-1]:
            return None
        frames = np.unpackbits(packed, axis=-1, count=expected[-1])
    except Exception:  # a corrupt, foreign or oversized cache is rebuilt, never trusted
        return None
    if frames.shape != expected:
        return None
    return torch.from_numpy(np.ascontiguousarray(frames))
