"""The library's error surface: every error a user can cause is a ``SpikebridgeError``.

The CLI prints these as one line and exits with status 2; anything else is an internal error
(exit 1, traceback only under ``--debug``).
"""
import reprlib


class SpikebridgeError(Exception):
    """Base class of every error caused by the user's input (files, configs, arguments)."""


class ConfigError(SpikebridgeError, ValueError):
    """A configuration value, YAML key or command-line flag is invalid."""


class DataError(SpikebridgeError):
    """A dataset, image, event file or label file is missing, unreadable or inconsistent."""


class CheckpointError(SpikebridgeError):
    """A checkpoint is missing, corrupt, or belongs to another architecture / class count."""


class TransferError(SpikebridgeError):
    """The ANN's parameters do not fit the SNN (nothing or too little matches)."""


class TrainingError(SpikebridgeError):
    """Training cannot go on (NaN/Inf loss, disk full, permission denied)."""


class OutputError(SpikebridgeError, OSError):
    """An output file or folder cannot be written: disk full, permission denied, a read-only file
    system, or a file standing where a folder is needed. Also an ``OSError`` (``errno`` is kept)."""


def clip(text: str, limit: int = 200) -> str:
    """A path or spec for a message, at most ``limit`` characters: a long one keeps its start (where
    it is) and its end (the file name), with ``...`` between."""
    text = str(text)
    head = limit // 3
    return text if len(text) <= limit else text[:head] + "..." + text[-(limit - head - 3):]


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none (for one-line errors)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def short_repr(value: object, limit: int = 100) -> str:
    """``repr(value)`` cut to ``limit`` characters, built in bounded time and memory: error messages
    quote user values with it, so a huge (or alias-bombed) value never becomes a huge message."""
    text = _SHORTENER.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Shortener(reprlib.Repr):
    """A ``reprlib.Repr`` that looks at no more than a few items per level and three levels."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = self.maxlong = 100
        for name in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
            setattr(self, name, 8)

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 13000:  # over ~4000 digits: Python refuses to convert it (and it is quadratic)
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


_SHORTENER = _Shortener()
