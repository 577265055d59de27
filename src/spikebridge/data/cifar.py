"""CIFAR-10 / CIFAR-100 from the official "python version" pickle batches.

Folder layouts (as extracted from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Each batch is a pickled dict (Python 2 strings, read with ``encoding="bytes"`` so keys are
bytes): ``b"data"`` uint8 ``[N, 3072]`` (1024 red, then green, then blue values of a 32x32 image,
row-major), ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100)
lists of ints. Meta files hold ``b"label_names"`` / ``b"fine_label_names"``.

The pickles are read with a restricted unpickler that can only build dicts, lists, strings,
numbers and numpy arrays/dtypes; any other global in the file is refused with a DataError, so a
tampered file cannot run code.
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from spikebridge.errors import ConfigError, DataError

__all__ = [
    "CifarDataset",
    "CifarLocation",
    "locate_cifar",
    "load_cifar_pickle",
]

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = "test_batch"


def _numpy_global(module: str, name: str) -> Any:
    """numpy's private ``module.name``: under ``numpy._core`` (numpy >= 2), else ``numpy.core``."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:  # pragma: no cover - numpy 1.x
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _codecs_encode(obj: Any, encoding: str = "utf-8") -> bytes:
    """Safe stand-in for ``_codecs.encode``, which Python 3 protocol-2 pickles use for bytes."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode(encoding)


def _plain_dtype(dtype: Any) -> np.dtype:
    """``dtype`` if it is a plain numeric / byte / string dtype (no objects, fields, sub-arrays)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise pickle.UnpicklingError(f"refused dtype {dtype!r}: CIFAR files hold plain arrays")
    return dtype


def _safe_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype(obj, align, copy)`` for plain dtypes only."""
    if not isinstance(obj, (str, bytes)):
        raise pickle.UnpicklingError(f"refused dtype({type(obj).__name__})")
    try:
        dtype = np.dtype(obj.decode("latin1") if isinstance(obj, bytes) else obj, bool(align), bool(copy))
    except (TypeError, ValueError, SyntaxError) as exc:
        raise pickle.UnpicklingError(f"bad dtype {obj!r}: {exc}") from None
    return _plain_dtype(dtype)


def _safe_reconstruct(subtype: Any, shape: Any, code: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` for plain ``ndarray`` s only (protocol-2 array pickles)."""
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"refused _reconstruct of {subtype!r}")
    return _numpy_global("multiarray", "_reconstruct")(np.ndarray, (0,), b"b")


def _checked_build_state(instance: Any, state: Any) -> None:
    """Allow BUILD (``__setstate__``) only with the state tuples numpy itself writes for plain
    dtypes and arrays. numpy trusts these: a damaged dtype state such as ``(3, '|', None, -1, -1,
    0)`` crashed the interpreter (segmentation fault; found by tests/test_fuzz.py)."""
    ints = lambda values: all(isinstance(v, int) and not isinstance(v, bool) for v in values)  # noqa: E731
    if isinstance(instance, np.dtype):
        ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
              and state[1] in ("<", ">", "|", "=", b"<", b">", b"|", b"=") and state[2] is None and state[3] is None and state[4] is None
              and ints(state[5:8]) and state[5] in (-1, instance.itemsize) and state[6] in (-1, instance.alignment)
              and state[7] == 0 and (len(state) == 8 or state[8] is None))
    elif isinstance(instance, np.ndarray):
        ok = (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[1], tuple)
              and ints(state[1]) and all(v >= 0 for v in state[1]) and isinstance(state[2], np.dtype)
              and isinstance(state[3], (bool, int)) and isinstance(state[4], (bytes, str)))
        if ok:
            _plain_dtype(state[2])
    else:
        ok = False
    if not ok:
        raise pickle.UnpicklingError(f"refused state {state!r:.80} for {type(instance).__name__}")


