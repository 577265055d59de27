"""The library's error surface: every error a user can cause is a ``SpikebridgeError``.

The CLI prints these as one line and exits with status 2; anything else is an internal error
(exit 1, traceback only under ``--debug``).
"""


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
