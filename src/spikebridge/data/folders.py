"""Image folders in the ImageNet layout, ``root/<class name>/<any sub-folders>/<image>.<ext>``
(torchvision's ``ImageFolder``: class index = position in the sorted class folder names, samples
in torchvision's order), decoded with PIL.

Deliberate differences from torchvision: hidden folders (``.ipynb_checkpoints``) are not classes,
the walk never loops through symlinks (:func:`walk_folder`), and decoding is bounded
(:func:`open_image`). A root holding ``train/`` + ``val/`` splits: :func:`split_layout`.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from PIL import Image
from torch.utils.data import Dataset

from spikebridge.data.transforms import GREY_MODES
from spikebridge.errors import ConfigError, DataError

__all__ = [
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "ImageFolderInfo",
    "SplitLayout",
    "find_classes",
    "hidden_folder",
    "loose_images",
    "refuse_loose_images",
    "scan_image_folder",
    "load_image",
    "open_image",
    "walk_folder",
    "inspect_image_folder",
    "find_split",
    "split_layout",
]

IMG_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""File extensions read as images (compared case-insensitively), torchvision's list."""

MAX_IMAGE_PIXELS = 50_000_000
"""Images with more pixels (width x height) are refused before decoding: 150 MB as RGB, e.g. an
8660 x 5770 photograph; far beyond any training resolution. A 13000 x 13000 PNG of a few hundred
KB would otherwise take 1.6 GB to decode."""

# Exceptions PIL raises for missing, unreadable, unknown, truncated or corrupt files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, Image.DecompressionBombError, MemoryError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _normalise_extensions(extensions: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions if e)
    if not exts:
        raise ConfigError("extensions must name at least one file extension, e.g. ('.jpg', '.png')")
    return exts


def _check_root(root: str | os.PathLike[str]) -> str:
    path = os.fspath(root)
    if not os.path.exists(path):
        raise DataError(f"image folder {path} does not exist")
    if not os.path.isdir(path):
        raise DataError(f"image folder {path} is not a directory")
    return path


def _warn(message: str) -> None:
    print(f"spikebridge: warning: {message}", file=sys.stderr)


