"""Rebuild models from what a user gives on the command line: a Python file + class name (their
own ANN), or a spikebridge checkpoint (whose metadata says how to rebuild its model).

* :func:`import_ann` imports ``FILE.py:ClassName`` by path and instantiates it (``kwargs`` from
  ``--ann-kwargs``), with one-line errors for a missing file, a missing class or constructor
  arguments it needs.
* :func:`load_ann_weights` loads a ``.pth`` / ``.safetensors`` / checkpoint state dict strictly.
* :func:`model_from_checkpoint` rebuilds a checkpoint's model (registry ANN/SNN, or a spikified
  user ANN) and loads its weights.

Checkpoint metadata of a spikified model (written by ``spikebridge finetune``, ``pipes`` and
``piped`` for ``--ann FILE.py:ClassName``; :func:`spikified_meta`)::

    {"model": {"name": "spikify", "ann": "/abs/path/file.py:ClassName", "ann_kwargs": {...},
               "num_classes": K, "in_channels": C, "T": T, "input_ndim": 4,
               "input_conv": "conv1"},
     "neuron": {...NeuronConfig fields...}, "data": "mnist5k"}

``input_conv`` (optional; pipeD on events): the ``nn.Conv2d`` reading the input was replaced by
one taking ``in_channels`` channels (:func:`spikebridge.spikify.adapt_input_conv`), so the model
is rebuilt with that conv swapped before its weights load.

The user's ANN itself, trained by ``pipes`` / ``piped`` (run ``ann``; :func:`ann_class_meta`)::

    {"model": {"name": "ann_class", "ann": "/abs/path/file.py:ClassName", "ann_kwargs": {...},
               "num_classes": K, "in_channels": C, "T": 1}, "neuron": null, "data": "mnist5k"}

Registry models store ``{"model": {"name", "num_classes", "in_channels", "T"}, "neuron": {...}}``
(:func:`spikebridge.pipelines.model_meta`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from .errors import CheckpointError, ConfigError
from .neurons import NeuronConfig

SPIKIFIED_MODEL_NAME = "spikify"
USER_ANN_MODEL_NAME = "ann_class"  # the user's own ANN class, not spiking


def is_python_class_spec(spec: str) -> bool:
    """``path/to/file.py:ClassName``?"""
    path, sep, name = str(spec).rpartition(":")
    return bool(sep) and path.endswith(".py") and name.isidentifier()


def parse_ann_kwargs(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--ann-kwargs must be a JSON object like '{{\"num_classes\": 10}}' ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--ann-kwargs must be a JSON object, got {text!r}")
    return value


def import_ann(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Import ``FILE.py:ClassName`` by path and build ``ClassName(**kwargs)``."""
    path_text, sep, class_name = str(spec).rpartition(":")
    if not sep or not path_text.endswith(".py"):
        raise ConfigError(f"--ann {spec!r}: expected FILE.py:ClassName or a checkpoint .json")
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"--ann: file not found: {path_text}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"spikebridge_user_ann_{digest}"
    source_spec = importlib.util.spec_from_file_location(module_name, path)
    if source_spec is None or source_spec.loader is None:
        raise ConfigError(f"--ann: cannot import {path_text}")
    module = importlib.util.module_from_spec(source_spec)
    sys.modules[module_name] = module
    # the user's file may import siblings: make its folder importable while it loads
    sys.path.insert(0, str(path.parent))
    try:
        source_spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ConfigError(f"--ann: {path_text} line {exc.lineno}: syntax error ({exc.msg})") from None
    except ImportError as exc:
        raise ConfigError(f"--ann: importing {path_text} failed: {exc}") from None
    finally:
        if sys.path and sys.path[0] == str(path.parent):
            sys.path.pop(0)
    cls = getattr(module, class_name, None)
    if cls is None:
        available = sorted(n for n, v in vars(module).items() if inspect.isclass(v) and issubclass(v, nn.Module) and v.__module__ == module_name)
        raise ConfigError(f"--ann: {path_text} has no class {class_name!r}; nn.Module classes there: {', '.join(available) or 'none'}")
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise ConfigError(f"--ann: {path_text}:{class_name} is not an nn.Module class")
    kwargs = dict(kwargs or {})
    try:
        signature = inspect.signature(cls)
        signature.bind(**kwargs)
    except TypeError as exc:
        required = [p.name for p in signature.parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ConfigError(
            f"--ann: {class_name}({', '.join(required)}) cannot be built with {kwargs or 'no arguments'} ({exc}); "
            f"pass its arguments as JSON: --ann-kwargs '{{\"{required[0] if required else 'name'}\": ...}}'"
        ) from None
    except ValueError:
        pass  # no signature available (builtins): just try
    return cls(**kwargs)


def load_ann_weights(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` (``.pth``/``.pt``/``.safetensors``/checkpoint) into ``model``, all keys required."""
    from .bridge import as_state_dict

    state = as_state_dict(Path(path))
    result_missing = [k for k in model.state_dict() if k not in state]
    unexpected = [k for k in state if k not in model.state_dict()]
    mismatched = [k for k, v in model.state_dict().items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if result_missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f"shape mismatch {k}: file {list(state[k].shape)} vs model {list(model.state_dict()[k].shape)}")
        if result_missing:
            parts.append(f"missing {', '.join(result_missing[:4])}{' ...' if len(result_missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:4])}{' ...' if len(unexpected) > 4 else ''}")
        raise CheckpointError(f"{path}: the weights do not fit {type(model).__name__} ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def absolute_class_spec(spec: str) -> str:
    """``file.py:ClassName`` with the file's absolute path (what checkpoint metadata stores)."""
    path, _sep, class_name = str(spec).rpartition(":")
    return f"{Path(path).expanduser().resolve()}:{class_name}"


def ann_class_meta(spec: str, kwargs: dict[str, Any] | None, *, num_classes: int, in_channels: int,
                   data: str) -> dict:
    """Checkpoint metadata of the user's ANN class ``spec`` (trained by pipes / piped)."""
    return {
        "model": {"name": USER_ANN_MODEL_NAME, "ann": absolute_class_spec(spec), "ann_kwargs": dict(kwargs or {}),
                  "num_classes": int(num_classes), "in_channels": int(in_channels), "T": 1},
        "neuron": None,
        "data": data,
    }


def spikified_meta(spec: str, kwargs: dict[str, Any] | None, neuron: NeuronConfig, *, num_classes: int,
                   in_channels: int, T: int, input_ndim: int, data: str, input_conv: str | None = None) -> dict:
    """Checkpoint metadata of ``spikify(ClassName(**kwargs))`` (see the module docstring)."""
    from dataclasses import asdict

    model = {
        "name": SPIKIFIED_MODEL_NAME, "ann": absolute_class_spec(spec), "ann_kwargs": dict(kwargs or {}),
        "num_classes": int(num_classes), "in_channels": int(in_channels), "T": int(T), "input_ndim": int(input_ndim),
    }
    if input_conv:
        model["input_conv"] = input_conv
    return {"model": model, "neuron": asdict(neuron), "data": data}


def neuron_from_meta(data: dict) -> NeuronConfig:
    known = {f.name for f in fields(NeuronConfig)}
    try:
        return NeuronConfig(**{k: v for k, v in (data or {}).items() if k in known})
    except (TypeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint neuron settings are invalid: {exc}") from None


def model_from_meta(meta: dict, *, T: int | None = None) -> nn.Module:
    """A fresh (untrained) model as the checkpoint metadata describes it; ``T`` overrides its T."""
    info = meta.get("model")
    if not isinstance(info, dict) or "name" not in info:
        raise CheckpointError("the checkpoint has no model description (meta.model.name); it was not written by spikebridge")
    neuron = neuron_from_meta(meta.get("neuron", {}))
    steps = int(T or info.get("T") or 1)
    if info["name"] == USER_ANN_MODEL_NAME:
        return import_ann(info["ann"], info.get("ann_kwargs") or {})
    if info["name"] == SPIKIFIED_MODEL_NAME:
        from .spikify import adapt_input_conv, spikify

        ann = import_ann(info["ann"], info.get("ann_kwargs") or {})
        snn = spikify(ann, neuron, T=steps, input_ndim=int(info.get("input_ndim", 4)))
        if info.get("input_conv"):
            swapped = adapt_input_conv(snn, int(info["in_channels"]), "skip")  # its weights load next
            if swapped != info["input_conv"]:
                raise CheckpointError(f"the checkpoint adapted the input conv {info['input_conv']!r}, "
                                      f"but {info['ann']} now reads its input with {swapped!r}")
        return snn
    from .models import create_model

    try:
        return create_model(
            info["name"], num_classes=int(info["num_classes"]), neuron=neuron, T=steps,
            in_channels=int(info["in_channels"]), **stored_model_options(info),
        )
    except ConfigError as exc:
        raise CheckpointError(f"cannot rebuild the checkpoint's model: {exc}") from None


def stored_model_options(spec: dict) -> dict[str, Any]:
    """A checkpoint's ``model.options`` (lists back to the tuples the constructors take)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (spec.get("options") or {}).items()}


def model_from_checkpoint(path: str | Path, *, T: int | None = None) -> tuple[nn.Module, dict, Any]:
    """Load checkpoint ``path`` and rebuild its model with the weights: ``(model, meta, ckpt)``."""
    from .train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    meta = ckpt.meta
    model = model_from_meta(meta, T=T)
    state = ckpt.model_state
    own = model.state_dict()
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        detail = (f"shape mismatch {mismatched[0]}" if mismatched else
                  f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise CheckpointError(f"{path}: its tensors do not fit the model its metadata describes ({detail})")
    model.load_state_dict(state, strict=True)
    if hasattr(model, "set_epoch") and not getattr(model, "spiking", True):
        model.set_epoch(max(0, ckpt.epoch - 1))
    return model, meta, ckpt


__all__ = [
    "SPIKIFIED_MODEL_NAME",
    "USER_ANN_MODEL_NAME",
    "absolute_class_spec",
    "ann_class_meta",
    "import_ann",
    "is_python_class_spec",
    "load_ann_weights",
    "model_from_checkpoint",
    "model_from_meta",
    "neuron_from_meta",
    "parse_ann_kwargs",
    "spikified_meta",
]