# (module, name) -> factory of the object; numpy names under both their 1.x and 2.x modules.
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _safe_dtype,
    ("_codecs", "encode"): lambda: _codecs_encode,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = lambda: _safe_reconstruct
    _ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = lambda: _numpy_global("multiarray", "scalar")
    _ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = lambda: _numpy_global("numeric", "_frombuffer")


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Unpickler that resolves only the numpy array/dtype constructors (and a safe
    ``_codecs.encode``); everything else raises ``UnpicklingError``.

    Built on the pure-Python unpickler (its memo is a dict): the C unpickler grows an array to
    the memo index a file names, so a damaged file with ``LONG_BINPUT 1260915569`` made it
    allocate and clear gigabytes for seconds (found by tests/test_fuzz.py). A 30 MB batch still
    loads in under a second.
    """

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return factory()

    def _load_build_checked(self) -> None:
        _checked_build_state(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    dispatch[pickle.BUILD[0]] = _load_build_checked


def load_cifar_pickle(path: str | os.PathLike[str]) -> dict[bytes, Any]:
    """Read one CIFAR pickle file safely; string keys are returned as bytes (``b"data"``).

    Raises:
        DataError: missing, unreadable, truncated or corrupt file, a forbidden global, or a
            top-level object that is not a dict (one line naming the file).
    """
    p = os.fspath(path)
    try:
        f = open(p, "rb")
    except OSError as exc:
        raise DataError(f"cannot read CIFAR file {p}: {type(exc).__name__}: {exc.strerror or exc}") from None
    try:
        with f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # any failure while reading a pickle is a data problem
        text = " ".join(str(exc).split()) or ("the file ends early" if isinstance(exc, EOFError) else "")
        raise DataError(f"corrupt or truncated CIFAR file {p}: {type(exc).__name__}" + (f": {text}" if text else "")) from None
    if not isinstance(obj, dict):
        raise DataError(f"CIFAR file {p} holds a {type(obj).__name__}, expected a dict of arrays")
    return {(k.encode("latin1") if isinstance(k, str) else k): v for k, v in obj.items()}


def _field(d: dict[bytes, Any], key: bytes, path: str) -> Any:
    if key not in d:
        found = ", ".join(sorted(k.decode("latin1", "replace") for k in d if isinstance(k, bytes)))
        raise DataError(f"CIFAR file {path} has no field {key.decode()!r} (fields: {found})")
    return d[key]


def _images(d: dict[bytes, Any], path: str) -> np.ndarray:
    data = _field(d, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR file {path} field 'data' must be uint8 [N, 3072], got {desc}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # -> [N, 32, 32, 3]


def _labels(d: dict[bytes, Any], key: bytes, path: str, n: int, num_classes: int) -> np.ndarray:
    raw = _field(d, key, path)
    try:
        labels = np.asarray(raw, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise DataError(f"CIFAR file {path} field {key.decode()!r} is not a list of integers") from None
    if labels.shape[0] != n:
        raise DataError(f"CIFAR file {path} field {key.decode()!r} has {labels.shape[0]} labels for {n} images")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise DataError(f"CIFAR file {path} field {key.decode()!r} has label {bad}, outside [0, {num_classes})")
    return labels


@dataclass(frozen=True)
class CifarLocation:
    """Where a CIFAR copy lives: ``folder`` holding the batch files, and ``variant``
    (``"cifar10"`` or ``"cifar100"``)."""

    folder: str
    variant: str


def _variant_of(folder: str) -> str | None:
    if os.path.isfile(os.path.join(folder, "data_batch_1")) or os.path.isfile(os.path.join(folder, _CIFAR10_TEST)):
        return "cifar10"
    if os.path.isfile(os.path.join(folder, "train")) or (
        os.path.isfile(os.path.join(folder, "test")) and os.path.isfile(os.path.join(folder, "meta"))
    ):
        return "cifar100"
    return None


def locate_cifar(root: str | os.PathLike[str], variant: str = "auto") -> CifarLocation:
    """Find the CIFAR batch folder: ``root`` itself (``cifar-10-batches-py`` /
    ``cifar-100-python``) or that folder inside ``root``.

    Args:
        root: the batch folder or its parent.
        variant: ``"cifar10"``, ``"cifar100"`` or ``"auto"`` (whichever is there; an error if
            both are).

    Raises:
        DataError: nothing found (mentions an unextracted ``.tar.gz``), or ``auto`` is ambiguous.
    """
    if variant not in ("auto", "cifar10", "cifar100"):
        raise ConfigError(f"CIFAR variant must be 'auto', 'cifar10' or 'cifar100', got {variant!r}")
    path = os.fspath(root)
    if not os.path.isdir(path):
        raise DataError(f"CIFAR folder {path} does not exist or is not a directory")
    found: list[CifarLocation] = []
    for folder in (path, os.path.join(path, _CIFAR10_DIR), os.path.join(path, _CIFAR100_DIR)):
        if os.path.isdir(folder):
            v = _variant_of(folder)
            if v is not None and (variant == "auto" or v == variant):
                found.append(CifarLocation(folder=folder, variant=v))
    if not found:
        archives = [n for n in ("cifar-10-python.tar.gz", "cifar-100-python.tar.gz") if os.path.isfile(os.path.join(path, n))]
        hint = f"; extract {archives[0]} first (tar xzf)" if archives else ""
        want = {"auto": "CIFAR-10 or CIFAR-100", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[variant]
        raise DataError(
            f"no {want} python batches in {path}: expected {_CIFAR10_DIR}/data_batch_1.. or "
            f"{_CIFAR100_DIR}/train (or the folder itself){hint}"
        )
    if len({f.variant for f in found}) > 1:
        raise DataError(f"{path} holds both CIFAR-10 and CIFAR-100; pass variant='cifar10' or 'cifar100'")
    return found[0]


#: variant -> (classes, a batch file's name, label key, train files, test files, (meta file, names key))
_VARIANTS = {
    "cifar10": (10, "CIFAR-10 batch", b"labels", _CIFAR10_TRAIN, (_CIFAR10_TEST,),
                ("batches.meta", b"label_names")),
    "cifar100": (100, "CIFAR-100 file", b"fine_labels", ("train",), ("test",), ("meta", b"fine_label_names")),
}


def _read_meta_names(path: str, key: bytes) -> list[str] | None:
    if not os.path.isfile(path):
        return None
    meta = load_cifar_pickle(path)
    names = meta.get(key)
    if not isinstance(names, list):
        return None
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


class CifarDataset(Dataset):
    """CIFAR-10 or CIFAR-100 held in memory, returning ``(image, label)``.

    Args:
        root: the batch folder (``cifar-10-batches-py`` / ``cifar-100-python``) or its parent.
        train: the 50,000-image training set (``True``) or the 10,000-image test set.
        transform: applied to a PIL RGB image of 32x32 pixels; ``None`` returns a float tensor
            ``[3, 32, 32]`` in ``[0, 1]``.
        variant: ``"auto"``, ``"cifar10"`` or ``"cifar100"`` (see :func:`locate_cifar`).

    Attributes:
        data: uint8 numpy ``[N, 32, 32, 3]`` (HWC, RGB).
        targets: list of N int labels (CIFAR-100: the 100 fine labels).
        coarse_targets: CIFAR-100's 20 super-class labels, ``None`` for CIFAR-10.
        classes: class names from the meta file (``str(index)`` when it is missing).
        num_classes: 10 or 100. variant: ``"cifar10"``/``"cifar100"``. folder: the batch folder.

    Raises:
        DataError: missing folder/batch, corrupt or truncated pickle, wrong field shapes or
            label values, each naming the file and field.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        transform: Callable[[Image.Image], Any] | None = None,
        variant: str = "auto",
    ) -> None:
        loc = locate_cifar(root, variant)
        self.folder = loc.folder
        self.variant = loc.variant
        self.train = bool(train)
        self.transform = transform
        self.coarse_targets: list[int] | None = None
        self.num_classes, what, label_key, train_names, test_names, meta = _VARIANTS[self.variant]
        names = train_names if self.train else test_names
        images, labels = [], []
        for name in names:
            path = os.path.join(self.folder, name)
            if not os.path.isfile(path):
                raise DataError(f"{what} {path} is missing")
            d = load_cifar_pickle(path)
            images.append(_images(d, path))
            labels.append(_labels(d, label_key, path, images[-1].shape[0], self.num_classes))
            if self.variant == "cifar100" and b"coarse_labels" in d:
                self.coarse_targets = _labels(d, b"coarse_labels", path, images[-1].shape[0], 20).tolist()
        self.data: np.ndarray = np.ascontiguousarray(np.concatenate(images))
        self.targets: list[int] = np.concatenate(labels).tolist()
        classes = _read_meta_names(os.path.join(self.folder, meta[0]), meta[1])
        if classes is None or len(classes) != self.num_classes:
            classes = [str(i) for i in range(self.num_classes)]
        self.classes: list[str] = classes
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        arr = self.data[index]
        if self.transform is None:
            return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0), self.targets[index]
        return self.transform(Image.fromarray(arr)), self.targets[index]  # uint8 [32, 32, 3] -> RGB image

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"CifarDataset(folder={self.folder!r}, variant={self.variant!r}, split={split!r}, images={len(self)})"