def walk_folder(top: str | os.PathLike[str], *, skip_hidden: bool = True) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` of ``top`` and every folder below it, top-down, sorted by name.

    Symlinked folders are followed, but each folder is entered at most once (by ``(st_dev,
    st_ino)``), and a link to a folder the walk is inside of (``link -> .``, ``link -> ..``,
    ``link -> /``) is a loop and not followed. Skipped links are reported in one warning line on
    stderr. ``skip_hidden``: leave out folders whose names start with ``.``. Unreadable folders
    raise :class:`DataError`.
    """
    top = os.fspath(top)
    skipped: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [(top, os.path.realpath(top))]  # (path, its real path); an explicit stack: no recursion limit
    while stack:
        path, real = stack.pop()
        try:
            st = os.stat(path)
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot list folder {path}: {_one_line(exc)}") from None
        seen.add((st.st_dev, st.st_ino))
        files, subdirs = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(entry.name)
            elif not (skip_hidden and hidden_folder(entry.name)):
                subdirs.append(entry)
        yield path, files
        children = []
        for entry in subdirs:
            try:
                sub_st = entry.stat()
                target = os.readlink(entry.path) if entry.is_symlink() else None
            except OSError as exc:
                raise DataError(f"cannot read folder {entry.path}: {_one_line(exc)}") from None
            sub_real = os.path.realpath(entry.path) if target is not None else os.path.join(real, entry.name)
            loop = real == sub_real or real.startswith(sub_real.rstrip(os.sep) + os.sep)
            if loop or (sub_st.st_dev, sub_st.st_ino) in seen:
                skipped.append(f"{entry.path} -> {target if target is not None else sub_real}")
            else:
                seen.add((sub_st.st_dev, sub_st.st_ino))  # two links to one folder: the first is read
                children.append((entry.path, sub_real))
        stack.extend(reversed(children))
    if skipped:
        _warn(f"skipped {len(skipped)} symlinked folder(s) that loop or repeat a folder already read, "
              f"e.g. {skipped[0][:200]}")


def hidden_folder(name: str) -> bool:
    """A folder no dataset holds data in: hidden (``.git``, ``.ipynb_checkpoints``) or the
    ``__MACOSX`` folder of AppleDouble files that zips made on macOS carry."""
    return name.startswith(".") or name == "__MACOSX"


def loose_images(entries: Iterable[os.DirEntry]) -> list[str]:
    """The sorted names of the visible image files among a folder's ``entries`` (``os.scandir``)."""
    return sorted(e.name for e in entries if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)
                  and not e.name.startswith("."))


def refuse_loose_images(path: str | os.PathLike[str], loose: list[str]) -> None:
    """DataError where a folder of class folders also holds images (:func:`loose_images`): training
    and ``convert`` would leave them out without a word."""
    if loose:
        raise DataError(f"image folder {path} holds {len(loose)} loose image(s) beside its class folders (e.g. "
                        f"{loose[0][:60]}): move each into its class's sub-folder")


def find_classes(root: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
    """Class folders of ``root``: sorted non-hidden sub-folder names and ``{name: index}``.

    Raises:
        DataError: ``root`` is missing, not a folder, or has no class sub-folders (the message
            says whether it holds loose images or looks like a ``train/``/``val/`` split root).
    """
    path = _check_root(root)
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError as exc:
        raise DataError(f"cannot list image folder {path}: {_one_line(exc)}") from None
    classes = sorted(e.name for e in entries if e.is_dir() and not hidden_folder(e.name))
    loose = loose_images(entries)
    if not classes:
        hint = f" (it holds {len(loose)} loose images: put each class in its own sub-folder)" if loose else ""
        raise DataError(f"image folder {path} has no class sub-folders; expected root/<class>/<image>{hint}")
    refuse_loose_images(path, loose)
    layout = split_layout(path)
    if layout is not None:
        raise DataError(
            f"image folder {path} holds dataset splits ({', '.join(classes)}), not classes; "
            f"pass {layout.train} (training) or the validation folder instead"
        )
    return classes, {name: i for i, name in enumerate(classes)}


def scan_image_folder(
    root: str | os.PathLike[str],
    class_to_idx: dict[str, int] | None = None,
    extensions: Sequence[str] | str = IMG_EXTENSIONS,
    allow_empty: bool = False,
) -> list[tuple[str, int]]:
    """List ``(path, class_index)`` of every image under ``root/<class>/`` in torchvision's order.

    Files whose extension is not in ``extensions`` (case-insensitive) are skipped, so are hidden
    files. ``class_to_idx=None`` uses :func:`find_classes`.

    Raises:
        DataError: a class folder holds no image (unless ``allow_empty``), or none at all do.
    """
    path = _check_root(root)
    if class_to_idx is None:
        _, class_to_idx = find_classes(path)
    exts = _normalise_extensions(extensions)
    samples: list[tuple[str, int]] = []
    for name in sorted(class_to_idx, key=lambda c: class_to_idx[c]):
        idx = class_to_idx[name]
        class_dir = os.path.join(path, name)
        if not os.path.isdir(class_dir):
            raise DataError(f"class folder {class_dir} does not exist")
        count = 0
        for dirpath, filenames in sorted(walk_folder(class_dir)):
            for fname in sorted(filenames):
                if fname.startswith(".") or not fname.lower().endswith(exts):
                    continue
                samples.append((os.path.join(dirpath, fname), idx))
                count += 1
        if count == 0 and not allow_empty:
            raise DataError(f"class folder {class_dir} holds no images with extensions {' '.join(exts)}")
    if not samples:
        raise DataError(f"image folder {path} holds no images with extensions {' '.join(exts)}")
    return samples


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str], *, need: int = 0,
               mode: str = "RGB") -> Iterator[Image.Image]:
    """``Image.open(path)`` with bounded decoding, as a context manager.

    An image of more than :data:`MAX_IMAGE_PIXELS` pixels is refused from its header (for a JPEG:
    after ``Image.draft``, i.e. at the size it would actually be decoded at). ``need``: the
    shorter side the caller will resize to; a JPEG at least twice that size is decoded at 1/2,
    1/4 or 1/8 scale, keeping both sides >= ``need`` (``Image.draft``; 0 = full size). PIL's
    decompression-bomb error, and every decoding failure inside the ``with`` block, become a
    one-line :class:`DataError` naming the file (picklable, so it crosses DataLoader workers).
    PIL's own decompression-bomb warning is silenced here: the pixel bound above decides.
    """
    p = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel check below decides
            with Image.open(p) as img:
                if need > 0 and img.format == "JPEG":
                    img.draft(mode, (need, need))
                width, height = img.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(f"image {p} is {width}x{height} pixels, more than the {MAX_IMAGE_PIXELS} "
                                    "spikebridge decodes (spikebridge.data.folders.MAX_IMAGE_PIXELS); shrink it")
                yield img
    except Image.UnidentifiedImageError:
        raise DataError(f"cannot decode image {p}: not a recognised image format (corrupt or not an image)") from None
    except Image.DecompressionBombError as exc:  # PIL's own limit, twice Image.MAX_IMAGE_PIXELS
        raise DataError(f"image {p} has more pixels than the {MAX_IMAGE_PIXELS} spikebridge decodes "
                        f"({_one_line(exc)[:160]})") from None
    except _DECODE_ERRORS as exc:
        raise DataError(f"cannot decode image {p}: {_one_line(exc)}") from None


def load_image(path: str | os.PathLike[str], mode: str = "RGB", *, need: int = 0) -> Image.Image:
    """Decode ``path`` with :func:`open_image` (bounded; ``need`` as there) and convert it to
    ``mode`` (``"RGB"`` or ``"L"``). Raises :class:`DataError` (one line naming the file) for a
    missing, unreadable, too large, truncated or corrupt file, or one that is not an image."""
    with open_image(path, need=need, mode=mode) as img:
        out = _eight_bit(img).convert(mode)
        out.load()
    return out


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (PNG / TIFF ``I;16*``, ``I``) as 8-bit grey scaled by 1/257, float
    grey (``F``) in [0, 1] by 255: PIL's own ``convert`` clips them at 255 (a white image)."""
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    import numpy as np

    values = np.asarray(img.convert("F") if img.mode != "F" else img, dtype=np.float64)
    scale = 255.0 if img.mode == "F" else 1 / 257
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), mode="L")


class ImageFolderDataset(Dataset):
    """Images in ``root/<class>/...``, returned as ``(transform(image), class_index)``.

    Args:
        root: the folder holding one sub-folder per class.
        transform: applied to the decoded PIL image; ``None`` returns the PIL image itself
            (as torchvision does), e.g. to pick transforms later.
        extensions: file extensions read as images (case-insensitive); other files are ignored.
        mode: PIL mode images are converted to: ``"RGB"`` (default) or ``"L"`` (grey).
        allow_empty: accept class folders without images instead of raising.

    Attributes:
        classes: sorted class folder names; ``class_to_idx``: ``{name: index}``;
        samples (alias ``imgs``): list of ``(path, class_index)``; targets: the class indices.

    Raises:
        DataError: missing/empty root, no class folders, a class folder without images, and
            (from ``__getitem__``) an unreadable or corrupt image, naming the file.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        transform: Callable[[Image.Image], Any] | None = None,
        extensions: Sequence[str] | str = IMG_EXTENSIONS,
        mode: str = "RGB",
        allow_empty: bool = False,
    ) -> None:
        if mode not in ("RGB", "L"):
            raise ConfigError(f"ImageFolderDataset mode must be 'RGB' or 'L', got {mode!r}")
        self.root = os.fspath(root)
        self.transform = transform
        self.extensions = _normalise_extensions(extensions)
        self.mode = mode
        self.classes, self.class_to_idx = find_classes(self.root)
        self.samples: list[tuple[str, int]] = scan_image_folder(
            self.root, self.class_to_idx, self.extensions, allow_empty
        )
        self.imgs = self.samples
        self.targets: list[int] = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        img: Any = load_image(path, self.mode)
        return (img if self.transform is None else self.transform(img)), target

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={self.root!r}, classes={len(self.classes)}, "
            f"images={len(self.samples)}, mode={self.mode!r})"
        )


@dataclass(frozen=True)
class ImageFolderInfo:
    """Summary of an image folder, for choosing default models and input sizes.

    Attributes:
        num_classes: number of class folders.
        typical_height, typical_width: median (lower) image size in pixels over the inspected
            files.
        channels: 1 when every inspected image is grey (grey PIL mode or a grey palette), else 3.
        num_images: number of image files found (all of them, not only the inspected ones).
        unreadable: inspected files whose header PIL could not read.
    """

    num_classes: int
    typical_height: int
    typical_width: int
    channels: int
    num_images: int
    unreadable: tuple[str, ...] = field(default=())


def _is_grey(img: Image.Image) -> bool:
    if img.mode in GREY_MODES:
        return True
    if img.mode == "P":
        pal = img.getpalette() or []
        return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
    return False


def inspect_image_folder(
    root: str | os.PathLike[str],
    max_files: int = 32,
    extensions: Sequence[str] | str = IMG_EXTENSIONS,
) -> ImageFolderInfo:
    """Inspect up to ``max_files`` images (spread evenly over the sorted sample list) by their
    headers only (no pixel decoding).

    ``root`` may also be a split root (see :func:`split_layout`): its training split is inspected.

    Raises:
        DataError: as :class:`ImageFolderDataset`, or when no inspected file can be read.
    """
    if max_files < 1:
        raise ConfigError(f"max_files must be >= 1, got {max_files}")
    path = _check_root(root)
    layout = split_layout(path)
    if layout is not None:
        path = layout.train
    classes, class_to_idx = find_classes(path)
    samples = scan_image_folder(path, class_to_idx, extensions)
    n = len(samples)
    if n <= max_files:
        picks = list(range(n))
    elif max_files == 1:
        picks = [0]
    else:
        picks = sorted({round(k * (n - 1) / (max_files - 1)) for k in range(max_files)})
    heights: list[int] = []
    widths: list[int] = []
    grey = True
    unreadable: list[str] = []
    for k in picks:
        file = samples[k][0]
        try:
            with open_image(file) as img:
                heights.append(img.height)
                widths.append(img.width)
                grey = grey and _is_grey(img)
        except DataError:
            unreadable.append(file)
    if not heights:
        raise DataError(f"none of the {len(picks)} inspected images under {path} could be read, e.g. {unreadable[0]}")
    return ImageFolderInfo(
        num_classes=len(classes),
        typical_height=int(statistics.median_low(heights)),
        typical_width=int(statistics.median_low(widths)),
        channels=1 if grey else 3,
        num_images=n,
        unreadable=tuple(unreadable),
    )


@dataclass(frozen=True)
class SplitLayout:
    """A dataset root with split folders.

    Attributes:
        root: the dataset root.
        train: ``root/train``.
        val: the validation split: ``root/val``, else ``root/validation``, ``root/valid``,
            else ``root/test``; ``None`` when there is none.
        test: ``root/test`` when it exists (it may equal ``val``).
    """

    root: str
    train: str
    val: str | None
    test: str | None


#: Split folder names, compared case-insensitively (Tonic extracts ``Train/`` and ``Test/``).
TRAIN_SPLIT_NAMES = ("train",)
VAL_SPLIT_NAMES = ("val", "validation", "valid", "test")


def find_split(root: str | os.PathLike[str], names: Sequence[str]) -> str | None:
    """The sub-folder of ``root`` whose name matches one of ``names`` case-insensitively (the
    earlier name wins; an exact-case match first among folders of one name), or ``None``."""
    try:
        dirs = sorted(e.name for e in os.scandir(root) if e.is_dir() and not hidden_folder(e.name))
    except OSError:
        return None
    for name in names:
        matches = [d for d in dirs if d.lower() == name]
        if matches:
            return os.path.join(os.fspath(root), name if name in matches else matches[0])
    return None


def split_layout(path: str | os.PathLike[str]) -> SplitLayout | None:
    """Recognise ``path/train`` + ``path/val`` (or ``validation``/``valid``/``test``) split
    folders, or a lone ``path/train``; names match case-insensitively (``Train/``, ``Test/``).
    Returns ``None`` for anything else (e.g. a class root)."""
    root = os.fspath(path)
    train = find_split(root, TRAIN_SPLIT_NAMES)
    if train is None:
        return None
    val = find_split(root, VAL_SPLIT_NAMES)
    if val is None:
        try:
            others = [e.name for e in os.scandir(root) if e.is_dir() and not hidden_folder(e.name)]
        except OSError:
            return None
        if others != [os.path.basename(train)]:
            return None
    test = find_split(root, ("test",))
    return SplitLayout(root=root, train=train, val=val, test=test)
